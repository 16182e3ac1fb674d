import pickle

import pytest
import torch

from napari_lmadda.errors import CheckpointError, ConfigError
from napari_lmadda.models import UNetConfig, UNetGenerator, load_model, read_checkpoint, save_model
from napari_lmadda.models.discriminator import LayerDiscriminator, n_strided
from napari_lmadda.models.pix2pix import (
    block_prefix,
    detect_pix2pix_config,
    flat_to_pix2pix,
    pix2pix_to_flat,
)
from pix2pix_reference import NestedUnet


def randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("num_downs,size", [(5, 32), (6, 64), (7, 128)])
def test_every_layer_tap_shape(num_downs, size):
    m = UNetGenerator(num_downs=num_downs, ngf=8, in_channels=1, out_channels=2).eval()
    x = torch.randn(2, 1, size, size)
    info = m.describe_layers(size)
    assert [i.index for i in info] == list(range(1, 2 * num_downs + 1))
    taps = m.forward_taps(x, range(1, m.num_layers + 1))
    for i in info:
        assert taps[i.index].shape == (2, i.channels, i.height, i.width), i
    # bottleneck is 1x1 at size == 2**num_downs, output is full size with out_channels
    assert info[num_downs - 1].height == size // 2**num_downs
    assert info[-1].channels == 2 and info[-1].height == size


def test_upto_last_layer_equals_full_forward_and_partial_taps_agree():
    torch.manual_seed(0)
    m = UNetGenerator(num_downs=6, ngf=8).eval()
    randomize_bn(m)
    x = torch.randn(3, 1, 64, 64)
    full = m(x)
    assert torch.equal(m(x, upto=m.num_layers), full)
    all_taps = m.forward_taps(x, range(1, 13))
    for layer in (1, 4, 6, 7, 11):
        assert torch.allclose(m(x, upto=layer), all_taps[layer], atol=1e-6)


def test_encoder_tap_does_not_run_decoder():
    m = UNetGenerator(num_downs=5, ngf=8).eval()
    calls = []
    for i, up in enumerate(m.up):
        up.register_forward_hook(lambda *a, i=i: calls.append(i))
    m(torch.randn(1, 1, 32, 32), upto=3)
    assert calls == []
    m(torch.randn(1, 1, 32, 32), upto=7)
    assert calls == [0, 1]


def test_layer_out_of_range_and_bad_input_are_clear():
    m = UNetGenerator(num_downs=5, ngf=8)
    with pytest.raises(ConfigError, match="layers 1..10"):
        m(torch.randn(1, 1, 32, 32), upto=11)
    with pytest.raises(ConfigError, match="multiple of 32"):
        m(torch.randn(1, 1, 48, 40))
    with pytest.raises(ConfigError, match="input channel"):
        m(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("num_downs", [5, 7])
def test_pix2pix_state_dict_loads_and_reproduces_outputs(tmp_path, norm, num_downs):
    torch.manual_seed(1)
    ref = NestedUnet(1, 2, num_downs, ngf=8, norm=norm, use_dropout=True).eval()
    randomize_bn(ref)
    sd = ref.state_dict()
    # key layout from REFERENCE.md
    assert f"{block_prefix(2)}1.weight" in sd and "model.model.3.bias" in sd
    cfg = detect_pix2pix_config(sd)
    assert (cfg.num_downs, cfg.ngf, cfg.in_channels, cfg.out_channels, cfg.norm) == (
        num_downs,
        8,
        1,
        2,
        norm,
    )
    path = tmp_path / "latest_net_G.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, path)  # DataParallel prefix
    m = load_model(path)
    x = torch.randn(2, 1, 2**num_downs, 2**num_downs)
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x.clone()), atol=1e-5)
    # and back: our weights exported under pix2pix names load into the nested net
    back = flat_to_pix2pix(m.state_dict(), m.config)
    assert set(back) == set(sd)


def test_pix2pix_unet256_key_shapes_match_reference_counts():
    ref = NestedUnet(1, 1, 8, ngf=64, norm="batch")
    n = sum(p.numel() for p in ref.parameters())
    ours = UNetGenerator(num_downs=8, ngf=64)
    assert sum(p.numel() for p in ours.parameters()) == n
    assert round(n / 1e6, 1) == 54.4  # REFERENCE.md: 54.4M parameters


def test_pix2pix_with_leftover_keys_is_refused():
    sd = NestedUnet(1, 1, 5, ngf=8).state_dict()
    cfg = detect_pix2pix_config(sd)
    sd["model.model.9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="do not fit"):
        pix2pix_to_flat(sd, cfg)


def test_project_checkpoint_roundtrip_with_provenance(tmp_path):
    torch.manual_seed(0)
    m = UNetGenerator(num_downs=5, ngf=8, out_channels=2).eval()
    randomize_bn(m)
    m.meta = {"channel_names": ["DAPI", "CD29"]}
    p = save_model(m, tmp_path / "m.pt", provenance={"data": "synthetic", "steps": 3})
    m2 = load_model(p)
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(m(x), m2(x))
    assert m2.meta["channel_names"] == ["DAPI", "CD29"]
    assert m2.meta["provenance"]["data"] == "synthetic"
    assert "napari-lmadda" in m2.meta["provenance"]["library"]
    cfg, sd, meta = read_checkpoint(p)
    assert cfg == m.config
    # half precision storage halves the size and loads back as float32
    ph = save_model(m, tmp_path / "h.pt", half=True)
    assert ph.stat().st_size < 0.7 * p.stat().st_size
    mh = load_model(ph)
    assert next(mh.parameters()).dtype == torch.float32
    assert torch.allclose(mh(x), m(x), atol=2e-2)


def test_bad_model_files_get_clear_errors(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch model file.*text"):
        load_model(tmp_path / "text.pt")
    good = save_model(UNetGenerator(num_downs=5, ngf=8), tmp_path / "g.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "trunc.pt")
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither"):
        load_model(tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a model file"):
        load_model(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_checkpoint_for_other_architecture_is_refused(tmp_path):
    m = UNetGenerator(num_downs=5, ngf=8)
    p = save_model(m, tmp_path / "m.pt")
    obj = torch.load(p, weights_only=True)
    obj["arch"]["ngf"] = 16
    torch.save(obj, tmp_path / "lie.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(tmp_path / "lie.pt")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch EVIL_RAN",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as fh:
        torch.save({"state_dict": _Evil()}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        load_model("evil.pt")
    assert not (tmp_path / "EVIL_RAN").exists()
    # plain pickle file too
    with open("evil.pkl", "wb") as fh:
        pickle.dump(_Evil(), fh)
    with pytest.raises(CheckpointError):
        load_model("evil.pkl")
    assert not (tmp_path / "EVIL_RAN").exists()


@pytest.mark.parametrize(
    "size,expected", [(1, 0), (4, 0), (16, 0), (32, 1), (64, 2), (128, 3), (1024, 3)]
)
def test_discriminator_depth_fits_tap(size, expected):
    assert n_strided(size) == expected
    d = LayerDiscriminator(16, size, ndf=8, spectral_norm=True)
    out = d(torch.randn(2, 16, size, size))
    assert out.shape[:2] == (2, 1) and out.shape[-1] == max(1, size // 2**expected)


def test_config_validation():
    with pytest.raises(ConfigError):
        UNetConfig(norm="group")
    with pytest.raises(ConfigError):
        UNetConfig(num_downs=1)
