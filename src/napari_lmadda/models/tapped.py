"""Any PyTorch image-to-image network as a model with layer taps (LM-ADDA at a named module).

LM-ADDA needs three things from a model: the activation of one layer *l* (a "tap"), the
parameters that compute it (they train), and a forward pass that stops there (everything
after *l* is frozen and need not run). The project's UNet provides them by construction
(:class:`~napari_lmadda.models.unet.UNetGenerator`); :class:`TappedModel` provides the same
API (``num_layers``, ``forward(x, upto=l)``, ``forward_taps``, ``block``, ``describe_layers``,
``min_size``, ``check_input``, ``config``, ``meta``) for any ``nn.Module`` that maps a
``(B, C_in, H, W)`` image to a ``(B, C_out, H, W)`` image, so the adaptation loop, AdaBN,
prediction, sweeps and trust maps run on it unchanged.

How the taps are found: one forward pass of an example input with a forward hook on every
module records the modules in the order they *finish*, with their outputs. A tap is a module
call whose output is a ``(1, C, H, W)`` float tensor with ``W`` scaling with the input width
(a second pass at twice the width tells channels-first image tensors from channels-last ones,
as inside ConvNeXt blocks, and from pooled ``(C, 1, 1)`` vectors). Calls that return the same
tensor unchanged (a ``Sequential`` returning its last child's output, an ``Identity``) are one
tap, named after the outermost module; the model's own output is the last tap, ``output``. A
module called several times (a shared pooling layer) gives one tap per call, ``name@2`` for
the second. Taps are numbered 1..N in that order; ``--layer`` takes the number or the name.

What trains when matching at tap *l*: every parameter of the modules that finished before the
tap, or at it, in that forward pass; everything finishing later stays frozen. A module's
parameters belong to the tap at which its *last* call finishes, so a module that also runs
after the tap (weight sharing), or a container whose own parameters may be used after its
children (a learned scale), stays frozen rather than changing what runs after the tap. For a
UNet with skips, a decoder tap trains the encoder that feeds it, as with the project's UNet.

Stopping early: :meth:`TappedModel.forward_taps` hooks only the wanted modules and raises from
the hook of the deepest one, so nothing after it runs (a ``BaseException``, so a model's own
``except Exception`` cannot swallow it). Earlier taps of the same pass are cloned when
captured, so in-place operations that run later (``x += skip``, ``ReLU(inplace=True)``) do
not change them.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .unet import LayerInfo, checked_taps

__all__ = ["TappedModel", "TappedConfig", "TapInfo", "is_tapped", "list_taps"]

OUTPUT = "output"  # the name of the last tap, the model's output


class _StopForward(BaseException):
    """Raised from a forward hook once the deepest wanted tap is computed."""


@dataclass(frozen=True)
class TapInfo(LayerInfo):
    """One tap: what ``forward(x, upto=index)`` returns, and what trains when matching it.

    Attributes
    ----------
    index, name, kind, channels, height, width
        As :class:`~napari_lmadda.models.unet.LayerInfo` (``kind`` is the module's class).
    trainable_params : int
        Parameters that belong to this tap (computed since the previous tap).
    params_upto : int
        Parameters that train when matching at this tap (taps ``1 .. index``).
    module : str
        The module whose call is tapped (``""`` for the model itself).
    call : int
        Which call of that module (1 = first).
    aliases : tuple of str
        Other names of the same tensor (inner modules returning it unchanged).
    """

    params_upto: int = 0
    module: str = ""
    call: int = 1
    aliases: tuple[str, ...] = ()

    def __str__(self) -> str:
        return (f"{self.index:3d} {self.name:<28} {self.kind:<16} {self.channels:4d} ch "
                f"{self.height:>4}x{self.width:<4} {self.params_upto:>10,} params")


@dataclass(frozen=True)
class TappedConfig:
    """What :class:`TappedModel` knows about the network it wraps.

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels in and out.
    input_size : int
        Side of the square example input the taps were traced with.
    arch : dict
        How to rebuild the network (see :mod:`napari_lmadda.models.arch`); plain data.
    """

    in_channels: int
    out_channels: int
    input_size: int
    arch: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain dict (JSON- and ``weights_only``-safe)."""
        return asdict(self)


@dataclass
class _Call:
    """One module call that finished during the trace (its output's shape, not the output)."""

    name: str
    call: int
    shape: tuple[int, ...] | None  # None: not a tensor
    image: bool  # a (1, C, H, W) float tensor
    same_as: int | None  # index of the earlier call that returned this very tensor, unchanged


@dataclass
class _Tap:
    capture: tuple[str, int]  # (module name, call) whose hook captures the tensor
    names: list[str]  # every module call that returned this tensor unchanged
    first: int  # index of the capturing call among all calls
    last: int  # index of the last call of the group
    shape: tuple[int, int, int]  # (C, H, W) at the traced size
    kind: str


class _Segment(nn.Module):
    """What computes one tap: the parameters it owns, and its leaf modules (for BatchNorms).

    ``parameters()`` yields exactly the owned parameters (registered here, not copied);
    ``modules()`` also yields the owned leaf modules, so code that looks for BatchNorms in
    ``model.block(i).modules()`` finds them.
    """

    def __init__(self, params: list[nn.Parameter], leaves: list[nn.Module]) -> None:
        super().__init__()
        for j, p in enumerate(params):
            self.register_parameter(f"p{j}", p)
        self._leaves = tuple(leaves)  # a tuple: not registered as submodules

    def modules(self):  # noqa: D102
        yield self
        yield from self._leaves

    def forward(self, *args: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("a tap's segment is not a network")


def is_tapped(model: Any) -> bool:
    """Whether ``model`` is a :class:`TappedModel` (an arbitrary network behind taps)."""
    return isinstance(model, TappedModel)


def _first_conv_channels(net: nn.Module) -> int | None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            return int(m.in_channels)
    return None


def _trace(net: nn.Module, x: torch.Tensor) -> tuple[list[_Call], Any]:
    """Run ``net(x)`` once with a hook on every module; the calls in the order they finish.

    Only the latest image-shaped output is kept referenced (to recognise a module returning
    it unchanged), so tracing a large network does not hold all its activations.
    """
    names = {m: n for n, m in net.named_modules()}
    counts: dict[str, int] = {}
    calls: list[_Call] = []
    last: list[Any] = [None, 0, -1]  # tensor, its version, its call index

    def hook(mod: nn.Module, args: Any, out: Any) -> None:
        name = names[mod]
        k = counts[name] = counts.get(name, 0) + 1
        if not isinstance(out, torch.Tensor):
            calls.append(_Call(name, k, None, False, None))
            return
        image = out.ndim == 4 and out.is_floating_point() and out.shape[0] == 1
        same = last[2] if out is last[0] and out._version == last[1] else None
        calls.append(_Call(name, k, tuple(out.shape), image, same))
        if image:
            last[:] = [out, out._version, len(calls) - 1]

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in handles:
            h.remove()
    return calls, out


def _call_name(c: _Call) -> str:
    return c.name if c.call == 1 else f"{c.name}@{c.call}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


class TappedModel(nn.Module):
    """An image-to-image ``nn.Module`` with numbered, named taps (see the module docs).

    Parameters
    ----------
    net : nn.Module
        The network: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``. Not copied.
    input_size : int
        Side of the square example input the taps are traced with (a size the network
        accepts; 128 or 256 suit most UNets).
    in_channels : int, optional
        Input channels; default: those of the first convolution.
    arch : dict, optional
        How to rebuild the network (stored in model files; see
        :mod:`napari_lmadda.models.arch`).
    meta : dict, optional
        Channel names, normalisation and provenance, as for the project's models.

    Raises
    ------
    ConfigError
        A TorchScript module (no hooks), a network that fails on the example input, whose
        output is not an image of the input's size, or that has no tap.
    """

    def __init__(self, net: nn.Module, *, input_size: int = 256, in_channels: int | None = None,
                 arch: dict | None = None, meta: dict | None = None) -> None:
        super().__init__()
        if isinstance(net, torch.jit.ScriptModule):
            raise ConfigError(
                "a TorchScript model cannot be adapted: hooks cannot be attached to its "
                "layers; give its Python architecture (--arch file.py:Class --weights w.pt)")
        if not isinstance(net, nn.Module):
            raise ConfigError(f"expected a torch.nn.Module, got a {type(net).__name__}")
        self.net = net
        cin = in_channels if in_channels is not None else _first_conv_channels(net)
        if cin is None:
            raise ConfigError("cannot tell the network's input channels (no convolution "
                              "found): give in_channels")
        size = int(input_size)
        if size < 1:
            raise ConfigError(f"input_size must be >= 1, got {input_size}")
        self._taps, cout, self._min_size = self._find_taps(int(cin), size)
        self.config = TappedConfig(int(cin), cout, size, dict(arch or {}))
        self.meta: dict[str, Any] = dict(meta or {})

    # ------------------------------------------------------------------ tracing
    def _example(self, cin: int, h: int, w: int) -> torch.Tensor:
        p = next(self.net.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        gen = torch.Generator().manual_seed(0)
        return torch.randn(1, cin, h, w, generator=gen).to(dev)

    def _run_trace(self, cin: int, h: int, w: int) -> tuple[list[_Call], Any]:
        modes = [(m, m.training) for m in self.net.modules()]
        self.net.eval()  # no running-statistics update, no dropout while tracing
        try:
            return _trace(self.net, self._example(cin, h, w))
        finally:
            for m, mode in modes:
                m.training = mode

    def _find_taps(self, cin: int, size: int) -> tuple[list[_Tap], int, int]:
        try:
            calls, out = self._run_trace(cin, size, size)
        except Exception as exc:  # noqa: BLE001 - any failure of user code: one line
            raise ConfigError(
                f"the network fails on a {size}x{size} input with {cin} channel(s) "
                f"({_one_line(exc)}); give another input size or in_channels") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 4:
            what = (f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                    else f"a {type(out).__name__}")
            raise ConfigError(f"the network returns {what}; napari-lmadda needs an image "
                              "(B, C, H, W) out")
        if tuple(out.shape[-2:]) != (size, size):
            raise ConfigError(
                f"the network maps a {size}x{size} input to {out.shape[-2]}x{out.shape[-1]}; "
                "napari-lmadda needs an output of the input's size")
        spatial = self._spatial_calls(calls, cin, size)
        groups: list[_Tap] = []
        for i, c in enumerate(calls):
            if not c.image or (spatial is not None and not spatial[i]):
                continue
            prev = groups[-1] if groups else None
            if prev is not None and c.same_as is not None and c.same_as >= prev.first:
                prev.names.append(_call_name(c))  # the same tensor, unchanged: one tap
                prev.last = i
                continue
            assert c.shape is not None
            groups.append(_Tap((c.name, c.call), [_call_name(c)], i, i,
                               (int(c.shape[1]), int(c.shape[2]), int(c.shape[3])), ""))
        if calls[-1].name != "" or not groups or groups[-1].last != len(calls) - 1:
            raise ConfigError("the network's output is not the last module call to finish; "
                              "cannot tap it")
        modules = dict(self.net.named_modules())
        for g in groups:  # the outermost module names the tap
            g.names.sort(key=lambda n: 0 if n == "" else n.count(".") + 1)
            g.kind = "output" if g.names[0] == "" else type(
                modules[g.names[0].split("@")[0]]).__name__
        factors = [size // g.shape[1] for g in groups
                   if 0 < g.shape[1] < size and size % g.shape[1] == 0]
        self._segments = self._assign(calls, groups)
        return groups, int(out.shape[1]), math.lcm(*factors) if factors else 1

    def _spatial_calls(self, calls: list[_Call], cin: int, size: int) -> list[bool] | None:
        """Which calls return channels-first image tensors (their width follows the input's).

        None when the network does not run on a twice-as-wide input, or runs differently:
        then every 4-D float output counts.
        """
        try:
            wide, _ = self._run_trace(cin, size, 2 * size)
        except Exception:  # noqa: BLE001 - a network that needs square inputs
            return None
        if [(c.name, c.call) for c in wide] != [(c.name, c.call) for c in calls]:
            return None
        return [a.shape is not None and b.shape is not None and len(a.shape) == 4
                and len(b.shape) == 4 and a.shape[:3] == b.shape[:3]
                and b.shape[3] == 2 * a.shape[3] for a, b in zip(calls, wide)]

    def _assign(self, calls: list[_Call], groups: list[_Tap]) -> list[tuple[list[str], list[str]]]:
        """Per tap, the names of the parameters and leaf modules it owns.

        A module belongs to the tap at which its last call finishes; a parameter to the
        latest-finishing module holding it (shared weights train only if every use is
        before the tap). Modules that never run own nothing.
        """
        last_call: dict[str, int] = {}
        for i, c in enumerate(calls):
            last_call[c.name] = i
        ends = [g.last for g in groups]

        def tap_of(i: int) -> int:
            return next(k for k, e in enumerate(ends) if e >= i)

        param_names = {id(p): n for n, p in self.net.named_parameters()}
        owner: dict[int, int] = {}
        segments: list[tuple[list[str], list[str]]] = [([], []) for _ in groups]
        for name, mod in self.net.named_modules():
            if name not in last_call:
                continue
            k = tap_of(last_call[name])
            for p in mod.parameters(recurse=False):
                owner[id(p)] = max(owner.get(id(p), -1), k)
            if next(mod.children(), None) is None:
                segments[k][1].append(name)
        for pid, k in owner.items():
            segments[k][0].append(param_names[pid])
        order = {n: j for j, n in enumerate(param_names.values())}
        for params, _ in segments:
            params.sort(key=order.__getitem__)
        return segments

    # ------------------------------------------------------------------ structure
    @property
    def num_layers(self) -> int:
        """Number of taps; the last one is the output."""
        return len(self._taps)

    @property
    def min_size(self) -> int:
        """Input sides must be multiples of this (the network's total down-sampling)."""
        return self._min_size

    def _check_layer(self, layer: int) -> None:
        if not 1 <= int(layer) <= self.num_layers:
            raise ConfigError(
                f"layer {layer} is out of range: this model has taps 1..{self.num_layers} "
                "(list them with `lmadda layers`)")

    def layer_name(self, layer: int) -> str:
        """The tap's module name (``output`` for the model's output)."""
        self._check_layer(layer)
        name = self._taps[int(layer) - 1].names[0]
        return OUTPUT if name == "" else name

    def layer_index(self, name: str | int) -> int:
        """The tap number of a module name (or alias, ``output``, ``name@2``) or number.

        Raises
        ------
        ConfigError
            No tap has that name; the message lists a few that exist.
        """
        text = str(name).strip()
        if re.fullmatch(r"\d+", text):
            self._check_layer(int(text))
            return int(text)
        key = "" if text == OUTPUT else text
        for i, t in enumerate(self._taps, 1):
            if key in t.names or f"{key}@1" in t.names:
                return i
        modules = dict(self.net.named_modules())
        if key in modules:
            raise ConfigError(
                f"module '{text}' is not a tap: its output is not an image tensor (or it "
                "never runs); list the taps with `lmadda layers`")
        close = [self.layer_name(i) for i in range(1, self.num_layers + 1)
                 if text.split(".")[0] in self.layer_name(i)][:5]
        hint = f" (e.g. {', '.join(close)})" if close else ""
        raise ConfigError(f"this model has no module named '{text}'{hint}; list the taps "
                          "with `lmadda layers`")

    def describe_layers(self, input_size: int | tuple[int, int] = 256) -> list[TapInfo]:
        """Every tap with its channels, size for ``input_size``, and parameter counts.

        Parameters
        ----------
        input_size : int or (int, int)
            Input height and width.

        Returns
        -------
        list of TapInfo
            One entry per tap, index 1 first.
        """
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        s = self.config.input_size
        out, upto = [], 0
        for i, t in enumerate(self._taps, 1):
            own = sum(p.numel() for p in self.block(i).parameters())
            upto += own
            c, th, tw = t.shape
            name = OUTPUT if t.names[0] == "" else t.names[0]
            out.append(TapInfo(i, name, t.kind, c, th * int(h) // s, tw * int(w) // s, own,
                               params_upto=upto, module=t.capture[0], call=t.capture[1],
                               aliases=tuple(OUTPUT if n == "" else n for n in t.names[1:])))
        return out

    def block(self, layer: int) -> nn.Module:
        """What computes tap ``layer``: the parameters and leaf modules it owns.

        ``block(i).parameters()`` are exactly the parameters that belong to tap ``i``;
        ``block(i).modules()`` includes its leaf modules (e.g. BatchNorms).
        """
        self._check_layer(layer)
        param_names, leaf_names = self._segments[int(layer) - 1]
        params = dict(self.net.named_parameters())
        modules = dict(self.net.named_modules())
        return _Segment([params[n] for n in param_names], [modules[n] for n in leaf_names])

    def blocks_upto(self, layer: int) -> list[nn.Module]:
        """The segments of taps ``1 .. layer`` (what LM-ADDA may train)."""
        return [self.block(i) for i in range(1, int(layer) + 1)]

    def level_layers(self) -> list[int]:
        """The last tap of every run of taps at one resolution (a UNet's levels).

        The output is the last; a short list of representative taps (what recommend-layer
        compares by default).
        """
        out = []
        for i in range(1, self.num_layers + 1):
            nxt = self._taps[i] if i < self.num_layers else None
            if nxt is None or nxt.shape[1:] != self._taps[i - 1].shape[1:]:
                out.append(i)
        return out

    def gap_layers(self, top: int) -> list[int]:
        """Taps from ``top`` to the output on which the label-free feature gap is measured.

        ``top`` and the later :meth:`level_layers` (the project's UNet measures every layer
        after ``top``; a network with a hundred modules would make that slow and large).
        """
        self._check_layer(top)
        return [int(top)] + [i for i in self.level_layers() if i > int(top)]

    # ------------------------------------------------------------------ forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for an input of the wrong rank, channels or size."""
        if x.ndim != 4:
            raise ConfigError(
                f"expected a (batch, channels, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ConfigError(f"this model takes {self.config.in_channels} input channel(s), "
                              f"got {x.shape[1]}")
        m = self.min_size
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ConfigError(f"input size {tuple(x.shape[-2:])} is not a multiple of {m} "
                              "(the network's down-sampling); pad or tile the image")

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Run the network, or only up to tap ``upto`` (1-based) and return its activation."""
        if upto is None or int(upto) == self.num_layers:
            self.check_input(x)
            return self.net(x)
        return self.forward_taps(x, (int(upto),))[int(upto)]

    def forward_taps(self, x: torch.Tensor, layers) -> dict[int, torch.Tensor]:
        """Activations of several taps from one pass that stops at the deepest one.

        Parameters
        ----------
        x : torch.Tensor
            Input batch.
        layers : iterable of int
            Taps to return (1-based).

        Returns
        -------
        dict
            ``{layer: activation}``.
        """
        wanted = checked_taps(self, x, layers)
        if not wanted:
            return {}
        if wanted == [self.num_layers]:
            return {self.num_layers: self.net(x)}
        deepest = wanted[-1]
        at = {self._taps[i - 1].capture: i for i in wanted}
        modules = dict(self.net.named_modules())
        counts: dict[str, int] = {}
        taps: dict[int, torch.Tensor] = {}

        def hook(name: str):
            def capture(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
                k = counts[name] = counts.get(name, 0) + 1
                layer = at.get((name, k))
                if layer is None:
                    return
                if layer == deepest:
                    taps[layer] = out
                    raise _StopForward
                taps[layer] = out.clone()  # later in-place operations must not change it
            return capture

        handles = [modules[n].register_forward_hook(hook(n)) for n in {c for c, _ in at}]
        try:
            out = self.net(x)
            taps[deepest] = out  # the output (its tap may be the model itself)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return taps

    def extra_repr(self) -> str:  # noqa: D102
        c = self.config
        return (f"{c.in_channels} -> {c.out_channels} channels, {self.num_layers} taps, "
                f"inputs multiple of {self.min_size}")


def list_taps(model: nn.Module, input_size: int | tuple[int, int] = 256) -> list[TapInfo]:
    """The taps of any model of the project, for a layer list or slider.

    Parameters
    ----------
    model : UNetGenerator, TranslatedModel or TappedModel
        A loaded model.
    input_size : int or (int, int)
        Input height and width (shapes of the taps depend on it).

    Returns
    -------
    list of TapInfo
        Number, name, module class, channels, height, width, the parameters of the tap and
        the parameters that train when matching at it (``params_upto``), in the order the
        taps run; the last is the output. For the project's UNet the numbers are its layers
        1..2N and the names ``down1`` ... ``bottleneck`` ... ``output``.
    """
    infos = model.describe_layers(input_size)
    if infos and isinstance(infos[0], TapInfo):
        return list(infos)
    out, upto = [], 0
    for i in infos:
        upto += i.trainable_params
        out.append(TapInfo(i.index, i.name, i.kind, i.channels, i.height, i.width,
                           i.trainable_params, params_upto=upto, module=i.name))
    return out
