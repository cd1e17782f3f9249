"""`affedge bench --output-format`: the bench report as md, json, csv, jsonl and sql files.

As llama-bench's ``-o csv|json|jsonl|md|sql``: the tabular formats hold one flat row per
measurement (system x thread count) that repeats the run's context (date, command, machine)
in every row, so rows from many runs and machines can be concatenated or loaded into one
table. Columns have fixed names and types (:data:`BENCH_FIELDS`); ``sql`` is a
``CREATE TABLE IF NOT EXISTS affedge_bench`` followed by one ``INSERT`` per row, loadable by
sqlite3 (``sqlite3 runs.db < bench.sql``) and, being plain SQL, by other databases.
``json`` stays the full nested report (what ``affedge report`` and the markdown are built from).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from affedge.atomic import atomic_write_text
from affedge.errors import InputError

#: Every format `affedge bench` can write, in the order they are written.
BENCH_FORMATS = ("md", "json", "csv", "jsonl", "sql")

SQL_TABLE = "affedge_bench"

#: Column name and SQL type of each row field (INTEGER, REAL or TEXT, as llama-bench's).
BENCH_FIELDS: tuple[tuple[str, str], ...] = (
    ("date", "TEXT"),
    ("command", "TEXT"),
    ("cpu_info", "TEXT"),
    ("cores_usable", "INTEGER"),
    ("os", "TEXT"),
    ("python", "TEXT"),
    ("affedge_version", "TEXT"),
    ("task", "TEXT"),
    ("inputs", "TEXT"),
    ("reps", "INTEGER"),
    ("latency_items", "INTEGER"),
    ("system", "TEXT"),
    ("system_kind", "TEXT"),
    ("model", "TEXT"),
    ("n_threads", "INTEGER"),
    ("n_items", "INTEGER"),
    ("cold_start_s", "REAL"),
    ("load_s", "REAL"),
    ("latency_p50_ms", "REAL"),
    ("latency_p95_ms", "REAL"),
    ("items_per_s", "REAL"),
    ("tokens_per_s", "REAL"),
    ("tokens_per_pass", "INTEGER"),
    ("params", "INTEGER"),
    ("peak_rss_mb", "REAL"),
    ("accuracy", "REAL"),
    ("ece", "REAL"),
    ("agreement_with_affedge", "REAL"),
    ("gflops", "REAL"),
    ("peak_fraction", "REAL"),
    ("sgemm_gflops", "REAL"),
    ("error", "TEXT"),
)
FIELD_NAMES = tuple(name for name, _ in BENCH_FIELDS)
_TYPES = dict(BENCH_FIELDS)


def parse_formats(spec: str) -> list[str]:
    """``"md,csv"`` -> ``["md", "json", "csv"]``: known names, in :data:`BENCH_FORMATS` order.

    json is always written: the markdown, the plot and ``affedge report`` read the report.
    """
    asked = {part.strip().lower() for part in spec.split(",") if part.strip()}
    unknown = sorted(asked - set(BENCH_FORMATS))
    if unknown or not asked:
        raise InputError(
            f"--output-format: {', '.join(unknown) or 'nothing'} is not one of "
            f"{', '.join(BENCH_FORMATS)}"
        )
    return [f for f in BENCH_FORMATS if f in asked or f == "json"]


def _typed(name: str, value: Any) -> Any:
    """``value`` as the column's type: None stays None, as do NaN and infinities."""
    if value is None:
        return None
    kind = _TYPES[name]
    try:
        if kind == "INTEGER":
            return int(value)
        if kind == "REAL":
            number = float(value)
            return number if math.isfinite(number) else None
    except (TypeError, ValueError):
        return None
    return str(value)


def bench_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per result of a bench report, with every field of :data:`BENCH_FIELDS`."""
    machine = report.get("machine") or {}
    packages = machine.get("packages") or {}
    sgemm = report.get("sgemm") or {}
    rows = []
    for r in report.get("results", []):
        kind, _, model = str(r.get("system", "")).partition(":")
        raw = {
            "date": report.get("date"),
            "command": report.get("command"),
            "cpu_info": machine.get("cpu"),
            "cores_usable": machine.get("cores_usable"),
            "os": machine.get("os"),
            "python": machine.get("python"),
            "affedge_version": packages.get("affedge"),
            "task": report.get("task"),
            "inputs": report.get("items"),
            "reps": report.get("reps"),
            "latency_items": report.get("latency_items"),
            "system_kind": kind,
            "model": model or None,
            "n_threads": r.get("threads"),
            "n_items": r.get("items"),
            "sgemm_gflops": (sgemm.get(str(r.get("threads"))) or {}).get("gflops"),
            **{k: r.get(k) for k in FIELD_NAMES if k in r and k != "items"},
        }
        rows.append({name: _typed(name, raw.get(name)) for name in FIELD_NAMES})
    return rows


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    """CSV with a header row; empty cells for missing values."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELD_NAMES, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def to_jsonl(rows: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line (null for missing values)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    # Standard SQL quoting; NUL cannot sit inside an SQL text literal.
    return "'" + str(value).replace("\x00", "").replace("'", "''") + "'"


def to_sql(rows: Iterable[dict[str, Any]], table: str = SQL_TABLE) -> str:
    """``CREATE TABLE IF NOT EXISTS`` plus one ``INSERT`` per row (sqlite3 loads it)."""
    columns = ",\n".join(f"  {name} {kind}" for name, kind in BENCH_FIELDS)
    lines = [f"CREATE TABLE IF NOT EXISTS {table} (\n{columns}\n);", ""]
    names = ", ".join(FIELD_NAMES)
    for row in rows:
        values = ", ".join(_sql_literal(row[name]) for name in FIELD_NAMES)
        lines.append(f"INSERT INTO {table} ({names}) VALUES ({values});")
    return "\n".join(lines) + "\n"


def write_bench(
    stem: Path, report: dict[str, Any], markdown: str, formats: Sequence[str] = BENCH_FORMATS
) -> list[Path]:
    """Write ``stem.<format>`` for each of ``formats`` (each atomically); returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    rows = bench_rows(report)
    render = {
        "md": lambda: markdown,
        "json": lambda: json.dumps(report, indent=2) + "\n",
        "csv": lambda: to_csv(rows),
        "jsonl": lambda: to_jsonl(rows),
        "sql": lambda: to_sql(rows),
    }
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        atomic_write_text(path, render[fmt]())
        written.append(path)
    return written
