"""Side by side: the input, the unadapted stain, the adapted stain and the ground truth.

One click puts them in napari's grid (one linked view each, in that order, each named in
its corner) with one contrast range and one grey scale shared by the stains and the ground
truth (linked: moving one moves all); a second click restores the overlay exactly as it was
(order, visibility, colours, contrast). The overlay of stains
on the input stays the default view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SideBySide", "Panels"]


@dataclass
class Panels:
    """The layers of one comparison, left to right (None where there is nothing)."""

    input: Any = None
    unadapted: Any = None
    adapted: Any = None
    truth: Any = None

    def layers(self) -> list[Any]:
        """The layers present, in order."""
        return [ly for ly in (self.input, self.unadapted, self.adapted, self.truth)
                if ly is not None]

    def stains(self) -> list[Any]:
        """The layers that share one contrast range."""
        return [ly for ly in (self.unadapted, self.adapted, self.truth) if ly is not None]


@dataclass
class _Saved:
    visible: dict[int, bool] = field(default_factory=dict)
    order: list[Any] = field(default_factory=list)
    limits: dict[int, tuple] = field(default_factory=dict)
    colormaps: dict[int, Any] = field(default_factory=dict)
    names_shown: dict[int, bool] = field(default_factory=dict)
    grid: tuple = ()


class SideBySide:
    """Switch a viewer between the overlay and a side-by-side grid of one comparison.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose grid is used.
    """

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.saved: _Saved | None = None
        self.panels: Panels | None = None
        self._links: list[Any] = []

    @property
    def active(self) -> bool:
        """Whether the grid shows a comparison."""
        return self.saved is not None

    def show(self, panels: Panels) -> list[str]:
        """Show ``panels`` side by side; returns the names shown, left to right."""
        from napari.experimental import link_layers

        if self.active:
            self.restore()
        layers = panels.layers()
        if len(layers) < 2:
            return []
        v = self.viewer
        grid = v.canvas.grid
        saved = _Saved(grid=(grid.enabled, grid.stride, grid.shape))
        for ly in v.layers:
            saved.visible[id(ly)] = ly.visible
        saved.order = list(v.layers)
        for ly in layers:
            saved.limits[id(ly)] = tuple(ly.contrast_limits)
            saved.colormaps[id(ly)] = ly.colormap
            saved.names_shown[id(ly)] = bool(ly.name_overlay.visible)
        self.saved, self.panels = saved, panels
        stains = panels.stains()
        if stains:
            lo = min(float(ly.contrast_limits[0]) for ly in stains)
            hi = max(float(ly.contrast_limits[1]) for ly in stains)
            for ly in stains:
                ly.contrast_limits = (lo, hi)
                ly.colormap = "gray"  # one scale for all: a dark blue hides what differs
            if len(stains) > 1:
                self._links = link_layers(stains, ("contrast_limits",))
        chosen = {id(ly) for ly in layers}
        for ly in v.layers:
            ly.visible = id(ly) in chosen

        # the grid fills its cells from the bottom of the layer list up: put them at the top,
        # in order (restore() puts them back)
        for ly in layers:
            v.layers.move(v.layers.index(ly), len(v.layers))
        for ly in layers:
            ly.name_overlay.visible = True
        grid.stride = 1
        grid.shape = (-1, -1)  # 2 x 2 for four: larger views than one row
        grid.enabled = True
        v.reset_view()
        return [ly.name for ly in layers]

    def restore(self) -> None:
        """Back to the overlay as it was before (visibility, order, contrast, grid)."""
        from napari.experimental import unlink_layers

        saved, panels = self.saved, self.panels
        self.saved, self.panels = None, None
        if saved is None:
            return
        v = self.viewer
        if self._links:
            try:
                unlink_layers([ly for ly in panels.stains() if ly in v.layers],
                              ("contrast_limits",))
            except Exception:  # noqa: BLE001 - a layer deleted meanwhile: nothing to unlink
                pass
            self._links = []
        enabled, stride, shape = saved.grid
        v.canvas.grid.enabled = enabled
        v.canvas.grid.stride = stride
        v.canvas.grid.shape = shape
        present = [ly for ly in saved.order if ly in v.layers]
        for i, ly in enumerate(present):  # the original order of the layers still there
            v.layers.move(v.layers.index(ly), i)
        for ly in v.layers:
            if id(ly) in saved.visible:
                ly.visible = saved.visible[id(ly)]
            if id(ly) in saved.colormaps:
                ly.colormap = saved.colormaps[id(ly)]
            if id(ly) in saved.limits:
                ly.contrast_limits = saved.limits[id(ly)]
            if id(ly) in saved.names_shown:
                ly.name_overlay.visible = saved.names_shown[id(ly)]
        v.reset_view()
