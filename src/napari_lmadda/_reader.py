"""napari reader: a folder of images becomes image layers; a model file is loaded.

Drop a folder onto napari and its images open as one image layer (a stack, one plane per
image), or one layer per image size when the sizes differ. A folder of sub-folders (as
``lmadda make-synthetic`` writes: ``input/``, ``dapi/``, ``cd29/``) opens one layer per
sub-folder with images, stains in their colours and hidden. A folder with nothing to open is
refused in one line, in the dock and as a notification, never with a traceback. Drop a
``.pt`` / ``.pth`` model file, or a bioimage.io model package (``*.zip``, its ``rdf.yaml``, or
the unpacked folder), and it is loaded into the dock's Model step; no layer is added. A
package is read as data: its architecture file never runs on open (a package that is not a
pix2pix-style UNet is refused in one line).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import LmaddaError

__all__ = ["get_reader", "read_folder", "read_model_file", "MAX_SUBFOLDERS"]

MODEL_SUFFIXES = (".pt", ".pth")
#: folders other readers open (chunked arrays), left to them
_NOT_OURS = (".zarr", ".n5")
#: sub-folders opened from one dropped folder at most (the rest are named, not read)
MAX_SUBFOLDERS = 12
LayerData = tuple  # (data, kwargs, layer_type) or the null-layer sentinel (None,)


def _notify(level: str, message: str) -> None:
    """Show ``message`` in the current viewer's dock and as a napari notification."""
    import napari
    from napari.utils import notifications

    viewer = napari.current_viewer()
    if viewer is not None:
        from .widgets.messages import notify
        from .widgets.state import get_state

        notify(get_state(viewer), level, message)
    else:
        getattr(notifications, f"show_{level}")(message)


def _image_folders(folder: Path) -> tuple[list[Path], list[Path]]:
    """The folder itself if it holds images, then its sub-folders that do (two levels deep).

    Returns the folders to open and those left out (beyond :data:`MAX_SUBFOLDERS`).
    """
    from .data.io import list_images

    def has_images(p: Path) -> bool:
        try:
            return bool(list_images(p))
        except (LmaddaError, OSError):
            return False

    found = [folder] if has_images(folder) else []
    subs: list[Path] = []
    try:
        level1 = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        level1 = []
    for sub in level1:
        if has_images(sub):
            subs.append(sub)
        else:
            try:
                subs += sorted(p for p in sub.iterdir()
                               if p.is_dir() and not p.name.startswith(".") and has_images(p))
            except OSError:
                pass
    return found + subs[:MAX_SUBFOLDERS], subs[MAX_SUBFOLDERS:]


def _layers_of(folder: Path, name: str) -> tuple[list[LayerData], list[str], str]:
    from .data.groups import read_image_groups
    from .data.io import read_pixel_size
    from .widgets.stain_layers import stain_colormap

    groups, skipped = read_image_groups(folder)
    stain = folder.name.lower() in ("dapi", "hoechst", "cd29")
    out: list[LayerData] = []
    for i, group in enumerate(groups):
        h, w = group.shape
        layer_name = name if len(groups) == 1 else f"{name} {h}x{w}"
        meta = {"lmadda": {"folder": str(folder), "files": group.files}}
        kwargs: dict[str, Any] = {"name": layer_name, "metadata": meta}
        px = read_pixel_size(folder / group.files[0])  # the calibration, kept on export
        if px is not None:
            kwargs.update(scale=(1.0, px["y"], px["x"]), units=("pixel", px["unit"], px["unit"]))
        if stain:  # ground truth written next to the inputs: coloured, off until wanted
            kwargs.update(colormap=stain_colormap(folder.name, i), blending="additive",
                          visible=False)
        out.append((group.stack, kwargs, "image"))
    sizes = ""
    if len(groups) > 1:
        listed = ", ".join(f"{g.shape[0]}x{g.shape[1]} ({len(g.planes)})" for g in groups)
        sizes = (f"'{name}' holds images of {len(groups)} sizes ({listed}); opened one layer "
                 "per size")
    return out, [f"{folder.name}/{s}" for s in skipped], sizes


def read_folder(path: str | list[str]) -> list[LayerData]:
    """Read a folder of images (or of sub-folders of images) as image layer data.

    Parameters
    ----------
    path : str or list of str
        The folder.

    Returns
    -------
    list of tuple
        ``(stack, kwargs, "image")`` per folder and size; ``[(None,)]`` (nothing to add)
        when nothing can be opened, after saying why in one line.
    """
    folder = Path(path[0] if isinstance(path, list) else path)
    folders, left_out = _image_folders(folder)
    if not folders:
        _notify("warning", f"'{folder.name}' holds no images to open (looked in it and in "
                           f"its sub-folders for .tif, .tiff, .png, .jpg files)")
        return [(None,)]
    out: list[LayerData] = []
    skipped: list[str] = []
    failed: list[str] = []
    notes = []
    for f in folders:
        name = folder.name if f == folder else f"{folder.name}/{f.relative_to(folder)}"
        try:
            layers, bad, sizes = _layers_of(f, name)
        except LmaddaError as exc:
            failed.append(f"{name}: {exc}")
            continue
        out += layers
        skipped += bad
        if sizes:
            notes.append(sizes)
    if not out:
        _notify("error", f"nothing in '{folder.name}' could be opened ({failed[0]})")
        return [(None,)]
    if len(folders) > 1 or folders[0] != folder:
        notes.insert(0, f"opened {len(out)} layer(s) from {len(folders)} folder(s) of "
                        f"'{folder.name}'")
    if left_out:
        notes.append(f"left {len(left_out)} more sub-folder(s) unopened (drop them one by "
                     "one)")
    problems = []
    if skipped:
        problems.append(f"skipped {len(skipped)} unreadable file(s): {skipped[0]}")
    if failed:
        problems.append(f"could not open {failed[0]}")
    if notes:
        _notify("info", "; ".join(notes))
    if problems:  # last: the dock shows the last message, and problems come first
        _notify("warning", "; ".join(problems))
    return out


def read_model_file(path: str | list[str]) -> list[LayerData]:
    """Load a model file or bioimage.io package into the plugin's state of the current viewer.

    Parameters
    ----------
    path : str or list of str
        A ``.pt`` / ``.pth`` model file, or a bioimage.io package (zip, ``rdf.yaml`` or
        folder), read without running its code.

    Returns
    -------
    list of tuple
        ``[(None,)]``: the model is not a layer; napari adds nothing.
    """
    import napari

    from .widgets.model_step import load_into_state

    file = Path(path[0] if isinstance(path, list) else path)
    viewer = napari.current_viewer()
    if viewer is None:
        _notify("error", f"cannot load '{file.name}': no napari viewer is open")
        return [(None,)]
    load_into_state(viewer, str(file))
    return [(None,)]


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader for a folder, a model file or a bioimage.io package, else None.

    Never raises. A zip or YAML file that is not a bioimage.io package is left to other
    readers.

    An OME-Zarr image, plate or well opens through :mod:`~napari_lmadda.data.zarr_io`; every
    other folder (but other chunked-array stores, ``.zarr``/``.n5``) is accepted: one with
    nothing to open is refused by the reader in one line, rather than by napari with a
    traceback.

    Parameters
    ----------
    path : str or list of str
        What napari wants to open.

    Returns
    -------
    callable or None
    """
    try:
        if isinstance(path, list):
            if len(path) != 1:
                return None
            path = path[0]
        p = Path(path)
        if p.suffix.lower() in (".zip", ".yaml", ".yml") or p.is_dir():
            from .bioimageio.load import is_bioimageio_package

            if is_bioimageio_package(p):  # a model, read as data (no package code runs)
                return read_model_file
        if p.is_dir():
            from .data.zarr_io import is_zarr_image, zarr_layer_data

            if is_zarr_image(p):  # an OME-Zarr image, HCS plate or well
                return zarr_layer_data
            return None if p.suffix.lower() in _NOT_OURS else read_folder
        if p.suffix.lower() in MODEL_SUFFIXES and p.is_file():
            return read_model_file
    except (OSError, TypeError, ValueError):
        return None
    return None
