"""`affedge models|tasks|datasets|backends list`: what this install can run and read."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import typer

from affedge.cli.options import JsonOpt, print_table

models_app = typer.Typer(help="Models affedge can run.", no_args_is_help=True)
tasks_app = typer.Typer(help="Tasks in the registry.", no_args_is_help=True)
datasets_app = typer.Typer(help="Benchmark datasets affedge can read.", no_args_is_help=True)
backends_app = typer.Typer(help="Engines that open models, by kind.", no_args_is_help=True)


def _emit(rows: list[dict[str, Any]], json_out: bool, columns: dict[str, str]) -> None:
    if json_out:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print_table(rows, columns)


@models_app.command("list")
def models_list(json_out: JsonOpt = False) -> None:
    """Built-in models: name, format, whether installed, and where."""
    from affedge.models import list_models

    rows = [asdict(m) for m in list_models()]
    if not json_out:
        for row in rows:
            row["installed"] = "yes" if row["available"] else "no"
            row["where"] = row["path"] or row["install"]
    _emit(
        rows,
        json_out,
        {
            "name": "name",
            "format": "format",
            "default": "default",
            "tasks": "tasks",
            "installed": "installed",
            "size_mb": "size MB",
            "where": "path / how to install",
        },
    )
    if not json_out:
        print("Any local GGUF file or exported model folder also works: --model PATH")


@tasks_app.command("list")
def tasks_list(json_out: JsonOpt = False) -> None:
    """Tasks with their labels, level, metric and benchmarks."""
    from affedge.tasks import BENCHMARKS, TASKS

    rows = [
        {
            "task": t.name,
            "kind": t.kind,
            "level": t.level,
            "labels": list(t.labels) if t.labels else (["0..1"] if not json_out else []),
            "metric": t.metric,
            "datasets": [b.dataset for b in BENCHMARKS if b.task == t.name],
            "description": t.description,
        }
        for t in TASKS.values()
    ]
    columns = {k: k for k in ("task", "kind", "level", "labels", "metric", "datasets")}
    _emit(rows, json_out, columns)


@datasets_app.command("list")
def datasets_list(json_out: JsonOpt = False) -> None:
    """Datasets affedge reads, their splits and label layers."""
    from affedge.datasets import DATASETS

    rows = [
        {
            "dataset": d.name,
            "splits": list(d.splits),
            "layers": {k: list(v) for k, v in d.layers.items()},
            "scores": list(d.score_layers),
            "dialogue": d.dialogue,
            "description": d.description,
        }
        for d in DATASETS.values()
    ]
    columns = {
        "dataset": "dataset",
        "splits": "splits",
        "layers": "label layers",
        "scores": "scores",
        "description": "description",
    }
    _emit(rows, json_out, columns)


@backends_app.command("list")
def backends_list(json_out: JsonOpt = False) -> None:
    """Registered backends, the artifact kinds they open and what they can do."""
    from affedge.engines import backends

    rows = []
    for b in backends():
        row: dict[str, Any] = {"backend": b.name, "kinds": list(b.kinds), "extra": b.extra}
        try:
            row["capabilities"] = sorted(c.value for c in b.load().capabilities)
        except Exception as exc:  # a backend whose dependency is missing still gets listed
            row["capabilities"] = []
            row["error"] = str(exc)
        rows.append(row)
    columns = {"backend": "backend", "kinds": "kinds", "capabilities": "capabilities"}
    _emit(rows, json_out, columns)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.add_typer(tasks_app, name="tasks")
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(backends_app, name="backends")
