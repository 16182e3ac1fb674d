"""Options of an adaptation run: each field carries its help, range and CLI flag.

:class:`AdaptConfig` holds the settings every method shares and one sub-configuration per
method that has its own (:class:`ApmaOptions`, :class:`AdabnOptions`, :class:`ScganOptions`).
A method's options are also reachable by their flat names, ``AdaptConfig(apma_parts="en")``
and ``config.apma_parts``, which are the names of the CLI flags (``--apma-parts``) and of the
flat dictionaries stored in model provenance and run states (:meth:`AdaptConfig.to_dict`).
How the metadata becomes checks, flags, GUI controls and this docstring:
:mod:`napari_lmadda.options`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import ConfigError
from ..options import group, option, settings, validate

__all__ = [
    "AdaptConfig", "ApmaOptions", "AdabnOptions", "ScganOptions", "eval_every_for",
    "GAN_LOSSES", "BN_MODES", "CRITERIA", "APMA_PARTS", "ADABN_STATS", "ADABN_LAYERS",
    "AMP_MODES",
]

GAN_LOSSES = ("lsgan", "vanilla")
BN_MODES = ("eval", "train")
CRITERIA = ("gap", "d_acc", "tap_w2", "last")
APMA_PARTS = ("en", "de_feat", "de_pred")  # joined by "+", or "all"
ADABN_STATS = ("cumulative", "momentum")
ADABN_LAYERS = ("upto", "listed")
AMP_MODES = ("off", "bf16", "fp16")


def parse_apma_parts(spec: str) -> str:
    """``" EN+de_feat "`` -> ``"en+de_feat"``: ``all`` or distinct parts joined by ``+``.

    Raises
    ------
    ConfigError
        For an unknown or repeated part.
    """
    parts = str(spec).strip().lower().replace(" ", "")
    names = parts.split("+")
    if parts != "all" and (
        any(n not in APMA_PARTS for n in names) or len(set(names)) != len(names)
    ):
        raise ConfigError(
            f"apma_parts must be 'all' or parts joined by '+' from {', '.join(APMA_PARTS)} "
            f"(e.g. en+de_feat), got {spec!r}"
        )
    return parts


def _crop(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value % 16:
        raise ConfigError(f"scgan_crop must be 0 or a multiple of 16, got {value!r}")
    return value


def _trainable(value) -> tuple[int, int]:
    t = tuple(int(v) for v in value)
    if len(t) != 2 or t[0] < 1 or t[1] < t[0]:
        raise ConfigError(
            f"trainable must be (first, last) with 1 <= first <= last, got {value!r}")
    return t


_LR = {"low": 0.0, "high": 1.0, "low_open": True, "what": "a learning rate"}
_UNIT = {"low": 0.0, "high": 1.0, "high_open": True}  # [0, 1)


@dataclass
class ApmaOptions:
    """Options of APMA (``method="apma"``)."""

    parts: str = option(
        "all", "'all' or parts joined by '+': en = reconstruction decoder on the encoder, "
        "de_feat = discriminator on the last decoder features, de_pred = discriminator on "
        "the predictions (e.g. en+de_feat)", flag="--apma-parts", metavar="PARTS",
        check=parse_apma_parts, suggestions=("all", "en", "de_feat", "de_pred", "en+de_feat"),
        label="Parts", dock=True)
    rec_weight: float = option(
        1.0, "weight of the reconstruction loss", flag="--apma-rec-weight", low=0.0,
        doc="Same ratio to the adversarial terms as the seed's lambda_rec : lambda_feat.")
    warmup: int = option(
        100, "steps fitting the reconstruction decoder alone (frozen encoder) before G' "
        "trains", low=0)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class AdabnOptions:
    """Options of AdaBN (``method="adabn"``)."""

    stats: str = option(
        "cumulative", "cumulative: exact statistics over all target batches; momentum: "
        "torch's running average (momentum 0.1) starting from the source statistics",
        flag="--adabn-stats", choices=ADABN_STATS, label="Statistics", dock=True)
    layers: str = option(
        "upto", "with layers: re-estimate the BatchNorms of layers 1 to the largest given "
        "(upto), or of exactly the given layers (listed)", flag="--adabn-layers",
        choices=ADABN_LAYERS, label="BatchNorms", dock=True)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class ScganOptions:
    """Options of SCGAN (``method="scgan"``)."""

    ngf: int = option(8, "translator width; CycleGAN uses 64", flag="--scgan-ngf", low=1,
                      high=256, doc="8 and 3 blocks are sized for a CPU.")
    blocks: int = option(3, "translator residual blocks (CycleGAN: 9)", flag="--scgan-blocks",
                         low=0, high=16)
    lr: float = option(2e-4, "learning rate of the translators and discriminators (paper: "
                       "2e-4)", **_LR)
    cycle: float = option(10.0, "weight of the cycle-consistency loss (paper: 10)", low=0.0)
    identity: float = option(0.5, "weight of the identity loss (paper: 0.5)", low=0.0)
    crop: int = option(
        64, "train on random crops of this side, 0 = whole patches", flag="--scgan-crop",
        check=_crop, doc="A multiple of 16. Translating local appearance needs little "
        "context, and 64 px crops of 128 px patches make a step about 4x cheaper on a CPU.")

    def __post_init__(self) -> None:
        validate(self)


@settings
class AdaptConfig:
    """Hyper-parameters of adversarial (and batch-norm) adaptation.

    The defaults are the settings that were stable on the project's synthetic benchmark
    (``benchmarks/quality.py``); see ``docs/benchmarks.md`` for what was tried. The options
    of one method are in its sub-configuration (``apma``, ``adabn``, ``scgan``) and also
    under flat names: ``AdaptConfig(apma_parts="en").apma.parts == "en"``.
    """

    steps: int = option(
        1200, "training steps", flag="--steps", low=1,
        doc="One discriminator + one G' update each. On the bright-field benchmark LM-ADDA "
        "at layer 10 still improved from 600 (CD29 0.743) to 1200 steps (about 0.76), with "
        "the label-free criterion keeping steps 1100-1200.")
    batch_size: int = option(8, "patches per domain and step", flag="--batch", low=1)
    patch_size: int = option(128, "patch side, a multiple of 2**num_downs", flag="--patch",
                             low=1)
    lr_g: float = option(3e-5, "learning rate of G'", flag="--lr-g", **_LR)
    lr_d: float = option(1e-4, "learning rate of D", flag="--lr-d", **_LR)
    beta1: float = option(0.5, "Adam beta1 (pix2pix: 0.5)", **_UNIT)
    beta2: float = option(0.999, "Adam beta2 (pix2pix: 0.999)", **_UNIT)
    gan_loss: str = option("lsgan", "least-squares or BCE-with-logits adversarial loss",
                           choices=GAN_LOSSES)
    ndf: int = option(32, "discriminator width", low=1)
    d_spectral_norm: bool = option(
        True, "spectral normalisation in the discriminator (keeps it from overpowering G')")
    d_gate: float = option(
        0.0, "update G' only while the discriminator's accuracy on the step is at least this "
        "(0 = always)", low=0.0, high=1.0,
        doc="Stops G' chasing a discriminator that is already fooled.")
    source_weight: float = option(
        1.0, "weight of the source-consistency term |G'_l(x) - G_l(x)| on source images",
        low=0.0, doc="G' must keep doing what G did on the source domain (no labels needed).")
    ema_decay: float = option(
        0.995, "exponential moving average of G''s weights (0 = off)", **_UNIT,
        doc="The EMA weights are the ones evaluated and kept.")
    init_adabn: bool = option(
        False, "start G' from batch-norm statistics re-estimated on the target (layers <= l "
        "only)", doc="Off by default: on the bright-field benchmark, re-estimating only the "
        "statistics of layers <= 2 lowered CD29 Pearson (0.524 -> 0.491), and target "
        "statistics make the source-consistency term compare G' and G under different "
        "normalisations. APMA and SCGAN ignore it.")
    bn_mode: str = option(
        "eval", "BatchNorm mode of G (source taps) and G' (target taps) during training: "
        "running statistics (eval) or batch statistics with running stats untouched (train)",
        choices=BN_MODES)
    eval_every: int = option(100, "steps between evaluations of the label-free criterion",
                             flag="--eval-every", low=1)
    eval_patches: int = option(32, "patches per domain in the fixed evaluation set", low=1)
    criterion: str = option(
        "gap", "label-free criterion that picks the kept state", flag="--criterion",
        choices=CRITERIA,
        doc="gap = per-channel Wasserstein distance between G'(target) and G(source) "
        "activations over the layers from l to the output, plus the source drift; d_acc = "
        "discriminator accuracy nearest 0.5; tap_w2 = distance at the matched layer only; "
        "last = the final state.")
    patience: int | None = option(
        None, "stop after this many evaluations without improvement", flag="--patience",
        low=1, default_text="off", doc="None = run all steps.")
    trainable: tuple[int, int] | None = option(
        None, "(first, last) layers of G' to train; None = (1, l)", check=_trainable,
        doc="last may not exceed l.")
    apma: ApmaOptions = group(ApmaOptions, "apma")
    adabn: AdabnOptions = group(AdabnOptions, "adabn")
    scgan: ScganOptions = group(ScganOptions, "scgan")
    seed: int = option(0, "seed of sampling, initialisation and dropout", flag="--seed")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps", flag="--device")
    amp: str = option(
        "off", "mixed precision of the training passes: bf16 (CPU or GPU) or fp16 (CUDA "
        "only)", flag="--amp", choices=AMP_MODES,
        doc="Autocast; the criterion is always evaluated in float32; fp16 uses gradient "
        "scaling.")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        """Flat plain dict (``apma_parts``, not ``apma.parts``) for provenance and run states.

        The flat layout is the one model files and run states have always stored, so files
        written before the sub-configurations existed compare equal.
        """
        d: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if "group" in f.metadata:
                prefix = f.metadata["group"][1]
                d.update({f"{prefix}_{g.name}": getattr(value, g.name) for g in fields(value)})
            else:
                d[f.name] = value
        d["trainable"] = list(self.trainable) if self.trainable else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AdaptConfig:
        """Inverse of :meth:`to_dict` (flat or nested sub-dicts), ignoring unknown keys."""
        kw = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            value = d[f.name]
            if "group" in f.metadata and isinstance(value, dict):
                sub = f.metadata["group"][0]
                value = sub(**{k: v for k, v in value.items()
                               if k in sub.__dataclass_fields__})
            kw[f.name] = value
        kw.update({k: v for k, v in d.items() if k in cls.ALIASES})
        if kw.get("trainable") is not None:
            kw["trainable"] = tuple(kw["trainable"])
        return cls(**kw)


def eval_every_for(steps: int, evaluations: int = 4, at_most: int = 50) -> int:
    """Steps between evaluations for a run watched live: ``evaluations`` or more per run.

    At most ``at_most`` steps apart, so the kept-state mark and a Stop's fallback move often.
    """
    return max(1, min(at_most, steps // evaluations or 1))
