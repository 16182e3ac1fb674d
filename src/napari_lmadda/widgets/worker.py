"""Background work of the widgets: adaptation, prediction, layer recommendation and trust maps.

The generators here are plain Python (no Qt, torch imported inside): they wrap the core and
turn every failure into a :class:`RunFailed` message, so a worker never dies with a traceback
and the GUI can always reset. :func:`start` runs one in a napari thread worker, or in the
calling thread when ``LMADDA_SYNC_WORKERS=1`` (handy when debugging).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LmaddaError

__all__ = [
    "RunFailed",
    "PredictProgress",
    "PredictDone",
    "RecommendProgress",
    "RecommendDone",
    "TrustProgress",
    "TrustDone",
    "adapt_messages",
    "predict_messages",
    "recommend_messages",
    "trust_messages",
    "start",
    "SYNC_ENV",
]

SYNC_ENV = "LMADDA_SYNC_WORKERS"


@dataclass(frozen=True)
class RunFailed:
    """The task stopped with an error; ``message`` is what the user sees."""

    message: str
    detail: str = ""


@dataclass(frozen=True)
class PredictProgress:
    """``done`` of ``total`` images predicted."""

    done: int
    total: int


@dataclass
class PredictDone:
    """Predictions: ``outputs[(tag, set_index)]`` is ``(N, C, H, W)`` in stain units."""

    outputs: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class RecommendProgress:
    """``done`` of ``total`` layers measured; ``message`` names the last one."""

    done: int
    total: int
    message: str = ""


@dataclass
class RecommendDone:
    """The layer recommendation (a :class:`~napari_lmadda.adapt.recommend.LayerRecommendation`)."""

    result: Any
    seconds: float = 0.0


@dataclass(frozen=True)
class TrustProgress:
    """``done`` of ``total`` trust maps computed."""

    done: int
    total: int


@dataclass
class TrustDone:
    """Trust maps: ``maps[set_index]`` is ``(N, C, H, W)`` standard deviation in stain units.

    ``method`` says how the predictions were varied (``mc_dropout`` or ``tta``).
    """

    maps: dict[int, np.ndarray] = field(default_factory=dict)
    method: str = ""
    n_samples: int = 0


def _release(device: str) -> None:
    try:
        from ..devices import release_memory, resolve_device

        release_memory(resolve_device(device))
    except Exception:  # noqa: BLE001 - freeing memory must never hide the run's outcome
        pass


def adapt_messages(
    model: Any,
    source: Any,
    target: Any,
    *,
    method: str,
    layers: Sequence[int] | None,
    config: Any,
    cancel: Callable[[], bool],
) -> Iterator[Any]:
    """Run :func:`~napari_lmadda.adapt.engine.iter_adapt` and yield its events.

    Parameters
    ----------
    model, source, target, method, layers, config, cancel
        As for :func:`~napari_lmadda.adapt.engine.iter_adapt`.

    Yields
    ------
    Started, Step, Evaluated, Finished or RunFailed
        The engine's events; a failure is yielded as :class:`RunFailed` (last message).
    """
    try:
        from ..adapt.engine import iter_adapt

        yield from iter_adapt(model, source, target, method=method, layers=layers,
                              config=config, cancel=cancel)
    except LmaddaError as exc:
        yield RunFailed(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI stuck
        yield RunFailed(f"adaptation failed ({type(exc).__name__}: {exc})", traceback.format_exc())
    finally:
        _release(getattr(config, "device", "auto"))


def predict_messages(
    models: Sequence[tuple[str, Any]],
    stacks: Sequence[np.ndarray],
    *,
    device: str = "auto",
    cancel: Callable[[], bool] | None = None,
) -> Iterator[PredictProgress | PredictDone | RunFailed]:
    """Predict every plane of every stack with every model.

    Parameters
    ----------
    models : sequence of (str, UNetGenerator)
        Tag and model.
    stacks : sequence of numpy.ndarray
        ``(N, H, W)`` raw images.
    device : str
        Where to run (``auto``, ``cpu``, ...).
    cancel : callable, optional
        Polled between images.

    Yields
    ------
    PredictProgress, then PredictDone or RunFailed
    """
    total = sum(len(s) for s in stacks) * len(models)
    done = 0
    dev = device
    try:
        from ..devices import resolve_device
        from ..inference.predict import predict_image

        dev = str(resolve_device(device))
        outputs: dict[tuple[str, int], np.ndarray] = {}
        for tag, model in models:
            model.to(dev)
            for i, stack in enumerate(stacks):
                planes = []
                for plane in stack:
                    if cancel is not None and cancel():
                        raise LmaddaError("prediction stopped")
                    planes.append(predict_image(model, plane, device=dev))
                    done += 1
                    yield PredictProgress(done, total)
                outputs[(tag, i)] = np.stack(planes)
            model.to("cpu")
        yield PredictDone(outputs)
    except LmaddaError as exc:
        yield RunFailed(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI stuck
        yield RunFailed(f"prediction failed ({type(exc).__name__}: {exc})", traceback.format_exc())
    finally:
        for _, model in models:
            try:
                model.to("cpu")
            except Exception:  # noqa: BLE001
                pass
        _release(dev)


def recommend_messages(
    model: Any,
    source: Any,
    target: Any,
    *,
    patch_size: int,
    device: str = "auto",
    n_patches: int = 32,
    probe_steps: int = 60,
    seed: int = 0,
    cancel: Callable[[], bool] | None = None,
) -> Iterator[RecommendProgress | RecommendDone | RunFailed]:
    """Run :func:`~napari_lmadda.adapt.recommend.recommend_layer` and yield its progress.

    ``recommend_layer`` reports progress through a callback; it runs in a helper thread here
    so that each measured layer can be yielded as it comes.

    Parameters
    ----------
    model : UNetGenerator
        The source model (not modified).
    source, target : folder or ndarray
        Unlabeled images, as for :func:`~napari_lmadda.adapt.recommend.recommend_layer`.
    patch_size, device, n_patches, probe_steps, seed
        Measurement settings.
    cancel : callable, optional
        Polled after every layer; a cancelled measurement ends with :class:`RunFailed`.

    Yields
    ------
    RecommendProgress, then RecommendDone or RunFailed
    """
    messages: queue.Queue = queue.Queue()
    end = object()

    def work() -> None:
        try:
            from ..adapt.recommend import recommend_layer

            t0 = time.perf_counter()
            rec = recommend_layer(
                model, source, target, patch_size=patch_size, n_patches=n_patches,
                probe_steps=probe_steps, device=device, seed=seed, cancel=cancel,
                progress=lambda d, t, m: messages.put(RecommendProgress(d, t, m)))
            messages.put(RecommendDone(rec, time.perf_counter() - t0))
        except LmaddaError as exc:
            messages.put(RunFailed(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI stuck
            messages.put(RunFailed(f"layer recommendation failed ({type(exc).__name__}: {exc})",
                                   traceback.format_exc()))
        finally:
            _release(device)
            messages.put(end)

    thread = threading.Thread(target=work, name="lmadda-recommend", daemon=True)
    thread.start()
    while (msg := messages.get()) is not end:
        yield msg
    thread.join()


def trust_messages(
    model: Any,
    stacks: Sequence[np.ndarray],
    *,
    n_samples: int = 8,
    device: str = "auto",
    cancel: Callable[[], bool] | None = None,
) -> Iterator[TrustProgress | TrustDone | RunFailed]:
    """Trust map (per-pixel predictive spread) of every plane of every stack.

    Parameters
    ----------
    model : UNetGenerator
        The model whose predictions are judged (MC dropout if it has dropout, else test-time
        augmentation; see :func:`~napari_lmadda.inference.uncertainty.trust_map`).
    stacks : sequence of numpy.ndarray
        ``(N, H, W)`` raw images.
    n_samples : int
        Stochastic passes per tile.
    device : str
        Where to run.
    cancel : callable, optional
        Polled between images.

    Yields
    ------
    TrustProgress, then TrustDone or RunFailed
    """
    total = sum(len(s) for s in stacks)
    done = 0
    dev = device
    try:
        from ..devices import resolve_device
        from ..inference.uncertainty import trust_map, uncertainty_method

        dev = str(resolve_device(device))
        method = uncertainty_method(model)
        model.to(dev)
        maps: dict[int, np.ndarray] = {}
        for i, stack in enumerate(stacks):
            planes = []
            for plane in stack:
                if cancel is not None and cancel():
                    raise LmaddaError("trust map stopped")
                planes.append(trust_map(model, plane, n_samples=n_samples, method=method))
                done += 1
                yield TrustProgress(done, total)
            maps[i] = np.stack(planes)
        yield TrustDone(maps, method, int(n_samples))
    except LmaddaError as exc:
        yield RunFailed(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI stuck
        yield RunFailed(f"trust map failed ({type(exc).__name__}: {exc})", traceback.format_exc())
    finally:
        try:
            model.to("cpu")
        except Exception:  # noqa: BLE001
            pass
        _release(dev)


class Task:
    """A started generator: ``cancel()`` asks it to stop at its next check.

    Attributes
    ----------
    worker : napari GeneratorWorker or None
        The thread worker (None when run synchronously).
    done : bool
        The generator has ended (already true on return when run synchronously).
    """

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self.worker: Any = None
        self.done = False

    def cancel(self) -> None:
        """Ask the task to stop (cooperative)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()


def start(
    make: Callable[[Callable[[], bool]], Iterator[Any]],
    on_message: Callable[[Any], None],
    on_done: Callable[[], None],
) -> Task:
    """Run a message generator in a thread worker (or inline with ``LMADDA_SYNC_WORKERS=1``).

    Parameters
    ----------
    make : callable
        ``make(cancel) -> iterator``; ``cancel`` is the zero-argument stop flag to poll.
    on_message : callable
        Called in the GUI thread with every yielded message.
    on_done : callable
        Called in the GUI thread once the generator ends, whatever the outcome.

    Returns
    -------
    Task
        Handle with :meth:`Task.cancel`.
    """
    task = Task()
    gen = make(lambda: task.cancelled)

    def finish() -> None:
        task.done = True
        on_done()

    if os.environ.get(SYNC_ENV, "").strip() not in ("", "0"):
        try:
            for msg in gen:
                on_message(msg)
        finally:
            finish()
        return task

    from napari.qt.threading import create_worker

    def run() -> Iterator[Any]:
        yield from gen

    worker = create_worker(run, _start_thread=False)
    worker.yielded.connect(on_message)
    worker.finished.connect(finish)
    task.worker = worker
    worker.start()
    return task
