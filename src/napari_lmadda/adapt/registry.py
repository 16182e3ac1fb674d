"""The adaptation methods: one typed entry per method, the only list of them.

The engine, the CLI (``adapt``, ``sweep``, ``demo``, ``recommend-layer``), the napari dock and
the names of result layers all read :data:`METHODS`. Adding a method is a short module (a
:class:`~napari_lmadda.adapt.loop.Method` step with a ``make`` factory, or a generator for a
method that is not adversarial) plus one :class:`MethodEntry` here; a method with options
of its own adds their sub-configuration to :class:`~napari_lmadda.adapt.config.AdaptConfig`
and names it in ``options``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import adabn, adda, apma, auto, lmadda, lmadda_multi, none, scgan
from .config import AdabnOptions, ApmaOptions, ScganOptions

__all__ = ["LAYER_USES", "MethodEntry", "METHODS", "method_names", "baselines", "get",
           "result_tag"]

#: What ``layers`` means for a method
LAYER_USES = {
    "none": "takes no layer",
    "output": "matches the output layer (takes no layer)",
    "one": "matches one layer (required)",
    "several": "matches two or more layers (required)",
    "upto": "optional: changes the layers up to the given one, or exactly those listed",
    "encoder": "optional: one encoder layer it reads (default the bottleneck)",
    "candidates": "optional: the LM-ADDA layers to try (default: the recommendation's top 3)",
}


@dataclass(frozen=True)
class MethodEntry:
    """One adaptation method.

    Attributes
    ----------
    name : str
        The name in ``method=``, ``--method`` and provenance.
    label : str
        Shown in the napari dock's method box.
    layers : str
        What ``layers`` means for it: a key of :data:`LAYER_USES`.
    factory : callable
        Adversarial: ``factory(model, layers, config) -> loop.Method`` (a step the loop
        runs). Otherwise: ``factory(model, source, target, *, layers, config, cancel)``
        yielding the engine's events.
    adversarial : bool
        Whether ``factory`` makes a step for :func:`~napari_lmadda.adapt.loop.run`.
    multi_process : bool
        Runs under torchrun (its batches split over the processes).
    options : type or None
        Its sub-configuration of :class:`~napari_lmadda.adapt.config.AdaptConfig`.
    baseline : bool
        Run beside LM-ADDA by default (sweeps, the demo) and drawn as a reference line.
    tag : str or None
        Fixed name of its results in the viewer (``none``: ``unadapted``).
    unet_only : bool
        Built on the project's UNet layers (pix2pix numbering); refused for other networks
        (:class:`~napari_lmadda.models.tapped.TappedModel`).
    summary : str
        One line for menus and ``--help``.
    """

    name: str
    label: str
    layers: str
    factory: Callable[..., Any]
    adversarial: bool = True
    multi_process: bool = False
    options: type | None = None
    baseline: bool = False
    tag: str | None = None
    summary: str = ""
    unet_only: bool = False

    def __post_init__(self) -> None:
        if self.layers not in LAYER_USES:
            raise ValueError(f"{self.name}: layers must be one of {', '.join(LAYER_USES)}")

    @property
    def needs_layers(self) -> bool:
        """Whether a run needs ``layers``."""
        return self.layers in ("one", "several")


METHODS: dict[str, MethodEntry] = {e.name: e for e in (
    MethodEntry("none", "None (unadapted copy)", "none", none.run, adversarial=False,
                baseline=True, tag="unadapted", summary="the source model as it is"),
    MethodEntry("adabn", "AdaBN", "upto", adabn.run, adversarial=False, options=AdabnOptions,
                baseline=True, summary="batch-norm statistics re-estimated on the target"),
    MethodEntry("adda", "ADDA", "output", adda.make, multi_process=True, baseline=True,
                summary="adversarial matching of the outputs; every layer trains"),
    MethodEntry("lmadda", "LM-ADDA", "one", lmadda.make, multi_process=True,
                summary="adversarial matching at one layer; only layers up to it train"),
    MethodEntry("lmadda-multi", "LM-ADDA multi", "several", lmadda_multi.make,
                multi_process=True, summary="LM-ADDA at several layers, losses summed"),
    MethodEntry("scgan", "scGAN", "none", scgan.make, options=ScganOptions,
                summary="a CycleGAN translator in front of the unchanged source model",
                unet_only=True),
    MethodEntry("apma", "APMA", "encoder", apma.make, options=ApmaOptions,
                summary="reconstruction decoder and discriminators on features/predictions",
                unet_only=True),
    MethodEntry("auto", "Auto (choose without labels)", "candidates", auto.run,
                adversarial=False, unet_only=True,
                summary="tries AdaBN and LM-ADDA at the recommended layers within 3 runs' budget; "
                        "keeps one only if it clearly helps (AdaBN only if clearly ahead of "
                        "LM-ADDA)"),
)}


def method_names() -> list[str]:
    """Names accepted by ``method=``, in menu order."""
    return list(METHODS)


def baselines() -> tuple[str, ...]:
    """The baselines, in menu order (what sweeps and the demo run beside LM-ADDA)."""
    return tuple(name for name, entry in METHODS.items() if entry.baseline)


def get(name: str) -> MethodEntry:
    """The entry of ``name``.

    Raises
    ------
    ConfigError
        An unknown name (the message lists the known ones).
    """
    from ..errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def result_tag(method: str, layers: Sequence[int]) -> str:
    """Short name of a result, e.g. ``lmadda L2``, ``lmadda-multi L2-5``, ``adda``."""
    entry = METHODS.get(method)
    if entry is not None and entry.tag:
        return entry.tag
    if (entry is not None and entry.layers == "output") or not layers:
        return method
    lays = list(layers)
    if len(lays) == 1:
        return f"{method} L{lays[0]}"
    contiguous = lays == list(range(lays[0], lays[-1] + 1))
    spec = f"{lays[0]}-{lays[-1]}" if contiguous else ",".join(map(str, lays))
    return f"{method} L{spec}"
