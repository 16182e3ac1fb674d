"""Typed progress messages of an adaptation run (what the CLI prints and the widget shows).

Every method yields the same messages: :class:`Started`, then :class:`Step` (every training
step), :class:`Evaluated` (every ``eval_every`` steps: the label-free criterion and whether
this is the best state so far), and finally :class:`Finished`, which carries the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..models.unet import UNetGenerator

__all__ = ["StopReason", "Started", "Step", "Evaluated", "Finished", "Event", "AdaptResult"]


class StopReason(str, Enum):
    """Why a run ended."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    DIVERGED = "diverged"
    EARLY_STOP = "early_stop"


@dataclass(frozen=True)
class Started:
    """The run is set up: what will be trained and on what."""

    method: str
    layers: tuple[int, ...]
    total_steps: int
    trainable_params: int
    device: str
    bn_mode: str
    criterion: str


@dataclass(frozen=True)
class Step:
    """One training step.

    ``d_acc`` is the discriminator's accuracy on this step's source and target taps
    (0.5 = it cannot tell the domains apart). Losses are ``nan`` for methods without them.
    """

    step: int
    total_steps: int
    loss_d: float
    loss_g: float
    loss_src: float
    d_acc: float
    g_updated: bool
    elapsed: float
    eta: float

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]."""
        return self.step / max(1, self.total_steps)


@dataclass(frozen=True)
class Evaluated:
    """The label-free selection criterion at a step (lower is better)."""

    step: int
    criterion: float
    is_best: bool
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class AdaptResult:
    """What a run produced.

    Attributes
    ----------
    model : UNetGenerator
        The adapted model (the best state by the criterion, EMA weights when EMA is on).
    method, layers :
        What was run.
    best_step : int
        The step whose state was kept (0 = the starting model).
    criterion : str
        Name of the label-free criterion that chose ``best_step``.
    reason : StopReason
        Why the run ended.
    history : list of dict
        One row per :class:`Evaluated` (step, criterion, and the other label-free metrics).
    steps_done : int
        Training steps run.
    message : str
        A human sentence about the outcome (e.g. what diverged).
    """

    model: UNetGenerator
    method: str
    layers: tuple[int, ...]
    best_step: int
    criterion: str
    reason: StopReason
    history: list[dict[str, Any]] = field(default_factory=list)
    steps_done: int = 0
    message: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finished:
    """The run ended; ``result`` holds the model to use."""

    result: AdaptResult


Event = Started | Step | Evaluated | Finished
