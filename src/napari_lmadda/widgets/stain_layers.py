"""The layers the plugin makes: virtual stains, trust maps, and inputs read from folders.

Every such layer is *owned*: the viewer's state keeps it under a key naming what it shows
(kind, the input data it was computed from, which result, which channel). Showing the same
thing again updates the owned layer in place; anything else gets a new layer. A layer the
user brought (a dropped folder, a loaded file, a renamed or duplicated layer) is never
written to, whatever its name.

The layers' data, contrast limits and metadata are prepared in the worker thread
(:func:`stain_specs`, :func:`trust_specs`, :func:`input_spec`); :class:`OwnedLayers` only
adds or updates them in the GUI thread, all new ones in one batch.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "LayerSpec",
    "ResultTag",
    "OwnedLayers",
    "stain_specs",
    "trust_specs",
    "input_spec",
    "stain_colormap",
    "stain_layer_name",
    "trust_layer_name",
    "UNADAPTED",
]

UNADAPTED = "unadapted"
_MARKER_COLOURS = {"dapi": "blue", "hoechst": "blue", "cd29": "green"}
_OTHER_COLOURS = ("magenta", "yellow", "cyan", "red")


def stain_colormap(marker: str, index: int = 0) -> str:
    """Return the napari colormap for a marker (DAPI blue, CD29 green, others in turn)."""
    return _MARKER_COLOURS.get(marker.strip().lower(),
                               _OTHER_COLOURS[index % len(_OTHER_COLOURS)])


def stain_layer_name(marker: str, tag: str, image_set: str | None = None) -> str:
    """Layer name of a virtual stain, e.g. ``DAPI [lmadda L2]``."""
    name = f"{marker} [{tag}]"
    return f"{name} {image_set}" if image_set else name


def trust_layer_name(marker: str, tag: str, image_set: str | None = None) -> str:
    """Layer name of a trust map, e.g. ``CD29 trust [lmadda L10]``."""
    return stain_layer_name(f"{marker} trust", tag, image_set)


@dataclass(frozen=True)
class ResultTag:
    """Which model a prediction comes from.

    Attributes
    ----------
    tag : str
        Short tag for names (``lmadda L10``, ``unadapted``).
    key : str
        Identity of the result: ``run<N>@<model serial>`` or ``unadapted@<model serial>``.
    run : int
        Run number (0 for the unadapted model): names get ``#N`` when the plain name is taken.
    meta : dict
        What goes into each layer's metadata (method, layers, best step, ...).
    """

    tag: str
    key: str
    run: int = 0
    meta: dict = field(default_factory=dict)


@dataclass
class LayerSpec:
    """A layer to show: its ownership key, preferred names, data and display settings."""

    key: tuple
    names: tuple[str, ...]
    data: np.ndarray
    colormap: str
    contrast_limits: tuple[float, float]
    metadata: dict[str, Any]
    visible: bool = True
    blending: str = "additive"
    scale: tuple | None = None
    translate: tuple | None = None
    units: tuple | None = None


def _limits(data: np.ndarray) -> tuple[float, float]:
    """1st and 99.8th percentile (stains are mostly background: start it dark)."""
    if data.size == 0:
        return (0.0, 1.0)
    sample = data.ravel()[:: max(1, data.size // 2_000_000)]
    lo, hi = (float(v) for v in np.percentile(sample, (1.0, 99.8)))
    return (lo, hi if hi > lo else lo + 1.0)


def _plane_kwargs(iset: Any, ndim: int) -> dict[str, Any]:
    return {k: tuple(v[-ndim:]) for k, v in iset.layer_kwargs.items()}


def input_spec(iset: Any) -> LayerSpec:
    """The layer of new-microscope images read from a folder (its own layer, never a user's)."""
    data = iset.stack
    kw = _plane_kwargs(iset, data.ndim)
    return LayerSpec(
        key=("input", iset.key), names=(f"{iset.name} (new microscope)",), data=data,
        colormap="gray", contrast_limits=_limits(data), blending="translucent",
        metadata={"lmadda": {"kind": "input", "folder": iset.folder, "files": iset.files,
                             "input": iset.name}},
        scale=kw.get("scale"), translate=kw.get("translate"), units=kw.get("units"))


def _input_meta(iset: Any) -> dict[str, Any]:
    return {"input": iset.name, "input_folder": iset.folder, "input_key": iset.key,
            "input_layer": iset.input_layer, "pixel_size": iset.pixel_size}


def stain_specs(outputs: dict[tuple[str, int], np.ndarray], sets: Sequence[Any],
                tags: Sequence[ResultTag], markers: Sequence[str], model_label: str,
                prediction: str = "single pass") -> list[LayerSpec]:
    """One stain layer per marker, model and image set (call in the worker).

    Parameters
    ----------
    outputs : dict
        ``{(tag, set_index): (N, C, H, W)}`` predictions in stain units.
    sets : sequence of ImageSet
        The inputs, in the order of the set indices.
    tags : sequence of ResultTag
        The models, in the order their layers are added (unadapted first: it sits below).
    markers : sequence of str
        Output channel names.
    model_label : str
        Label of the loaded model.
    prediction : str
        How each prediction was made (``single pass`` or ``TTA average of 8``).

    Returns
    -------
    list of LayerSpec
    """
    specs = []
    for i, iset in enumerate(sets):
        suffix = iset.name if len(sets) > 1 else None
        for rt in tags:
            out = outputs.get((rt.tag, i))
            if out is None:
                continue
            for c in range(out.shape[1]):
                marker = markers[c] if c < len(markers) else f"channel {c}"
                data = np.ascontiguousarray(out[0, c] if iset.squeeze else out[:, c])
                names = (stain_layer_name(marker, rt.tag, suffix),)
                if rt.run > 1:
                    names += (stain_layer_name(marker, f"{rt.tag} #{rt.run}", suffix),)
                meta = {"lmadda": {"kind": "stain", "model": model_label, "tag": rt.tag,
                                   "result": rt.key, "channel": marker, "channel_index": c,
                                   "prediction": prediction, **rt.meta, **_input_meta(iset)}}
                kw = _plane_kwargs(iset, data.ndim)
                specs.append(LayerSpec(("stain", iset.key, rt.key, marker), names, data,
                                       stain_colormap(marker, c), _limits(data), meta,
                                       scale=kw.get("scale"), translate=kw.get("translate"),
                                       units=kw.get("units")))
    return specs


def trust_specs(maps: dict[int, np.ndarray], sets: Sequence[Any], rt: ResultTag,
                markers: Sequence[str], model_label: str, method: str,
                n_samples: int) -> list[LayerSpec]:
    """One trust-map layer per marker and image set, the first marker's shown (in the worker)."""
    specs = []
    for i, iset in enumerate(sets):
        out = maps.get(i)
        if out is None:
            continue
        suffix = iset.name if len(sets) > 1 else None
        for c in range(out.shape[1]):
            marker = markers[c] if c < len(markers) else f"channel {c}"
            data = np.ascontiguousarray(out[0, c] if iset.squeeze else out[:, c])
            hi = float(np.percentile(data, 99.8)) if data.size else 1.0
            names = (trust_layer_name(marker, rt.tag, suffix),)
            if rt.run > 1:
                names += (trust_layer_name(marker, f"{rt.tag} #{rt.run}", suffix),)
            meta = {"lmadda": {"kind": "trust map", "model": model_label, "tag": rt.tag,
                               "result": rt.key, "uncertainty_method": method,
                               "n_samples": int(n_samples),
                               "units": "standard deviation of the stain", "channel": marker,
                               **rt.meta, **_input_meta(iset)}}
            kw = _plane_kwargs(iset, data.ndim)
            specs.append(LayerSpec(("trust", iset.key, rt.key, marker), names, data, "magma",
                                   (0.0, hi if hi > 0 else 1.0), meta, visible=c == 0,
                                   scale=kw.get("scale"), translate=kw.get("translate"),
                                   units=kw.get("units")))
    return specs


def _synchronous() -> bool:
    from .worker import SYNC_ENV

    return os.environ.get(SYNC_ENV, "").strip() not in ("", "0")


class OwnedLayers:
    """The viewer's plugin-made layers: find, update in place, add new ones in one batch.

    Parameters
    ----------
    viewer : napari.Viewer
        Where the layers live.
    state : LmaddaState
        Keeps the ownership (``state.owned``: key -> weak reference to the layer).
    """

    def __init__(self, viewer: Any, state: Any) -> None:
        self.viewer, self.state = viewer, state

    def find(self, key: tuple) -> Any:
        """The owned layer for ``key`` if it is still in the viewer, else None."""
        ref = self.state.owned.get(key)
        layer = ref() if ref is not None else None
        if layer is None:  # deleted and gone: forget it
            self.state.owned.pop(key, None)
            return None
        # a layer the user removed (or one not added yet) is not shown: make a new one
        return layer if any(ly is layer for ly in self.viewer.layers) else None

    def layers(self, kind: str | None = None) -> list[Any]:
        """Owned layers still in the viewer (of one kind: ``stain``, ``trust``, ``input``)."""
        out = []
        for key in list(self.state.owned):
            if kind is None or key[0] == kind:
                layer = self.find(key)
                if layer is not None:
                    out.append(layer)
        return out

    def is_owned(self, layer: Any) -> bool:
        """Whether the plugin made ``layer``."""
        return any(ref() is layer for ref in self.state.owned.values())

    def apply(self, specs: Sequence[LayerSpec]) -> list[Any]:
        """Show ``specs`` at once: owned layers updated in place, new ones added in one batch.

        Returns
        -------
        list of napari.layers.Image
            The layers, in the order of ``specs``.
        """
        layers, new = self.prepare(specs)
        self.insert(new)
        return layers

    def prepare(self, specs: Sequence[LayerSpec]) -> tuple[list[Any], list[Any]]:
        """Update the owned layers of ``specs`` and make (not add) the new ones.

        Returns
        -------
        layers : list
            A layer per spec, in order.
        new : list
            The layers still to :meth:`insert`.
        """
        taken = {ly.name for ly in self.viewer.layers}
        result: list[Any] = []
        new: list[Any] = []
        input_names: dict[str, str] = {}  # input key -> name of its layer (made here)
        for spec in specs:
            info = spec.metadata.get("lmadda", {})
            if info.get("input_layer") is None and info.get("input_key") in input_names:
                info["input_layer"] = input_names[info["input_key"]]
            layer = self._show(spec, taken, new)
            if spec.key[0] == "input":
                input_names[spec.key[1]] = layer.name
            result.append(layer)
        return result, new

    def insert(self, new: list[Any], done: Callable[[], None] | None = None) -> None:
        """Add ``new`` layers; with ``done``, one per turn of the event loop, then ``done()``.

        napari needs 100-300 ms per new layer here (its controls, its GL visual): one at a
        time, napari answers in between.
        """
        if done is None or not new or _synchronous():
            if new:
                self.viewer.layers.extend(new)
            if done is not None:
                done()
            return
        self._insert_one_by_one(list(new), done)

    def _insert_one_by_one(self, new: list[Any], then: Callable[[], None]) -> None:
        from qtpy.QtCore import QTimer

        layer = new.pop(0)
        self.viewer.layers.append(layer)
        if new:
            QTimer.singleShot(0, lambda: self._insert_one_by_one(new, then))
        else:
            QTimer.singleShot(0, then)

    def _show(self, spec: LayerSpec, taken: set[str], new: list[Any]) -> Any:
        from napari.layers import Image

        layer = self.find(spec.key)
        if layer is not None and layer.data.shape == spec.data.shape:
            layer.data = spec.data
            layer.metadata = {**layer.metadata, **spec.metadata}
            layer.contrast_limits = spec.contrast_limits
            layer.visible = spec.visible
            return layer
        if layer is not None:  # same thing, another shape: replace the layer
            self.viewer.layers.remove(layer)
            taken.discard(layer.name)
        name = next((n for n in spec.names if n not in taken), spec.names[-1])
        taken.add(name)
        kwargs = {k: v for k, v in (("scale", spec.scale), ("translate", spec.translate),
                                    ("units", spec.units)) if v is not None}
        layer = Image(spec.data, name=name, colormap=spec.colormap, blending=spec.blending,
                      contrast_limits=spec.contrast_limits, metadata=spec.metadata,
                      visible=spec.visible, **kwargs)
        self.state.owned[spec.key] = weakref.ref(layer)
        new.append(layer)
        return layer
