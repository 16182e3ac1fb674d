"""The stain layers on screen, written as the CLI's calibrated prediction files.

``lmadda predict`` writes one ImageJ hyperstack per input file: the markers as named
channels, the input's pixel size and unit, the model's provenance as JSON
(:func:`~napari_lmadda.inference.predict.write_prediction`). The Results step writes the
same files from the stain layers it shows, so a stain exported from napari and one
predicted on the command line open alike in Fiji: per input file of a folder (chosen as a
folder, or dropped and chosen as its layer) ``<stem>_<result>_pred.tif`` (the result as the
layer names it, e.g. ``lmadda_L10``), and for a layer not read from files
``<layer>_<result>_pred.tif`` with its planes as Z.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LmaddaError

__all__ = ["StainFile", "LayerSnapshot", "ExportProgress", "ExportFinished", "plan_export",
           "check_export", "write_one", "export_messages"]

#: layer metadata that describes the layer, not the prediction (left out of the files)
_LAYER_ONLY = {"kind", "channel", "channel_index", "input_layer", "input_key", "pixel_size"}


@dataclass
class StainFile:
    """One file to write: where, the ``(C, Y, X)`` or ``(Z, C, Y, X)`` stains, and from what."""

    target: Path
    array: np.ndarray
    source: Path | str
    model: Any
    pixel_size: dict[str, Any] | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerSnapshot:
    """What the writer needs of a layer, taken in the GUI thread (napari objects stay there)."""

    name: str
    metadata: dict[str, Any]
    data: Any

    @classmethod
    def of(cls, layer: Any) -> LayerSnapshot:
        """Snapshot ``layer`` (its data array is shared, not copied)."""
        return cls(layer.name, {"lmadda": dict(layer.metadata.get("lmadda", {}))}, layer.data)


@dataclass(frozen=True)
class ExportProgress:
    """``done`` of ``total`` files written."""

    done: int
    total: int


@dataclass(frozen=True)
class ExportFinished:
    """The export ended: the files written and, if it stopped early, why (one line)."""

    written: tuple[Path, ...]
    error: str = ""
    seconds: float = 0.0


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "stain"


def _result_name(layer_name: str, tag: str) -> str:
    """``DAPI [lmadda L2 #2] cells`` -> ``lmadda_L2_2``: the result as the user sees it."""
    found = re.search(r"\[([^\]]+)\]", layer_name)
    return _safe(found.group(1) if found else tag)


def _file_pixel_size(path: Path) -> dict[str, Any] | None:
    from ..data.io import read_pixel_size

    try:
        return read_pixel_size(path)
    except (LmaddaError, OSError):  # the file went away since it was read: no calibration
        return None


def plan_export(layers: Sequence[Any], sets: Sequence[Any], models: dict[str, Any],
                folder: str | Path) -> list[StainFile]:
    """Group stain layers into the files the CLI would write for the same inputs.

    Parameters
    ----------
    layers : sequence of napari.layers.Image
        Stain layers made by the plugin (their ``metadata["lmadda"]`` names the result, the
        marker and the input they were computed from).
    sets : sequence of ImageSet
        The inputs of the prediction the layers show.
    models : dict
        Result key -> the model that predicted it (channel names, units, provenance).
    folder : path-like
        Output folder.

    Returns
    -------
    list of StainFile

    Raises
    ------
    LmaddaError
        A layer's model or input is unknown, or a marker layer of a result was removed.
    """
    out = Path(folder)
    by_key = {s.key: s for s in sets}
    groups: dict[tuple[str, str], list[Any]] = {}
    for layer in layers:
        info = layer.metadata.get("lmadda", {})
        groups.setdefault((info.get("input_key"), info.get("result")), []).append(layer)
    siblings = [f for s in sets for f in dict.fromkeys(s.files)]
    plan: list[StainFile] = []
    for (input_key, result), group in groups.items():
        info = group[0].metadata["lmadda"]
        model = models.get(result)
        if model is None:
            raise LmaddaError(f"the model of [{info.get('tag')}] is no longer loaded: show the "
                              "stains again")
        n_out = int(model.config.out_channels)
        group.sort(key=lambda ly: ly.metadata["lmadda"].get("channel_index", 0))
        if len(group) != n_out:
            raise LmaddaError(f"[{info.get('tag')}] has {len(group)} of its {n_out} stain "
                              "layers in the viewer: show the stains again")
        planes = [np.asarray(ly.data, dtype=np.float32) for ly in group]
        stack = np.stack([p.reshape(-1, *p.shape[-2:]) for p in planes], axis=1)  # NCYX
        result_name = _result_name(group[0].name, info.get("tag", "stain"))
        suffix = f"_{result_name}_pred.tif"
        # "model" is the provenance in the file (as the CLI writes it); the label goes aside
        extra = {("model_label" if k == "model" else k): v for k, v in info.items()
                 if k not in _LAYER_ONLY}
        iset = by_key.get(input_key)
        files = list(iset.files) if iset is not None else []
        if iset is not None and iset.folder and len(files) == len(stack):
            from ..inference.predict import output_path

            for name in dict.fromkeys(files):  # one file per input file, its planes as Z
                idx = [i for i, f in enumerate(files) if f == name]
                arr = stack[idx[0]] if len(idx) == 1 else stack[idx]
                source = Path(iset.folder) / name
                plan.append(StainFile(output_path(name, out, siblings, suffix), arr, source,
                                      model, _file_pixel_size(source), extra))
        else:
            name = iset.name if iset is not None else str(info.get("input", "stains"))
            arr = stack[0] if len(stack) == 1 else stack
            plan.append(StainFile(out / f"{_safe(name)}{suffix}", arr, name, model,
                                  info.get("pixel_size"), extra))
    return plan


def check_export(plan: Sequence[StainFile], overwrite: bool = False) -> None:
    """Refuse a plan before anything is written; create the output folders.

    Raises
    ------
    LmaddaError
        Two files would get one name, a file exists (without ``overwrite``), or a folder
        cannot be created.
    """
    targets = [f.target for f in plan]
    if len(set(targets)) != len(targets):
        raise LmaddaError("two stain files would get the same name: show one result at a time")
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise LmaddaError(f"'{existing[0]}' already exists ({len(existing)} file(s) would be "
                          "overwritten; choose another folder)")
    for folder in dict.fromkeys(t.parent for t in targets):
        try:
            folder.mkdir(parents=True, exist_ok=True)  # as lmadda predict --out does
        except OSError as exc:
            raise LmaddaError(f"cannot create the folder '{folder}': "
                              f"{exc.strerror or exc}") from None


def write_one(f: StainFile, overwrite: bool = False) -> Path:
    """Write one planned file (a temporary file, then renamed), as ``lmadda predict`` does."""
    from ..inference.predict import write_prediction

    return write_prediction(f.model, f.target, f.array, f.source, overwrite=overwrite,
                            metadata=f.metadata, pixel_size=f.pixel_size)


def export_messages(layers: Sequence[Any], sets: Sequence[Any], models: dict[str, Any],
                    folder: str | Path, overwrite: bool = False,
                    ) -> Iterator[ExportProgress | ExportFinished]:
    """Plan, check and write the stain files (in the worker thread), reporting each file.

    Reading the inputs' calibration and writing the files take time a large folder would
    otherwise take from napari's thread. Nothing is written when the plan is refused; a
    file that fails stops the export, the files written before it stay.

    Yields
    ------
    ExportProgress per file, then one ExportFinished (never raises).
    """
    t0 = time.perf_counter()
    written: list[Path] = []
    try:
        plan = plan_export(layers, sets, models, folder)
        check_export(plan, overwrite)
        for i, f in enumerate(plan, 1):
            written.append(write_one(f, overwrite))
            yield ExportProgress(i, len(plan))
        yield ExportFinished(tuple(written), "", time.perf_counter() - t0)
    except LmaddaError as exc:
        yield ExportFinished(tuple(written), str(exc), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI busy
        yield ExportFinished(tuple(written), f"export failed ({type(exc).__name__}: {exc})",
                             time.perf_counter() - t0)
