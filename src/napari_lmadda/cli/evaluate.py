"""``lmadda evaluate``: compare a folder of predictions with the ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "evaluate"
HELP = (
    "Compare predictions with ground truth (files matched by name): Pearson, SSIM, PSNR per "
    "image, mean/median and pooled; Dice/Jaccard for masks."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``evaluate`` to its parser."""
    parser.add_argument("--pred", type=Path, required=True, help="folder of predictions")
    parser.add_argument("--truth", type=Path, required=True, help="folder of ground truth")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="OUT.json",
        help="also write the results as JSON (nan/inf written as null)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="foreground threshold: also compute Dice/Jaccard of the masks "
        "(automatic when the truth is a binary mask)",
    )
    parser.add_argument(
        "--metrics",
        default="pearson,ssim,psnr",
        help="comma-separated intensity metrics (default pearson,ssim,psnr)",
    )
    parser.add_argument(
        "--normalize",
        choices=("none", "percentile"),
        default="none",
        help="normalise both images per image before SSIM/PSNR (default none: raw intensities)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json")
    parser.add_argument("--stop-on-error", action="store_true",
                        help="stop at the first unreadable or mismatched pair (default: skip it)")


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table and optionally write JSON."""
    import json

    from ..data.io import atomic_write
    from ..errors import OutputExistsError
    from ..evaluation.metrics import evaluate_folders, format_table, result_to_json

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise OutputExistsError(f"'{args.json}' already exists (use --overwrite to replace it)")
    result = evaluate_folders(
        args.pred,
        args.truth,
        metrics=metrics,
        threshold=args.threshold,
        normalize=None if args.normalize == "none" else args.normalize,
        stop_on_error=args.stop_on_error,
    )
    print(format_table(result))
    for item in result.get("skipped", []):
        print(f"skipped {item['name']}: {item['reason']}")
    if args.json is not None:
        text = json.dumps(result_to_json(result), indent=2, allow_nan=False)
        atomic_write(
            args.json,
            lambda p: p.write_text(text + "\n", encoding="utf-8"),
            overwrite=args.overwrite,
        )
        print(f"wrote {args.json}")
    return 1 if result.get("skipped") else 0
