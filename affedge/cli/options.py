"""Options shared by the CLI's commands (one definition each), and the CLI's small helpers.

Plugin command packages (train/, export/, bench/) import these too, so an option reads the
same everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from affedge.chunking import LONG_MODES
from affedge.errors import AffedgeError, InputError
from affedge.io import OUTPUT_FORMATS

#: ``--format`` choices: the names of :data:`affedge.io.OUTPUT_FORMATS`, its one table.
Format = Enum("Format", {name: name for name in OUTPUT_FORMATS}, type=str)  # type: ignore[misc]
#: ``--long`` choices (:data:`affedge.chunking.LONG_MODES`).
Long = Enum("Long", {name: name for name in LONG_MODES}, type=str)  # type: ignore[misc]
#: Output formats ``--output``'s suffix implies when ``--format`` is not given.
SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet"}


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


InputArg = Annotated[
    str, typer.Argument(help="Input file (.txt, .csv, .tsv, .jsonl, .parquet) or - for stdin.")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Built-in model name or path to a local model.")
]
FormatOpt = Annotated[
    Format | None,
    typer.Option(
        "--format", "-f", help="Output format (default: table on a terminal, else jsonl)."
    ),
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.")
]
TextFieldOpt = Annotated[
    str | None,
    typer.Option(help="Text column (.csv/.tsv/.parquet) or field (.jsonl) (default: text)."),
]
InputFormatOpt = Annotated[
    str | None,
    typer.Option(help="Input format when the suffix does not say: txt, csv, tsv, jsonl, parquet."),
]
EncodingOpt = Annotated[str, typer.Option(help="Text encoding of the input.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run into the same --output.")
]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads (default: all cores).")]
LabelsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated label set replacing the task's labels.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto (a GPU when the installed onnxruntime/llama.cpp can use one, else the CPU), "
        "cpu, or cuda (an error when no GPU can be used).",
    ),
]
GpuLayersOpt = Annotated[
    int | None,
    typer.Option(
        "--gpu-layers",
        min=-1,
        help="GGUF models: transformer layers llama.cpp offloads to the GPU (default: all, -1).",
    ),
]
DataDirOpt = Annotated[Path | None, typer.Option(help="Dataset folder (default: $AFFEDGE_DATA).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
CalibrationOpt = Annotated[
    bool,
    typer.Option(
        "--calibration/--no-calibration",
        help="Apply the model's temperatures fitted on validation data to label probabilities "
        "(--no-calibration: the raw softmax). Labels are the same either way.",
    ),
]


LongOpt = Annotated[
    Long,
    typer.Option(
        "--long",
        help="Texts longer than the model's context: chunk reads them whole in windows at "
        "sentence boundaries and averages the windows' results weighted by their token length "
        "(the row says chunks: n); truncate cuts them to the context (truncated: true).",
    ),
]


def output_format(fmt: Format | None, output: Path | None) -> str:
    """``--format``, else from ``--output``'s suffix (.csv, .parquet), else jsonl to a file and
    a table on a terminal."""
    if fmt is not None:
        return str(fmt.value)
    if output is not None:
        return SUFFIX_FORMATS.get(output.suffix.lower(), "jsonl")
    return "table" if sys.stdout.isatty() else "jsonl"


class NoProgress:
    """What :func:`progress` gives when nothing is shown: rich's ``Progress`` calls, doing
    nothing (rich costs a cold start ~20 ms of imports)."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, **fields: Any) -> int:
        return 0

    def update(self, task: int, **fields: Any) -> None:
        return None

    def advance(self, task: int, advance: float = 1) -> None:
        return None


def progress(quiet: bool) -> Any:
    """A rich progress bar on stderr (off when quiet or not a terminal)."""
    if quiet or not (sys.stderr.isatty() or os.environ.get("FORCE_TERMINAL")):
        return NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


def split_list(value: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_labels(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    labels = split_list(value)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise InputError(f"--labels needs at least two distinct comma-separated labels: {value!r}")
    return tuple(labels)


def require_extra(module: str, extra: str) -> None:
    """One line naming the pip extra when an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise AffedgeError(f"this command needs the {extra} extra: pip install 'affedge[{extra}]'")


def print_table(rows: list[dict[str, Any]], columns: dict[str, str]) -> None:
    """A rich table of ``rows``; ``columns`` maps a row key to its heading."""
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for heading in columns.values():
        table.add_column(heading)
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for key in columns))
    Console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(value)
    return str(value)
