"""The package's layout: old module names still import, the core stays free of Qt/napari."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("old", "new"), [
    ("napari_lmadda.predict", "napari_lmadda.inference.predict"),
    ("napari_lmadda.predict_dask", "napari_lmadda.inference.predict_dask"),
    ("napari_lmadda.uncertainty", "napari_lmadda.inference.uncertainty"),
    ("napari_lmadda.metrics", "napari_lmadda.evaluation.metrics"),
    ("napari_lmadda.fid", "napari_lmadda.evaluation.fid"),
    ("napari_lmadda.sweep", "napari_lmadda.evaluation.sweep"),
    ("napari_lmadda.recommend", "napari_lmadda.adapt.recommend"),
])
def test_moved_modules_keep_their_old_names(old, new):
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)


def test_top_level_api_names():
    import napari_lmadda
    from napari_lmadda.inference.predict import predict_image

    assert napari_lmadda.predict_image is predict_image
    assert napari_lmadda.AdaptConfig().steps >= 1


def test_core_imports_no_qt_or_napari():
    code = (
        "import sys, importlib, pkgutil, napari_lmadda\n"
        "core = [m.name for m in pkgutil.walk_packages(napari_lmadda.__path__, 'napari_lmadda.')"
        " if not m.name.startswith(('napari_lmadda.widgets', 'napari_lmadda._'))]\n"
        "for name in core: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'superqt', 'magicgui'))\n"
        "print(len(core), bad)\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[0]) > 30


def test_old_name_import_leaves_the_module_spec_alone():
    import importlib
    import warnings

    new = importlib.import_module("napari_lmadda.inference.predict")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module("napari_lmadda.predict")
        assert new.__spec__.name == "napari_lmadda.inference.predict"
        new.output_paths  # noqa: B018 - a module attribute, still there
