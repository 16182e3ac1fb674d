"""``lmadda evaluate``: compare a folder of predictions with the ground truth."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..options import add_arguments as add_arguments_of
from ..options import option

NAME = "evaluate"
HELP = (
    "Compare predictions with ground truth (files matched by name, <stem>_pred with <stem>; "
    "the stain channel named like the truth folder): Pearson, SSIM, PSNR per image, "
    "mean/median and pooled; Dice/Jaccard for masks."
)


@dataclass(kw_only=True)
class EvaluateArgs:
    """The options of ``evaluate``."""

    pred: Path = option(help="folder of predictions", flag="--pred")
    truth: Path = option(help="folder of ground truth", flag="--truth")
    json: Path | None = option(None, "also write the results as JSON (nan/inf written as "
                               "null)", flag="--json", metavar="OUT.json")
    threshold: float | None = option(None, "foreground threshold: also compute Dice/Jaccard "
                                     "of the masks (automatic when the truth is a binary mask)",
                                     flag="--threshold")
    metrics: str = option("pearson,ssim,psnr", "comma-separated intensity metrics",
                          flag="--metrics", default_text="default pearson,ssim,psnr")
    normalize: str = option("none", "normalise both images per image before SSIM/PSNR",
                            flag="--normalize", choices=("none", "percentile"),
                            default_text="default none: raw intensities")
    channel: str | None = option(None, "the prediction channel to score, by name (e.g. "
                                 "DAPI)", flag="--channel", default_text="the one named like "
                                 "the --truth folder, e.g. bf_truth/dapi -> DAPI")
    overwrite: bool = option(False, "replace an existing --json", flag="--overwrite")
    stop_on_error: bool = option(False, "stop at the first unreadable or mismatched pair "
                                 "(default: skip it)", flag="--stop-on-error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``evaluate`` to its parser (:class:`EvaluateArgs`)."""
    add_arguments_of(parser, EvaluateArgs)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table and optionally write JSON."""
    import json

    from ..data.io import atomic_write
    from ..errors import OutputExistsError
    from ..evaluation.metrics import evaluate_folders, format_table, result_to_json

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if args.json is not None:
        _refuse_an_input(args.json, {"--pred": args.pred, "--truth": args.truth})
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise OutputExistsError(f"'{args.json}' already exists (use --overwrite to replace it)")
    result = evaluate_folders(
        args.pred,
        args.truth,
        metrics=metrics,
        threshold=args.threshold,
        normalize=None if args.normalize == "none" else args.normalize,
        stop_on_error=args.stop_on_error,
        channel=args.channel,
    )
    if isinstance(result.get("channel"), str):
        print(f"channel {result['channel']} of the predictions")
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


def _refuse_an_input(out: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output path that is one of the inputs (``--overwrite`` would replace it)."""
    from ..data.io import list_images
    from ..errors import ConfigError, LmaddaError

    target = Path(out).expanduser().resolve()
    for flag, where in inputs.items():
        where = Path(where).expanduser()
        try:
            files = [where] if where.is_file() else list_images(where)
        except LmaddaError:
            continue  # evaluate itself says what is wrong with the folder
        if target == where.resolve() or target in {f.resolve() for f in files}:
            raise ConfigError(f"--json '{out}' is one of the inputs (an image of {flag} "
                              f"'{where}'); choose another file")
