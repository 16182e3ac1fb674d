"""``none``: the source model as it is (the baseline every table starts with)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

from ..models.unet import UNetGenerator
from .config import AdaptConfig
from .events import AdaptResult, Event, Finished, Started, StopReason

__all__ = ["NAME", "run"]

NAME = "none"


def run(
    model: UNetGenerator,
    source,
    target,
    *,
    layers: tuple[int, ...] = (),
    config: AdaptConfig,
    cancel: Callable[[], bool] | None = None,
    monitor: Callable | None = None,
    run_state=None,
) -> Iterator[Event]:
    """Yield a copy of the source model, unchanged (``run_state`` is ignored)."""
    yield Started(NAME, (), 0, 0, "cpu", "eval", "none")
    out = copy.deepcopy(model).eval()
    yield Finished(AdaptResult(out, NAME, (), 0, "none", StopReason.COMPLETED))
