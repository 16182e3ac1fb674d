"""How responsive napari stays while the plugin adapts a model and shows its stains.

A 10 ms ``QTimer`` ticks in the GUI thread from the moment Run is pressed until the stain
layers are on screen (plus one second). Every gap between two ticks beyond the 10 ms period is
time the event loop could not answer the user (a stall). The script prints, per run and as the
median over runs, the tick intervals' median, 99th percentile and maximum, the number of
stalls over 100 ms, and the longest stall of each phase (set-up, steps, end of the run, stain
layers). The machine's load average is printed too: on a shared machine the numbers move.

Run under a display (Xvfb is enough)::

    xvfb-run -a -s "-screen 0 1800x1100x24" python benchmarks/gui_responsiveness.py --runs 3

The method is LM-ADDA (``--method``), as the first dock's default, so old and new docks do
the same work; ``--method ''`` takes the dock's own default (the auto method, which runs
several candidates). To measure an older commit, run this script with ``PYTHONPATH`` at that
commit's ``src`` (the three docks before issue 15 are driven too).

``--why`` samples the GUI thread's Python stack whenever a tick is late and prints the lines
where the stalls were spent (to find what to move off the GUI thread).

Goal (issue 15): no stall over 100 ms, 99th percentile under 50 ms, median of 3 runs, on the
2-core machine otherwise idle, torch on one thread.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

PLUGIN = "napari-lmadda"
PERIOD_MS = 10


@dataclass
class Trace:
    """Tick times and the moments the run changed phase (all ``perf_counter`` seconds)."""

    ticks: list[float] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    stacks: collections.Counter = field(default_factory=collections.Counter)

    def intervals(self) -> list[tuple[float, float]]:
        """``(time of the later tick, interval in ms)`` between consecutive ticks."""
        t = self.ticks
        return [(t[i], 1000.0 * (t[i] - t[i - 1])) for i in range(1, len(t))]

    def phase(self, when: float) -> str:
        """The phase a late tick belongs to."""
        m = self.marks
        order = [("set-up", m.get("started")), ("steps", m.get("finished")),
                 ("end of run", m.get("predicting")), ("prediction", m.get("layers")),
                 ("stain layers", m.get("idle")), ("after", None)]
        for name, until in order:
            if until is None or when <= until:
                return name
        return "after"


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(len(s) - 1, int(k) + 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class StackSampler(threading.Thread):
    """Record the GUI thread's stack whenever no tick came for ``late_ms``."""

    def __init__(self, trace: Trace, main_ident: int, late_ms: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.trace, self.main_ident, self.late = trace, main_ident, late_ms / 1000.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            ticks = self.trace.ticks
            if not ticks or time.perf_counter() - ticks[-1] < self.late:
                continue
            frames = sys._current_frames()
            frame = frames.get(self.main_ident)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)
            inner = [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in stack[-6:]]
            ours = [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in stack[:-6]
                    if "napari_lmadda" in f.filename]
            phase = self.trace.phase(time.perf_counter())
            key = f"[{phase}] " + "\n      ".join(reversed(inner)) + (
                "\n      ... " + " < ".join(reversed(ours[-3:])) if ours else "")
            self.trace.stacks[key] += 1


def _plugin(viewer: Any) -> tuple[Any, Any]:
    """The adapt controls and the results panel, from the one dock (or the old Adapt dock)."""
    names = {c.display_name for c in _contributions()}
    if "LM-ADDA" in names:
        _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "LM-ADDA")
        return dock.adapt, dock.results
    viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Data", tabify=True)
    _, adapt = viewer.window.add_plugin_dock_widget(PLUGIN, "Adapt")
    return adapt, adapt.results


def _contributions() -> list[Any]:
    from npe2 import PluginManager

    return list(PluginManager.instance().get_manifest(PLUGIN).contributions.widgets or [])


def one_run(steps: int, why: bool, method: str | None = None) -> Trace:
    """Open a viewer, run an adaptation of ``steps`` steps and time the event loop."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_lmadda.widgets.state import get_state

    viewer = napari.Viewer(show=True, title="responsiveness")
    viewer.window._qt_window.resize(1800, 1100)
    app = QApplication.instance()
    adapt, results = _plugin(viewer)
    state = get_state(viewer)
    viewer.open_sample(PLUGIN, "cells")
    _wait(app, until=lambda: state.model is not None and not state.busy, timeout=120)
    adapt.steps_spin.setValue(steps)
    if method:
        index = adapt.method_combo.findData(method)
        if index < 0:
            raise SystemExit(f"this dock has no method {method!r}")
        adapt.method_combo.setCurrentIndex(index)
    _wait(app, 1.0)
    repaint = _repaint_cost(app, adapt.progress)

    trace = Trace()
    timer = QTimer()
    timer.setInterval(PERIOD_MS)
    timer.timeout.connect(lambda: trace.ticks.append(time.perf_counter()))
    sampler = StackSampler(trace, threading.main_thread().ident) if why else None

    def busy_changed(busy: bool) -> None:
        now = time.perf_counter()
        if busy and "started" not in trace.marks:
            trace.marks["started"] = now
        elif busy and "finished" in trace.marks:
            trace.marks.setdefault("predicting", now)

    def adapted_changed(adapted: Any) -> None:
        if adapted is not None:
            trace.marks.setdefault("finished", time.perf_counter())

    def inserted(event: Any) -> None:
        if "finished" in trace.marks:
            trace.marks.setdefault("layers", time.perf_counter())

    state.busy_changed.connect(busy_changed)
    viewer.layers.events.inserted.connect(inserted)
    state.adapted_changed.connect(adapted_changed)
    timer.start()
    if sampler is not None:
        sampler.start()
    trace.marks["run"] = time.perf_counter()
    adapt.run()
    _wait(app, until=lambda: bool(results.last_layers) and not state.busy, timeout=1800)
    trace.marks["idle"] = time.perf_counter()
    _wait(app, 1.0)
    timer.stop()
    if sampler is not None:
        sampler.stop.set()
        sampler.join()
    viewer.close()
    _wait(app, 0.5)
    trace.marks["repaint_ms"] = repaint
    return trace


def _repaint_cost(app: Any, bar: Any, n: int = 15) -> float:
    """Median time of one dock redraw (a progress bar step): the floor of any GUI update.

    In napari every redraw of a dock repaints the whole window; without a GPU (Xvfb,
    software OpenGL) that is the cost of each progress update during a run.
    """
    times = []
    for i in range(n):
        bar.setValue(i % max(1, bar.maximum()))
        t = time.perf_counter()
        app.processEvents()
        times.append(1000.0 * (time.perf_counter() - t))
        _wait(app, 0.05)
    return statistics.median(times)


def _wait(app: Any, seconds: float = 0.0, until: Any = None, timeout: float = 600.0) -> None:
    t0 = time.perf_counter()
    while True:
        app.processEvents()
        if until is not None and until():
            return
        if until is None and time.perf_counter() - t0 >= seconds:
            return
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the run did not end in time")
        time.sleep(0.002)


def summarise(trace: Trace) -> dict[str, float]:
    """Median, p99 and max tick interval (ms), stalls over 100 ms, worst stall per phase."""
    iv = trace.intervals()
    ms = [v for _, v in iv]
    row = {"median": statistics.median(ms), "p99": _percentile(ms, 99), "max": max(ms),
           "over100": sum(v > 100 for v in ms), "ticks": len(ms),
           "seconds": trace.ticks[-1] - trace.ticks[0],
           "one dock repaint": trace.marks.get("repaint_ms", float("nan"))}
    for when, v in iv:
        name = trace.phase(when)
        row[f"worst {name}"] = max(row.get(f"worst {name}", 0.0), v)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is reported (3)")
    parser.add_argument("--steps", type=int, default=120, help="adaptation steps per run (120)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--method", default="lmadda",
                        help="adaptation method ('lmadda', as the old dock's default; '' for "
                             "the dock's own default)")
    parser.add_argument("--why", action="store_true",
                        help="sample the GUI thread's stack during stalls and print the top ones")
    args = parser.parse_args()

    os.environ.setdefault("LMADDA_DEVICE", "cpu")
    import torch

    torch.set_num_threads(args.threads)
    import napari_lmadda

    print(f"napari-lmadda from {os.path.dirname(napari_lmadda.__file__)}; torch threads "
          f"{args.threads}; method {args.method or 'default'}; {args.steps} steps; "
          "load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows, stacks = [], collections.Counter()
    for i in range(args.runs):
        trace = one_run(args.steps, args.why, args.method or None)
        row = summarise(trace)
        rows.append(row)
        stacks.update(trace.stacks)
        print(f"run {i + 1}: " + ", ".join(
            f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            flush=True)
    keys = ["median", "p99", "max", "over100", "one dock repaint"] + sorted(
        {k for r in rows for k in r if k.startswith("worst")})
    print("\n| measure (ms) | " + " | ".join(f"run {i + 1}" for i in range(len(rows)))
          + " | median |")
    print("|---|" + "---|" * (len(rows) + 1))
    for k in keys:
        vals = [r.get(k, 0.0) for r in rows]
        print(f"| {k} | " + " | ".join(f"{v:.0f}" for v in vals)
              + f" | {statistics.median(vals):.0f} |")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if stacks:
        print("\nwhere the GUI thread was while ticks were late (samples every 10 ms):")
        for stack, n in stacks.most_common(15):
            print(f"  {n} x\n      {stack}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
