"""napari sample data: synthetic cells seen by two microscopes, and the demo model.

The source set is phase contrast (the modality the demo model was trained on); the
new-microscope set is bright-field images of other cells, with their DAPI and CD29 ground truth
(hidden) so the virtual stains can be judged. Opening the sample also chooses the two sets in
the dock's Images step and loads the bundled demo model when it is installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_sample_data", "SOURCE_NAME", "TARGET_NAME", "N_FIELDS", "FIELD_SIZE"]

SOURCE_NAME = "source (phase contrast)"
TARGET_NAME = "new microscope (bright-field)"
N_FIELDS = 4
FIELD_SIZE = 256


def make_sample_data() -> list[tuple[Any, dict, str]]:
    """Synthetic phase-contrast (source) and bright-field (new microscope) fields.

    Returns
    -------
    list of tuple
        Layer data: the two input stacks ``(4, 256, 256)`` and the new microscope's DAPI and
        CD29 ground truth.
    """
    from .data.synthetic import make_domain

    source = make_domain(N_FIELDS, modality="phase", size=FIELD_SIZE, seed=11)
    target = make_domain(N_FIELDS, modality="brightfield", size=FIELD_SIZE, seed=23)
    info = {"lmadda": {"generator": "napari_lmadda.data.synthetic.make_domain"}}
    layers: list[tuple[Any, dict, str]] = [
        (source["input"], {"name": SOURCE_NAME, "colormap": "gray", "visible": False,
                           "metadata": {**info, "modality": "phase", "seed": 11}}, "image"),
        (target["input"], {"name": TARGET_NAME, "colormap": "gray",
                           "metadata": {**info, "modality": "brightfield", "seed": 23}}, "image"),
    ]
    for key, marker, cmap in (("dapi", "DAPI", "blue"), ("cd29", "CD29", "green")):
        layers.append((target[key], {
            "name": f"{marker} (ground truth)", "colormap": cmap, "blending": "additive",
            "visible": False, "contrast_limits": (0.0, 1.0),
            "metadata": {**info, "channel": marker, "seed": 23}}, "image"))
    _select_in_current_viewer()
    return layers


def _select_in_current_viewer() -> None:
    """Choose the sample sets in the Images step and load the demo model if there is one."""
    import napari

    from .widgets.state import DataSelection, get_state

    viewer = napari.current_viewer()
    if viewer is None:
        return
    state = get_state(viewer)
    state.set_selection("source", DataSelection("layer", SOURCE_NAME))
    state.set_selection("target", DataSelection("layer", TARGET_NAME))
    if state.model is None and not state.busy:
        from .assets import ASSETS

        if (ASSETS / "demo_model.pt").is_file():
            from .widgets.model_step import DEMO, load_into_state

            load_into_state(viewer, DEMO)
