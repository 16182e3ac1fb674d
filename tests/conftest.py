"""Shared fixtures: CPU only, one torch thread, a tiny source model (in memory and as a file)
and tiny unlabeled domains."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _force_cpu(monkeypatch):
    monkeypatch.setenv("LMADDA_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a thread pool; one thread avoids oversubscription."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A small untrained 2-marker UNet (5 down blocks, ngf 8) saved as a project model file."""
    from napari_lmadda.models import UNetGenerator, save_model

    model = UNetGenerator(num_downs=5, ngf=8, out_channels=2)
    model.meta = {"channel_names": ["DAPI", "CD29"]}
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_model(model, path, provenance={"source": "test fixture"})
    return path


@pytest.fixture(scope="module")
def source_model():
    """A tiny 2-marker UNet (5 down blocks, ngf 8) with non-trivial BatchNorm statistics, as
    in a trained model (a fresh BatchNorm's would hide what AdaBN and bn_mode change)."""
    import torch

    from napari_lmadda.models import UNetGenerator

    torch.manual_seed(0)
    m = UNetGenerator(num_downs=5, ngf=8, out_channels=2)
    g = torch.Generator().manual_seed(1)
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    m.meta = {"channel_names": ["DAPI", "CD29"], "target_range": [-0.05, 1.05]}
    return m.eval()


@pytest.fixture(scope="module")
def domains():
    """Three tiny unlabeled source fields and three overexposed target fields (64 px)."""
    from napari_lmadda.data.synthetic import make_domain

    src = make_domain(3, size=64, seed=0)["input"]
    tgt = make_domain(3, size=64, seed=1, shift="overexpose", magnitude=2.0)["input"]
    return src, tgt


@pytest.fixture
def errors(monkeypatch):
    """Capture napari error notifications instead of showing them."""
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: shown.append(str(msg)))
    return shown


@pytest.fixture
def dock(make_napari_viewer):
    """A napari viewer (not shown) and the plugin's dock in it (napari tests only)."""
    from widget_helpers import open_dock

    viewer = make_napari_viewer()
    return viewer, open_dock(viewer)
