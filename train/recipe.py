"""A training recipe's config dataclass is the one home of its defaults.

Every hyper-parameter of a recipe (:class:`~affedge.train.encoder.EncoderConfig`,
:class:`~affedge.train.progressive.ProgressiveConfig`,
:class:`~affedge.train.multitask.MultitaskConfig`) is a field of its config dataclass, and its
default is written there and nowhere else. A field's ``metadata`` says how the command line
shows it, in the keys of :class:`OptionSpec` (:func:`option` builds them; a plain
``{"help": ...}`` works too): help text, bounds, flag names and, for a field whose value is not
an int, float, str, bool or list of str, the function that parses the option's text.

``affedge train <recipe>`` (train/cli.py) turns every field into an ``--option`` whose default
is the field's default, so ``affedge train <recipe> --help`` is the reference for the defaults
(the README points there rather than repeating them). The options are built when that command
runs or shows its help, not when ``affedge`` starts: the config modules import torch.

This module imports neither torch nor typer: the config modules import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from affedge.errors import InputError


@dataclass(frozen=True)
class OptionSpec:
    """How one config field appears on the command line (the field's ``metadata`` keys)."""

    help: str = ""
    min: float | None = None
    max: float | None = None
    #: Option names (``("--require-gpu",)`` for a flag without ``--no-``); default from the name.
    flags: tuple[str, ...] = ()
    #: Text (or, with ``multiple``, the list of texts) -> the field's value.
    parse: Callable[[Any], Any] | None = None
    #: The option may be repeated (``--data sa=sst2 --data erc=meld``).
    multiple: bool = False
    #: False: the field is not an option (set from code only).
    cli: bool = True


_SPEC_KEYS = frozenset(f.name for f in fields(OptionSpec))


def option(
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    flags: tuple[str, ...] = (),
    parse: Callable[[Any], Any] | None = None,
    multiple: bool = False,
    cli: bool = True,
) -> dict[str, Any]:
    """Field metadata: ``field(default=16, metadata=option("LoRA rank.", min=1))``.

    The keys are :class:`OptionSpec`'s, so plain ``metadata={"help": ...}`` works too.
    """
    given = OptionSpec(help, min, max, flags, parse, multiple, cli)
    bare = OptionSpec()
    return {k: getattr(given, k) for k in _SPEC_KEYS if getattr(given, k) != getattr(bare, k)}


def option_spec(
    metadata: Mapping[str, Any], fallback: Mapping[str, Any] | None = None
) -> OptionSpec:
    """A field's :class:`OptionSpec`: its metadata over ``fallback`` (specs a config module
    does not carry yet, supplied by the command) over the bare defaults."""
    merged = {**(fallback or {}), **metadata}
    return OptionSpec(**{k: v for k, v in merged.items() if k in _SPEC_KEYS})


def comma_list(value: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in value.split(",") if v.strip()]


def key_map(
    parts: str | list[str] | None, convert: Callable[[str], Any], what: str = "KEY"
) -> dict[str, Any]:
    """``KEY=VALUE`` items -> ``{KEY: convert(VALUE)}``.

    ``parts`` is one text (items separated by spaces or ``;``) or a repeated option's texts.
    """
    if not parts:
        return {}
    text = parts if isinstance(parts, str) else " ".join(parts)
    out: dict[str, Any] = {}
    for part in text.replace(";", " ").split():
        key, sep, rest = part.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected {what}=VALUE, got {part!r}")
        try:
            out[key.strip()] = convert(rest)
        except ValueError:
            raise InputError(f"{part!r}: {rest!r} is not a valid value") from None
    return out


def key_map_text(table: Mapping[str, Any], sep: str = " ") -> str:
    """``{"sa": ("a", "b"), "erc": 2e-4}`` -> ``sa=a,b erc=0.0002``: a default as typed."""
    return sep.join(
        f"{k}={','.join(v) if isinstance(v, list | tuple) else format(v, 'g')}"
        for k, v in table.items()
    )
