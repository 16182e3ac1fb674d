"""Faults lose nothing: saves are atomic under SIGKILL, exports never overwrite silently.

The kill test runs one real Python process that imports everything once, then forks writer
processes that save in a loop (a large checkpoint through ``save_model`` and
``atomic_torch_save``, a large TIFF through ``write_tiff``); each writer is SIGKILLed at a
random moment. The destination must then be the complete file of the last finished save (or
of the one whose rename had just happened), never a partial one. A killed save can leave its
hidden temporary file ``.<stem>.<8 hex digits>.tmp<suffix>`` (documented in
``docs/reliability.md``; safe to delete) -- never anything else.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from napari_lmadda.cli import main
from napari_lmadda.errors import OutputExistsError, OutputWriteError
from napari_lmadda.inference.predict import predict_folder

# Runs in its own process. argv: folder, rounds per kind, seed. Prints one JSON line per round.
_DRIVER = r"""
import json, os, random, re, select, signal, sys, time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)  # no thread pool: forking below is safe
from napari_lmadda.data.io import read_planes, read_tiff_metadata, write_tiff
from napari_lmadda.models import UNetGenerator, load_model, save_model
from napari_lmadda.models.checkpoint import atomic_torch_save

folder, rounds, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
model = UNetGenerator(num_downs=5, ngf=32)  # about 20 MB of weights
big = {"w": torch.zeros(6_000_000)}  # 24 MB
image = np.zeros((2, 2048, 2048), np.float32)  # 32 MB


def prepare(kind, n):
    # fill the payload with version n (outside the timed save)
    if kind == "model":
        with torch.no_grad():
            for v in model.state_dict().values():
                v.fill_(n)
    elif kind == "tensor":
        big["w"].fill_(n)
    else:
        image.fill(n)


def save(kind, dest, n):
    if kind == "model":
        save_model(model, dest, provenance={"n": n})
    elif kind == "tensor":
        atomic_torch_save({"n": n, **big}, dest)
    else:
        write_tiff(dest, image, metadata={"n": n}, overwrite=True)


def check(kind, dest):
    # -> the version the destination holds, after checking every value of it
    if kind == "model":
        m = load_model(dest)
        n = m.meta["provenance"]["n"]
        assert all(bool((v == n).all()) for v in m.state_dict().values())
    elif kind == "tensor":
        obj = torch.load(dest, weights_only=True)
        n = obj["n"]
        assert obj["w"].numel() == 6_000_000 and bool((obj["w"] == n).all())
    else:
        n = read_tiff_metadata(dest)["n"]
        planes = read_planes(dest)
        assert len(planes) == 2 and all(bool((p == n).all()) for p in planes)
    return n


class Lines:
    # lines from a pipe, with a timeout (select) and no read-ahead surprises

    def __init__(self, fd):
        self.fd, self.buf = fd, b""

    def poll(self, timeout):
        while b"\n" not in self.buf:
            if not select.select([self.fd], [], [], timeout)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def next(self):
        return self.poll(60)


for kind, name in (("model", "model.pt"), ("tensor", "state.pt"), ("tiff", "stain.tif")):
    (folder / kind).mkdir()
    dest = folder / kind / name
    stem, suffix = re.escape(dest.stem), re.escape(dest.suffix)
    temp = re.compile(r"^\." + stem + r"\.[0-9a-f]{8}\.tmp" + suffix + "$")
    first = 1
    for r in range(rounds):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: save versions first, first + 1, ... until killed
            os.close(read_fd)
            try:
                n = first
                while True:
                    prepare(kind, n)
                    os.write(write_fd, f"S {n} {time.perf_counter()}\n".encode())
                    save(kind, dest, n)
                    os.write(write_fd, f"D {n} {time.perf_counter()}\n".encode())
                    n += 1
            finally:
                os._exit(1)
        os.close(write_fd)
        pipe = Lines(read_fd)
        pipe.next(), pipe.next()  # the first save pays for imports: time the second one
        _, _, t0 = pipe.next().split()
        _, done, t1 = pipe.next().split()
        done, took = int(done), float(t1) - float(t0)
        pipe.next()  # the next save starts
        if r % 2 == 0:  # at any moment of the save
            time.sleep(rng.uniform(0.0, 0.9) * took)
        else:  # while the temporary file is being written
            while not any(temp.match(p.name) for p in dest.parent.iterdir()):
                line = pipe.poll(0.001)
                if line and line.startswith("D "):
                    done = int(line.split()[1])
            time.sleep(rng.uniform(0.0, 0.1) * took)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        while (line := pipe.poll(0)) is not None:
            if line.startswith("D "):
                done = int(line.split()[1])
        os.close(read_fd)
        held = check(kind, dest)
        extra = sorted(p.name for p in dest.parent.iterdir() if p.name != dest.name)
        print(json.dumps({"kind": kind, "round": r, "done": done, "held": held,
                          "extra": extra, "temps": sum(bool(temp.match(e)) for e in extra)}),
              flush=True)
        for e in extra:  # a documented leftover: remove it before the next round
            if temp.match(e):
                (dest.parent / e).unlink()
        first = done + 2
"""


def test_sigkill_during_saves_leaves_the_old_or_the_new_file(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(tmp_path), "2", "5"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rounds) == 6
    for r in rounds:
        # the last save the writer finished, or the next one if it died right after its rename
        assert r["held"] in (r["done"], r["done"] + 1), r
        assert r["temps"] == len(r["extra"]) <= 1, r  # nothing but one documented temp file
    for r in rounds[1::2]:  # these kills landed while the temporary file was being written
        assert r["temps"] == 1 and r["held"] == r["done"], r


# ------------------------------------------------------------------ never overwrite silently
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch

    from napari_lmadda.models import UNetGenerator, load_model, save_model

    torch.manual_seed(0)
    model = UNetGenerator(num_downs=3, ngf=4, out_channels=1)
    model.meta = {}
    path = save_model(model, tmp_path_factory.mktemp("m") / "tiny.pt")
    return load_model(path), path


def test_predict_folder_keeps_existing_outputs_unless_overwrite(tiny, tmp_path):
    model, _ = tiny
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.ones((16, 16), np.float32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_pred.tif").write_bytes(b"an earlier result")
    with pytest.warns(UserWarning, match="already exists"):
        report = predict_folder(model, images, out, tile=16)
    assert not report.written and "already exists" in report.skipped[0][1]
    assert (out / "a_pred.tif").read_bytes() == b"an earlier result"
    report = predict_folder(model, images, out, tile=16, overwrite=True)
    # an ImageJ hyperstack: one channel reads back as one (16, 16) plane
    assert tifffile.imread(out / "a_pred.tif").shape == (16, 16)


@pytest.mark.parametrize("command", ["train-source", "make-synthetic", "evaluate", "predict"])
def test_cli_refuses_to_replace_an_existing_output(tiny, tmp_path, capsys, command):
    _, model_file = tiny
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.ones((16, 16), np.float32))
    existing = {
        "train-source": tmp_path / "model.pt",
        "make-synthetic": tmp_path / "syn" / "input" / "field_000.tif",
        "evaluate": tmp_path / "eval.json",
        "predict": tmp_path / "out" / "a_pred.tif",
    }[command]
    existing.parent.mkdir(parents=True, exist_ok=True)
    existing.write_bytes(b"keep me")
    argv = {
        "train-source": ["train-source", "--inputs", str(folder), "--targets", str(folder),
                         "--out", str(existing)],
        "make-synthetic": ["make-synthetic", "--out", str(tmp_path / "syn"), "--n", "1",
                           "--size", "32"],
        "evaluate": ["evaluate", "--pred", str(folder), "--truth", str(folder),
                     "--json", str(existing)],
        "predict": ["predict", "--model", str(model_file), "--images", str(folder),
                    "--out", str(existing.parent)],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "Traceback" not in err
    assert existing.read_bytes() == b"keep me"


def test_results_widget_save_never_overwrites_and_survives_a_full_disk(tiny, tmp_path,
                                                                       make_napari_viewer,
                                                                       monkeypatch):
    import napari.utils.notifications as notifications

    from napari_lmadda.widgets.results_step import ResultsStep

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(str(msg)))
    model, _ = tiny
    panel = ResultsStep(make_napari_viewer())
    panel.state.adapted = SimpleNamespace(model=model, result=SimpleNamespace(provenance={}))
    target = tmp_path / "adapted.pt"
    target.write_bytes(b"an earlier model")
    assert panel.save_adapted_model(target) is None
    assert "already exists" in shown[-1] and target.read_bytes() == b"an earlier model"

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    assert panel.save_adapted_model(tmp_path / "new.pt") is None
    assert "No space left" in shown[-1]
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted.pt"]


def test_output_errors_are_project_errors():
    assert issubclass(OutputExistsError, FileExistsError)
    assert issubclass(OutputWriteError, OSError)
