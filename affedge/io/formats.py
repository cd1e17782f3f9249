"""Output formats of finished result rows (``--format``): JSONL, CSV, a rich table, Parquet
(:mod:`.parquet`), and review-tool imports (:mod:`.review`). :data:`OUTPUT_FORMATS` is the one
table of them; the CLI's ``--format`` choices come from it."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from affedge.errors import InputError
from affedge.io.parquet import require_pyarrow, write_parquet
from affedge.io.review import write_argilla, write_labelstudio
from affedge.records import Record


def record_id(record: Record) -> int | str:
    """Position ids are written as numbers."""
    return int(record.id) if record.id.isdigit() else record.id


def format_rows(rows: Iterable[dict[str, Any]], fmt: str, stream: IO[Any]) -> None:
    """Write finished result rows in ``fmt`` to ``stream`` (bytes for a binary format)."""
    output_format(fmt).write(rows, stream)


def write_jsonl(rows: Iterable[dict[str, Any]], stream: IO[str]) -> None:
    for row in rows:
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")


def _flat(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested fields become dotted columns: ``probs.positive``, ``emotion.label``."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_csv(rows: Sequence[dict[str, Any]], stream: IO[str]) -> None:
    """One column per field; nested label probabilities become ``probs.<label>`` columns."""
    flats = [_flat(r) for r in rows]
    columns: list[str] = []
    for flat in flats:
        columns.extend(k for k in flat if k not in columns)
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flats)


def write_table(rows: Sequence[dict[str, Any]], stream: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    table.add_column("id", justify="right")
    table.add_column("text", overflow="ellipsis", max_width=60, no_wrap=True)
    table.add_column("task")
    table.add_column("result")
    table.add_column("p", justify="right")
    for row in rows:
        if "label" in row:
            result, p = row["label"], f"{row['probs'][row['label']]:.2f}"
        elif "score" in row:
            result, p = f"{row['score']:.3f}", ""
        else:  # every head of an encoder
            parts = [
                v["label"] if isinstance(v, dict) else f"{k} {v:.2f}"
                for k, v in row.items()
                if k not in ("id", "text", "task", "model", "chunks", "truncated")
            ]
            result, p = ", ".join(parts), ""
        table.add_row(str(row["id"]), row["text"], row["task"], result, p)
    console = Console(file=stream, width=None if stream.isatty() else 120)
    console.print(table)


@dataclass(frozen=True)
class OutputFormat:
    """How one ``--format`` writes finished rows.

    ``binary`` formats write bytes to a file (never to stdout); ``requires`` raises one line
    naming the pip extra when an optional package is missing, checked before any model work.
    """

    write: Callable[[Iterable[dict[str, Any]], IO[Any]], None]
    binary: bool = False
    requires: Callable[[], object] | None = None


#: Every output format by ``--format`` name (jsonl first: the default off a terminal).
OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "jsonl": OutputFormat(write_jsonl),
    "csv": OutputFormat(lambda rows, fh: write_csv(list(rows), fh)),
    "table": OutputFormat(lambda rows, fh: write_table(list(rows), fh)),
    "parquet": OutputFormat(write_parquet, binary=True, requires=require_pyarrow),
    "labelstudio": OutputFormat(write_labelstudio),
    "argilla": OutputFormat(write_argilla),
}


def output_format(fmt: str) -> OutputFormat:
    try:
        return OUTPUT_FORMATS[fmt]
    except KeyError:
        raise InputError(
            f"unknown output format {fmt!r}: choose {', '.join(OUTPUT_FORMATS)}"
        ) from None


def check_output_format(fmt: str, to_stdout: bool) -> None:
    """Refuse, before any model work, a format that cannot be written where it would go."""
    spec = output_format(fmt)
    if spec.binary and to_stdout:
        raise InputError(f"--format {fmt} writes a binary file: pass --output FILE")
    if spec.requires is not None:
        spec.requires()
