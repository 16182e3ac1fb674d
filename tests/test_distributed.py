"""Multi-process adaptation (2 CPU processes over gloo), batch sharding and mixed precision."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from napari_lmadda.adapt import distributed
from napari_lmadda.adapt.config import AdaptConfig
from napari_lmadda.adapt.engine import adapt
from napari_lmadda.adapt.events import Step
from napari_lmadda.adapt.sampling import ShardedSampler, shard_sampler
from napari_lmadda.data.datasets import ArrayDataset, PatchSampler
from napari_lmadda.data.synthetic import make_domain
from napari_lmadda.errors import ConfigError
from napari_lmadda.models import read_checkpoint

TIMEOUT = 300  # generous: the test machine's two cores are shared with long benchmarks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def domains():
    src = make_domain(3, size=64, seed=0)
    tgt = make_domain(3, size=64, seed=1, shift="overexpose", magnitude=2.0)
    return src, tgt


# ------------------------------------------------------------------ sharding
@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("world", [2, 4])
def test_rank_shards_concatenate_to_the_single_process_batch(augment, world):
    rng = np.random.default_rng(0)
    # planes of several sizes, two smaller than the patch (reflect-padded by the sampler)
    planes = [rng.random((h, w), dtype=np.float32)
              for h, w in [(40, 50), (20, 36), (64, 33), (28, 28), (90, 70)]]
    ds = ArrayDataset(planes)
    single = PatchSampler(ds, 32, 8, seed=5, augment=augment)
    ranks = [ShardedSampler(PatchSampler(ds, 32, 8, seed=5, augment=augment), r, world)
             for r in range(world)]
    for _ in range(4):  # the streams stay in step over several batches
        want = single.sample()
        parts = [s.sample() for s in ranks]
        assert all(p.shape == (8 // world, 1, 32, 32) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), want)


def test_rank_shards_of_an_image_folder_read_only_their_own_planes(tmp_path):
    from napari_lmadda.data.datasets import ImageFolder
    from napari_lmadda.data.synthetic import write_domain

    write_domain(tmp_path / "d", 4, size=48, seed=0)
    single = PatchSampler(ImageFolder(tmp_path / "d/input"), 32, 4, seed=1)
    folders = [ImageFolder(tmp_path / "d/input", cache_size=0) for _ in range(2)]
    ranks = [ShardedSampler(PatchSampler(f, 32, 4, seed=1), r, 2) for r, f in enumerate(folders)]
    for _ in range(3):
        np.testing.assert_array_equal(np.concatenate([s.sample() for s in ranks]),
                                      single.sample())
    # plane shapes come from the file headers: each rank decodes only its 2 patches' planes
    # per batch (uncached), not the 4 of the global batch
    assert [f.cache_info()["misses"] for f in folders] == [3 * 2, 3 * 2]


def test_sampler_without_replay_is_sampled_in_full_and_sliced():
    class Counter:  # any object with sample(): every rank draws the same batch
        def __init__(self):
            self.n = 0

        def sample(self):
            self.n += 1
            return np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1) + 10 * self.n

    a, b = shard_sampler(Counter(), 0, 2), shard_sampler(Counter(), 1, 2)
    np.testing.assert_array_equal(np.concatenate([a.sample(), b.sample()]).ravel(),
                                  np.arange(6) + 10)
    one = Counter()
    assert shard_sampler(one, 0, 1) is one


def test_global_batch_that_does_not_split_evenly_is_refused():
    ds = ArrayDataset([np.zeros((32, 32), np.float32)])
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        ShardedSampler(PatchSampler(ds, 32, 3), 0, 2)


def test_helpers_are_no_ops_without_a_process_group():
    assert not distributed.is_active() and distributed.world_size() == 1
    assert distributed.is_main() and distributed.broadcast_object({"a": 1}) == {"a": 1}
    x = torch.arange(10.0)
    assert torch.equal(distributed.global_std(x), x.std())
    assert distributed.mean_scalars([1.0, float("nan")], torch.device("cpu"))[0] == 1.0
    assert distributed.any_flag(True, torch.device("cpu"))


# ------------------------------------------------------------------ 2 processes over gloo
def run_config(**kw) -> AdaptConfig:
    # no EMA: the kept weights are G' itself, so the comparison sees every update
    base = dict(steps=6, batch_size=4, patch_size=32, eval_every=3, eval_patches=4, ndf=8,
                device="cpu", criterion="last", lr_g=1e-4, lr_d=1e-4, ema_decay=0.0)
    return AdaptConfig(**{**base, **kw})


def summarise(result, events) -> dict:
    steps = [e for e in events if isinstance(e, Step)]
    return {
        "state": {k: v.clone() for k, v in result.model.state_dict().items()},
        "losses": [[e.loss_d, e.loss_g, e.loss_src, e.d_acc] for e in steps],
        "gaps": [h["gap"] for h in result.history],
        "processes": result.provenance["processes"],
    }


def _worker(rank: int, world: int, ports: tuple[int, int], model, src, tgt,
            out_dir: str) -> None:
    """One rank: adapt, record what it saw, then check the group is gone after an error."""
    import faulthandler

    import torch.distributed as dist

    faulthandler.dump_traceback_later(TIMEOUT - 30, exit=True)  # a hang shows its stacks
    torch.set_num_threads(1)
    port = ports[0]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "LMADDA_DEVICE": "cpu"})
    events = []
    result = adapt(model, src, tgt, method="lmadda", layers=3, config=run_config(),
                   callback=events.append)
    out = summarise(result, events)
    out["group_left"] = not dist.is_initialized()  # run_adversarial joined and left it
    # a second group needs its own port: a rank that gets here first must not find the
    # first group's store (still served by a slower rank 0)
    os.environ["MASTER_PORT"] = str(ports[1])
    try:  # a bad global batch: both ranks refuse it, and the group is left again
        adapt(model, src, tgt, method="lmadda", layers=3, config=run_config(batch_size=3))
        out["refused"] = False
    except ConfigError as exc:
        out["refused"] = "multiple of the number of processes" in str(exc)
    out["group_left_after_error"] = not dist.is_initialized()
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_gloo_processes_match_one_process(source_model, domains, tmp_path):
    import torch.multiprocessing as mp

    src, tgt = domains[0]["input"], domains[1]["input"]
    ports = (free_port(), free_port())
    ctx = mp.start_processes(_worker, args=(2, ports, source_model, src, tgt, str(tmp_path)),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-process run did not finish in time")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    events = []
    one = summarise(adapt(source_model, src, tgt, method="lmadda", layers=3,
                          config=run_config(), callback=events.append), events)

    assert r0["processes"] == r1["processes"] == 2 and one["processes"] == 1
    # the ranks stay in sync: identical weights, losses and criterion on both
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert r0["losses"] == r1["losses"] and r0["gaps"] == r1["gaps"]
    # ... and equal the single-process run up to float rounding: the union of the rank
    # batches is the single-process batch and the averaged gradients are its gradients.
    # Not bit-identical: the sums run in another order, and Adam turns rounding noise in
    # near-zero gradients into full-size steps, so differences grow with lr and steps
    # (loss_src, ~0.003, measures how far G' moved, so it carries the weights' difference)
    np.testing.assert_allclose(np.array(r0["losses"]), np.array(one["losses"]),
                               rtol=1e-4, atol=1e-5)
    # the criterion includes the source drift, again a measure of how far G' moved
    np.testing.assert_allclose(r0["gaps"], one["gaps"], rtol=2e-3)
    w0 = source_model.state_dict()
    keys = [k for k in w0 if w0[k].is_floating_point()]
    moved = sum(float((one["state"][k] - w0[k]).norm() ** 2) for k in keys) ** 0.5
    apart = sum(float((r0["state"][k] - one["state"][k]).norm() ** 2) for k in keys) ** 0.5
    assert moved > 1e-3  # training changed the weights ...
    assert apart < 0.05 * moved  # ... and both runs changed them the same way
    assert r0["group_left"] and r0["refused"] and r0["group_left_after_error"]
    assert r1["group_left"] and r1["refused"] and r1["group_left_after_error"]


def test_cli_under_torchrun_writes_one_model(tiny_model_path, tmp_path):
    from napari_lmadda.data.synthetic import write_domain

    write_domain(tmp_path / "src", 3, size=64, seed=0)
    write_domain(tmp_path / "tgt", 3, size=64, seed=1, shift="overexpose")
    out_dir = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "napari_lmadda", "adapt", "--model", str(tiny_model_path),
           "--source", str(tmp_path / "src/input"), "--target", str(tmp_path / "tgt/input"),
           "--layer", "3", "--out", str(out_dir / "a.pt"), "--steps", "4", "--eval-every", "2",
           "--batch", "4", "--patch", "32", "--device", "cpu"]
    env = {**os.environ, "LMADDA_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(out_dir)) == ["a.pt"]  # the model; the run state is removed
    assert proc.stdout.count("wrote ") == 1  # only rank 0 reports
    assert "x 2 processes" in proc.stdout
    _, _, meta = read_checkpoint(out_dir / "a.pt")
    assert meta["provenance"]["processes"] == 2


def test_ctrl_c_under_torchrun_stops_every_rank_and_saves_the_kept_state(tiny_model_path,
                                                                          tmp_path):
    import signal

    from napari_lmadda.data.synthetic import write_domain

    write_domain(tmp_path / "src", 2, size=64, seed=0)
    write_domain(tmp_path / "tgt", 2, size=64, seed=1, shift="overexpose")
    out = tmp_path / "out" / "a.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "napari_lmadda", "adapt", "--model", str(tiny_model_path),
           "--source", str(tmp_path / "src/input"), "--target", str(tmp_path / "tgt/input"),
           "--layer", "3", "--out", str(out), "--steps", "100000", "--eval-every", "2",
           "--batch", "2", "--patch", "32", "--device", "cpu"]
    env = {**os.environ, "LMADDA_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        seen = []
        deadline = time.monotonic() + TIMEOUT
        for line in proc.stdout:  # wait until the run has evaluated once after training
            seen.append(line)
            if line.startswith("step     2/") or time.monotonic() > deadline:
                break
        assert any(s.startswith("step     2/") for s in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does to torchrun
        rest, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(seen) + rest
    assert "stop reason: cancelled" in text, err[-2000:]
    assert text.count("wrote ") == 1
    # the kept state is saved, and the run state stays for --resume
    assert sorted(os.listdir(out.parent)) == ["a.pt", "a.pt.run"]
    _, _, meta = read_checkpoint(out)
    assert meta["provenance"]["stop_reason"] == "cancelled"
    assert meta["provenance"]["processes"] == 2


def test_methods_without_a_distributed_loop_are_refused_under_torchrun(tiny_model_path,
                                                                       tmp_path, monkeypatch,
                                                                       capsys):
    from napari_lmadda.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = main(["adapt", "--method", "adabn", "--model", str(tiny_model_path), "--source",
               str(tmp_path), "--target", str(tmp_path), "--out", str(tmp_path / "a.pt")])
    assert rc == 2
    assert "does not run on several processes" in capsys.readouterr().err


# ------------------------------------------------------------------ mixed precision
def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_bf16_autocast_on_cpu_follows_the_float32_run(source_model, domains):
    src, tgt = domains[0]["input"], domains[1]["input"]
    runs = {}
    for amp in ("off", "bf16"):
        events = []
        res = adapt(source_model, src, tgt, method="lmadda", layers=3,
                    config=run_config(amp=amp, steps=8, lr_g=1e-3, lr_d=1e-3),
                    callback=events.append)
        losses = np.array([[e.loss_d, e.loss_g] for e in events if isinstance(e, Step)])
        assert np.isfinite(losses).all() and len(losses) == 8
        runs[amp] = res
    w0 = source_model.state_dict()
    w32, w16 = runs["off"].model.state_dict(), runs["bf16"].model.state_dict()
    keys = [k for k in w0 if w0[k].is_floating_point()]
    moved = sum(float((w32[k] - w0[k]).norm() ** 2) for k in keys) ** 0.5
    apart = sum(float((w16[k] - w32[k]).norm() ** 2) for k in keys) ** 0.5
    assert moved > 1e-2  # training moved the weights
    assert apart < 0.25 * moved  # bf16 took (nearly) the float32 path

    # predictions of the adapted models on the target images: same answer, no Pearson drop
    x = torch.from_numpy(tgt[:, None].astype(np.float32))
    gt = np.stack([domains[1]["dapi"], domains[1]["cd29"]], axis=1)
    with torch.no_grad():
        p32, p16 = runs["off"].model(x).numpy(), runs["bf16"].model(x).numpy()
    assert pearson(p16, p32) > 0.999
    for c in range(gt.shape[1]):
        assert abs(pearson(p16[:, c], gt[:, c]) - pearson(p32[:, c], gt[:, c])) < 0.01


def test_fp16_on_the_cpu_is_refused(source_model, domains):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        adapt(source_model, domains[0]["input"], domains[1]["input"], method="lmadda",
              layers=3, config=run_config(amp="fp16"))


def test_amp_is_checked_and_recorded():
    with pytest.raises(ConfigError, match="amp must be one of"):
        AdaptConfig(amp="fp8")
    assert json.loads(json.dumps(AdaptConfig(amp="bf16").to_dict()))["amp"] == "bf16"


def test_cli_amp_fp16_on_the_cpu_is_one_clear_error(tiny_model_path, tmp_path, capsys):
    from napari_lmadda.cli import main
    from napari_lmadda.data.synthetic import write_domain

    write_domain(tmp_path / "d", 1, size=64, seed=0)
    rc = main(["adapt", "--model", str(tiny_model_path), "--source", str(tmp_path / "d/input"),
               "--target", str(tmp_path / "d/input"), "--layer", "3", "--out",
               str(tmp_path / "a.pt"), "--amp", "fp16", "--batch", "2", "--patch", "32",
               "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "fp16 needs a CUDA device" in err
    assert not (tmp_path / "a.pt").exists()
