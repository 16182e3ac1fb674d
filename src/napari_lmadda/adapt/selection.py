"""Label-free checkpoint selection shared by the adversarial methods (adda, lmadda, apma, scgan).

Every evaluation offers the criterion of the current (EMA) state; the lowest one is kept
(``criterion="last"`` keeps the latest). The run stops as diverged when the criterion is not
finite or rises above ``BLOWUP`` times its starting value (unbounded criteria only), and
early when ``patience`` evaluations bring no improvement. The bookkeeping is stored in a
method's run state as ``[best_val, best_step, start_val, since_best]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .events import StopReason

__all__ = ["BLOWUP", "KeepBest"]

#: A criterion above this multiple of its starting value counts as divergence.
BLOWUP = 4.0


@dataclass
class KeepBest:
    """The best state so far by a label-free criterion, and when to stop.

    Attributes
    ----------
    criterion : str
        Name of the criterion (``AdaptConfig.criterion``).
    patience : int or None
        Evaluations without improvement before an early stop (None = never).
    best_val, best_step, best_state
        The kept state, its step and criterion value.
    start_val : float
        The criterion at the start (the reference of the blow-up rule).
    since_best : int
        Evaluations since the last improvement.
    """

    criterion: str
    patience: int | None = None
    best_val: float = math.inf
    best_step: int = 0
    best_state: Any = None
    start_val: float = 1e-8
    since_best: int = 0

    def begin(self, val0: float, state: Any) -> None:
        """Start from the step-0 state with criterion ``val0``.

        With ``d_acc`` an untrained discriminator is at chance, so step 0 says nothing and
        any later state replaces it.
        """
        self.best_val = math.inf if self.criterion == "d_acc" else val0
        self.best_step, self.best_state = 0, state
        self.start_val, self.since_best = max(val0, 1e-8), 0

    def offer(self, step: int, val: float, snapshot: Callable[[], Any]) -> bool:
        """Keep ``snapshot()`` when ``val`` improves on the best; return whether it did."""
        improved = math.isfinite(val) and (val < self.best_val or self.criterion == "last")
        if improved:
            self.best_val, self.best_step, self.since_best = val, step, 0
            self.best_state = snapshot()
        else:
            self.since_best += 1
        return improved

    def stop(self, step: int, val: float) -> tuple[StopReason, str] | None:
        """Why the run must stop after this evaluation (diverged, no progress), or None."""
        bounded = self.criterion in ("last", "d_acc")  # no blow-up rule for these
        if not math.isfinite(val) or (
            not bounded and val > BLOWUP * self.start_val and val > 0.05
        ):
            return StopReason.DIVERGED, (
                f"criterion {self.criterion} rose to {val:.3g} (start {self.start_val:.3g}) "
                f"at step {step}; rolled back to step {self.best_step}"
            )
        if self.patience is not None and self.since_best >= self.patience:
            return StopReason.EARLY_STOP, (
                f"no improvement for {self.since_best} evaluations; kept step {self.best_step}"
            )
        return None

    def state(self) -> list:
        """The numbers a run state stores (``"best"``)."""
        return [self.best_val, self.best_step, self.start_val, self.since_best]

    def restore(self, numbers: list, best_state: Any) -> None:
        """Restore from a run state's ``"best"`` numbers and ``"best_state"``."""
        self.best_val, self.best_step, self.start_val, self.since_best = numbers
        self.best_state = best_state
