"""The state the plugin's widgets share within one viewer, with psygnal signals.

One :class:`LmaddaState` exists per viewer (:func:`get_state`). It holds the loaded model, the
two image selections, the adaptation results (each run that produced a new model, numbered),
the layer recommendation and the layers the plugin made. The dock's steps change it and
subscribe to its signals, so they (and the reader and the sample data) stay in step without
knowing each other. Nothing here imports Qt or torch.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from psygnal import Signal

if TYPE_CHECKING:  # pragma: no cover
    from ..adapt.events import AdaptResult
    from ..adapt.recommend import LayerRecommendation
    from ..models.unet import UNetGenerator

__all__ = [
    "DataSelection",
    "AdaptedModel",
    "Recommendation",
    "LmaddaState",
    "get_state",
    "channel_names",
    "ROLES",
    "unchanged",
    "unwrap",
]

Role = Literal["source", "target"]
#: The two image sets, and how the widgets name them.
ROLES: dict[str, str] = {"source": "Source-domain images", "target": "New-microscope images"}


@dataclass(frozen=True)
class DataSelection:
    """Where one image set comes from: a folder on disk or an image layer (by name).

    Attributes
    ----------
    kind : {"folder", "layer"}
        The kind of selection.
    value : str
        The folder path or the layer name.
    """

    kind: Literal["folder", "layer"]
    value: str

    def describe(self) -> str:
        """Describe the selection in a few words (``folder 'cells'`` / ``layer 'phase'``)."""
        if self.kind == "folder":
            return f"folder '{Path(self.value).name or self.value}'"
        return f"layer '{self.value}'"


def unchanged(result: AdaptResult) -> bool:
    """Whether a run ended with the model it started from (nothing better was found).

    True when a method that trains (every method but ``none``) kept step 0: the unadapted
    model's state, e.g. a run stopped before its first evaluation, or one whose label-free
    criterion never improved on the start.
    """
    return result.method != "none" and int(result.best_step) == 0


@dataclass
class AdaptedModel:
    """An adapted model with what made it (for layer names and exported metadata).

    Attributes
    ----------
    result : AdaptResult
        What the engine returned.
    base_label : str
        Label of the model that was adapted.
    run : int
        Number of the run that made it (1, 2, ... for one loaded model; 0 until kept).
    model_serial : int
        Which loaded model it belongs to (:attr:`LmaddaState.model_serial`).
    """

    result: AdaptResult
    base_label: str
    run: int = 0
    model_serial: int = 0

    @property
    def model(self) -> UNetGenerator:
        """The adapted generator."""
        return self.result.model

    @property
    def tag(self) -> str:
        """Short tag for layer names, e.g. ``lmadda L2``, ``adda`` or ``unadapted``."""
        from ..adapt.registry import result_tag

        return result_tag(self.result.method, self.result.layers)

    def describe(self) -> str:
        """``lmadda L10 · run 2 (completed, kept step 120)``."""
        r = self.result
        return (f"{self.tag} · run {self.run} ({r.reason.value}, kept step {r.best_step} "
                f"of {r.steps_done})")


@dataclass
class Recommendation:
    """A layer recommendation and what it was measured on.

    Attributes
    ----------
    result : LayerRecommendation
        What :func:`~napari_lmadda.adapt.recommend.recommend_layer` returned.
    selections : dict
        The source and target selections at the time (to tell when the images changed).
    patch_size : int
        Patch side used for the measurement.
    seconds : float
        How long the measurement took.
    """

    result: LayerRecommendation
    selections: dict[str, DataSelection | None] = field(default_factory=dict)
    patch_size: int = 0
    seconds: float = 0.0

    @property
    def layer(self) -> int | None:
        """The recommended layer (None = no adaptation needed)."""
        return self.result.layer


class LmaddaState:
    """Model, image selections, adaptation results and plugin-made layers of one viewer.

    Signals
    -------
    model_changed(object)
        The loaded model changed (the model, or None).
    data_changed(str)
        A selection changed (``"source"`` or ``"target"``).
    adapted_changed(object)
        The current :class:`AdaptedModel` changed (or None).
    busy_changed(bool)
        A long task started (True) or ended (False).
    recommendation_changed(object)
        A new :class:`Recommendation` for the loaded model (or None).
    message(str, str)
        Something the user must read, ``(level, text)`` with level ``error``, ``warning``
        or ``info``: the dock shows it where the eye is.
    """

    model_changed = Signal(object)
    data_changed = Signal(str)
    adapted_changed = Signal(object)
    busy_changed = Signal(bool)
    recommendation_changed = Signal(object)
    message = Signal(str, str)

    def __init__(self) -> None:
        self.model: UNetGenerator | None = None
        self.model_label: str = ""
        self.model_path: Path | None = None
        self.model_serial: int = 0
        self.selections: dict[str, DataSelection | None] = {"source": None, "target": None}
        self.adapted: AdaptedModel | None = None
        self.runs: list[AdaptedModel] = []
        self.recommendation: Recommendation | None = None
        self.busy: bool = False
        #: ownership key -> weak reference to a layer the plugin made (see stain_layers)
        self.owned: dict[tuple, weakref.ref] = {}

    # ------------------------------------------------------------------ setters
    def set_model(self, model: UNetGenerator | None, label: str = "",
                  path: Path | None = None) -> None:
        """Use ``model`` from now on; its predecessor's results and recommendation are dropped."""
        self.model, self.model_label, self.model_path = model, label, path
        self.model_serial += 1
        self.adapted = None
        self.runs = []
        had_recommendation = self.recommendation is not None
        self.recommendation = None
        self.model_changed.emit(model)
        self.adapted_changed.emit(None)
        if had_recommendation:
            self.recommendation_changed.emit(None)

    def set_selection(self, role: Role, selection: DataSelection | None) -> None:
        """Choose the source (``"source"``) or new-microscope (``"target"``) images."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {list(ROLES)}, got {role!r}")
        if self.selections.get(role) != selection:
            self.selections[role] = selection
            self.data_changed.emit(role)

    def add_result(self, adapted: AdaptedModel) -> AdaptedModel:
        """Keep a new adaptation result as run N and make it the current one."""
        adapted.run = len(self.runs) + 1
        adapted.model_serial = self.model_serial
        self.runs.append(adapted)
        self.set_adapted(adapted)
        return adapted

    def set_adapted(self, adapted: AdaptedModel | None) -> None:
        """Make ``adapted`` (one of :attr:`runs`, or None) the current result."""
        self.adapted = adapted
        self.adapted_changed.emit(adapted)

    def set_recommendation(self, recommendation: Recommendation | None) -> None:
        """Keep the layer recommendation for the loaded model (it survives method changes)."""
        self.recommendation = recommendation
        self.recommendation_changed.emit(recommendation)

    def recommendation_is_current(self) -> bool:
        """Whether the recommendation was measured on the images chosen now."""
        rec = self.recommendation
        return rec is not None and rec.selections == self.selections

    def set_busy(self, busy: bool) -> None:
        """Mark a long task as running (widgets disable conflicting buttons)."""
        if busy != self.busy:
            self.busy = busy
            self.busy_changed.emit(busy)

    def tell(self, level: str, text: str) -> None:
        """Show ``text`` in the dock (``level``: ``error``, ``warning`` or ``info``)."""
        self.message.emit(level, text)

    # ------------------------------------------------------------------ helpers
    def model_summary(self) -> str:
        """One line about the loaded model (or that there is none)."""
        m = self.model
        if m is None:
            return "no model loaded"
        names = channel_names(m)
        cfg = m.config
        return (f"{self.model_label}: UNet, {cfg.num_downs} downs, ngf {cfg.ngf}, "
                f"{m.num_layers} layers, out: {', '.join(names)}")


def channel_names(model: Any) -> list[str]:
    """Return the output channel names of a model (``channel 0``, ... when the file has none)."""
    n = int(model.config.out_channels)
    names = list((getattr(model, "meta", None) or {}).get("channel_names") or [])
    return [str(names[i]) if i < len(names) else f"channel {i}" for i in range(n)]


_STATES: dict[int, LmaddaState] = {}


def unwrap(viewer: Any) -> Any:
    """The viewer itself, not the proxy napari hands to plugin widgets.

    The proxy wraps every attribute it returns, layers included, in a new object each time:
    layers could not be told apart by identity (which layer is the plugin's own).
    """
    while hasattr(viewer, "__wrapped__"):
        viewer = viewer.__wrapped__
    return viewer


def get_state(viewer: Any) -> LmaddaState:
    """Return the shared state of ``viewer`` (created on first use, dropped with the viewer).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose widgets share the state.

    Returns
    -------
    LmaddaState
    """
    viewer = unwrap(viewer)  # napari hands plugin widgets a proxy: key on the viewer itself
    key = id(viewer)
    state = _STATES.get(key)
    if state is None:
        state = _STATES[key] = LmaddaState()
        # the state must not keep the viewer alive; forget it when the viewer goes
        weakref.finalize(viewer, _STATES.pop, key, None)
    return state
