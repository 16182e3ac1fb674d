"""Train a source model in the dock (issue 11, item 5), and the device menu (issue 15, 9)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """``make-synthetic`` pairs: phase contrast inputs, DAPI and CD29 targets (4 fields)."""
    from napari_lmadda.data.synthetic import write_domain

    root = tmp_path_factory.mktemp("pairs")
    write_domain(root, 4, size=64, seed=3, modality="phase")
    return root


def _fill(panel, paired, out, steps):
    panel.set_inputs(paired / "input")
    panel.add_target(paired / "dapi")
    panel.add_target(paired / "cd29")
    panel.names_edit.setText("DAPI,CD29")
    panel.set_output(out)
    for name, value in (("steps", steps), ("batch", 2), ("patch", 32), ("num_downs", 4),
                        ("ngf", 8), ("val_fraction", 0.25), ("val_patches", 4)):
        panel.form.set_value(name, value)


def test_train_a_source_model_in_the_dock(dock, paired, tmp_path, qtbot):
    from napari_lmadda.cli.train_source import TrainSourceArgs
    from napari_lmadda.models.checkpoint import load_model
    from napari_lmadda.options import iter_options

    viewer, d = dock
    panel = d.train
    # the options of lmadda train-source, with their help as tooltips
    flags = {n for n, *_ in iter_options(TrainSourceArgs)} - {
        "inputs", "targets", "out", "channel_names", "device", "overwrite"}
    assert set(panel.form.fields) == flags
    assert panel.form.fields["lr"].toolTip().startswith("Adam learning rate")
    d.model.train_btn.click()
    assert d.model.training_open and d.current_step == "Model"
    out = tmp_path / "source.pt"
    _fill(panel, paired, out, steps=12)
    panel.form.set_value("eval_every", 3)
    assert panel.train()
    assert not panel.train_btn.isEnabled() and panel.stop_btn.isEnabled()
    assert not d.adapt.run_btn.isEnabled()  # one long task at a time
    qtbot.waitUntil(lambda: panel.task is None and not d.state.busy, timeout=120_000)
    assert panel.last_reason == "completed", panel.status.text()
    assert panel.plot.steps == [3, 6, 9, 12] and len(panel.plot.losses) == 12
    assert all(np.isfinite(panel.plot.pearson))
    assert "best validation Pearson" in panel.status.text() and str(out) in panel.status.text()
    # the model is written and loaded into the Model step
    assert out.is_file()
    model = d.state.model
    assert model is not None and d.state.model_label == "source.pt"
    assert model.meta["channel_names"] == ["DAPI", "CD29"] and model.config.num_downs == 4
    assert load_model(out).config.ngf == 8
    assert "source.pt" in d.sections["Model"].summary.text()
    assert d.adapt.layer_slider.maximum() == model.num_layers
    # nothing is overwritten: the same file name is refused in the dock
    assert not panel.train()
    assert "already exists" in d.message.text()


def test_training_stops_and_keeps_the_best_state(dock, paired, tmp_path, qtbot):
    viewer, d = dock
    panel = d.train
    _fill(panel, paired, tmp_path / "stopped.pt", steps=100_000)
    panel.form.set_value("eval_every", 2)
    assert panel.train()
    qtbot.waitUntil(lambda: len(panel.plot.steps) >= 2, timeout=120_000)
    panel.stop()
    assert panel.stop_btn.text() == "Stopping…" and not panel.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: panel.task is None and not d.state.busy, timeout=60_000)
    assert panel.last_reason == "cancelled"
    assert panel.last_done.best_step >= 2 and (tmp_path / "stopped.pt").is_file()
    assert d.state.model is not None and d.state.model_label == "stopped.pt"
    assert panel.train_btn.isEnabled() and panel.stop_btn.text() == "Stop"


def test_training_refusals_are_one_line_in_the_dock(dock, paired, tmp_path):
    viewer, d = dock
    panel = d.train
    assert not panel.train()
    assert "input images" in d.message.text()
    _fill(panel, paired, tmp_path / "x.pt", steps=5)
    panel.form.set_value("patch", 30)  # not a multiple of 2**4
    assert not panel.train()
    assert "patch 30 px must be a multiple of 16" in d.message.text()
    panel.form.set_value("patch", 32)
    panel.form.set_value("lr", 5.0)  # out of the option's range
    assert not panel.train()
    assert "lr" in d.message.text() and "\n" not in d.message.text()
    assert not d.state.busy and panel.train_btn.isEnabled()


# ---------------------------------------------------------------- devices
@pytest.fixture
def two_gpus(monkeypatch):
    """torch believes it has two CUDA devices (names and memory)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(total_memory=(16 + 8 * i) * 2**30))
    freed: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(
        torch.cuda.current_device()))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return freed


def test_devices_are_listed_by_index_and_name(two_gpus, monkeypatch):
    from napari_lmadda.widgets import worker

    monkeypatch.delenv("LMADDA_DEVICE", raising=False)
    [msg] = list(worker.device_messages())
    names = [dev.name for dev in msg.devices]
    assert names[:2] == ["cuda:0", "cuda:1"] and names[-1] == "cpu"
    assert msg.devices[1].label == "cuda:1 · Fake GPU 1 (24 GB)"
    assert msg.auto == "cuda:0"


def test_device_menu_and_the_device_in_use(dock, two_gpus, tiny_model_path, qtbot,
                                           monkeypatch):
    from napari_lmadda.widgets import worker

    viewer, d = dock
    combo = d.adapt.device_combo
    combo.refresh()
    qtbot.waitUntil(lambda: combo.task is None and combo.count() == 4, timeout=30_000)
    items = [combo.itemText(i) for i in range(combo.count())]
    assert items[0] == "auto (cpu)"  # the tests force the CPU (LMADDA_DEVICE=cpu)
    assert items[1:3] == ["cuda:0 · Fake GPU 0 (16 GB)", "cuda:1 · Fake GPU 1 (24 GB)"]
    combo.set_device("cuda:1")
    assert combo.device() == "cuda:1"
    assert combo.describe("cuda:1") == "cuda:1 · Fake GPU 1 (24 GB)"
    # during a run the status names the device in use, as the menu does
    from napari_lmadda.adapt.events import Started

    d.adapt._on_event(Started("lmadda", (10,), 100, 1234, "cuda:1", "eval", "gap"))
    assert "on cuda:1 · Fake GPU 1 (24 GB)" in d.adapt.status.text()
    del worker


def test_gpu_memory_is_freed_after_a_run_and_a_stop(two_gpus, monkeypatch):
    import torch

    from napari_lmadda.adapt import engine
    from napari_lmadda.adapt.events import Finished, Started, Step
    from napari_lmadda.widgets import worker

    moved: list[str] = []
    model = SimpleNamespace(to=lambda dev: moved.append(str(dev)))
    result = SimpleNamespace(model=model)

    def fake_iter_adapt(*args, cancel, **kwargs):
        yield Started("lmadda", (2,), 10, 1, "cuda:1", "eval", "gap")
        for step in range(1, 11):
            if cancel():
                break
            yield Step(step, 10, 0.5, 0.5, 0.0, 0.5, True, 0.1, 1.0)
        yield Finished(result)

    monkeypatch.setattr(engine, "iter_adapt", fake_iter_adapt)
    monkeypatch.setattr(worker, "_resolved", lambda device: "cuda:1")
    current: list[int] = []
    monkeypatch.setattr(torch.cuda, "device", lambda index: _Remember(current, index))
    config = SimpleNamespace(device="cuda:1")
    # a run to its end: the model comes back to the CPU, cuda:1's cache is emptied
    events = list(worker.adapt_messages(None, None, None, method="lmadda", layers=(2,),
                                        config=config, cancel=lambda: False))
    assert isinstance(events[-1], Finished) and moved == ["cpu"]
    assert two_gpus and current == [1]
    # a stopped run: the same
    stop = iter([False, False, True])
    moved.clear(), two_gpus.clear(), current.clear()
    events = list(worker.adapt_messages(None, None, None, method="lmadda", layers=(2,),
                                        config=config, cancel=lambda: next(stop, True)))
    assert sum(isinstance(e, Step) for e in events) == 2
    assert moved == ["cpu"] and two_gpus and current == [1]
    # an abandoned run (the dock closed mid-run): freed when the generator is closed
    two_gpus.clear()
    gen = worker.adapt_messages(None, None, None, method="lmadda", layers=(2,),
                                config=config, cancel=lambda: False)
    next(gen)
    gen.close()
    assert two_gpus


class _Remember:
    """``with torch.cuda.device(i)`` that records ``i``."""

    def __init__(self, seen: list[int], index: int) -> None:
        self.seen, self.index = seen, index

    def __enter__(self) -> None:
        self.seen.append(self.index)

    def __exit__(self, *exc: object) -> None:
        return None
