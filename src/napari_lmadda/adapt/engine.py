"""The adaptation engine: one entry point for every method, typed events, cooperative cancel.

The methods are the entries of :data:`~napari_lmadda.adapt.registry.METHODS`: adversarial
ones are steps run by the loop (:mod:`napari_lmadda.adapt.loop`), the others (``none``,
``adabn``) generators of their own. ``iter_adapt`` checks the request, turns the images into
patch samplers and yields the events (the napari worker forwards them to the GUI); ``adapt``
runs to the end, calls an optional callback per event and returns the :class:`AdaptResult`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..models.unet import UNetGenerator
from . import distributed, loop, registry
from .config import AdaptConfig
from .events import AdaptResult, Event, Finished
from .sampling import make_sampler

__all__ = ["METHODS", "iter_adapt", "adapt", "method_names", "parse_layers",
           "layer_resolver"]

#: the registry's entries by name (the same dict as :data:`registry.METHODS`)
METHODS = registry.METHODS
method_names = registry.method_names


def parse_layers(spec: str | int | Sequence[int] | None, num_layers: int,
                 resolve: Callable[[str], int] | None = None) -> tuple[int, ...]:
    """Parse ``"2"``, ``"1-16"``, ``"2,5,13"``, layer names or a list into layer numbers.

    Parameters
    ----------
    spec : str, int, sequence or None
        Numbers, ranges and (with ``resolve``) names, comma-separated.
    num_layers : int
        The model's layers are ``1..num_layers``.
    resolve : callable, optional
        ``resolve(name) -> number`` for parts that are not numbers (module names of any
        model, see :func:`layer_resolver`); raises ConfigError for unknown names.

    Raises
    ------
    ConfigError
        For malformed specs or layers outside ``1..num_layers``.
    """
    if spec is None or spec == "":
        return ()
    def whole(v: Any) -> bool:
        return isinstance(v, int | np.integer) and not isinstance(v, bool)

    if not (isinstance(spec, str) or whole(spec)
            or (isinstance(spec, Sequence) and all(whole(v) for v in spec))):
        raise ConfigError(f"layers must be whole numbers (e.g. 2, [2, 5] or '1-16'), "
                          f"got {spec!r}")
    if whole(spec):
        items: list[int] = [int(spec)]
    elif isinstance(spec, str):
        items = []
        for part in spec.replace(" ", "").split(","):
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1)
                    items += list(range(int(a), int(b) + 1))
                else:
                    items.append(int(part))
            except ValueError:
                if resolve is None or not part:
                    raise ConfigError(
                        f"cannot read layers {spec!r}: use e.g. 2, 1-16 or 2,5,13"
                    ) from None
                try:
                    items.append(int(resolve(part)))
                except ConfigError as exc:
                    raise ConfigError(f"cannot read layers {spec!r}: {exc}") from None
    else:
        items = [int(v) for v in spec]
    bad = [v for v in items if not 1 <= v <= num_layers]
    if bad:
        raise ConfigError(f"layer {bad[0]} is out of range: this model has layers 1..{num_layers}")
    return tuple(sorted(set(items)))


def layer_resolver(model: Any) -> Callable[[str], int]:
    """``name -> layer number`` for ``model``: its own ``layer_index`` or its layer names.

    Any model works: a :class:`~napari_lmadda.models.tapped.TappedModel` resolves module
    names; the project's UNet its layer names (``down2``, ``bottleneck``, ``up9``, ``output``).
    """
    own = getattr(model, "layer_index", None)
    if own is not None:
        return own

    def by_name(name: str) -> int:
        names = [model.layer_name(i) for i in range(1, model.num_layers + 1)]
        if name in names:
            return names.index(name) + 1
        raise ConfigError(f"this model has no layer named {name!r}: give a number "
                          f"1..{model.num_layers} or one of {', '.join(names)}")

    return by_name


def iter_adapt(
    model: UNetGenerator,
    source: Any,
    target: Any,
    *,
    method: str = "lmadda",
    layers: str | int | Sequence[int] | None = None,
    config: AdaptConfig | None = None,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable[[int, UNetGenerator], dict[str, float]] | None = None,
    run_state: str | os.PathLike | None = None,
) -> Iterator[Event]:
    """Run an adaptation method and yield its typed events.

    Parameters
    ----------
    model : UNetGenerator
        The source model G (left unchanged).
    source, target : sampler, dataset, array or folder
        Unlabeled source-domain and new-microscope images: anything
        :func:`~napari_lmadda.adapt.sampling.make_sampler` accepts.
    method : str
        A name of :data:`~napari_lmadda.adapt.registry.METHODS`.
    layers : int, str or sequence of int
        Layer(s); what they mean depends on the method (its entry's ``layers``).
    config : AdaptConfig, optional
        Hyper-parameters (defaults otherwise).
    cancel : callable, optional
        Polled every step; returning True stops the run, keeping the best state so far.
    monitor : callable, optional
        ``monitor(step, model) -> dict`` logged at each evaluation of adversarial methods;
        never used for selection (benchmarks log ground-truth Pearson with it).
    run_state : path, optional
        Adversarial methods save their whole state there at every evaluation and resume
        from it when it exists (see :func:`~napari_lmadda.adapt.loop.run`); others ignore it.

    Yields
    ------
    Event
        ``Started``, ``Step``, ``Evaluated``, ``Finished``.
    """
    cfg = config or AdaptConfig()
    entry = registry.get(method)
    lays = parse_layers(layers, model.num_layers, layer_resolver(model))
    if entry.unet_only and not hasattr(model, "num_downs"):
        others = ", ".join(m for m, e in METHODS.items() if not e.unet_only)
        raise ConfigError(f"method {method!r} is built for the project's UNet layers; for this "
                          f"model use {others}")
    if entry.needs_layers and not lays:
        raise ConfigError(f"method {method!r} needs a layer (1..{model.num_layers})")
    if cfg.patch_size % model.min_size:
        raise ConfigError(
            f"patch size {cfg.patch_size} must be a multiple of {model.min_size} for this model"
        )
    if not entry.multi_process and distributed.env_world_size() > 1:
        raise ConfigError(f"{method} runs in a single process: start it without torchrun")
    src = make_sampler(source, cfg.patch_size, cfg.batch_size, seed=cfg.seed, role="source")
    tgt = make_sampler(target, cfg.patch_size, cfg.batch_size, seed=cfg.seed + 1000, role="target")
    if entry.adversarial:
        yield from loop.run(entry.factory(model, lays, cfg), model, src, tgt, config=cfg,
                            cancel=cancel, monitor=monitor, run_state=run_state)
    else:
        yield from entry.factory(model, src, tgt, layers=lays, config=cfg, cancel=cancel)


def adapt(
    model: UNetGenerator,
    source: Any,
    target: Any,
    *,
    method: str = "lmadda",
    layers: str | int | Sequence[int] | None = None,
    config: AdaptConfig | None = None,
    callback: Callable[[Event], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable[[int, UNetGenerator], dict[str, float]] | None = None,
    run_state: str | os.PathLike | None = None,
) -> AdaptResult:
    """Run an adaptation method to the end and return its result (see :func:`iter_adapt`)."""
    result = None
    for event in iter_adapt(
        model,
        source,
        target,
        method=method,
        layers=layers,
        config=config,
        cancel=cancel,
        monitor=monitor,
        run_state=run_state,
    ):
        if callback is not None:
            callback(event)
        if isinstance(event, Finished):
            result = event.result
    assert result is not None  # every method ends with Finished
    return result
