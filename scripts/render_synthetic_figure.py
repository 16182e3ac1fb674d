"""Render docs/synthetic_fields.png: three synthetic fields in every view the benchmark uses.

Run from the repository root: ``python scripts/render_synthetic_figure.py [--out PATH]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_lmadda.data.synthetic import make_field, overexpose, rescale  # noqa: E402

COLUMNS = [
    ("phase contrast", "gray", lambda f: f.phase),
    ("bright field", "gray", lambda f: f.brightfield),
    ("DAPI (target)", "magma", lambda f: f.dapi),
    ("CD29 (target)", "viridis", lambda f: f.cd29),
    ("phase, overexposed 1.5x", "gray", lambda f: overexpose(f.phase, 1.5)),
    ("phase, zoomed 2x", "gray", lambda f: rescale(f.phase, 2.0)),
]


def render(out: Path, seeds: tuple[int, ...] = (1, 2, 3), size: int = 256) -> Path:
    fields = [make_field(size, seed=s) for s in seeds]
    fig, axes = plt.subplots(
        len(fields), len(COLUMNS), figsize=(2.6 * len(COLUMNS), 2.75 * len(fields))
    )
    axes = np.atleast_2d(axes)
    for r, (fld, seed) in enumerate(zip(fields, seeds)):
        for c, (title, cmap, view) in enumerate(COLUMNS):
            ax = axes[r, c]
            ax.imshow(view(fld), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"seed {seed}", fontsize=10)
    fig.suptitle(
        "Synthetic MSC-like fields (napari_lmadda.data.synthetic, 256 x 256 px)", fontsize=12
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/synthetic_fields.png"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    print(f"wrote {render(args.out, tuple(args.seeds))}")


if __name__ == "__main__":
    main()
