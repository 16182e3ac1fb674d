"""Write a project model as a bioimage.io model package (spec 0.5, one zip file).

What the package holds and why:

* **weights**: a TorchScript trace made here in eval mode (BatchNorm running statistics, no
  dropout; bioimage.io's own state-dict converter traces in training mode, which gave wrong
  outputs), and for plain UNets also the ``pytorch_state_dict`` with ``models/unet.py`` as a
  self-contained architecture file (torch only). Neither needs napari-lmadda installed.
  An SCGAN model (translator + UNet) is traced as one network; its state dict ships as the
  project's own model file (an attachment), since its architecture spans two modules.
* **preprocessing**: the project's per-image percentile normalisation
  ``2 (x - p_low) / (p_high - p_low) - 1`` as ``scale_range`` (axes y, x) then
  ``scale_linear`` (gain 2, offset -1). Not expressible with spec operations, and so
  different in other tools: the fallback for images whose two percentiles coincide
  (napari-lmadda takes the maximum or minimum instead; ``scale_range`` divides by its
  ``eps``; a constant image gives -1 in both) and NaN pixels (napari-lmadda sets them to 0
  after normalisation). ``scale_range`` also adds ``eps = 1e-6`` to ``p_high - p_low``, a
  relative difference of ``1e-6 / (p_high - p_low)``.
* **postprocessing**: the network's tanh output to stain units per channel
  (:class:`~napari_lmadda.data.normalize.TargetNorm`) as ``scale_linear`` along ``channel``.
* **test tensors**: a sample image (yours with ``sample=``, else a synthetic phase-contrast
  field) cropped to at most 512 px a side, and its stains from the project's own
  :func:`~napari_lmadda.inference.predict.predict_image` (one tile, so no blending).
* **metadata**: channel names, the adaptation's provenance (method, layer, source and target
  data) in the description and the README, the LM-ADDA paper in ``cite``, and the project's
  model header under ``config.napari_lmadda`` so napari-lmadda reads the package back
  without running its code (:func:`~napari_lmadda.bioimageio.load.load_bioimageio`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, LmaddaError, OutputExistsError, OutputWriteError

__all__ = [
    "PROJECT_URL",
    "PAPER_TITLE",
    "PAPER_AUTHORS",
    "CONFIG_KEY",
    "export_bioimageio",
    "test_bioimageio_package",
]

#: Where the citation and the package point for the project's documentation. The LM-ADDA
#: paper has no DOI we know of and the spec wants a DOI or a URL for every citation, so the
#: citation points here (the plugin's napari hub page, which shows the README).
PROJECT_URL = "https://napari-hub.org/plugins/napari-lmadda"
PAPER_TITLE = (
    "Generalizing Microscopy Image Labeling via Layer-Matching Adversarial Domain Adaptation"
)
PAPER_AUTHORS = ("Vishrut Goyal", "Michael Liu", "Andrew Bai", "Neil Lin", "Cho-Jui Hsieh")
#: Key of the project's model header in the package's ``config``.
CONFIG_KEY = "napari_lmadda"
#: Largest side of the test tensors (bioimage.io runs them whole, several times).
MAX_TEST_SIDE = 512

_METHODS = {
    "none": "no adaptation",
    "adabn": "AdaBN (batch-norm statistics re-estimated on the new microscope's images)",
    "adda": "ADDA at the output layer",
    "lmadda": "LM-ADDA (layer-matching adversarial discriminative domain adaptation)",
    "lmadda-multi": "multi-layer LM-ADDA",
    "apma": "APMA-style multi-task adaptation",
    "scgan": "SCGAN image-level adaptation (a CycleGAN translator in front of the source model)",
}


def _require_spec() -> Any:
    try:
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise ConfigError(
            "exporting to bioimage.io needs the 'bioimageio.spec' package: "
            "pip install \"napari-lmadda[bioimageio]\""
        ) from None
    return v0_5


def _as_model(model: Any) -> Any:
    if isinstance(model, str | os.PathLike):
        from ..models.checkpoint import load_model

        return load_model(model)
    return model


def _sample_plane(sample: Any) -> tuple[np.ndarray, str]:
    """The sample image as a float32 plane and a phrase saying where it came from."""
    if sample is None:
        from ..data.synthetic import make_domain

        img = make_domain(1, modality="phase", size=256, seed=0)["input"][0]
        return img.astype(np.float32), "a synthetic phase-contrast field (napari-lmadda's own)"
    if isinstance(sample, str | os.PathLike):
        from ..data.io import read_planes

        return read_planes(sample)[0], f"the first plane of '{Path(sample).name}'"
    arr = np.asarray(sample)
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise ConfigError(f"the sample image must be a 2-D real array, got {arr.dtype} "
                          f"{arr.shape}")
    return arr.astype(np.float32), "an image given to the export"


def _crop(plane: np.ndarray, m: int) -> np.ndarray:
    """Centre crop to a multiple of ``m`` per side, at most ``MAX_TEST_SIDE`` (or ``m``)."""
    h, w = plane.shape
    if h < m or w < m:
        raise ConfigError(
            f"the sample image ({h}x{w}) is smaller than the model's input size unit {m}x{m}"
        )
    top = max(m, MAX_TEST_SIDE // m * m)
    th, tw = min(h // m * m, top), min(w // m * m, top)
    r, c = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(plane[r : r + th, c : c + tw])


def _plain(obj: Any) -> Any:
    """JSON-compatible copy (YAML-safe): numpy scalars, paths and tuples become plain values."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


def _trace(model: Any, example: Any) -> Any:
    """TorchScript trace of ``model`` in eval mode (a CPU copy; the model is not touched)."""
    import torch

    net = copy.deepcopy(model).cpu().eval()
    with torch.no_grad(), warnings.catch_warnings():
        # check_input's shape tests become constants of the trace: fine, sizes still vary
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch >= 2.9 deprecates tracing, but TorchScript is what bioimage.io tools run
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(net, example, check_trace=False)
    # a trace that does not generalise to another size would fail silently elsewhere
    m = int(model.min_size)
    probe = torch.linspace(-1, 1, 2 * m * m).reshape(1, 1, 2 * m, m)
    with torch.no_grad():
        want, got = net(probe), traced(probe)
    if not torch.allclose(want, got, atol=1e-5, rtol=1e-4):
        raise LmaddaError("the TorchScript trace of this model does not reproduce it")
    return traced


def _describe(model: Any, names: list[str], norm: Any) -> tuple[str, list[str]]:
    """A short description and the provenance lines of the README."""
    meta = getattr(model, "meta", {}) or {}
    prov = dict(meta.get("provenance") or {})
    cfg = model.config
    what = (f"Virtual staining: one grey label-free image (e.g. phase contrast) -> "
            f"{', '.join(names)}. pix2pix-style UNet ({cfg.num_downs} down blocks, "
            f"ngf {cfg.ngf}, {cfg.norm} norm) made with napari-lmadda.")
    lines = []
    method = prov.get("method")
    if method:
        layers = [int(v) for v in prov.get("layers") or [] if isinstance(v, int | float)]
        where = ""
        if layers:
            named = ", ".join(f"{v} ({model.layer_name(v)})" for v in layers
                              if 1 <= v <= model.num_layers)
            where = f" at layer {named}" if named else ""
        what += (f" Adapted to a new microscope without labels with "
                 f"{_METHODS.get(method, method)}{where}.")
        lines.append(f"- Adaptation: {_METHODS.get(method, method)}{where}")
        for key, label in (("source_dir", "Source-microscope images"),
                           ("target_dir", "New-microscope images"),
                           ("demo_shift", "New microscope (demo shift)"),
                           ("source_model", "Source model"),
                           ("best_step", "Kept step"),
                           ("stop_reason", "Stop reason"),
                           ("criterion", "Label-free selection criterion")):
            if prov.get(key) not in (None, ""):
                lines.append(f"- {label}: {prov[key]}")
        for key in ("source_dir", "target_dir"):
            if prov.get(key):
                what += f" {key.split('_')[0].capitalize()} images: {Path(str(prov[key])).name}."
    if prov.get("data"):
        lines.append(f"- Source training data: {prov['data']}")
    if prov.get("library"):
        lines.append(f"- Made with: {prov['library']}, torch {prov.get('torch', '?')}")
    if norm.units == "normalised":
        what += " Outputs are per-image normalised stain values, not raw intensities."
    return what[:1000], lines


def _readme(model: Any, names: list[str], norm: Any, prov_lines: list[str], sample_from: str,
            docs_url: str, traced_only: bool) -> str:
    meta = getattr(model, "meta", {}) or {}
    p_low, p_high = (float(v) for v in meta.get("input_percentiles", (1.0, 99.8)))
    val = (meta.get("provenance") or {}).get("validation_pearson")
    chans = "\n".join(
        f"| {n} | {lo:g} | {hi:g} |" for n, lo, hi in zip(names, norm.lo, norm.hi)
    )
    if isinstance(val, dict) and val:
        scores = ", ".join(f"{k} {float(v):.3f}" for k, v in val.items())
        validation = (f"Pearson correlation with the true stains on held-out source-microscope "
                      f"fields at training time: {scores}.")
    else:
        validation = "No validation scores are stored with this model."
    weights = ("TorchScript only (the translator and the UNet traced as one network; the "
               "project's model file is attached for napari-lmadda)" if traced_only else
               "TorchScript (traced in eval mode) and a PyTorch state dict with `unet.py`, "
               "a self-contained architecture file (needs only torch)")
    return f"""# napari-lmadda model: {', '.join(names)} virtual stain

Made with napari-lmadda ({docs_url}). Input: one grey plane, any size that is a multiple
of {model.min_size} pixels per side. Output: {len(names)} channel(s). Predict whole images
where memory allows (bioimageio.core reproduces napari-lmadda to 1e-7 then); tiles without
overlap show seams, since the network sees further than a tile's border (napari-lmadda
blends overlapping tiles). No halo is declared: it would make tools pad inputs to sizes the
network does not take.

## Normalisation

Input: per-image percentiles, `2 (x - p{p_low:g}) / (p{p_high:g} - p{p_low:g}) - 1`
(spec: `scale_range` over y, x, then `scale_linear` gain 2, offset -1).
What the spec cannot express, so other tools differ from napari-lmadda here:

- an image whose two percentiles coincide, e.g. a dark field with a few bright spots:
  napari-lmadda then uses the maximum (or the minimum) instead, while `scale_range`
  divides by `eps` = 1e-6 and the spots become huge values (a constant image gives -1 in
  both; napari-lmadda also warns);
- NaN or infinite pixels (napari-lmadda sets them to 0 after normalisation).

Output: the network's tanh range [-1, 1] to stain units per channel
(`scale_linear` along `channel`), units "{norm.units}" (mode "{norm.mode}"):

| channel | -1 means | +1 means |
|---|---|---|
{chans}

## Weights

{weights}.

## Provenance

{chr(10).join(prov_lines) or "- Source model (no adaptation recorded)."}
- Test tensors: {sample_from}, predicted by napari-lmadda's own `predict_image`.

## Validation

{validation} On a new microscope, check the virtual stain against a few stained fields
before trusting it (napari-lmadda: `lmadda evaluate`, or the trust map in the napari dock).

## Citation

{', '.join(PAPER_AUTHORS)}. *{PAPER_TITLE}*. No DOI is known to the napari-lmadda
authors; the citation's URL points to the project's documentation ({docs_url}).
"""


def _cover(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """A 2:1 cover: the input (left) and the stains as a colour overlay (right)."""
    from PIL import Image

    def unit(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, (1, 99.8))
        return np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1)

    grey = unit(x)
    colours = np.array([[0.2, 0.4, 1.0], [0.1, 1.0, 0.2], [1.0, 0.2, 0.9], [1.0, 0.6, 0.1]])
    rgb = np.zeros((*x.shape, 3))
    for c in range(y.shape[0]):
        rgb += unit(y[c])[..., None] * colours[c % len(colours)]
    left = np.repeat(grey[..., None], 3, axis=2)
    img = (np.clip(np.concatenate([left, rgb], axis=1), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(img).resize((512, 256)).save(path)


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_+\- ()]", "_", text).strip()[:64]
    return name if len(name) >= 5 else f"napari-lmadda {name}".strip()


def export_bioimageio(
    model: Any,
    path: str | os.PathLike[str],
    *,
    sample: Any = None,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = (),
    license: str = "CC-BY-4.0",
    docs_url: str = PROJECT_URL,
    tags: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write a model as a bioimage.io model package (spec 0.5 zip).

    Parameters
    ----------
    model : UNetGenerator, TranslatedModel or path-like
        A loaded model, a model file or ``"demo"``. Only grey-input models.
    path : path-like
        The package to write (``*.bioimageio.zip`` by convention); written atomically.
    sample : path-like or ndarray, optional
        An image for the test tensors (its first plane; centre-cropped to at most 512 px
        per side). Default: a synthetic phase-contrast field.
    name, description : str, optional
        Shown by the model zoo; made from the model's channels and provenance by default.
    authors : sequence of str
        Who made the model (bioimage.io asks for at least one before upload).
    license : str
        SPDX identifier of the weights' license (bioimage.io recommends CC-BY-4.0).
    docs_url : str
        The project's documentation (the citation's URL; the paper has no known DOI).
    tags : sequence of str
        Extra tags.
    overwrite : bool
        Replace an existing ``path``.

    Returns
    -------
    Path
        The written package.

    Raises
    ------
    ConfigError
        ``bioimageio.spec`` is missing, the model takes several input channels, or the
        sample image is unusable.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    LmaddaError
        The package does not validate (the message says why).
    """
    import torch

    from ..data.normalize import TargetNorm
    from ..inference.predict import predict_image
    from ..models import unet as unet_module
    from ..models.translated import TranslatedModel

    s = _require_spec()
    try:
        license_id = s.LicenseId(license)
    except Exception:  # pydantic's message lists every SPDX identifier: say it in one line
        raise ConfigError(f"license {license!r} is not an SPDX license identifier bioimage.io "
                          "accepts (e.g. CC-BY-4.0, MIT, BSD-3-Clause)") from None
    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"'{out}' already exists (pass overwrite to replace it)")
    if not out.parent.is_dir():
        raise OutputWriteError(f"cannot write '{out.name}': folder '{out.parent}' does not exist")
    model = _as_model(model)
    cfg = model.config
    if int(cfg.in_channels) != 1:
        raise ConfigError(f"this model takes {cfg.in_channels} input channels; only grey-input "
                          "models can be exported (napari-lmadda predicts one plane at a time)")
    meta = dict(getattr(model, "meta", {}) or {})
    cout = int(cfg.out_channels)
    names = [str(n) for n in (meta.get("channel_names") or [f"channel{i}" for i in range(cout)])]
    norm = TargetNorm.from_meta(meta, cout)
    p_low, p_high = (float(v) for v in meta.get("input_percentiles", (1.0, 99.8)))
    traced_only = isinstance(model, TranslatedModel)
    m = int(model.min_size)

    plane, sample_from = _sample_plane(sample)
    x = _crop(plane, m)
    # network range, then the model's own per-channel decoding: exactly what the package's
    # postprocessing does, whatever the target normalisation
    y = norm.decode(predict_image(model, x, tile=max(x.shape), overlap=0, batch_size=1,
                                  to_stain=False))

    what, prov_lines = _describe(model, names, norm)
    tmp = Path(tempfile.mkdtemp(prefix="lmadda-bioimageio-"))
    part = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp.zip"
    try:
        np.save(tmp / "test_input.npy", x[None, None])
        np.save(tmp / "test_output.npy", y[None].astype(np.float32))
        import tifffile

        tifffile.imwrite(tmp / "sample_input.tif", x)
        tifffile.imwrite(tmp / "sample_output.tif", y.astype(np.float32))
        _cover(tmp / "cover.png", x, y)
        version = s.Version(torch.__version__.split("+")[0])
        traced = _trace(model, torch.from_numpy(np.zeros((1, 1, m, m), np.float32)))
        traced.save(str(tmp / "weights_torchscript.pt"))
        header: dict[str, Any] = {
            "format": "napari-lmadda-model",
            "arch": cfg.to_dict(),
            "meta": _plain(meta),
        }
        attachments = []
        if traced_only:
            from ..models.checkpoint import save_model

            save_model(model, tmp / "lmadda_model.pt")
            attachments.append(s.FileDescr(source=tmp / "lmadda_model.pt"))
            header["model_file"] = "lmadda_model.pt"
            weights = s.WeightsDescr(torchscript=s.TorchscriptWeightsDescr(
                source=tmp / "weights_torchscript.pt", pytorch_version=version,
                comment="traced in eval mode by napari-lmadda (translator + UNet)"))
        else:
            shutil.copyfile(unet_module.__file__, tmp / "unet.py")
            torch.save({k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
                        for k, v in model.state_dict().items()}, tmp / "weights_state_dict.pt")
            weights = s.WeightsDescr(
                pytorch_state_dict=s.PytorchStateDictWeightsDescr(
                    source=tmp / "weights_state_dict.pt", pytorch_version=version,
                    architecture=s.ArchitectureFromFileDescr(
                        source=tmp / "unet.py", callable=s.Identifier("UNetGenerator"),
                        kwargs=cfg.to_dict())),
                torchscript=s.TorchscriptWeightsDescr(
                    source=tmp / "weights_torchscript.pt", pytorch_version=version,
                    parent="pytorch_state_dict",
                    comment="traced in eval mode by napari-lmadda"),
            )
        (tmp / "README.md").write_text(
            _readme(model, names, norm, prov_lines, sample_from, docs_url, traced_only),
            encoding="utf-8")
        size = s.ParameterizedSize(min=m, step=m)
        ref = {ax: s.SizeReference(tensor_id=s.TensorId("input"), axis_id=s.AxisId(ax))
               for ax in ("y", "x")}
        inp = s.InputTensorDescr(
            id=s.TensorId("input"),
            description="one grey label-free plane, raw intensities",
            axes=[s.BatchAxis(), s.ChannelAxis(channel_names=["grey"]),
                  s.SpaceInputAxis(id=s.AxisId("y"), size=size),
                  s.SpaceInputAxis(id=s.AxisId("x"), size=size)],
            test_tensor=s.FileDescr(source=tmp / "test_input.npy"),
            sample_tensor=s.FileDescr(source=tmp / "sample_input.tif"),
            data=s.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                s.ScaleRangeDescr(kwargs=s.ScaleRangeKwargs(
                    axes=[s.AxisId("y"), s.AxisId("x")], min_percentile=p_low,
                    max_percentile=p_high, eps=1e-6)),
                s.ScaleLinearDescr(kwargs=s.ScaleLinearKwargs(gain=2.0, offset=-1.0)),
            ],
        )
        gain = [(hi - lo) / 2 for lo, hi in zip(norm.lo, norm.hi)]
        offset = [(hi + lo) / 2 for lo, hi in zip(norm.lo, norm.hi)]
        outp = s.OutputTensorDescr(
            id=s.TensorId("output"),
            description=f"virtual stains ({', '.join(names)}), units: {norm.units}",
            axes=[s.BatchAxis(), s.ChannelAxis(channel_names=names),
                  s.SpaceOutputAxis(id=s.AxisId("y"), size=ref["y"]),
                  s.SpaceOutputAxis(id=s.AxisId("x"), size=ref["x"])],
            test_tensor=s.FileDescr(source=tmp / "test_output.npy"),
            sample_tensor=s.FileDescr(source=tmp / "sample_output.tif"),
            data=s.IntervalOrRatioDataDescr(type="float32"),
            postprocessing=[s.ScaleLinearDescr(kwargs=s.ScaleLinearAlongAxisKwargs(
                axis=s.AxisId("channel"), gain=gain, offset=offset))],
        )
        prov = meta.get("provenance") or {}
        all_tags = ["virtual-staining", "image-to-image", "unet", "pix2pix", "pytorch", "2d",
                    "domain-adaptation", "napari-lmadda",
                    *([str(prov["method"])] if prov.get("method") else []),
                    *(n.lower() for n in names), *tags]
        descr = s.ModelDescr(
            name=_safe_name(name or f"napari-lmadda {' '.join(names)} virtual stain"),
            description=description or what,
            authors=[s.Author(name=a) for a in authors],
            cite=[s.CiteEntry(text=f"{', '.join(PAPER_AUTHORS)}. {PAPER_TITLE}.", url=docs_url)],
            license=license_id,
            documentation=s.FileDescr(source=tmp / "README.md"),
            covers=[s.FileDescr(source=tmp / "cover.png")],
            tags=list(dict.fromkeys(all_tags)),
            inputs=[inp],
            outputs=[outp],
            weights=weights,
            attachments=attachments,
            config={CONFIG_KEY: header},
        )
        from bioimageio.spec import save_bioimageio_package

        try:
            save_bioimageio_package(descr, output_path=part)
        except ValueError as exc:
            raise LmaddaError(
                f"cannot export to '{out}': the package does not validate "
                f"({' '.join(str(exc).split())[:300]})") from None
        if out.exists() and not overwrite:
            raise OutputExistsError(f"'{out}' already exists (pass overwrite to replace it)")
        os.replace(part, out)
    except OSError as exc:
        raise OutputWriteError(f"cannot write '{out}': {exc.strerror or exc}") from None
    except Exception as exc:
        if "pydantic" in type(exc).__module__:  # a value the spec refuses: one line
            first = " ".join(str(exc).split())[:300]
            raise LmaddaError(f"cannot export to '{out}': {first}") from None
        raise
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def test_bioimageio_package(path: str | os.PathLike[str]) -> tuple[bool, str]:
    """Run ``bioimageio.core``'s test of a package (offline); return (passed, one line).

    Raises
    ------
    ConfigError
        ``bioimageio.core`` is not installed.
    """
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise ConfigError("testing a bioimage.io package needs 'bioimageio.core': "
                          "pip install \"napari-lmadda[testing]\"") from None
    summary = test_model(str(path))
    failed = [d.name for d in summary.details if d.status == "failed"]
    line = f"bioimageio test: {summary.status} ({len(summary.details)} checks"
    line += f"; failed: {', '.join(failed)})" if failed else ")"
    return summary.status == "passed", line
