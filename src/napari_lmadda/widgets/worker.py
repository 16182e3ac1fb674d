"""Background work of the dock: typed messages from plain generators.

Each generator here is plain Python (no Qt; torch imported inside, in the worker thread) and
wraps a core function: adaptation, prediction, layer recommendation, trust maps, source
training and the list of devices. Every failure becomes a :class:`RunFailed` message, so a
worker never dies with a traceback and the GUI can always reset; accelerator memory is given
back when a task ends, however it ends. :func:`start` runs a generator in a napari thread
worker, or in the calling thread when ``LMADDA_SYNC_WORKERS=1`` (handy when debugging).
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
    "TrainData",
    "TrainDone",
    "ExportDone",
    "DeviceInfo",
    "DeviceList",
    "adapt_messages",
    "predict_messages",
    "recommend_messages",
    "trust_messages",
    "train_messages",
    "device_messages",
    "bioimageio_messages",
    "release_device",
    "start",
    "Task",
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
    """Predictions: ``outputs[(tag, set_index)]`` is ``(N, C, H, W)`` in stain units.

    ``prepared`` is what the ``prepare`` function made of them in the worker (the stain
    layers, ready to add); ``tta`` says whether each prediction is an average over flips and
    rotations; ``sets`` are the image sets predicted.
    """

    outputs: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    prepared: Any = None
    tta: bool = False
    sets: list = field(default_factory=list)


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

    ``method`` says how the predictions were varied (``mc_dropout`` or ``tta``); ``prepared``
    is what the ``prepare`` function made of the maps in the worker.
    """

    maps: dict[int, np.ndarray] = field(default_factory=dict)
    method: str = ""
    n_samples: int = 0
    prepared: Any = None


@dataclass(frozen=True)
class TrainData:
    """What source training found in the folders, before its first step.

    ``warnings`` names the targets the model cannot produce and the constant or saturated
    inputs (one line each); ``encoding`` says how the targets are encoded.
    """

    n_train: int
    n_val: int
    val_files: tuple[str, ...]
    channel_names: tuple[str, ...]
    encoding: str = ""
    warnings: tuple[str, ...] = ()


@dataclass
class TrainDone:
    """Source training ended; ``model`` is its best state (None if it never validated)."""

    model: Any
    path: str | None
    best_pearson: float
    best_step: int
    reason: str
    steps_done: int
    seconds: float
    not_learning: str = ""


@dataclass(frozen=True)
class ExportDone:
    """A bioimage.io package was written (and validated) at ``path``."""

    path: str
    seconds: float


@dataclass(frozen=True)
class DeviceInfo:
    """A device the user can choose: ``name`` for the core, ``label`` for the menu."""

    name: str
    label: str


@dataclass(frozen=True)
class DeviceList:
    """The devices of this machine, best first (``auto`` is not among them)."""

    devices: tuple[DeviceInfo, ...]
    auto: str = "cpu"


def release_device(device: Any) -> None:
    """Give an accelerator's cached memory back; nothing to do (and no GC pause) on the CPU.

    A full garbage collection in a worker thread holds the GIL and freezes napari for up to
    a second, so it runs only when there is accelerator memory to give back.
    """
    try:
        import torch

        dev = torch.device(str(device))
        if dev.type == "cpu":
            return
        from ..devices import release_memory

        if dev.type == "cuda" and dev.index is not None:
            with torch.cuda.device(dev.index):  # empty_cache frees the current device's
                release_memory(dev)
        else:
            release_memory(dev)
    except Exception:  # noqa: BLE001 - freeing memory must never hide the task's outcome
        pass


def _loaded(images: Any) -> Any:
    """Images as the core takes them: a function (layer pixels to convert) is called here."""
    return images() if callable(images) else images


def _resolved(device: str) -> str:
    from ..devices import resolve_device

    return str(resolve_device(device))


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

    The adapted model comes back on the CPU, and the device's cached memory is released,
    whether the run completed, was stopped or failed.

    ``source`` and ``target`` are what the engine takes, or a function returning it (called
    here, in the worker).

    Yields
    ------
    Started, Step, Evaluated, Finished or RunFailed
        The engine's events; a failure is yielded as :class:`RunFailed` (last message).
    """
    device = getattr(config, "device", "auto")
    try:
        from ..adapt.engine import iter_adapt
        from ..adapt.events import Finished

        device = _resolved(device)
        source, target = _loaded(source), _loaded(target)
        for ev in iter_adapt(model, source, target, method=method, layers=layers,
                             config=config, cancel=cancel):
            if isinstance(ev, Finished):
                ev.result.model.to("cpu")
            yield ev
    except LmaddaError as exc:
        yield RunFailed(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI stuck
        yield RunFailed(f"adaptation failed ({type(exc).__name__}: {exc})", traceback.format_exc())
    finally:
        release_device(device)


def predict_messages(
    models: Sequence[tuple[str, Any]],
    images: Sequence[Any] | Callable[[], Sequence[Any]],
    *,
    device: str = "auto",
    tta: bool = False,
    prepare: Callable[[dict, list], Any] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Iterator[PredictProgress | PredictDone | RunFailed]:
    """Predict every plane of every image set with every model.

    Parameters
    ----------
    models : sequence of (str, UNetGenerator)
        Tag and model.
    images : sequence, or a function returning one
        ``(N, H, W)`` raw stacks, or image sets with a ``stack``; a function is called here
        (reading folders or converting layer data in the worker, not in napari's thread).
    device : str
        Where to run (``auto``, ``cpu``, ...).
    tta : bool
        Predict each image as the average over flips and 90-degree rotations
        (:func:`~napari_lmadda.inference.uncertainty.tta_predict`).
    prepare : callable, optional
        ``prepare(outputs, sets)``, run here in the worker (e.g. the stain layers' data and
        contrast limits), its result sent in :class:`PredictDone`.
    cancel : callable, optional
        Polled between images.

    Yields
    ------
    PredictProgress, then PredictDone or RunFailed
    """
    dev = device
    try:
        from ..inference.predict import predict_image
        from ..inference.uncertainty import tta_predict

        sets = list(images() if callable(images) else images)
        stacks = [getattr(s, "stack", s) for s in sets]
        total = sum(len(s) for s in stacks) * len(models)
        done = 0
        dev = _resolved(device)
        outputs: dict[tuple[str, int], np.ndarray] = {}
        for tag, model in models:
            model.to(dev)
            for i, stack in enumerate(stacks):
                planes = []
                for plane in stack:
                    if cancel is not None and cancel():
                        raise LmaddaError("prediction stopped")
                    planes.append(tta_predict(model, plane) if tta
                                  else predict_image(model, plane, device=dev))
                    done += 1
                    yield PredictProgress(done, total)
                outputs[(tag, i)] = np.stack(planes)
            model.to("cpu")
        prepared = prepare(outputs, sets) if prepare is not None else None
        yield PredictDone(outputs, prepared, tta, sets)
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
        release_device(dev)


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
                model, _loaded(source), _loaded(target), patch_size=patch_size,
                n_patches=n_patches, probe_steps=probe_steps, device=device, seed=seed,
                cancel=cancel,
                progress=lambda d, t, m: messages.put(RecommendProgress(d, t, m)))
            messages.put(RecommendDone(rec, time.perf_counter() - t0))
        except LmaddaError as exc:
            messages.put(RunFailed(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI stuck
            messages.put(RunFailed(f"layer recommendation failed ({type(exc).__name__}: {exc})",
                                   traceback.format_exc()))
        finally:
            release_device(device)
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
    prepare: Callable[[dict, str], Any] | None = None,
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
    prepare : callable, optional
        ``prepare(maps, method)`` run here in the worker; its result goes in :class:`TrustDone`.
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
        from ..inference.uncertainty import trust_map, uncertainty_method

        dev = _resolved(device)
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
        prepared = prepare(maps, method) if prepare is not None else None
        yield TrustDone(maps, method, int(n_samples), prepared)
    except LmaddaError as exc:
        yield RunFailed(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI stuck
        yield RunFailed(f"trust map failed ({type(exc).__name__}: {exc})", traceback.format_exc())
    finally:
        try:
            model.to("cpu")
        except Exception:  # noqa: BLE001
            pass
        release_device(dev)


def train_messages(
    request: Any,
    *,
    cancel: Callable[[], bool],
) -> Iterator[Any]:
    """Train a source model from paired folders and yield its progress.

    Parameters
    ----------
    request : TrainRequest
        What the training panel asks for (:mod:`~napari_lmadda.widgets.training_data`).
    cancel : callable
        Polled every step; a stopped training keeps the best validated state.

    Yields
    ------
    TrainData, Started, TimeEstimate, Step, Evaluated, NotLearning, then TrainDone or
    RunFailed
    """
    device = request.config.device
    t0 = time.perf_counter()
    try:
        from ..models.checkpoint import save_model
        from ..training.source import TrainResult, iter_train_source
        from .training_data import read_training_data

        device = _resolved(device)
        data = read_training_data(request)
        tn = data.target_norm
        units = "normalised units" if tn.units == "normalised" else "the targets' units"
        encoding = (f"targets encoded '{tn.mode}' ("
                    + ", ".join(f"{n} {lo:g}..{hi:g}"
                                for n, lo, hi in zip(data.channel_names, tn.lo, tn.hi))
                    + f"); predictions in {units}")
        yield TrainData(data.n_train, data.n_val, tuple(data.val_files),
                        tuple(data.channel_names), encoding, tuple(data.warnings()))
        result = None
        for ev in iter_train_source(data.sampler, data.val, arch=request.arch,
                                    config=request.config, meta=data.meta, out=request.out,
                                    cancel=cancel, hints=request.hints):
            if isinstance(ev, TrainResult):
                result = ev
            else:
                yield ev
        assert result is not None
        result.model.to("cpu")
        path = None
        if result.best_step > 0:
            path = str(save_model(result.model, request.out) or request.out)
        steps = result.history[-1]["step"] if result.history else 0
        yield TrainDone(result.model if result.best_step > 0 else None, path,
                        float(result.best_pearson), int(result.best_step),
                        result.reason.value, int(steps), time.perf_counter() - t0,
                        result.not_learning.message() if result.not_learning else "")
    except LmaddaError as exc:
        yield RunFailed(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI stuck
        yield RunFailed(f"training failed ({type(exc).__name__}: {exc})", traceback.format_exc())
    finally:
        release_device(device)


def bioimageio_messages(model: Any, path: Any, *, sample: Any = None, name: str | None = None,
                        overwrite: bool = False) -> Iterator[ExportDone | RunFailed]:
    """Write ``model`` as a bioimage.io package (validated as it is written).

    Parameters
    ----------
    model : UNetGenerator
        The model to export.
    path : path-like
        The package (``*.bioimageio.zip``); never over an existing file.
    sample : ndarray, optional
        An image of the microscope the model is for (its test tensors).
    name : str, optional
        Name shown by the model zoo.
    overwrite : bool
        Replace an existing package (written to a temporary file first, then renamed).

    Yields
    ------
    ExportDone or RunFailed
    """
    t0 = time.perf_counter()
    try:
        from ..bioimageio.export import export_bioimageio

        written = export_bioimageio(model, path, sample=sample, name=name, overwrite=overwrite)
        yield ExportDone(str(written), time.perf_counter() - t0)
    except LmaddaError as exc:
        yield RunFailed(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the GUI stuck
        yield RunFailed(f"export failed ({type(exc).__name__}: {exc})", traceback.format_exc())


def device_messages() -> Iterator[DeviceList | RunFailed]:
    """List this machine's devices: each GPU as ``cuda:N`` with its name, MPS, the CPU.

    Importing torch takes a second or two; done here, it never freezes napari.
    """
    try:
        import torch

        from ..devices import resolve_device

        found = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                name = torch.cuda.get_device_name(i)
                mem = torch.cuda.get_device_properties(i).total_memory / 2**30
                found.append(DeviceInfo(f"cuda:{i}", f"cuda:{i} · {name} ({mem:.0f} GB)"))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            found.append(DeviceInfo("mps", "mps · Apple GPU"))
        found.append(DeviceInfo("cpu", f"cpu · {os.cpu_count() or 1} cores"))
        auto = str(resolve_device("auto"))
        if auto == "cuda":
            auto = "cuda:0"
        yield DeviceList(tuple(found), auto)
    except Exception as exc:  # noqa: BLE001 - the menu keeps auto and cpu
        yield RunFailed(f"could not list the devices ({type(exc).__name__}: {exc})")


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
