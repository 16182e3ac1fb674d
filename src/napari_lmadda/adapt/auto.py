"""``method="auto"``: try a few adaptations under one budget and keep one only if it clearly helps.

A microscopist without labels cannot tell which method or layer to trust. Auto answers
with measurements on the unlabeled images alone:

1. **Is there a shift at all?** The layer recommendation's permutation test
   (:func:`~napari_lmadda.adapt.recommend.recommend_layer`): when the new images are no
   further from the source images than two sets of source images are from each other, the
   answer is "no adaptation needed" and nothing is trained.
2. **Candidates.** No adaptation, AdaBN, and LM-ADDA at the layers the recommendation ranks
   highest (``AUTO_LAYERS`` of them, or the ``layers`` given), each a normal run of the
   engine (:func:`~napari_lmadda.adapt.engine.iter_adapt`) with its own samplers, so a
   candidate trains exactly as it would alone.
3. **One score for all.** Every checkpoint of every candidate is measured by the same
   label-free score on the same fixed patches (:class:`~napari_lmadda.adapt.scoring.
   FixedProbe`, G's side computed once): see :data:`SCORE` and ``docs/benchmarks.md`` for
   the validation that chose it.
4. **Shared budget.** The LM-ADDA candidates run in rungs (successive halving): all of them
   to a third of ``config.steps``, the better half on to two thirds, the best to the end.
   Training steps never exceed ``BUDGET`` times one run of ``config.steps``.
5. **Do no harm.** The best-scoring state is kept only when its score beats the source
   model's by more than the score's own noise (``margin``, measured on two disjoint sets of
   source patches); otherwise auto keeps the source model and says why.

The result is an :class:`AutoResult` (an :class:`~napari_lmadda.adapt.events.AdaptResult`
with a typed :class:`AutoReport`) whose ``message`` says in plain words which candidate won
and why.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..models.unet import UNetGenerator
from .config import AdaptConfig
from .events import AdaptResult, Evaluated, Event, Finished, Started, Step, StopReason

__all__ = ["NAME", "run", "AutoReport", "AutoResult", "CandidateReport", "halving_plan",
           "AUTO_LAYERS", "BUDGET", "SCORE"]

NAME = "auto"
#: LM-ADDA candidates when no layers are given: the recommendation's top layers
AUTO_LAYERS = 3
#: training steps of all candidates together, in units of one run of ``config.steps``
BUDGET = 3.0
#: the label-free score every candidate is judged by (lower is better)
SCORE = "out_w2"
#: how many noise floors a candidate must beat the source model by
MARGIN_FLOORS = 2.0
#: ... and at least this fraction of the source model's score
MARGIN_FRACTION = 0.1
#: patches of the fixed probe per domain, and their seeds (offsets of ``config.seed``)
PROBE_PATCHES = 32
_SEEDS = {"source": 10_000, "target": 20_000, "floor": 30_000}


@dataclass
class CandidateReport:
    """What one candidate did."""

    name: str
    method: str
    layer: int | None
    score: float
    best_step: int
    steps_run: int
    stopped: str  # "finished", "dropped after rung N", "cancelled", "diverged"


@dataclass
class AutoReport:
    """Why auto kept what it kept (also as plain words in the result's ``message``).

    Attributes
    ----------
    winner : str
        The kept candidate (``"none"`` = the source model unchanged).
    adapted : bool
        Whether the kept model differs from the source model.
    reason : str
        One or two sentences a microscopist can act on.
    score_name : str
        The label-free score used (:data:`SCORE`).
    source_score, floor, margin : float
        The source model's score on the new images, the score between two sets of source
        images (its noise), and the improvement a candidate had to exceed.
    candidates : list of CandidateReport
    recommendation : str
        The layer recommendation's one-line summary.
    steps_used, steps_budget : int
        Training steps run by all candidates together, and the most allowed.
    seconds : float
    """

    winner: str
    adapted: bool
    reason: str
    score_name: str
    source_score: float
    floor: float
    margin: float
    candidates: list[CandidateReport] = field(default_factory=list)
    recommendation: str = ""
    steps_used: int = 0
    steps_budget: int = 0
    seconds: float = 0.0


@dataclass
class AutoResult(AdaptResult):
    """An :class:`AdaptResult` with auto's :class:`AutoReport`."""

    report: AutoReport | None = None


def halving_plan(n: int, steps: int, eval_every: int) -> list[tuple[int, int]]:
    """Rungs of successive halving: ``[(end_step, candidates_kept_after), ...]``.

    ``n`` candidates run to the first rung's end step; the better ``ceil(n / 2)`` go on to the
    next; the last rung ends at ``steps`` with one candidate. Rung ends are multiples of
    ``eval_every`` (a candidate is judged at its evaluations).

    Examples
    --------
    >>> halving_plan(3, 1200, 100)
    [(400, 2), (800, 1), (1200, 1)]
    """
    if n < 1:
        return []
    rungs, alive = [], n
    while alive > 1:
        alive = math.ceil(alive / 2)
        rungs.append(alive)
    k = len(rungs) + 1
    ends = [max(eval_every, round(steps * (i + 1) / k / eval_every) * eval_every)
            for i in range(k - 1)] + [steps]
    return list(zip(ends, [*rungs, 1]))


def plan_steps(n: int, steps: int, eval_every: int) -> int:
    """Training steps the plan of :func:`halving_plan` runs in total."""
    total, prev, alive = 0, 0, n
    for end, kept in halving_plan(n, steps, eval_every):
        total += alive * (end - prev)
        prev, alive = end, kept
    return total


def _dataset_or(sampler: Any) -> Any:
    """The dataset behind a plain patch sampler (a fresh sampler per candidate), else itself."""
    from ..data.datasets import PatchSampler

    if isinstance(sampler, PatchSampler) and not sampler.paired and not sampler.augment:
        return sampler.dataset
    return sampler


def _probe_patches(sampler: Any, n: int, seed: int) -> Any:
    from .sampling import fixed_batch

    return fixed_batch(sampler, n, seed)


class _Candidate:
    """One LM-ADDA run driven step by step, with its best state by the auto score."""

    def __init__(self, name: str, layer: int, gen: Iterator[Event]) -> None:
        self.name, self.layer, self.gen = name, layer, gen
        self.score, self.best_step, self.best_state = math.inf, 0, None
        self.steps, self.done, self.stopped = 0, False, ""

    def close(self, why: str) -> None:
        self.gen.close()
        self.done, self.stopped = True, why


def run(
    model: UNetGenerator,
    source: Any,
    target: Any,
    *,
    layers: tuple[int, ...] = (),
    config: AdaptConfig,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable | None = None,
    run_state: Any = None,
) -> Iterator[Event]:
    """Run the candidates of the module docstring and keep one (``run_state`` is ignored).

    Parameters
    ----------
    model : UNetGenerator
        The source model G (unchanged).
    source, target : sampler
        Unlabeled source and new-microscope patches (as :func:`iter_adapt` passes them).
    layers : tuple of int
        LM-ADDA candidate layers; empty = the recommendation's top :data:`AUTO_LAYERS`.
    config : AdaptConfig
        Settings of every LM-ADDA candidate; ``steps`` is the length of the longest one.
    cancel : callable, optional
        Stops the run; the best candidate so far is judged and kept (with the guard).
    monitor : callable, optional
        Passed on to every LM-ADDA candidate (benchmarks log ground truth with it).
    """
    from ..devices import resolve_device
    from .engine import iter_adapt
    from .recommend import recommend_layer
    from .scoring import FixedProbe

    t0 = time.perf_counter()
    cfg = config
    device = resolve_device(cfg.device)
    src_data, tgt_data = _dataset_or(source), _dataset_or(target)
    stop = cancel or (lambda: False)

    # 1. is there a shift, and where
    rec = recommend_layer(model, src_data, tgt_data, n_patches=PROBE_PATCHES,
                          patch_size=cfg.patch_size, probe_steps=0, device=str(device),
                          seed=cfg.seed)
    cand_layers = tuple(layers) or tuple(rec.ranking[:AUTO_LAYERS])
    plan = halving_plan(len(cand_layers), cfg.steps, cfg.eval_every)
    budget = int(BUDGET * cfg.steps)
    total = plan_steps(len(cand_layers), cfg.steps, cfg.eval_every) if rec.layer else 0
    yield Started(NAME, cand_layers, total, 0, str(device), cfg.bn_mode, SCORE)

    # 2. the fixed probe (G's side once) and the score's noise floor
    n = model.num_layers
    ps = _probe_patches(source, PROBE_PATCHES, cfg.seed + _SEEDS["source"])
    pt = _probe_patches(target, PROBE_PATCHES, cfg.seed + _SEEDS["target"])
    pf = _probe_patches(source, PROBE_PATCHES, cfg.seed + _SEEDS["floor"])
    probe = FixedProbe.build(model, ps, pt, layers=(n,), device=device)
    floor = FixedProbe.build(model, ps, pf, layers=(n,), device=device).scores(
        model, tta=False)[SCORE]
    src_score = probe.scores(model, tta=False)[SCORE]
    margin = max(MARGIN_FLOORS * floor, MARGIN_FRACTION * src_score)
    reports = [CandidateReport("none", "none", None, src_score, 0, 0, "finished")]
    best = {"name": "none", "score": src_score, "model": None, "layers": ()}

    def offer(name: str, score: float, get_model: Callable[[], Any], lays: tuple) -> bool:
        if score < best["score"]:
            best.update(name=name, score=score, model=get_model(), layers=lays)
            return True
        return False

    def finish(reason: StopReason) -> Iterator[Event]:
        yield _finished(model, best, reports, rec, src_score, floor, margin, reason, cfg,
                        steps_used=sum(r.steps_run for r in reports), budget=budget,
                        seconds=time.perf_counter() - t0)

    if rec.layer is None:
        yield from finish(StopReason.COMPLETED)
        return

    # 3. AdaBN (seconds)
    if not stop():
        res = None
        for ev in iter_adapt(model, src_data, tgt_data, method="adabn", config=cfg,
                             cancel=cancel):
            if isinstance(ev, Finished):
                res = ev.result
        if res is not None and res.reason is StopReason.COMPLETED:
            s = probe.scores(res.model, tta=False)[SCORE]
            offer("AdaBN", s, lambda: res.model, ())
            reports.append(CandidateReport("AdaBN", "adabn", None, s, res.best_step, 0,
                                           "finished"))

    # 4. LM-ADDA candidates in rungs
    cands: list[_Candidate] = []
    global_step = [0]

    def make(layer: int) -> _Candidate:
        c: _Candidate

        def score_it(step: int, net: UNetGenerator) -> dict[str, float]:
            extra = monitor(step, net) if monitor is not None else {}
            s = src_score if step == 0 else probe.scores(net, tta=False)[SCORE]
            if s < c.score:
                c.score, c.best_step = s, step
                c.best_state = copy.deepcopy(net.state_dict())
            return {**extra, "auto_score": s}

        gen = iter_adapt(model, src_data, tgt_data, method="lmadda", layers=layer, config=cfg,
                         cancel=cancel, monitor=score_it)
        c = _Candidate(f"LM-ADDA layer {layer}", layer, gen)
        return c

    cands = [make(la) for la in cand_layers]
    t_train = time.perf_counter()
    cancelled = False
    for end, keep in plan:
        for c in cands:
            if c.done or cancelled:
                continue
            for ev in c.gen:
                if isinstance(ev, Step):
                    c.steps = ev.step
                    global_step[0] += 1
                    el = time.perf_counter() - t_train
                    yield Step(global_step[0], total, ev.loss_d, ev.loss_g, ev.loss_src,
                               ev.d_acc, ev.g_updated, el,
                               el / global_step[0] * max(0, total - global_step[0]))
                elif isinstance(ev, Evaluated):
                    score = ev.metrics.get("auto_score", math.inf)
                    improved = score < best["score"]
                    yield Evaluated(global_step[0], score, improved,
                                    {**ev.metrics, "layer": float(c.layer)})
                    if ev.step >= end:
                        break
                elif isinstance(ev, Finished):
                    c.done = True
                    c.stopped = {StopReason.CANCELLED: "cancelled",
                                 StopReason.DIVERGED: "diverged"}.get(ev.result.reason,
                                                                      "finished")
                    cancelled = ev.result.reason is StopReason.CANCELLED
                    break
        alive = sorted((c for c in cands if not c.done), key=lambda c: c.score)
        for c in alive[keep:]:
            c.close(f"dropped at step {c.steps}")
        if cancelled or stop():
            cancelled = True
            break
    for c in cands:
        if not c.done:
            c.close("finished" if c.steps >= cfg.steps else "cancelled")
        reports.append(CandidateReport(c.name, "lmadda", c.layer, c.score, c.best_step,
                                       c.steps, c.stopped))
        if c.best_state is not None:
            def load(c: _Candidate = c) -> UNetGenerator:
                net = copy.deepcopy(model)
                net.load_state_dict(c.best_state)
                return net.eval().requires_grad_(False)
            offer(c.name, c.score, load, (c.layer,))
    yield from finish(StopReason.CANCELLED if cancelled else StopReason.COMPLETED)


def _finished(model, best, reports, rec, src_score, floor, margin, reason, cfg, *,
              steps_used, budget, seconds) -> Finished:
    """Apply the do-no-harm guard and word the outcome."""
    gain = src_score - best["score"]
    adapted = best["name"] != "none" and gain > margin
    if rec.layer is None:
        why = ("no adaptation needed: the new images look like the source images to the "
               "model (they are no further from them than two sets of source images are "
               "from each other), so nothing was trained")
    elif not adapted:
        runner = best["name"] if best["name"] != "none" else "no candidate"
        why = (f"no adaptation kept: {runner} brought the predicted stains on the new images "
               f"only {max(gain, 0):.3g} closer to what the model predicts on source images "
               f"(score {src_score:.3g} -> {best['score']:.3g}), not clearly more than the "
               f"difference between two sets of source images ({floor:.3g}; needed "
               f"{margin:.3g}); the source model is kept unchanged")
    else:
        pct = 100 * gain / max(src_score, 1e-12)
        why = (f"kept {best['name']}: its predicted stains on the new images are distributed "
               f"most like the source model's on source images (score {src_score:.3g} -> "
               f"{best['score']:.3g}, {pct:.0f}% closer; two sets of source images differ by "
               f"{floor:.3g}); the other candidates scored "
               + ", ".join(f"{r.name} {r.score:.3g}" for r in reports
                           if r.name not in (best["name"], "none")))
    if reason is StopReason.CANCELLED:
        why = "stopped early; " + why
    out = best["model"] if adapted else copy.deepcopy(model).eval()
    out.meta = {**getattr(model, "meta", {})}
    report = AutoReport(best["name"] if adapted else "none", adapted, why, SCORE, src_score,
                        floor, margin, reports, rec.summary(), steps_used, budget, seconds)
    winner = next(r for r in reports if r.name == report.winner)
    lays = (winner.layer,) if winner.layer is not None else ()
    prov = {"method": NAME, "winner": report.winner, "winner_method": winner.method,
            "layers": list(lays), "best_step": winner.best_step, "score": SCORE,
            "criterion_value": winner.score, "stop_reason": reason.value,
            "candidates": [vars(r) for r in reports], "config": cfg.to_dict()}
    if reason is StopReason.COMPLETED and not report.candidates[1:] and rec.layer is not None:
        raise ConfigError("auto ran no candidate")  # pragma: no cover - a bug, not input
    return Finished(AutoResult(out, NAME, lays, winner.best_step, SCORE, reason, [],
                               steps_used, why, prov, report=report))
