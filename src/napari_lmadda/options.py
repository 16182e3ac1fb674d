"""Options that describe themselves: help, range, choices, CLI flag and GUI hints per field.

Every setting of the project (an :class:`~napari_lmadda.adapt.config.AdaptConfig` field, a
``lmadda`` command's flag) is a dataclass field declared with :func:`option`, which stores
an :class:`Option` in the field's metadata. From that one declaration:

* :func:`validate` checks a value (type, range, choices, or the option's own ``check``) and
  raises a one-line :class:`~napari_lmadda.errors.ConfigError` naming the setting;
* :func:`add_arguments` adds the argparse flags of a dataclass (help with the default in
  parentheses, choices, metavar, ``store_true`` for booleans, ``append`` for lists), and
  :func:`values_from_args` reads the parsed values back;
* :func:`control` tells a GUI how to show a field (label, tooltip, widget kind, choices,
  range, default);
* :func:`parameters_doc` writes the numpy-style ``Parameters`` section of a docstring.

Dataclass metadata rather than pydantic (which careamics uses): the configurations stay
plain dataclasses (``dataclasses.replace``/``fields``/``asdict`` keep working for the
library, the benchmarks and the tests), values are never coerced behind the user's back
(pydantic's lax mode turns ``"5"`` or ``5.0`` into ``5``), errors stay the project's
one-line ``ConfigError`` and the core needs no extra dependency.

A configuration may group a method's options in a sub-configuration (a dataclass field
declared with :func:`group`); :func:`settings` (used instead of ``@dataclass``) then also
accepts and exposes each sub-field under a flat alias (``apma_parts`` for ``apma.parts``),
so ``AdaptConfig(apma_parts="en")`` and flat provenance dictionaries keep working.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, InitVar, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "Option",
    "Control",
    "option",
    "group",
    "settings",
    "validate",
    "option_of",
    "iter_options",
    "add_arguments",
    "values_from_args",
    "control",
    "parameters_doc",
    "whole_number",
]

_UNSET: Any = type("Unset", (), {"__repr__": lambda self: "<not given>"})()


@dataclass(frozen=True)
class Option:
    """What a setting is, for people and for code.

    Attributes
    ----------
    help : str
        One line: the CLI help (the default is appended) and the GUI tooltip.
    doc : str
        Longer explanation for the docstring (why the default, what was measured).
    flag : str or None
        Command-line flag (``--lr-g``); None keeps the setting off the command line.
    choices : tuple or None
        The allowed values (checked, a combo box in a GUI).
    suggestions : tuple
        Values a GUI offers for a free-form setting (checked by ``check`` instead).
    low, high : float or None
        Bounds (inclusive unless ``low_open`` / ``high_open``).
    what : str
        What the value is, for messages ("a learning rate").
    check : callable or None
        ``check(value) -> value``: extra validation/normalisation; raises ConfigError.
    label : str
        Short GUI label.
    dock : bool
        Shown in the napari dock (with its method).
    metavar, default_text : str or None
        CLI metavar, and the text shown for the default (e.g. ``off``) when not the value.
    cli_type : callable or None
        argparse ``type`` when the field's own type does not parse the text.
    repeat : bool
        The flag may be given several times (a list field): each adds one item.
    alias : str
        The flat name of a sub-configuration field (set by :func:`settings`).
    """

    help: str
    doc: str = ""
    flag: str | None = None
    choices: tuple | None = None
    suggestions: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = ""
    check: Callable[[Any], Any] | None = None
    label: str = ""
    dock: bool = False
    metavar: str | None = None
    default_text: str | None = None
    cli_type: Callable[[str], Any] | None = None
    repeat: bool = False
    alias: str = ""


def option(default: Any = MISSING, help: str = "", **kw: Any) -> Any:  # noqa: A002
    """A dataclass field carrying an :class:`Option` (``default`` MISSING = required).

    Mutable defaults (lists) are copied per instance.
    """
    meta = {"option": Option(help=help, **kw)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(cls: type, prefix: str) -> Any:
    """A field holding a sub-configuration ``cls``; its fields are aliased as ``prefix_name``."""
    return field(default_factory=cls, metadata={"group": (cls, prefix)})


def _groups(cls: type) -> Iterator[tuple[str, type, str]]:
    for name, value in list(vars(cls).items()):
        meta = getattr(value, "metadata", None)
        if isinstance(value, dataclasses.Field) and meta and "group" in meta:
            yield name, *meta["group"]


def settings(cls: type) -> type:
    """``@dataclass`` for a configuration with sub-configurations reachable by flat aliases.

    Each field ``x`` of a group ``apma`` (declared with :func:`group`, prefix ``apma``) is also
    an ``__init__`` keyword ``apma_x`` and a read/write property ``apma_x``. The class's
    ``__post_init__(self, aliases)`` receives ``{alias: value}`` of the aliases given.
    """
    aliases: dict[str, tuple[str, str]] = {}
    for gname, gcls, prefix in _groups(cls):
        _name_aliases(gcls, prefix)
        for f in fields(gcls):
            aliases[f"{prefix}_{f.name}"] = (gname, f.name)
    own_post_init = cls.__dict__.get("__post_init__")
    for alias in aliases:
        cls.__annotations__[alias] = InitVar[Any]
        setattr(cls, alias, _UNSET)

    group_names = [gname for gname, _, _ in _groups(cls)]

    def __post_init__(self, *given: Any) -> None:
        for gname in group_names:  # a copy: configs made by replace() share nothing
            setattr(self, gname, dataclasses.replace(getattr(self, gname)))
        flat = {a: v for a, v in zip(aliases, given) if v is not _UNSET}
        for alias, value in flat.items():
            gname, fname = aliases[alias]
            setattr(self, gname, dataclasses.replace(getattr(self, gname), **{fname: value}))
        if own_post_init is not None:
            own_post_init(self)

    cls.__post_init__ = __post_init__
    cls = dataclass(cls)
    for alias, (gname, fname) in aliases.items():
        setattr(cls, alias, property(
            lambda self, g=gname, f=fname: getattr(getattr(self, g), f),
            lambda self, value, g=gname, f=fname: setattr(getattr(self, g), f, value),
            doc=f"Alias of ``{gname}.{fname}``."))
    cls.ALIASES = dict(aliases)
    if cls.__doc__:
        cls.__doc__ = cls.__doc__.rstrip() + "\n\n" + parameters_doc(cls, indent="    ")
    return cls


# ------------------------------------------------------------------ reading the metadata
def option_of(f: dataclasses.Field) -> Option | None:
    """The :class:`Option` of a dataclass field (None for plain fields)."""
    return f.metadata.get("option")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``list[Path]`` -> ``(list[Path], False)``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), len(rest) < len(args)
    return tp, False


def iter_options(cls: type, *, flat: bool = True) -> Iterator[tuple[str, dataclasses.Field,
                                                                    Option, Any]]:
    """``(name, field, option, type)`` of every declared option, groups flattened by alias."""
    hints = _hints(cls)
    for f in fields(cls):
        opt = option_of(f)
        if opt is not None:
            yield f.name, f, opt, hints[f.name]
        elif flat and "group" in f.metadata:
            gcls, prefix = f.metadata["group"]
            for name, gf, gopt, tp in iter_options(gcls):
                yield f"{prefix}_{name}", gf, gopt, tp


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


# ------------------------------------------------------------------ validation
def _interval(opt: Option) -> str:
    lo, hi = opt.low, opt.high
    if lo is not None and hi is not None:
        return f"in {'(' if opt.low_open else '['}{lo:g}, {hi:g}{')' if opt.high_open else ']'}"
    if lo is not None:
        return f"{'>' if opt.low_open else '>='} {lo:g}"
    return f"{'<' if opt.high_open else '<='} {hi:g}"


def check_value(name: str, value: Any, opt: Option, tp: Any) -> Any:
    """Check one value against its option; return it (normalised by ``opt.check``).

    Raises
    ------
    ConfigError
        One line naming ``name`` and what is allowed.
    """
    base, nullable = _base_type(tp)
    if value is None and nullable:
        return value
    if opt.check is not None:
        return opt.check(value)
    if opt.choices is not None:
        if value not in opt.choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, opt.choices))}, "
                              f"got {value!r}")
        return value
    bounded = opt.low is not None or opt.high is not None
    if base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        lo, hi = opt.low, opt.high
        if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
            span = (f"in {lo:g}..{hi:g}" if lo is not None and hi is not None
                    else f"of at least {lo:g}" if lo is not None else f"of at most {hi:g}")
            none = " or None" if nullable else ""
            raise ConfigError(f"{name} must be a whole number {span}{none}, got {value!r}"
                              if bounded else f"{name} must be a whole number, got {value!r}")
        return value
    if base is float and bounded:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
            value)
        if ok and opt.low is not None:
            ok = value > opt.low if opt.low_open else value >= opt.low
        if ok and opt.high is not None:
            ok = value < opt.high if opt.high_open else value <= opt.high
        if not ok:
            what = f"{opt.what} " if opt.what else ""
            raise ConfigError(f"{name} must be {what}{_interval(opt)}, got {value!r}")
    return value


def validate(obj: Any) -> None:
    """Check (and normalise in place) every option field of a dataclass instance.

    Sub-configurations check themselves when they are made; their fields are named by
    their flat alias in messages.
    """
    hints = _hints(type(obj))
    for f in fields(obj):
        opt = option_of(f)
        if opt is None:
            continue
        name = opt.alias or f.name
        value = check_value(name, getattr(obj, f.name), opt, hints[f.name])
        object.__setattr__(obj, f.name, value)


def _name_aliases(cls: type, prefix: str) -> None:
    """Record the flat alias (``prefix_name``) in the options of a sub-configuration."""
    for f in fields(cls):
        opt = option_of(f)
        if opt is not None and not opt.alias:
            f.metadata = types.MappingProxyType(
                {**f.metadata, "option": dataclasses.replace(opt, alias=f"{prefix}_{f.name}")})


# ------------------------------------------------------------------ command line
def whole_number(text: str) -> int:
    """Parse an integer for argparse, with a clear message otherwise."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _default_text(opt: Option, default: Any) -> str | None:
    if opt.default_text is not None:
        return opt.default_text
    if default is MISSING or default is None or isinstance(default, bool | list):
        return None
    return f"{default:g}" if isinstance(default, float) else str(default)


def add_arguments(parser: Any, cls: type, *, names: Any = None, config_defaults: bool = False,
                  prefix: str = "") -> None:
    """Add the flags of the options of ``cls`` to an argparse parser or group.

    Parameters
    ----------
    parser : argparse.ArgumentParser or argument group
        Where to add them.
    cls : dataclass type
        The options (fields without a ``flag`` are skipped).
    names : iterable of str, optional
        Only these options (field names or flat aliases), in this order.
    config_defaults : bool
        Parse every flag with default None, meaning "the configuration's default" (which the
        help shows); :func:`values_from_args` then leaves it out.
    prefix : str
        Put before the help (e.g. the method, ``"apma: "``).
    """
    table = {name: (f, opt, tp) for name, f, opt, tp in iter_options(cls)}
    for name in (list(names) if names is not None else list(table)):
        f, opt, tp = table[name]
        if opt.flag is None:
            continue
        default = _default(f)
        shown = _default_text(opt, default)
        group_prefix = f"{name[: -len(f.name) - 1]}: " if opt.alias else ""
        kw: dict[str, Any] = {
            "dest": name,
            "help": f"{prefix}{group_prefix}{opt.help}" + (f" ({shown})" if shown else ""),
        }
        base, _ = _base_type(tp)
        if base is bool:
            kw["action"] = "store_true"
        else:
            if opt.repeat:
                kw["action"] = "append"
                base = typing.get_args(base)[0]
            kw["type"] = opt.cli_type or {int: whole_number, float: float, Path: Path}.get(base,
                                                                                        str)
            if opt.choices is not None:
                kw["choices"] = opt.choices
            if opt.metavar or opt.choices is None:  # named after the flag, not the field
                kw["metavar"] = opt.metavar or opt.flag.lstrip("-").replace("-", "_").upper()
        if default is MISSING:
            kw["required"] = True
        elif config_defaults and base is not bool:
            kw["default"] = None
        else:
            kw["default"] = default
        parser.add_argument(opt.flag, **kw)


def values_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The parsed values of the flags of ``cls`` that were given (None = not given)."""
    out = {}
    for name, _, opt, _ in iter_options(cls):
        if opt.flag is not None and getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    return out


def check_args(args: argparse.Namespace, cls: type, names: Any = None) -> None:
    """Validate parsed flags against their options; messages name the flag."""
    table = {name: (opt, tp) for name, _, opt, tp in iter_options(cls)}
    for name in (list(names) if names is not None else list(table)):
        opt, tp = table[name]
        if opt.flag is not None and hasattr(args, name):
            setattr(args, name, check_value(opt.flag, getattr(args, name), opt, tp))


# ------------------------------------------------------------------ GUI
@dataclass(frozen=True)
class Control:
    """How a GUI shows one option.

    ``kind`` is ``combo`` (``choices``), ``editable_combo`` (free text with ``choices`` as
    suggestions), ``check``, ``int``, ``float`` or ``text``.
    """

    name: str
    label: str
    tooltip: str
    kind: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    default: Any = None


def control(cls: type, name: str) -> Control:
    """The :class:`Control` of option ``name`` (a field name or a flat alias) of ``cls``."""
    for n, f, opt, tp in iter_options(cls):
        if n != name:
            continue
        base, _ = _base_type(tp)
        if opt.choices is not None:
            kind, choices = "combo", tuple(opt.choices)
        elif opt.suggestions:
            kind, choices = "editable_combo", tuple(opt.suggestions)
        else:
            kind = {bool: "check", int: "int", float: "float"}.get(base, "text")
            choices = ()
        label = opt.label or n.replace("_", " ").capitalize()
        return Control(n, label, opt.help, kind, choices, opt.low, opt.high, _default(f))
    raise KeyError(f"{cls.__name__} has no option {name!r}")


# ------------------------------------------------------------------ docs
def parameters_doc(cls: type, indent: str = "") -> str:
    """A numpy-style ``Parameters`` section written from the options of ``cls``."""
    lines = ["Parameters", "----------"]
    for name, _, opt, tp in iter_options(cls):
        base, nullable = _base_type(tp)
        if opt.choices is not None:
            kind = "{" + ", ".join(repr(c) for c in opt.choices) + "}"
        else:
            kind = getattr(base, "__name__", str(base))
        lines.append(f"{name} : {kind}{' or None' if nullable else ''}")
        text = opt.help + ("" if opt.help.endswith(".") else ".")
        if opt.doc:
            text += " " + opt.doc
        lines += ["    " + ln for ln in _wrap(text, 88 - len(indent) - 4)]
    return "\n".join(indent + ln if ln else ln for ln in lines)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]
