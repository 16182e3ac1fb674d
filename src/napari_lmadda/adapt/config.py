"""Options of an adaptation run, validated in one place."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import ConfigError

__all__ = [
    "AdaptConfig", "GAN_LOSSES", "BN_MODES", "CRITERIA", "APMA_PARTS", "ADABN_STATS",
    "ADABN_LAYERS",
]

GAN_LOSSES = ("lsgan", "vanilla")
BN_MODES = ("eval", "train")
CRITERIA = ("gap", "d_acc", "tap_w2", "last")
APMA_PARTS = ("en", "de_feat", "de_pred")  # joined by "+", or "all"
ADABN_STATS = ("cumulative", "momentum")
ADABN_LAYERS = ("upto", "listed")


@dataclass
class AdaptConfig:
    """Hyper-parameters of adversarial (and batch-norm) adaptation.

    The defaults are the settings that were stable on the project's synthetic benchmark
    (``benchmarks/quality.py``); see ``docs/benchmarks.md`` for what was tried.

    Parameters
    ----------
    steps : int
        Training steps (one discriminator + one G' update each). On the bright-field
        benchmark LM-ADDA at layer 10 still improved from 600 (CD29 0.743) to 1200 steps
        (about 0.76), with the label-free criterion keeping steps 1100-1200.
    batch_size, patch_size : int
        Patches per domain per step, and their side (a multiple of ``2**num_downs``).
    lr_g, lr_d : float
        Adam learning rates of G' and of the discriminator.
    beta1, beta2 : float
        Adam betas (pix2pix: 0.5, 0.999).
    gan_loss : {"lsgan", "vanilla"}
        Least-squares or BCE-with-logits adversarial loss.
    ndf : int
        Discriminator width.
    d_spectral_norm : bool
        Spectral normalisation in the discriminator (keeps it from overpowering G').
    d_gate : float
        Update G' only while the discriminator's accuracy on the step is at least this
        (0 = always); stops G' chasing a discriminator that is already fooled.
    source_weight : float
        Weight of the source-consistency term ``|G'_l(x) - G_l(x)|`` on source images: G' must
        keep doing what G did on the source domain (no labels needed).
    ema_decay : float
        Exponential moving average of G''s weights (0 = off); the EMA weights are the ones
        evaluated and kept.
    init_adabn : bool
        Start G' from batch-norm statistics re-estimated on the target (layers <= l only).
        Off by default: on the bright-field benchmark, re-estimating only the statistics of
        layers <= 2 lowered CD29 Pearson (0.524 -> 0.491), and target statistics make the
        source-consistency term compare G' and G under different normalisations.
    bn_mode : {"eval", "train"}
        BatchNorm mode of both G (source taps) and G' (target taps) during training. ``eval``
        uses running statistics; ``train`` uses batch statistics (running stats untouched).
    eval_every : int
        Steps between evaluations of the label-free criterion.
    eval_patches : int
        Patches per domain in the fixed evaluation set.
    criterion : {"gap", "d_acc", "tap_w2", "last"}
        How the kept state is chosen without labels: ``gap`` = per-channel Wasserstein
        distance between G'(target) and G(source) activations over the layers from l to the
        output, plus the source drift; ``d_acc`` = discriminator accuracy nearest 0.5;
        ``tap_w2`` = distance at the matched layer only; ``last`` = the final state.
    patience : int or None
        Stop after this many evaluations without improvement (None = run all steps).
    trainable : tuple of int or None
        ``(first, last)`` layers of G' to train; ``None`` = ``(1, l)``. ``last`` may not exceed l.
    apma_parts : str
        APMA parts (``method="apma"``): ``"all"`` or parts joined by ``+`` from ``en``
        (reconstruction decoder on the encoder), ``de_feat`` (discriminator on the last
        decoder features), ``de_pred`` (discriminator on the predictions), e.g. ``en+de_feat``.
    apma_rec_weight : float
        Weight of APMA's reconstruction loss (same ratio to the adversarial terms as the
        seed's lambda_rec : lambda_feat).
    apma_warmup : int
        Steps fitting APMA's reconstruction decoder alone (frozen encoder) before G' trains.
    adabn_stats : {"cumulative", "momentum"}
        AdaBN statistics: exact mean/variance over all target batches, or torch's running
        average (momentum 0.1) starting from the source statistics.
    adabn_layers : {"upto", "listed"}
        With ``layers``, AdaBN re-estimates the BatchNorms of layers ``<= max(layers)``
        (``upto``) or of exactly the listed layers (``listed``).
    scgan_ngf, scgan_blocks : int
        SCGAN translator width and residual blocks (8 and 3: sized for a CPU; the paper's
        CycleGAN generator has 64 and 9).
    scgan_lr : float
        SCGAN learning rate of the translators and discriminators (paper: 2e-4).
    scgan_cycle, scgan_identity : float
        SCGAN weights of the cycle-consistency and identity losses (paper: 10 and 0.5).
    scgan_crop : int
        SCGAN trains on a random crop of this side from each batch of patches (a multiple
        of 16; 0 = the whole patches): translating local appearance needs little context,
        and 64 px crops of 128 px patches make a step about 4x cheaper on a CPU.
    seed : int
        Seeds sampling, initialisation and dropout.
    device : str
        ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
    amp : {"off", "bf16", "fp16"}
        Mixed precision of the training forward passes (autocast; the criterion is always
        evaluated in float32). ``bf16`` works on the CPU and recent GPUs; ``fp16`` needs CUDA
        and uses gradient scaling.
    """

    steps: int = 1200
    batch_size: int = 8
    patch_size: int = 128
    lr_g: float = 3e-5
    lr_d: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gan_loss: str = "lsgan"
    ndf: int = 32
    d_spectral_norm: bool = True
    d_gate: float = 0.0
    source_weight: float = 1.0
    ema_decay: float = 0.995
    init_adabn: bool = False
    bn_mode: str = "eval"
    eval_every: int = 100
    eval_patches: int = 32
    criterion: str = "gap"
    patience: int | None = None
    trainable: tuple[int, int] | None = None
    apma_parts: str = "all"
    apma_rec_weight: float = 1.0
    apma_warmup: int = 100
    adabn_stats: str = "cumulative"
    adabn_layers: str = "upto"
    scgan_ngf: int = 8
    scgan_blocks: int = 3
    scgan_lr: float = 2e-4
    scgan_cycle: float = 10.0
    scgan_identity: float = 0.5
    scgan_crop: int = 64
    seed: int = 0
    device: str = "auto"
    amp: str = "off"

    def __post_init__(self) -> None:
        if self.amp not in ("off", "bf16", "fp16"):
            raise ConfigError(f"amp must be one of off, bf16, fp16, got {self.amp!r}")
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {v!r}")

        for name in ("steps", "batch_size", "patch_size", "ndf", "eval_every", "eval_patches"):
            positive_int(name)
        for name in ("lr_g", "lr_d"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0 or v > 1:
                raise ConfigError(f"{name} must be a learning rate in (0, 1], got {v!r}")
        for name in ("beta1", "beta2", "ema_decay"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {v!r}")
        if not isinstance(self.scgan_ngf, int) or not 1 <= self.scgan_ngf <= 256:
            raise ConfigError(
                f"scgan_ngf must be a whole number in 1..256, got {self.scgan_ngf!r}")
        if not isinstance(self.scgan_blocks, int) or not 0 <= self.scgan_blocks <= 16:
            raise ConfigError(
                f"scgan_blocks must be a whole number in 0..16, got {self.scgan_blocks!r}")
        if not math.isfinite(self.scgan_lr) or not 0 < self.scgan_lr <= 1:
            raise ConfigError(f"scgan_lr must be a learning rate in (0, 1], got {self.scgan_lr!r}")
        if not isinstance(self.scgan_crop, int) or self.scgan_crop < 0 or self.scgan_crop % 16:
            raise ConfigError(
                f"scgan_crop must be 0 or a multiple of 16, got {self.scgan_crop!r}")
        for name in ("scgan_cycle", "scgan_identity"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.d_gate <= 1:
            raise ConfigError(f"d_gate must be in [0, 1], got {self.d_gate!r}")
        if self.source_weight < 0 or not math.isfinite(self.source_weight):
            raise ConfigError(f"source_weight must be >= 0, got {self.source_weight!r}")
        if self.gan_loss not in GAN_LOSSES:
            raise ConfigError(f"gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        if self.bn_mode not in BN_MODES:
            raise ConfigError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {self.patience!r}")
        parts = str(self.apma_parts).strip().lower().replace(" ", "")
        names = parts.split("+")
        if parts != "all" and (
            any(n not in APMA_PARTS for n in names) or len(set(names)) != len(names)
        ):
            raise ConfigError(
                f"apma_parts must be 'all' or parts joined by '+' from {', '.join(APMA_PARTS)} "
                f"(e.g. en+de_feat), got {self.apma_parts!r}"
            )
        self.apma_parts = parts
        if (
            not isinstance(self.apma_rec_weight, int | float)
            or not math.isfinite(self.apma_rec_weight)
            or self.apma_rec_weight < 0
        ):
            raise ConfigError(f"apma_rec_weight must be >= 0, got {self.apma_rec_weight!r}")
        if not isinstance(self.apma_warmup, int) or self.apma_warmup < 0:
            raise ConfigError(f"apma_warmup must be a whole number >= 0, got {self.apma_warmup!r}")
        if self.adabn_stats not in ADABN_STATS:
            raise ConfigError(
                f"adabn_stats must be one of {ADABN_STATS}, got {self.adabn_stats!r}"
            )
        if self.adabn_layers not in ADABN_LAYERS:
            raise ConfigError(
                f"adabn_layers must be one of {ADABN_LAYERS}, got {self.adabn_layers!r}"
            )
        if self.trainable is not None:
            t = tuple(int(v) for v in self.trainable)
            if len(t) != 2 or t[0] < 1 or t[1] < t[0]:
                raise ConfigError(
                    f"trainable must be (first, last) with 1 <= first <= last, "
                    f"got {self.trainable!r}"
                )
            self.trainable = t

    def to_dict(self) -> dict:
        """Plain dict for provenance and checkpoints."""
        d = asdict(self)
        d["trainable"] = list(self.trainable) if self.trainable else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AdaptConfig:
        """Inverse of :meth:`to_dict`, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("trainable") is not None:
            kw["trainable"] = tuple(kw["trainable"])
        return cls(**kw)
