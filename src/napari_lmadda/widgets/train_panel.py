"""Train a source model from paired images, inside napari (``lmadda train-source`` in a panel).

The panel takes a folder of input images (e.g. phase contrast), one folder of target images
per stain (files paired by name), and a model file to write. Its options are those of
``lmadda train-source``, read from the command itself (flags, defaults, help as tooltips).
Train runs :func:`~napari_lmadda.training.source.iter_train_source` in a worker; the
progress bar, the validation curve and the status follow it; Stop ends it at the next step
and keeps the best validated state. When it ends the model is loaded into the Model step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import LmaddaError
from . import worker as workers
from .devices import DeviceCombo
from .messages import notify
from .option_form import OptionForm
from .plots import ValidationPlot
from .state import get_state, unwrap
from .throttle import Throttle

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["TrainPanel"]

_RED = "#e06c6c"

#: handled by the panel's own fields, not the option form
_OWN = {"inputs", "targets", "out", "channel_names", "device", "overwrite"}
_LABELS = {"lambda_gan": "GAN", "num_downs": "Depth", "val_fraction": "Val. files",
           "val_patches": "Val. patches", "eval_every": "Val. every", "lr": "LR",
           "ngf": "Filters", "target_norm": "Targets", "target_percentiles": "Target %",
           "target_range": "Target range", "augment": "Augment", "size": "Size"}


class _FolderRow(QWidget):
    def __init__(self, placeholder: str, pick: Any) -> None:
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.button = QPushButton("…")
        self.button.setMaximumWidth(32)
        self.button.clicked.connect(pick)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.button)


class TrainPanel(QWidget):
    """Paired folders in, a source model out, with progress, a live curve and Stop.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Whose Model step receives the trained model.

    Signals
    -------
    closed()
        The user closed the panel.
    """

    closed = Signal()

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap(napari_viewer)
        self.state = get_state(napari_viewer)
        self.task: workers.Task | None = None
        self.last_reason: str | None = None
        self.last_done: workers.TrainDone | None = None

        self.inputs = _FolderRow("folder of input images (e.g. phase contrast)",
                                 self._pick_inputs)
        self.targets = QListWidget()
        self.targets.setMaximumHeight(52)
        self.targets.setToolTip("One folder of target images per stain (DAPI, CD29, ...); "
                                "files are paired with the inputs by name")
        self.add_target_btn = QPushButton("Add stain folder…")
        self.add_target_btn.clicked.connect(self._pick_target)
        self.remove_target_btn = QPushButton("Remove")
        self.remove_target_btn.clicked.connect(self._remove_target)
        self.names_edit = QLineEdit()
        self.names_edit.setPlaceholderText("stain names, e.g. DAPI,CD29 (default: folder names)")
        self.out = _FolderRow("model file to write, e.g. my_model.pt", self._pick_out)
        from ..cli.train_source import TrainSourceArgs

        self.form = OptionForm(TrainSourceArgs, skip=_OWN, labels=_LABELS, columns=2)
        self.device_combo = DeviceCombo()

        self.train_btn = QPushButton("Train")
        self.train_btn.clicked.connect(self.train)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setToolTip("Stop at the next step and keep the best validated state")
        self.stop_btn.clicked.connect(self.stop)
        self.close_btn = QPushButton("Back to the model")
        self.close_btn.clicked.connect(self.closed.emit)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("not started")
        self.progress.setValue(0)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.plot = ValidationPlot()
        self._progress = Throttle(self._refresh, self)

        grid = QGridLayout()
        grid.setVerticalSpacing(3)
        grid.addWidget(QLabel("Inputs"), 0, 0)
        grid.addWidget(self.inputs, 0, 1, 1, 2)
        grid.addWidget(QLabel("Stains"), 1, 0)
        grid.addWidget(self.targets, 1, 1)
        buttons = QVBoxLayout()
        buttons.setSpacing(2)
        buttons.addWidget(self.add_target_btn)
        buttons.addWidget(self.remove_target_btn)
        grid.addLayout(buttons, 1, 2)
        grid.addWidget(QLabel("Names"), 2, 0)
        grid.addWidget(self.names_edit, 2, 1, 1, 2)
        grid.addWidget(QLabel("Save as"), 3, 0)
        grid.addWidget(self.out, 3, 1, 1, 2)
        grid.addWidget(QLabel("Device"), 4, 0)
        grid.addWidget(self.device_combo, 4, 1, 1, 2)
        run = QHBoxLayout()
        run.addWidget(self.train_btn)
        run.addWidget(self.stop_btn)
        run.addStretch(1)
        run.addWidget(self.close_btn)
        title = QLabel("<b>Train a source model</b> from paired images "
                       "<span style='color:gray'>(as <tt>lmadda train-source</tt>; hover an "
                       "option for its help)</span>")
        title.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(title)
        layout.addLayout(grid)
        layout.addWidget(self.form)
        layout.addLayout(run)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, 1)
        self.state.busy_changed.connect(self._set_idle_ui)
        self._set_idle_ui()

    # ------------------------------------------------------------------ choices
    def set_inputs(self, folder: str | Path) -> None:
        """Use ``folder`` as the input images."""
        self.inputs.edit.setText(str(folder))

    def add_target(self, folder: str | Path) -> None:
        """Add a folder of target images (one stain)."""
        self.targets.addItem(str(folder))

    def set_output(self, path: str | Path) -> None:
        """Write the trained model to ``path``."""
        self.out.edit.setText(str(path))

    def _pick_inputs(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of input images")
        if folder:
            self.set_inputs(folder)

    def _pick_target(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of one stain's images")
        if folder:
            self.add_target(folder)

    def _remove_target(self) -> None:
        for item in self.targets.selectedItems() or [self.targets.item(self.targets.count() - 1)]:
            if item is not None:
                self.targets.takeItem(self.targets.row(item))

    def _pick_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the trained model as", "source.pt",
                                              "Model files (*.pt)")
        if path:
            self.set_output(path)

    # ------------------------------------------------------------------ request
    def request(self) -> Any:
        """The training asked for, checked and resolved (a one-line error otherwise)."""
        from ..cli.train_source import TrainSourceArgs
        from ..errors import ConfigError
        from .training_data import prepare_request

        inputs = self.inputs.edit.text().strip()
        if not inputs or not Path(inputs).expanduser().is_dir():
            raise ConfigError("choose the folder of input images" if not inputs else
                              f"input folder '{inputs}' does not exist")
        targets = [Path(self.targets.item(i).text()).expanduser()
                   for i in range(self.targets.count())]
        if not targets:
            raise ConfigError("add a folder of target images (one per stain)")
        missing = [t for t in targets if not t.is_dir()]
        if missing:
            raise ConfigError(f"stain folder '{missing[0]}' does not exist")
        out_text = self.out.edit.text().strip()
        if not out_text:
            raise ConfigError("choose the model file to write (Save as)")
        out = Path(out_text).expanduser()
        if out.suffix.lower() not in (".pt", ".pth"):
            out = out.with_suffix(".pt")
        if out.exists():
            raise ConfigError(f"'{out}' already exists; choose another name (nothing is "
                              "overwritten)")
        names = self.names_edit.text().strip() or None
        args = TrainSourceArgs(inputs=Path(inputs).expanduser(), targets=targets, out=out,
                               channel_names=names, device=self.device_combo.device(),
                               **self.form.values())
        return prepare_request(args)

    # ------------------------------------------------------------------ run
    def train(self) -> bool:
        """Start training in the background (problems shown in the dock).

        Returns
        -------
        bool
            True if training started.
        """
        if self.state.busy:
            return False
        try:
            request = self.request()
        except LmaddaError as exc:
            self._set_status(str(exc), error=True)
            notify(self.state, "error", f"Cannot train: {exc}")
            return False
        self.plot.clear()
        self.last_reason = None
        self.last_done = None
        self.warnings: list[str] = []
        self._request = request
        cfg, arch = request.config, request.arch
        self.progress.setRange(0, cfg.steps)
        self.progress.setValue(0)
        self.progress.setFormat("reading the images…")
        timing = (f"; about {request.seconds_per_1000 * cfg.steps / 1000 / 60:.0f} min on "
                  "one CPU core" if request.seconds_per_1000 else "")
        self._head = (f"Size '{request.size}': depth {arch.num_downs}, {arch.ngf} filters, "
                      f"{cfg.patch_size} px patches, batch {cfg.batch_size}; augmentation "
                      f"'{cfg.augment}'{timing}")
        self._set_status(f"{self._head}<br>Reading the pairs of '{request.inputs.name}'…")
        self.state.set_busy(True)
        task = workers.start(lambda cancel: workers.train_messages(request, cancel=cancel),
                             self._on_message, self._on_done)
        if not task.done:
            self.task = task
            self._set_idle_ui()
        return True

    def stop(self) -> None:
        """Ask the training to stop at its next step (the best validated state is kept)."""
        if self.task is not None:
            self.task.cancel()
            self.stop_btn.setEnabled(False)
            self.stop_btn.setText("Stopping…")
            self._set_status("Stopping at the next step…")

    @property
    def running(self) -> bool:
        """Whether a training runs."""
        return self.task is not None

    def _on_message(self, msg: Any) -> None:
        from ..adapt.events import Evaluated, Started, Step
        from ..training import NotLearning, TimeEstimate

        if isinstance(msg, Step):
            self.plot.add_loss(msg.step, msg.loss_g)
            self._progress.push(msg)
        elif isinstance(msg, Evaluated):
            self.plot.add(msg.step, msg.criterion, msg.is_best)
        elif isinstance(msg, workers.TrainData):
            held = f", validating on {msg.n_val}" + (
                f" ({len(msg.val_files)} held-out file(s))" if msg.val_files else
                " (the training planes: a single file)")
            self._head += (f"<br>Training on {msg.n_train} plane(s){held}; {msg.encoding}")
            self._set_status(self._head)
            self.warnings = list(msg.warnings)
            if msg.warnings:
                notify(self.state, "warning", "Training data: " + "; ".join(msg.warnings[:3])
                       + (f" (and {len(msg.warnings) - 3} more)" if len(msg.warnings) > 3
                          else ""))
        elif isinstance(msg, Started):
            self.plot.start(msg.total_steps)
            self.progress.setFormat("step 0 / %m")
            self._head += (f"<br>{msg.trainable_params:,} parameters on "
                           f"{self.device_combo.describe(msg.device)}")
            self._set_status(self._head)
        elif isinstance(msg, TimeEstimate):
            self._set_status(f"{self._head}<br>{msg.message()}")
        elif isinstance(msg, NotLearning):
            text = msg.message().replace("\n  - ", " · ")
            self.warnings.append(text)
            self._set_status(f"{self._head}<br><span style='color:{_RED}'>{text}</span>")
            notify(self.state, "warning", f"Training: {text}")
        elif isinstance(msg, workers.TrainDone):
            self._finish(msg)
        elif isinstance(msg, workers.RunFailed):
            self.last_reason = "error"
            self._set_status(msg.message, error=True)
            self.progress.setFormat("failed")
            notify(self.state, "error", f"Training failed: {msg.message}")

    def _refresh(self, ev: Any) -> None:
        if ev is not None:
            eta = ev.eta
            left = (f"{int(eta) // 60}:{int(eta) % 60:02d} left"
                    if math.isfinite(eta) and eta >= 0 else "")
            self.progress.setMaximum(max(1, ev.total_steps))
            self.progress.setValue(ev.step)
            self.progress.setFormat(f"step {ev.step} / {ev.total_steps} · {left}")
        self.plot.refresh()

    def _finish(self, done: workers.TrainDone) -> None:
        self._progress.flush()
        self.last_reason = done.reason
        self.last_done = done
        secs = f"{done.seconds / 60:.1f} min" if done.seconds >= 60 else f"{done.seconds:.0f} s"
        if done.model is None:
            text = (f"Stopped ({done.reason}) before the first validation after {secs}: no "
                    "model was written")
            self._set_status(text, error=True)
            self.progress.setFormat(done.reason)
            notify(self.state, "warning", text)
            return
        head = "Trained" if done.reason == "completed" else f"Training {done.reason}"
        low = ("; <b>the model did not learn</b>: do not adapt or predict with it before "
               "fixing the cause (above)" if done.not_learning else "")
        text = (f"{head} in {secs}: best validation Pearson {done.best_pearson:.3f} at step "
                f"{done.best_step}; saved to '{done.path}' and loaded{low}")
        self.progress.setFormat(f"{done.reason} · best step {done.best_step}")
        self._set_status(f"{self._head}<br>{text}", error=bool(low))
        self._loaded = (done.model, Path(done.path).name if done.path else "trained model",
                        Path(done.path) if done.path else None)

    def _on_done(self) -> None:
        self.task = None
        self._progress.flush()
        self.state.set_busy(False)
        loaded, self._loaded = getattr(self, "_loaded", None), None
        if loaded is not None:
            model, label, path = loaded
            self.state.set_model(model, label, path)
            notify(self.state, "info", f"Trained and loaded {self.state.model_summary()}",
                   toast=False)

    # ------------------------------------------------------------------ display
    def _set_status(self, text: str, error: bool = False) -> None:
        self.status.setText(f"<span style='color:#e06c6c'>{text}</span>" if error else text)

    def _set_idle_ui(self, *_: Any) -> None:
        busy = self.state.busy
        running = self.task is not None
        self.train_btn.setEnabled(not busy)
        self.train_btn.setText("Training…" if running else "Train")
        self.stop_btn.setEnabled(running and not self.task.cancelled)
        if not running:
            self.stop_btn.setText("Stop")
        for w in (self.inputs, self.targets, self.add_target_btn, self.remove_target_btn,
                  self.names_edit, self.out, self.form, self.device_combo):
            w.setEnabled(not busy)
