"""Untrusted model files: a crafted pickle never runs, whatever door it comes through.

The payload is real: loaded with plain ``torch.load(weights_only=False)`` it creates a file.
Through the project (``load_model``, the napari reader, ``lmadda predict --model``) it is
refused with a one-line :class:`CheckpointError` and the file is never created.

The project extracts no archive: a model file is read by ``torch.load`` (which reads its own
zip records in memory) and ``zipfile`` is only used to list the names of a ``.pt`` zip, so a
path-traversal entry cannot write anywhere.
"""

from __future__ import annotations

import io
import pickle
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_lmadda.cli import main
from napari_lmadda.errors import CheckpointError
from napari_lmadda.models import UNetGenerator, load_model, read_checkpoint, save_model

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_lmadda"


class _Evil:
    """Unpickling this runs ``open(marker, 'w')``: arbitrary code of the file's author."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


def _write(kind: str, path: Path, marker: Path) -> Path:
    evil = _Evil(marker)
    if kind == "zip":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "x": evil}, path)
    elif kind == "legacy":
        torch.save({"x": evil}, path, _use_new_zipfile_serialization=False)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"model": evil}))
    elif kind == "inside-model":  # a genuine napari-lmadda model with one poisoned field
        good = save_model(UNetGenerator(num_downs=3, ngf=4), path.with_suffix(".good"))
        obj = torch.load(good, weights_only=True)
        obj["meta"]["provenance"]["note"] = evil
        torch.save(obj, path)
    elif kind == "pix2pix":  # a state dict whose tensor is replaced by the payload
        torch.save({"model.model.0.weight": evil}, path)
    return path


KINDS = ["zip", "legacy", "pickle", "inside-model", "pix2pix"]


def test_the_payload_is_real(tmp_path, marker):
    path = _write("zip", tmp_path / "evil.pth", marker)
    torch.load(path, weights_only=False)  # what a careless loader would do
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_load_model_refuses_without_running_anything(tmp_path, marker, kind):
    path = _write(kind, tmp_path / "evil.pth", marker)
    for load in (load_model, read_checkpoint):
        with pytest.raises(CheckpointError, match="refused to load") as info:
            load(path)
        msg = str(info.value)
        assert "nothing was executed" in msg and "evil.pth" in msg and "\n" not in msg
    assert not marker.exists()


def test_refusal_names_what_was_found(tmp_path, marker):
    with pytest.raises(CheckpointError, match=r"holds a Python object \((builtins\.)?exec\)"):
        load_model(_write("zip", tmp_path / "evil.pth", marker))
    with pytest.raises(CheckpointError, match="plain Python pickle"):
        load_model(_write("pickle", tmp_path / "evil.pkl", marker))
    assert not marker.exists()


def test_napari_reader_refuses_a_dropped_evil_file(tmp_path, marker, make_napari_viewer,
                                                   monkeypatch):
    import napari.utils.notifications as notifications

    from napari_lmadda._reader import get_reader
    from napari_lmadda.widgets.state import get_state

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(str(msg)))
    viewer = make_napari_viewer()
    path = _write("zip", tmp_path / "evil.pth", marker)
    reader = get_reader(str(path))
    assert reader is not None
    assert reader(str(path)) == [(None,)]
    assert "refused to load" in shown[-1] and "evil.pth" in shown[-1]
    assert get_state(viewer).model is None and not marker.exists()


def test_cli_predict_refuses_an_evil_model(tmp_path, marker, capsys):
    path = _write("legacy", tmp_path / "evil.pth", marker)
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.zeros((16, 16), np.float32))
    rc = main(["predict", "--model", str(path), "--images", str(images),
               "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmadda predict: error: refused to load") and "\n" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("lmadda") is None, reason="the lmadda command is not installed")
def test_lmadda_command_refuses_an_evil_model_without_traceback(tmp_path, marker):
    path = _write("zip", tmp_path / "evil.pth", marker)
    proc = subprocess.run(
        ["lmadda", "adapt", "--model", str(path), "--source", str(tmp_path),
         "--target", str(tmp_path), "--layer", "1", "--out", str(tmp_path / "a.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("lmadda adapt: error: refused to load")
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_zip_entries_are_never_extracted(tmp_path):
    """A model zip with a path-traversal entry loads (or is refused) and writes nothing."""
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    path = save_model(UNetGenerator(num_downs=3, ngf=4), inner / "m.pt")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("../../escape.txt", "written outside the target folder")
        zf.writestr("/abs_escape.txt", "written at the root")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    try:
        load_model(path)
    except CheckpointError:
        pass
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not Path("/abs_escape.txt").exists()


def test_a_zip_that_is_not_a_model_is_only_listed(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../outside.txt", "x")
        zf.writestr("model/weights.bin", b"\x00" * 16)
    (tmp_path / "package.pth").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="zip archive but not a PyTorch model file"):
        load_model(tmp_path / "package.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package.pth"]


def test_the_project_extracts_no_archive():
    """If this fails, an archive reader was added: extract it with a path-checked helper."""
    pattern = re.compile(r"extractall|unpack_archive|tarfile|\.extract\(")
    hits = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
            if pattern.search(p.read_text(encoding="utf-8"))]
    assert hits == []


def test_torch_loads_are_weights_only():
    """Every ``torch.load`` call of the package passes ``weights_only=True``."""
    offenders = []
    for p in SRC.rglob("*.py"):
        text = p.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):  # to the matching parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            if "weights_only=True" not in text[m.start(): end]:
                offenders.append(f"{p.relative_to(SRC)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert offenders == []
