"""``lmadda demo``: the whole story on the embedded default, in a few minutes on a laptop CPU.

The bundled demo model was trained on synthetic phase-contrast fields to predict DAPI and
CD29. The demo makes unlabeled source (phase contrast) and new-microscope images (bright
field by default, or overexposed / rescaled phase contrast), adapts the model with no
adaptation, AdaBN, output-layer ADDA and LM-ADDA at one layer, scores each on held-out
new-microscope fields with ground truth (Pearson), and writes the table, the predicted
stains as TIFF, the adapted model and a figure to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..adapt.registry import METHODS as REGISTRY
from ..adapt.registry import baselines
from ..data.synthetic import PROJECT_DOMAINS
from ..errors import ConfigError, OutputExistsError
from ..options import add_arguments as add_arguments_of
from ..options import check_args, option

NAME = "demo"
HELP = (
    "Run the whole LM-ADDA story on synthetic data with the bundled demo model "
    "(no adaptation vs AdaBN vs ADDA vs LM-ADDA) and write a table, TIFFs and a figure. "
    "Most of the time goes to ADDA, whose discriminator judges full-size outputs; "
    "--methods none,adabn,lmadda skips it."
)

SHIFTS = {k: v for k, v in PROJECT_DOMAINS.items() if k in ("brightfield", "overexpose", "scale")}
#: the registry's baselines and LM-ADDA
METHODS = (*baselines(), "lmadda")


@dataclass(kw_only=True)
class DemoArgs:
    """The options of ``demo``."""

    out: Path = option(Path("lmadda_demo"), "output folder", flag="--out",
                       default_text="./lmadda_demo")
    shift: str = option("brightfield", "the new microscope: bright field, overexposed 1.5x or "
                        "magnified 2x phase contrast", flag="--shift", choices=tuple(SHIFTS))
    layer: int = option(10, "layer LM-ADDA matches", flag="--layer", low=1,
                        default_text="10: the best for CD29 on the bright-field benchmark, "
                        "docs/benchmarks.md")
    methods: str = option(",".join(METHODS), f"comma-separated subset of {','.join(METHODS)}",
                          flag="--methods", default_text="")
    steps: int = option(300, "adaptation steps", flag="--steps", low=1)
    images: int = option(24, "unlabeled images per domain", flag="--images", low=1)
    test_images: int = option(4, "labelled new-microscope fields for scoring",
                              flag="--test-images", low=1)
    model: str = option("demo", "source model", flag="--model", default_text="bundled demo")
    seed: int = option(0, "seed of the adaptation runs", flag="--seed")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", flag="--device")
    quick: bool = option(False, "tiny run (a few steps, 64 px fields) to check the "
                         "installation", flag="--quick")
    overwrite: bool = option(False, "replace the results of an earlier demo in --out",
                             flag="--overwrite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``demo``."""
    add_arguments_of(parser, DemoArgs)


def _figure(path: Path, test: dict, preds: dict[str, np.ndarray], names: list[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = [("new-microscope input", test["input"][0], "gray")]
    cols += [(f"truth {n}", test[n.lower()][0], "magma") for n in names]
    rows = [("", cols)]
    for method, p in preds.items():
        rows.append((method, [(f"{method}: {n}", p[0, c], "magma") for c, n in enumerate(names)]))
    ncol = max(len(r[1]) for r in rows)
    fig = Figure(figsize=(2.6 * ncol, 2.6 * len(rows)), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for i, (_, items) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(items):
                title, img, cmap = items[j]
                ax.imshow(
                    img,
                    cmap=cmap,
                    vmin=0 if cmap != "gray" else None,
                    vmax=1 if cmap != "gray" else None,
                )
                ax.set_title(title, fontsize=8)
    fig.savefig(path)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0."""
    import torch

    from ..adapt.config import AdaptConfig, eval_every_for
    from ..adapt.engine import iter_adapt
    from ..adapt.events import Evaluated, Finished
    from ..data.io import write_tiff
    from ..data.synthetic import make_domain
    from ..devices import resolve_device
    from ..evaluation.metrics import pearson
    from ..inference.predict import predict_image
    from ..models import load_model, save_model

    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods takes a subset of {','.join(METHODS)}, got {args.methods!r}")
    check_args(args, DemoArgs, names=("steps", "images", "test_images"))
    out = Path(args.out)
    if (out / "results.json").exists() and not args.overwrite:
        raise OutputExistsError(
            f"'{out}' already holds demo results; use --overwrite or another --out"
        )
    (out / "test" / "input").mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    t0 = time.time()
    model = load_model(args.model, device=device)
    names = list(model.meta.get("channel_names") or ["DAPI", "CD29"])
    if model.num_layers < args.layer or args.layer < 1:
        raise ConfigError(
            f"--layer {args.layer} is out of range: this model has layers 1..{model.num_layers}"
        )
    size, n, steps, patch = 256, args.images, args.steps, 128
    if args.quick:
        size, n, steps, patch = 128, 4, 4, 64
    kw = SHIFTS[args.shift]
    source = make_domain(n, modality="phase", size=size, seed=11)["input"]
    target = make_domain(n, size=size, seed=12, **kw)["input"]
    test = make_domain(args.test_images, size=size, seed=13, **kw)
    print(
        f"demo: model with {model.num_layers} layers ({', '.join(names)}); source = phase "
        f"contrast, new microscope = {args.shift}; {n} unlabeled images each, "
        f"{args.test_images} labelled test fields; device {device}"
    )
    for i, img in enumerate(test["input"]):
        write_tiff(
            out / "test" / "input" / f"field{i}.tif",
            img,
            overwrite=True,
            metadata={"shift": args.shift, "generator": "napari_lmadda.data.synthetic"},
        )
        for name in names:
            (out / "test" / name.lower()).mkdir(parents=True, exist_ok=True)
            write_tiff(
                out / "test" / name.lower() / f"field{i}.tif",
                test[name.lower()][i],
                overwrite=True,
                metadata={"stain": name},
            )
    cfg = AdaptConfig(
        steps=steps,
        batch_size=8 if not args.quick else 2,
        patch_size=patch,
        eval_every=eval_every_for(steps, evaluations=8, at_most=steps),
        eval_patches=32 if not args.quick else 4,
        seed=args.seed,
        device=str(device),
    )
    table: dict[str, dict[str, float]] = {}
    preds: dict[str, np.ndarray] = {}
    for method in methods:
        t1 = time.time()
        entry = REGISTRY[method]
        label = f"{method} L{args.layer}" if entry.needs_layers else method
        result = None
        for ev in iter_adapt(
            model,
            source,
            target,
            method=method,
            layers=args.layer if entry.needs_layers else None,
            config=cfg,
        ):
            if isinstance(ev, Evaluated) and ev.step > 0:
                print(
                    f"  {label}: step {ev.step}/{steps}  criterion {ev.criterion:.3f}"
                    f"  D acc {ev.metrics.get('d_acc', float('nan')):.2f}",
                    flush=True,
                )
            if isinstance(ev, Finished):
                result = ev.result
        assert result is not None
        with torch.no_grad():
            p = np.stack([predict_image(result.model, img, tile=size) for img in test["input"]])
        preds[label] = p
        table[label] = {
            name: float(np.mean([pearson(p[i, c], test[name.lower()][i]) for i in range(len(p))]))
            for c, name in enumerate(names)
        }
        (out / "predictions" / label.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
        for i in range(len(p)):
            write_tiff(
                out / "predictions" / label.replace(" ", "_") / f"field{i}_pred.tif",
                p[i],
                overwrite=True,
                metadata={"method": label, "channels": names, "model": result.provenance},
            )
        if entry.adversarial:  # the trained models are worth keeping
            save_model(
                result.model,
                out / f"adapted_{label.replace(' ', '_')}.pt",
                provenance={**result.provenance, "demo_shift": args.shift},
            )
        print(
            f"  {label}: "
            + ", ".join(f"Pearson {k} {v:.3f}" for k, v in table[label].items())
            + f"  ({time.time() - t1:.0f} s)",
            flush=True,
        )
    width = max(len(k) for k in table) + 2
    lines = [f"{'method':<{width}}" + "".join(f"{n:>10}" for n in names)]
    lines += [f"{k:<{width}}" + "".join(f"{v[n]:>10.3f}" for n in names) for k, v in table.items()]
    print("\nPearson on the new microscope's test fields (ground truth used only here):")
    print("\n".join(lines))
    _figure(out / "demo.png", test, preds, names)
    (out / "results.json").write_text(
        json.dumps(
            {
                "shift": args.shift,
                "layer": args.layer,
                "steps": steps,
                "pearson": table,
                "seconds": time.time() - t0,
            },
            indent=1,
        )
    )
    print(
        f"\nwrote {out}/results.json, demo.png, predictions/, test/ and the adapted models "
        f"in {time.time() - t0:.0f} s"
    )
    return 0
