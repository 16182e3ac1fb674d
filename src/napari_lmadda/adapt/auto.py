"""``method="auto"``: try a few adaptations under one budget and keep one only if it clearly helps.

A microscopist without labels cannot tell which method or layer to trust. Auto answers
with measurements on the unlabeled images alone:

1. **Is there a shift at all?** The layer recommendation's permutation test
   (:func:`~napari_lmadda.adapt.recommend.recommend_layer`, distances only): when the new
   images are no further from the source images than two sets of source images are from
   each other, the answer is "no adaptation needed" and nothing is trained.
2. **Candidates.** No adaptation, AdaBN, and LM-ADDA at the layers the recommendation ranks
   highest (:data:`AUTO_LAYERS` of them, or the ``layers`` given). Each LM-ADDA candidate is
   an ordinary run of the engine (:func:`~napari_lmadda.adapt.engine.iter_adapt`) with its
   own samplers, so it trains exactly as it would alone; auto only decides how far it runs.
3. **One score for every candidate** (:data:`SCORE`): ``out_q``, the distance between the
   distribution of the stains a candidate predicts on the new images and the distribution
   the source model predicts on source images, on fixed patches (G's side computed once,
   :class:`~napari_lmadda.adapt.scoring.FixedProbe`). It is measured at the output, the
   same place for every layer and method, so it compares them (the engine's ``gap`` cannot:
   it depends on the matched layer). ``docs/benchmarks.md`` has the validation that chose it.
4. **Shared budget.** The LM-ADDA candidates run in rungs (successive halving,
   :func:`halving_plan`): all to a third of ``config.steps``, the better half on to two
   thirds, the best to the end; each keeps its best checkpoint by the score. Training steps
   stay below :data:`BUDGET` times one run of ``config.steps``.
5. **Do no harm.** Candidates are taken in the order of their score; the first whose
   improvement over the source model survives a paired bootstrap over the patches
   (:func:`~napari_lmadda.adapt.scoring.paired_gain`: its lower 5 % bound is above 0) and
   is at least :data:`MIN_GAIN` of the source model's score is kept. The score favours
   AdaBN by construction, so AdaBN must also keep its predictions as stable under flips
   and rotations as the source model's (:data:`ADABN_TTA_MAX`) and beat the best LM-ADDA
   candidate by the same paired bootstrap (:data:`KEEP_ADABN`). When no candidate passes,
   the source model is kept.

The result is an :class:`AutoResult`: an :class:`~napari_lmadda.adapt.events.AdaptResult`
with a typed :class:`AutoReport`, whose ``message`` says in plain words what was kept and why.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LmaddaError
from ..models.unet import UNetGenerator
from .config import AdaptConfig
from .events import AdaptResult, Evaluated, Event, Finished, Started, Step, StopReason

__all__ = ["NAME", "run", "iter_auto", "AutoReport", "AutoResult", "CandidateReport",
           "halving_plan", "plan_steps", "decide", "format_report", "AUTO_LAYERS", "BUDGET",
           "SCORE"]

NAME = "auto"
#: LM-ADDA candidates when no layers are given: the recommendation's top layers
AUTO_LAYERS = 3
#: training steps of all candidates together may not exceed this many runs of config.steps
BUDGET = 3.0
#: the label-free score every candidate is judged by (lower is better)
SCORE = "out_q"
#: AdaBN is refused when its flip/rotation inconsistency exceeds the source model's by this
#: factor (bright field 1.66, where AdaBN hurt; 0.82-1.48 on 12 synthetic shifts where it
#: helped or did nothing; docs/benchmarks.md)
ADABN_TTA_MAX = 1.5
#: when auto may keep AdaBN. ``out_q`` favours AdaBN by construction (AdaBN matches the
#: statistics that shape the predicted stains' distribution, which the score reads):
#: ``"never"`` (1-2 Dec; the demo 0.692 -> 0.656 and 20 uint16 fields 0.752 -> 0.694 when
#: it was kept), ``"if-stable"`` (before 2 Dec: stable under flips and rotations,
#: :data:`ADABN_TTA_MAX`), ``"if-ahead"``: stable, *and* ahead of the best LM-ADDA
#: candidate by the paired bootstrap, not only of the source model (real Allen cases, where
#: "never" harmed: docs/benchmarks.md, "Auto"). It is always scored and shown.
KEEP_ADABN = "if-ahead"
_ADABN_RULES = ("never", "if-stable", "if-ahead")
#: a candidate must bring the score down by at least this fraction of the source model's
MIN_GAIN = 0.1
#: fixed patches per domain for the score
PROBE_PATCHES = 128
#: training steps of the recommendation's discriminator probe per layer
RECOMMEND_PROBE_STEPS = 60
_SEEDS = {"source": 10_000, "target": 20_000}


@dataclass
class CandidateReport:
    """What one candidate did and how it scored."""

    name: str
    method: str
    layer: int | None
    score: float
    best_step: int = 0
    steps_run: int = 0
    stopped: str = "finished"
    gain: float = math.nan
    gain_lower: float = math.nan
    note: str = ""
    #: AdaBN only: its score's lead over the best LM-ADDA candidate, and the lower bound
    lead: float = math.nan
    lead_lower: float = math.nan


@dataclass
class AutoReport:
    """Why auto kept what it kept (the same in plain words in the result's ``message``).

    Attributes
    ----------
    winner : str
        The kept candidate (``"none"`` = the source model unchanged).
    adapted : bool
        Whether the kept model differs from the source model.
    shift_detected : bool
        False when the recommendation saw no shift ("no adaptation needed").
    reason : str
        One or two sentences a microscopist can act on.
    score_name : str
        The label-free score (:data:`SCORE`).
    candidates : list of CandidateReport
        ``none`` first, then AdaBN and the LM-ADDA layers.
    recommendation : str
        The layer recommendation's one-line summary.
    steps_used, steps_budget : int
        Training steps run by all candidates together, and the most allowed.
    seconds : float
    """

    winner: str
    adapted: bool
    shift_detected: bool
    reason: str
    score_name: str = SCORE
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

    ``n`` candidates run to the first rung's end; the better ``ceil(n / 2)`` go on to the
    next; the last rung ends at ``steps`` with one candidate. Rung ends are multiples of
    ``eval_every`` (candidates are compared at their evaluations).

    Examples
    --------
    >>> halving_plan(3, 1200, 100)
    [(400, 2), (800, 1), (1200, 1)]
    >>> halving_plan(1, 1200, 100)
    [(1200, 1)]
    """
    if n < 1:
        return []
    kept, alive = [], n
    while alive > 1:
        alive = math.ceil(alive / 2)
        kept.append(alive)
    k = len(kept) + 1
    ends = [min(steps, max(eval_every, round(steps * (i + 1) / k / eval_every) * eval_every))
            for i in range(k - 1)] + [steps]
    return list(zip(ends, [*kept, 1]))


def plan_steps(n: int, steps: int, eval_every: int) -> int:
    """Training steps :func:`halving_plan` runs in total (e.g. 2400 for 3 x 1200)."""
    total, prev, alive = 0, 0, n
    for end, kept in halving_plan(n, steps, eval_every):
        total += alive * (end - prev)
        prev, alive = end, kept
    return total


def decide(candidates: Sequence[CandidateReport], *, source_tta: float = math.nan,
           tta: dict[str, float] | None = None,
           keep_adabn: str | bool = KEEP_ADABN) -> tuple[CandidateReport | None, str]:
    """The do-no-harm rule: the best-scoring candidate that clearly beats the source model.

    Parameters
    ----------
    candidates : sequence of CandidateReport
        Adapted candidates (not ``none``) with ``score``, ``gain`` and ``gain_lower`` set
        (and AdaBN's ``lead_lower`` for ``"if-ahead"``).
    source_tta, tta :
        Flip/rotation inconsistency of the source model and of the candidates by name
        (AdaBN's check, :data:`ADABN_TTA_MAX`).
    keep_adabn : {"never", "if-stable", "if-ahead"} or bool
        When AdaBN may be kept (:data:`KEEP_ADABN`); True = ``"if-stable"``, False =
        ``"never"``.

    Returns
    -------
    winner : CandidateReport or None
        None = keep the source model.
    why : str
        Why the better-scoring candidates before the winner were passed over.
    """
    rule = {True: "if-stable", False: "never"}.get(keep_adabn, keep_adabn)  # type: ignore
    if rule not in _ADABN_RULES:
        raise ValueError(f"keep_adabn must be one of {', '.join(_ADABN_RULES)}, "
                         f"not {keep_adabn!r}")
    passed_over = []
    for c in sorted(candidates, key=lambda c: c.score):
        if not (c.gain_lower > 0 and c.gain >= MIN_GAIN * (c.score + c.gain)):
            passed_over.append(f"{c.name} (not clearly better than the source model)")
            continue
        if c.method == "adabn" and rule == "never":
            c.note = "; ".join(filter(None, (  # its stability reading stays in the report
                c.note, "not kept: the label-free score favours AdaBN by construction, and "
                "where auto kept it in our measurements the stains got worse")))
            passed_over.append(f"{c.name} (its score cannot be trusted)")
            continue
        t = (tta or {}).get(c.name)
        if c.method == "adabn" and t is not None and t > ADABN_TTA_MAX * source_tta:
            c.note = (f"refused: its predictions change {t / source_tta:.1f}x as much as the "
                      "source model's under flips and rotations")
            passed_over.append(f"{c.name} (unstable under flips and rotations)")
            continue
        if c.method == "adabn" and rule == "if-ahead" and not c.lead_lower > 0:
            # nan (no LM-ADDA rival was trained) passes: then AdaBN's rival is the source
            if not math.isnan(c.lead_lower):
                c.note = "; ".join(filter(None, (c.note, (
                    "not kept: its score favours it by construction, so it must beat the best "
                    f"LM-ADDA candidate clearly, and its lead ({c.lead:.3g}) is within the "
                    "variation between images"))))
                passed_over.append(f"{c.name} (not clearly ahead of LM-ADDA; its score "
                                   "favours it by construction)")
                continue
        return c, "; ".join(passed_over)
    return None, "; ".join(passed_over)


def _dataset_or(sampler: Any) -> Any:
    """The dataset behind a plain patch sampler (a fresh sampler per candidate), else itself."""
    from ..data.datasets import PatchSampler

    if isinstance(sampler, PatchSampler) and not sampler.paired and not sampler.augment:
        return sampler.dataset
    return sampler


class _Candidate:
    """One LM-ADDA run driven rung by rung, keeping its best state by the score."""

    def __init__(self, layer: int) -> None:
        self.layer, self.name = layer, f"LM-ADDA layer {layer}"
        self.gen: Iterator[Event] | None = None
        self.score, self.best_step, self.state, self.sketch = math.inf, 0, None, None
        self.steps, self.done, self.stopped = 0, False, "finished"

    def report(self) -> CandidateReport:
        return CandidateReport(self.name, "lmadda", self.layer, self.score, self.best_step,
                               self.steps, self.stopped)


def iter_auto(
    model: UNetGenerator,
    source: Any,
    target: Any,
    *,
    layers: Sequence[int] = (),
    config: AdaptConfig | None = None,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable[[int, UNetGenerator], dict[str, float]] | None = None,
    probe_patches: int | None = None,
    recommend_steps: int | None = None,
    keep_adabn: str | bool = KEEP_ADABN,
) -> Iterator[Event]:
    """Run auto and yield its events (see the module docstring).

    The last event, ``Finished``, carries an :class:`AutoResult`.

    Parameters
    ----------
    model : UNetGenerator
        The source model G (unchanged).
    source, target : sampler, dataset, array or folder
        Unlabeled source and new-microscope images.
    layers : sequence of int
        LM-ADDA candidate layers; empty = the recommendation's top :data:`AUTO_LAYERS`.
    config : AdaptConfig, optional
        Settings of every LM-ADDA candidate; ``steps`` is the length of the longest one.
    cancel : callable, optional
        Stops the run; the candidates evaluated so far are judged (with the guard).
    monitor : callable, optional
        Passed on to every LM-ADDA candidate (benchmarks log ground truth with it).
    probe_patches, recommend_steps : int, optional
        Fixed patches per domain for the score (default :data:`PROBE_PATCHES`) and the
        recommendation probe's training steps (default :data:`RECOMMEND_PROBE_STEPS`);
        smaller values only for installation checks (``lmadda demo --quick``).
    keep_adabn : {"never", "if-stable", "if-ahead"} or bool
        When AdaBN may be kept (:func:`decide`); other rules only to measure them.

    Yields
    ------
    Event
        ``Started``; ``Step`` with steps counted over all candidates; ``Evaluated`` with the
        score as criterion, the candidate's layer in ``metrics["layer"]`` and its own step in
        ``metrics["candidate_step"]``; ``Finished``.
    """
    from ..devices import resolve_device
    from .engine import iter_adapt
    from .recommend import recommend_layer
    from .sampling import make_sampler
    from .scoring import FixedProbe, image_patches, paired_gain

    t0 = time.perf_counter()
    cfg = config or AdaptConfig()
    device = resolve_device(cfg.device)
    src = make_sampler(source, cfg.patch_size, cfg.batch_size, seed=cfg.seed, role="source")
    tgt = make_sampler(target, cfg.patch_size, cfg.batch_size, seed=cfg.seed + 1000,
                       role="target")
    src_data, tgt_data = _dataset_or(src), _dataset_or(tgt)
    stop = cancel or (lambda: False)

    # 1. is there a shift, and where (the probe detects shifts, e.g. scale, that the
    # permutation test on distances misses with few images)
    try:
        rec = recommend_layer(model, src_data, tgt_data, patch_size=cfg.patch_size,
                              probe_steps=recommend_steps or RECOMMEND_PROBE_STEPS,
                              device=str(device),
                              seed=cfg.seed, cancel=cancel)
    except LmaddaError:
        if not stop():
            raise
        yield Started(NAME, (), 0, 0, str(device), cfg.bn_mode, SCORE)
        yield _cancelled_early(model, cfg, time.perf_counter() - t0)
        return
    cand_layers = tuple(int(v) for v in layers) or tuple(rec.ranking[:AUTO_LAYERS])
    if rec.layer is None:
        cand_layers = ()
    plan = halving_plan(len(cand_layers), cfg.steps, cfg.eval_every)
    total = plan_steps(len(cand_layers), cfg.steps, cfg.eval_every)
    budget = int(BUDGET * cfg.steps)
    yield Started(NAME, cand_layers, total, 0, str(device), cfg.bn_mode, SCORE)

    def finished(reports: list[CandidateReport], winner: CandidateReport | None,
                 winner_model: Any, why: str, reason: StopReason) -> Finished:
        return _finished(model, rec, reports, winner, winner_model, why, reason, cfg,
                         budget=budget, seconds=time.perf_counter() - t0)

    none = CandidateReport("none", "none", None, math.nan)  # not scored without a shift
    if rec.layer is None:
        yield finished([none], None, None, "", StopReason.COMPLETED)
        return

    # 2. the fixed probe: G's side once; the source model's score
    n_probe = probe_patches or PROBE_PATCHES
    ps, ps_ids = image_patches(src_data, n_probe, cfg.patch_size, cfg.seed + _SEEDS["source"])
    pt, pt_ids = image_patches(tgt_data, n_probe, cfg.patch_size, cfg.seed + _SEEDS["target"])
    probe = FixedProbe.build(model, ps, pt, layers=(model.num_layers,), device=device)
    none.score, none_sk = probe.out_q(model)
    sketches: dict[str, np.ndarray] = {}
    models: dict[str, Callable[[], UNetGenerator]] = {}
    tta: dict[str, float] = {}
    source_tta = probe.tta(model)
    reports = [none]

    # 3. AdaBN (seconds)
    if not stop():
        res = None
        for ev in iter_adapt(model, src_data, tgt_data, method="adabn", config=cfg,
                             cancel=cancel):
            if isinstance(ev, Finished):
                res = ev.result
        if res is not None and res.reason is StopReason.COMPLETED:
            score, sketches["AdaBN"] = probe.out_q(res.model)
            tta["AdaBN"] = probe.tta(res.model)
            models["AdaBN"] = lambda res=res: res.model
            ratio = tta["AdaBN"] / max(source_tta, 1e-12)
            reports.append(CandidateReport(
                "AdaBN", "adabn", None, score, res.best_step,
                note=f"flip/rotation inconsistency {ratio:.2f}x the source model's "
                     f"(refused above {ADABN_TTA_MAX:g}x)"))

    # 4. LM-ADDA candidates in rungs, interleaved through the engine's event generators
    cands = [_Candidate(layer) for layer in cand_layers]

    def scorer(c: _Candidate) -> Callable[[int, UNetGenerator], dict[str, float]]:
        def score_it(step: int, net: UNetGenerator) -> dict[str, float]:
            extra = dict(monitor(step, net)) if monitor is not None else {}
            s, sk = (none.score, none_sk) if step == 0 else probe.out_q(net)
            if s < c.score:
                c.score, c.best_step, c.sketch = s, step, sk
                c.state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            return {**extra, "auto_score": s}
        return score_it

    for c in cands:
        c.gen = iter_adapt(model, src_data, tgt_data, method="lmadda", layers=c.layer,
                           config=cfg, cancel=cancel, monitor=scorer(c))
    done_steps, t_train, cancelled = 0, time.perf_counter(), False
    for end, keep in plan:
        for c in cands:
            if c.done or cancelled:
                continue
            for ev in c.gen:
                if isinstance(ev, Step):
                    c.steps, done_steps = ev.step, done_steps + 1
                    el = time.perf_counter() - t_train
                    yield Step(done_steps, total, ev.loss_d, ev.loss_g, ev.loss_src, ev.d_acc,
                               ev.g_updated, el, el / done_steps * max(0, total - done_steps))
                elif isinstance(ev, Evaluated):
                    # the engine logs monitor values with a "monitor_" prefix
                    score = float(ev.metrics.get("monitor_auto_score", math.inf))
                    yield Evaluated(done_steps, score, score <= c.score,
                                    {**ev.metrics, "layer": float(c.layer),
                                     "candidate_step": float(ev.step)})
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
            c.gen.close()
            c.done, c.stopped = True, f"dropped after {c.steps} steps"
        if cancelled or stop():
            cancelled = True
            break
    for c in cands:
        if not c.done:
            c.gen.close()
            c.done = True
            if c.steps < cfg.steps:
                c.stopped = "cancelled"
        reports.append(c.report())
        if c.state is not None and c.best_step > 0:
            sketches[c.name] = c.sketch

            def load(c: _Candidate = c) -> UNetGenerator:
                net = copy.deepcopy(model)
                net.load_state_dict(c.state)
                return net.eval().requires_grad_(False)
            models[c.name] = load

    # 5. do no harm
    adapted = [r for r in reports if r.name in sketches]
    for r in adapted:
        r.gain, r.gain_lower = paired_gain(probe.ref_sketch, none_sk, sketches[r.name],
                                           probe.out_var, ref_ids=ps_ids, ids=pt_ids,
                                           seed=cfg.seed)
    rivals = [r for r in adapted if r.method == "lmadda"]
    for r in adapted:  # AdaBN against the best LM-ADDA candidate, on the same images
        if r.method == "adabn" and rivals:
            best = min(rivals, key=lambda c: c.score)
            r.lead, r.lead_lower = paired_gain(probe.ref_sketch, sketches[best.name],
                                               sketches[r.name], probe.out_var,
                                               ref_ids=ps_ids, ids=pt_ids, seed=cfg.seed)
    winner, why = decide(adapted, source_tta=source_tta, tta=tta, keep_adabn=keep_adabn)
    yield finished(reports, winner, models[winner.name]() if winner else None, why,
                   StopReason.CANCELLED if cancelled else StopReason.COMPLETED)


def format_report(report: AutoReport) -> str:
    """The candidates as a small table, then the decision in words (what the CLI prints)."""
    lines = [f"{'candidate':<18}{'score':>9}{'gain':>9}{'kept step':>11}{'steps':>7}  status"]
    for c in report.candidates:
        gain = "-" if not math.isfinite(c.gain) else f"{c.gain:.3g}"
        score = "-" if not math.isfinite(c.score) else f"{c.score:.3g}"
        status = c.note or c.stopped
        lines.append(f"{c.name:<18}{score:>9}{gain:>9}{c.best_step:>11}{c.steps_run:>7}"
                     f"  {status}")
    lines.append(f"steps {report.steps_used} of {report.steps_budget} allowed, "
                 f"{report.seconds:.0f} s; {report.recommendation}")
    lines.append("=> " + report.reason)
    return "\n".join(lines)


def _cancelled_early(model: UNetGenerator, cfg: AdaptConfig, seconds: float) -> Finished:
    """Stopped while measuring the shift: the source model, nothing judged."""
    why = "stopped early, while measuring the shift; the source model is kept unchanged"
    none = CandidateReport("none", "none", None, math.nan)
    report = AutoReport("none", False, False, why, SCORE, [none], "", 0,
                        int(BUDGET * cfg.steps), seconds)
    out = copy.deepcopy(model).eval()
    prov = {"method": NAME, "winner": "none", "winner_method": "none", "layers": [],
            "best_step": 0, "stop_reason": StopReason.CANCELLED.value, "steps_used": 0,
            "config": cfg.to_dict()}
    return Finished(AutoResult(out, NAME, (), 0, SCORE, StopReason.CANCELLED, [], 0, why,
                               prov, report=report))


def _finished(model: UNetGenerator, rec: Any, reports: list[CandidateReport],
              winner: CandidateReport | None, winner_model: Any, passed_over: str,
              reason: StopReason, cfg: AdaptConfig, *, budget: int, seconds: float) -> Finished:
    """Word the outcome and wrap it as the run's ``Finished`` event."""
    none = reports[0]
    others = ", ".join(f"{r.name} {r.score:.3g}" for r in reports[1:]
                       if winner is None or r.name != winner.name)
    if rec.layer is None:
        why = ("no adaptation needed: the new images look like the source images to the "
               "model (they are no further from them than two sets of source images are "
               "from each other), so nothing was trained and the source model is kept")
    elif winner is None:
        why = ("no adaptation kept: no candidate made the predicted stains on the new images "
               "clearly more like the source model's stains on source images (score "
               f"{none.score:.3g} without adaptation; {others}); the source model is kept")
    else:
        pct = 100 * winner.gain / max(none.score, 1e-12)
        why = (f"kept {winner.name}: with it the stains predicted on the new images are "
               f"distributed most like the source model's on source images (score "
               f"{none.score:.3g} -> {winner.score:.3g}, {pct:.0f}% closer, more than the "
               f"variation between image patches); other candidates: {others}")
    if passed_over and winner is not None:
        why += f"; passed over: {passed_over}"
    if reason is StopReason.CANCELLED:
        why = "stopped early; " + why
    steps_used = sum(r.steps_run for r in reports)
    out = winner_model if winner is not None else copy.deepcopy(model).eval()
    out.meta = {**getattr(model, "meta", {})}
    name = winner.name if winner is not None else "none"
    report = AutoReport(name, winner is not None, rec.layer is not None, why, SCORE,
                        reports, rec.summary(), steps_used, budget, seconds)
    lays = (winner.layer,) if winner is not None and winner.layer is not None else ()
    prov = {"method": NAME, "winner": name,
            "winner_method": winner.method if winner is not None else "none",
            "layers": list(lays), "best_step": winner.best_step if winner else 0,
            "score": SCORE, "criterion_value": (winner or none).score,
            "stop_reason": reason.value, "steps_used": steps_used, "steps_budget": budget,
            "recommendation": rec.summary(),
            "candidates": [vars(r) for r in reports], "config": cfg.to_dict()}
    return Finished(AutoResult(out, NAME, lays, winner.best_step if winner else 0, SCORE,
                               reason, [], steps_used, why, prov, report=report))


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
    """The engine's entry point (``method="auto"``); ``run_state`` is ignored (no resume)."""
    return iter_auto(model, source, target, layers=layers, config=config, cancel=cancel,
                     monitor=monitor)
