"""Read a bioimage.io model package as a project model, without running the package's code.

A package is a zip (or a folder) with an ``rdf.yaml`` (or ``bioimageio.yaml``) and the files
it names. What loads, and how:

* **napari-lmadda's own exports** (``config.napari_lmadda`` in the YAML): the project's UNet
  is built from the header there and the ``pytorch_state_dict`` weights are checked against
  it; an SCGAN export is read from its attached project model file. Channel names,
  normalisation and provenance come back as they were.
* **other packages whose weights are a pix2pix ``UnetGenerator`` state dict** (keys
  ``model.model.*``) or this project's UNet keys (``down.*``/``up.*``): the architecture is
  detected from the weights' shapes; normalisation from the preprocessing (``scale_range``
  [+ ``scale_linear`` to [-1, 1]]), stain units from the postprocessing (``scale_linear``),
  channel names from the output's channel axis.

Weights load with ``torch.load(weights_only=True)``, and every file's sha256 is checked
against the YAML. A package's architecture file is code: it runs only through
:func:`load_bioimageio_architecture`, which a caller uses when the user has explicitly asked
for it (never when a file is merely opened or dropped).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import CheckpointError, LmaddaError

__all__ = [
    "RDF_NAMES",
    "BioimageioPackage",
    "is_bioimageio_package",
    "read_bioimageio_package",
    "load_bioimageio",
    "load_bioimageio_architecture",
]

#: Names of a package's description file.
RDF_NAMES: tuple[str, ...] = ("rdf.yaml", "bioimageio.yaml")
# a description larger than this is not a model description (bounded memory)
_MAX_RDF_BYTES = 4 << 20
_MAX_MEMBER_BYTES = 4 << 30


def _rdf_member(names: list[str]) -> str | None:
    """The description file of a zip: at the root, or ``*.bioimageio.yaml`` at the root."""
    for n in names:
        if n in RDF_NAMES or (n.endswith(".bioimageio.yaml") and "/" not in n):
            return n
    return None


def is_bioimageio_package(path: str | os.PathLike[str]) -> bool:
    """True for a zip or folder holding a bioimage.io description, or the YAML file itself.

    Never raises (a damaged zip is not a package).
    """
    try:
        p = Path(path)
        if p.is_dir():
            return any((p / n).is_file() for n in RDF_NAMES)
        if p.is_file() and p.name.lower().endswith((".yaml", ".yml")):
            return p.name in RDF_NAMES or p.name.endswith(".bioimageio.yaml")
        if p.is_file() and zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                return _rdf_member(zf.namelist()) is not None
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return False


@dataclass
class BioimageioPackage:
    """An opened package: its description and a way to read the files it names.

    Attributes
    ----------
    path : Path
        The zip, folder or YAML file.
    rdf : dict
        The parsed description.
    """

    path: Path
    rdf: dict[str, Any]
    _zip: zipfile.ZipFile | None = field(default=None, repr=False)
    _root: Path | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The package's name (or its file name)."""
        return str(self.rdf.get("name") or self.path.name)

    def read(self, source: str, sha256: str | None = None) -> bytes:
        """The bytes of a file the description names (checked against its sha256).

        Raises
        ------
        CheckpointError
            The file is missing, remote, too large or its sha256 differs.
        """
        src = str(source)
        if "://" in src:
            raise CheckpointError(f"'{self.path}' names a remote file ({src}); napari-lmadda "
                                  "reads only files inside the package")
        rel = PurePosixPath(src)
        if rel.is_absolute() or ".." in rel.parts:
            raise CheckpointError(f"'{self.path}' names a file outside the package ({src})")
        try:
            if self._zip is not None:
                info = self._zip.getinfo(str(rel))
                if info.file_size > _MAX_MEMBER_BYTES:
                    raise CheckpointError(f"'{self.path}': '{src}' is too large "
                                          f"({info.file_size} bytes)")
                data = self._zip.read(info)
            else:
                data = (self._root / rel).read_bytes()  # type: ignore[operator]
        except KeyError:
            raise CheckpointError(f"'{self.path}' names '{src}', which is not in it") from None
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise CheckpointError(f"'{self.path}': cannot read '{src}' ({exc})") from None
        if sha256 and hashlib.sha256(data).hexdigest() != str(sha256).lower():
            raise CheckpointError(f"'{self.path}': '{src}' does not match its sha256 in the "
                                  "description (damaged or altered package)")
        return data

    def close(self) -> None:
        """Close the zip."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def read_bioimageio_package(path: str | os.PathLike[str]) -> BioimageioPackage:
    """Open a package and parse its description (safe YAML; nothing is executed).

    Raises
    ------
    CheckpointError
        Not a package, unreadable, or not a model description.
    """
    import yaml

    p = Path(path)
    zf = None
    root = None
    try:
        if p.is_dir():
            member = next((n for n in RDF_NAMES if (p / n).is_file()), None)
            if member is None:
                raise CheckpointError(f"'{p}' is a folder without rdf.yaml")
            root, raw = p, (p / member).read_bytes()[: _MAX_RDF_BYTES + 1]
        elif p.name.lower().endswith((".yaml", ".yml")):
            root, raw = p.parent, p.read_bytes()[: _MAX_RDF_BYTES + 1]
        else:
            zf = zipfile.ZipFile(p)
            member = _rdf_member(zf.namelist())
            if member is None:
                raise CheckpointError(f"'{p}' is a zip without a bioimage.io rdf.yaml")
            if zf.getinfo(member).file_size > _MAX_RDF_BYTES:
                raise CheckpointError(f"'{p}': its {member} is too large to be a description")
            raw = zf.read(member)
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        if zf is not None:
            zf.close()
        raise CheckpointError(f"cannot read bioimage.io package '{p}': {exc}") from None
    except CheckpointError:
        if zf is not None:
            zf.close()
        raise
    try:
        if len(raw) > _MAX_RDF_BYTES:
            raise CheckpointError(f"'{p}': its description is too large")
        rdf = yaml.safe_load(raw)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        if zf is not None:
            zf.close()
        first = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"'{p}': its rdf.yaml is not valid YAML ({first})") from None
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        if zf is not None:
            zf.close()
        kind = rdf.get("type", "missing") if isinstance(rdf, dict) else type(rdf).__name__
        what = "a zip archive" if zf is not None else "a bioimage.io description"
        raise CheckpointError(f"'{p}' is {what} but not a PyTorch model file or a bioimage.io "
                              f"model package (its rdf.yaml gives type: {kind})")
    return BioimageioPackage(p, rdf, zf, root)


# ------------------------------------------------------------------ reading the description
def _weights_entry(rdf: dict[str, Any], kind: str) -> dict[str, Any] | None:
    weights = rdf.get("weights") or {}
    entry = weights.get(kind) if isinstance(weights, dict) else None
    return entry if isinstance(entry, dict) else None


def _state_dict(pkg: BioimageioPackage) -> dict[str, Any]:
    """The ``pytorch_state_dict`` weights, loaded as data."""
    import torch

    entry = _weights_entry(pkg.rdf, "pytorch_state_dict")
    if entry is None or not entry.get("source"):
        kinds = ", ".join(sorted((pkg.rdf.get("weights") or {}).keys())) or "none"
        raise CheckpointError(
            f"'{pkg.path}' has no pytorch_state_dict weights (it has: {kinds}); napari-lmadda "
            "needs a state dict to predict and adapt")
    data = pkg.read(entry["source"], entry.get("sha256"))
    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"'{pkg.path}': its state dict cannot be loaded as weights only "
                              f"({first}); nothing was executed") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"'{pkg.path}': its pytorch_state_dict is not a state dict")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def _steps(tensor: dict[str, Any], key: str) -> list[dict[str, Any]]:
    steps = tensor.get(key) or []
    # spec 0.5 names a step by "id", 0.4 by "name"
    steps = [{**s, "id": s.get("id") or s.get("name")} for s in steps if isinstance(s, dict)]
    return [s for s in steps if s["id"] != "ensure_dtype"]


def _input_percentiles(pkg: BioimageioPackage) -> list[float]:
    """The project's percentiles from the input's preprocessing, or a clear refusal."""
    inputs = pkg.rdf.get("inputs") or [{}]
    steps = _steps(inputs[0], "preprocessing")
    ids = ", ".join(s.get("id", "?") for s in steps) or "none"
    refuse = CheckpointError(
        f"'{pkg.path}': its input preprocessing ({ids}) is not napari-lmadda's (per-image "
        "percentiles to [-1, 1]: scale_range, then scale_linear with gain 2 and offset -1)")
    if not steps or steps[0].get("id") != "scale_range":
        raise refuse
    kw = steps[0].get("kwargs") or {}
    lo, hi = float(kw.get("min_percentile", 0.0)), float(kw.get("max_percentile", 100.0))
    rest = steps[1:]
    if len(rest) != 1 or rest[0].get("id") != "scale_linear":
        raise refuse
    lin = rest[0].get("kwargs") or {}
    gain, offset = float(lin.get("gain", 1.0)), float(lin.get("offset", 0.0))
    if abs(gain - 2.0) > 1e-6 or abs(offset + 1.0) > 1e-6:
        raise refuse
    return [lo, hi]


def _target_norm(pkg: BioimageioPackage, channels: int) -> Any:
    """The stain units from the output's postprocessing (``scale_linear``) or [-1, 1]."""
    from ..data.normalize import TargetNorm

    outputs = pkg.rdf.get("outputs") or [{}]
    steps = _steps(outputs[0], "postprocessing")
    if not steps:
        return TargetNorm.fixed(-1.0, 1.0, channels)
    if len(steps) != 1 or steps[0].get("id") != "scale_linear":
        ids = ", ".join(s.get("id", "?") for s in steps)
        raise CheckpointError(
            f"'{pkg.path}': its output postprocessing ({ids}) cannot be reproduced by "
            "napari-lmadda (scale_linear only)")
    kw = steps[0].get("kwargs") or {}

    def per_channel(v: Any) -> list[float]:
        vals = [float(a) for a in v] if isinstance(v, list) else [float(v)] * channels
        if len(vals) != channels:
            raise CheckpointError(f"'{pkg.path}': its postprocessing has {len(vals)} values "
                                  f"for {channels} output channel(s)")
        return vals

    gain, offset = per_channel(kw.get("gain", 1.0)), per_channel(kw.get("offset", 0.0))
    return TargetNorm(tuple(o - g for g, o in zip(gain, offset)),
                      tuple(o + g for g, o in zip(gain, offset)))


def _channel_names(pkg: BioimageioPackage) -> list[str] | None:
    outputs = pkg.rdf.get("outputs") or [{}]
    for ax in outputs[0].get("axes") or []:
        if isinstance(ax, dict) and ax.get("type") == "channel":
            names = ax.get("channel_names")
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                return list(names)
    return None


def _detect_flat_config(sd: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """A :class:`UNetConfig` from this project's UNet keys (``down.K.0.weight`` ...)."""
    from ..models.unet import UNetConfig

    downs = sorted({int(k.split(".")[1]) for k in sd if k.startswith("down.")})
    if not downs or downs != list(range(len(downs))) or "down.0.0.weight" not in sd:
        raise CheckpointError("not a napari-lmadda UNet state dict")
    n = len(downs)
    w0 = sd["down.0.0.weight"]
    last = sd.get(f"up.{n - 1}.conv.weight")
    if last is None:
        raise CheckpointError("not a napari-lmadda UNet state dict")
    has_bn = any(k.endswith("running_mean") for k in sd)
    norm = "batch" if has_bn else ("instance" if "down.1.0.bias" in sd else "none")
    known = {k: v for k, v in kwargs.items() if k in ("use_dropout",)}
    return UNetConfig(in_channels=int(w0.shape[1]), out_channels=int(last.shape[1]),
                      num_downs=n, ngf=int(w0.shape[0]), norm=norm,
                      bias="down.1.0.bias" in sd, **known)


def _build(cfg: Any, sd: dict[str, Any], path: Path, tcfg: Any = None) -> Any:
    from ..models.checkpoint import _build as build_model
    from ..models.checkpoint import _check_fits

    _check_fits(cfg, sd, path, tcfg)
    model = build_model(cfg, tcfg)
    model.load_state_dict(sd, strict=True)
    return model


def _from_own_export(pkg: BioimageioPackage, header: dict[str, Any]) -> Any:
    """A model exported by napari-lmadda: its header, its weights, nothing executed."""
    from ..models.checkpoint import DEFAULT_META, _check_meta, load_model
    from ..models.unet import UNetConfig

    model_file = header.get("model_file")
    if model_file:  # SCGAN: the project's own model file is attached
        entry = next((a for a in pkg.rdf.get("attachments") or []
                      if isinstance(a, dict) and a.get("source") == model_file), {})
        data = pkg.read(str(model_file), entry.get("sha256"))
        with tempfile.TemporaryDirectory(prefix="lmadda-bioimageio-") as tmp:
            f = Path(tmp) / "model.pt"
            f.write_bytes(data)
            try:
                return load_model(f)
            except CheckpointError as exc:
                raise CheckpointError(f"'{pkg.path}': {exc}") from None
    try:
        cfg = UNetConfig.from_dict(dict(header["arch"]))
    except (KeyError, TypeError, ValueError, LmaddaError) as exc:
        raise CheckpointError(f"'{pkg.path}' has a damaged napari-lmadda header ({exc})") from None
    meta = {**DEFAULT_META, **dict(header.get("meta") or {})}
    _check_meta(meta, cfg, pkg.path)
    model = _build(cfg, _state_dict(pkg), pkg.path)
    model.meta = meta
    return model


def _from_foreign(pkg: BioimageioPackage) -> Any:
    """A package made elsewhere whose weights are a pix2pix-style UNet state dict."""
    from ..models.checkpoint import DEFAULT_META
    from ..models.pix2pix import detect_pix2pix_config, is_pix2pix_state_dict, pix2pix_to_flat

    sd = _state_dict(pkg)
    arch = (_weights_entry(pkg.rdf, "pytorch_state_dict") or {}).get("architecture") or {}
    kwargs = arch.get("kwargs") if isinstance(arch, dict) else None
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    try:
        if is_pix2pix_state_dict(sd):
            cfg = detect_pix2pix_config(sd)
            sd = pix2pix_to_flat(sd, cfg)
        else:
            cfg = _detect_flat_config(sd, kwargs)
    except (LmaddaError, KeyError, ValueError, IndexError, TypeError):
        callable_name = arch.get("callable", "?") if isinstance(arch, dict) else "?"
        raise CheckpointError(
            f"'{pkg.path}' holds a network ({callable_name}) whose weights are not a "
            "pix2pix-style UNet; napari-lmadda builds only that architecture without running "
            "the package's code") from None
    model = _build(cfg, sd, pkg.path)
    names = _channel_names(pkg)
    if names is not None and len(names) != cfg.out_channels:
        names = None
    norm = _target_norm(pkg, cfg.out_channels)
    target = norm.to_meta()
    if len(set(zip(norm.lo, norm.hi))) == 1:  # one range for all: the legacy form
        target["target_range"] = [norm.lo[0], norm.hi[0]]
    model.meta = {
        **DEFAULT_META,
        "channel_names": names,
        "input_percentiles": _input_percentiles(pkg),
        **target,
        "provenance": {"source": "bioimage.io package", "file": pkg.path.name,
                       "name": pkg.name},
    }
    return model


def load_bioimageio(
    path: str | os.PathLike[str], device: Any = "cpu", *, eval_mode: bool = True
) -> Any:
    """Load a bioimage.io package as a project model (no package code runs).

    Parameters
    ----------
    path : path-like
        A ``*.zip`` package, a folder with ``rdf.yaml``, or the ``rdf.yaml`` itself.
    device : str or torch.device
        Where to put the model (``"auto"`` allowed).
    eval_mode : bool
        Put the model in eval mode.

    Returns
    -------
    UNetGenerator or TranslatedModel
        With ``meta`` (channel names, normalisation, provenance) as for a project file.

    Raises
    ------
    CheckpointError
        Not a package, damaged files, or a network that is not a pix2pix-style UNet
        (the message says which); nothing from the package was executed.
    """
    from ..devices import resolve_device

    pkg = read_bioimageio_package(path)
    try:
        config = pkg.rdf.get("config") or {}
        header = config.get("napari_lmadda") if isinstance(config, dict) else None
        if isinstance(header, dict) and header.get("format") == "napari-lmadda-model":
            model = _from_own_export(pkg, header)
        else:
            model = _from_foreign(pkg)
    finally:
        pkg.close()
    model.to(resolve_device(device) if isinstance(device, str) else device)
    return model.eval() if eval_mode else model


def load_bioimageio_architecture(path: str | os.PathLike[str]) -> Any:
    """Build a package's network by RUNNING its architecture file, then load its weights.

    Only for a user who has explicitly agreed to run the package's code (an architecture
    file can do anything Python can). Returns the plain ``torch.nn.Module`` (eval mode).

    Raises
    ------
    CheckpointError
        No ``pytorch_state_dict`` with a file architecture, the file fails to import, or the
        weights do not fit.
    """
    pkg = read_bioimageio_package(path)
    try:
        entry = _weights_entry(pkg.rdf, "pytorch_state_dict") or {}
        arch = entry.get("architecture")
        if not isinstance(arch, dict) or not arch.get("source") or not arch.get("callable"):
            raise CheckpointError(f"'{pkg.path}' has no architecture file to build from")
        code = pkg.read(arch["source"], arch.get("sha256"))
        sd = _state_dict(pkg)
    finally:
        pkg.close()
    digest = hashlib.sha256(code).hexdigest()[:16]
    modname = f"_lmadda_bioimageio_arch_{digest}"
    module = sys.modules.get(modname)
    if module is None:
        tmp = Path(tempfile.mkdtemp(prefix="lmadda-arch-"))
        file = tmp / f"{modname}.py"
        file.write_bytes(code)
        spec = importlib.util.spec_from_file_location(modname, file)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:
            del sys.modules[modname]
            raise CheckpointError(f"'{path}': its architecture file fails to import "
                                  f"({type(exc).__name__}: {exc})") from None
    try:
        net = getattr(module, str(arch["callable"]))(**dict(arch.get("kwargs") or {}))
        net.load_state_dict(sd, strict=bool(entry.get("strict", True)))
    except Exception as exc:
        raise CheckpointError(f"'{path}': cannot build {arch['callable']} from its "
                              f"architecture file ({type(exc).__name__}: {exc})") from None
    return net.eval()
