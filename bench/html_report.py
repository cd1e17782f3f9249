"""`affedge report RESULTS_DIR -o report.html`: a results folder as one self-contained page.

The folder is what ``affedge bench``, ``affedge eval --all`` and the ``python -m
affedge.bench.*`` reports write (bench/results/ is one): JSON files of many shapes, PNG
figures beside them and in ``eval_<model>/`` folders. Nothing here knows those shapes one by
one. Each JSON file is walked and every list of objects becomes a table (nested objects
flattened one level: ``metrics.accuracy``), every object of objects a table keyed by the outer
keys (``speed``: vader, textblob, ...), and the loose scalars of an object a two-column one;
lists of numbers (per-repetition timings) are left to the JSON. ``machine``, ``command``,
``argv`` and ``date`` (what :func:`affedge.bench.reporting.stamp` records) go to the
machines-and-commands section instead. A table repeated in another file (report.json carries
bench.json's) is shown once. Figures are embedded as ``data:`` URIs and grouped: quality vs
speed, confusion matrices, reliability diagrams, others.

A JSON file that does not parse is an error (exit 2, nothing written); one that parses but
holds no table is listed under "Other files", as is everything else in the folder.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from affedge.atomic import atomic_write_text
from affedge.errors import InputError

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
}
#: Larger figures are listed, not embedded (the page must stay one reasonable file).
MAX_IMAGE_BYTES = 4 * 1024 * 1024
#: Larger JSON files are listed, not read (a results folder holds reports, not datasets).
MAX_JSON_BYTES = 32 * 1024 * 1024
MAX_ROWS = 500
MAX_DEPTH = 4
#: Keys a recorded run carries about itself, shown in the machines-and-commands section.
META_KEYS = frozenset({"machine", "command", "argv", "date", "benchmark"})

Scalar = str | int | float | bool | None


@dataclass
class Cell:
    text: str
    css: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    note: str = ""


@dataclass
class ResultFile:
    name: str
    anchor: str
    benchmark: str = ""
    date: str = ""
    commands: list[str] = field(default_factory=list)
    machine_index: int = 0
    tables: list[Table] = field(default_factory=list)


@dataclass
class Figure:
    name: str
    data_uri: str = ""
    note: str = ""


@dataclass
class Listed:
    name: str
    note: str = ""


# ------------------------------------------------------------------ values and tables


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def cell(value: Scalar | list[Any]) -> Cell:
    """A table cell: numbers right-aligned and rounded for reading, missing values empty."""
    if value is None:
        return Cell("", "na")
    if isinstance(value, bool):
        return Cell("yes" if value else "no")
    if isinstance(value, int):
        return Cell(str(value), "num")
    if isinstance(value, float):
        if not math.isfinite(value):
            return Cell(str(value), "num")
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return Cell(f"{value:.3g}", "num")
        if abs(value) >= 100:
            return Cell(f"{value:.1f}", "num")
        return Cell(f"{value:.4f}".rstrip("0").rstrip("."), "num")
    if isinstance(value, list):
        return Cell(", ".join(cell(v).text for v in value))
    text = str(value)
    return Cell(text, "txt" if len(text) <= 40 else "long")


_FIGURE_NAME = re.compile(r"\.(png|jpe?g|gif|webp|svg)$", re.IGNORECASE)


def _shown(value: Any) -> bool:
    """Whether a scalar goes in a table: not a figure's file name (figures are embedded)."""
    return is_scalar(value) and not (isinstance(value, str) and _FIGURE_NAME.search(value))


def _short_scalar_list(value: Any) -> bool:
    return isinstance(value, list) and 0 < len(value) <= 12 and all(map(is_scalar, value))


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    """Scalars of ``row`` and of its nested objects one level down (``metrics.accuracy``)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if _shown(value):
            flat[str(key)] = value
        elif isinstance(value, dict):
            for sub, inner in value.items():
                if _shown(inner):
                    flat[f"{key}.{sub}"] = inner
    return flat


def _records_table(title: str, rows: list[dict[str, Any]], names: list[str] | None = None) -> Table:
    """A table of objects: the union of their scalar fields, in order of first appearance;
    columns empty in every row are dropped. ``names``: a first column naming each row (the
    keys of an object of objects)."""
    flats = [_flatten(r) for r in rows[:MAX_ROWS]]
    columns: list[str] = []
    for flat in flats:
        columns += [c for c in flat if c not in columns]
    columns = [c for c in columns if any(f.get(c) not in (None, "") for f in flats)]
    body = [[cell(flat.get(c)) for c in columns] for flat in flats]
    if names is not None:
        columns = ["", *columns]
        body = [[Cell(n), *b] for n, b in zip(names, body, strict=False)]
    note = f"first {MAX_ROWS} of {len(rows)} rows" if len(rows) > MAX_ROWS else ""
    return Table(title, columns, body, note)


def _mostly_scalar(obj: dict[str, Any]) -> bool:
    flat = _flatten(obj)
    return bool(flat) and len(flat) >= sum(1 for v in obj.values() if not is_scalar(v))


def find_tables(value: Any, path: str = "", depth: int = 0) -> list[Table]:
    """Every table in a JSON value (see the module docstring), in document order."""
    if depth > MAX_DEPTH:
        return []
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return [_records_table(path or "rows", value)]
        return []
    if not isinstance(value, dict) or not value:
        return []
    children = {k: v for k, v in value.items() if k not in META_KEYS}
    if len(children) > 1 and all(
        isinstance(v, dict) and _mostly_scalar(v) for v in children.values()
    ):
        names = [str(k) for k in children]
        return [_records_table(path or "values", list(children.values()), names)]
    tables: list[Table] = []
    loose = [
        (str(k), v)
        for k, v in children.items()
        if (_shown(v) and v not in (None, "")) or _short_scalar_list(v)
    ]
    if loose:
        rows = [[Cell(k), cell(v)] for k, v in loose]
        tables.append(Table(path or "summary", ["field", "value"], rows))
    for key, child in children.items():
        if isinstance(child, dict | list):
            tables += find_tables(child, f"{path}.{key}" if path else str(key), depth + 1)
    return tables


def _fingerprint(table: Table) -> str:
    body = json.dumps([table.columns, [[c.text for c in r] for r in table.rows]])
    return hashlib.sha256(body.encode()).hexdigest()


# ------------------------------------------------------------------ machines and commands


def _command(obj: dict[str, Any]) -> str | None:
    argv = obj.get("argv")
    if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
        return shlex.join(argv)
    command = obj.get("command")
    return command.strip() if isinstance(command, str) and command.strip() else None


def _nested_runs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``data`` and the objects directly inside it that record a run of their own."""
    inner = [v for v in data.values() if isinstance(v, dict) and ("command" in v or "argv" in v)]
    return [data, *inner]


def machine_row(machine: Any) -> dict[str, Any]:
    """The machines table's columns for a recorded ``machine`` (an object or a sentence)."""
    if not isinstance(machine, dict):
        return {"cpu": str(machine), "cores": "", "os": "", "python": "", "packages": ""}
    packages = machine.get("packages")
    listed = (
        ", ".join(f"{k} {v}" for k, v in packages.items() if v)
        if isinstance(packages, dict) else ""
    )  # fmt: skip
    return {
        "cpu": str(machine.get("cpu", "")),
        "cores": str(machine.get("cores_usable", machine.get("cores", ""))),
        "os": str(machine.get("os", "")),
        "python": str(machine.get("python", "")),
        "packages": listed,
    }


# ------------------------------------------------------------------ the folder


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "x"


def _order(path: Path) -> tuple[int, str]:
    """bench first, then eval, then the rest by name."""
    name = path.as_posix()
    return (0 if name.startswith("bench") else 1 if name.startswith("eval_") else 2, name)


def read_json(path: Path, shown: str) -> Any:
    """Parse ``path``; any failure is one line naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{shown}: unreadable JSON ({reason})") from None


def _embed(path: Path) -> Figure:
    name = path.as_posix()
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        return Figure(name, note=f"not embedded: {size / 1e6:.1f} MB")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return Figure(name, f"data:{IMAGE_TYPES[path.suffix.lower()]};base64,{data}")


def _figure_group(path: Path) -> str:
    stem = path.stem.lower()
    if "quality_vs_speed" in stem:
        return "quality"
    if stem.startswith("confusion"):
        return "Confusion matrices"
    if stem.startswith("reliability"):
        return "Reliability diagrams"
    return "Other figures"


def build_context(
    root: Path, title: str | None = None, exclude: Path | None = None
) -> dict[str, Any]:
    """Everything the template shows, from the folder ``root`` (less the file ``exclude``:
    the page itself, when it is written into the folder)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    skip = exclude.resolve() if exclude is not None else None
    entries = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.resolve() != skip
         and not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: _order(p.relative_to(root)),
    )  # fmt: skip
    json_paths = [p for p in entries if p.suffix.lower() == ".json"]
    if not json_paths:
        raise InputError(f"{root}: no results (no *.json file in the folder)")

    files: list[ResultFile] = []
    other: list[Listed] = []
    machines: dict[str, dict[str, Any]] = {}
    commands: list[dict[str, str]] = []
    seen_tables: dict[str, str] = {}
    for path in json_paths:
        rel = path.relative_to(root).as_posix()
        if path.stat().st_size > MAX_JSON_BYTES:
            other.append(Listed(rel, f"not read: larger than {MAX_JSON_BYTES // 2**20} MB"))
            continue
        data = read_json(path, rel)
        result = ResultFile(rel, "file-" + slug(rel))
        runs = _nested_runs(data) if isinstance(data, dict) else []
        for run in runs:
            command = _command(run)
            if command and command not in result.commands:
                result.commands.append(command)
                commands.append({"file": rel, "date": str(run.get("date", "")), "command": command})
            if "machine" in run:
                key = json.dumps(run["machine"], sort_keys=True)
                entry = machines.setdefault(key, {**machine_row(run["machine"]), "files": []})
                entry.setdefault("index", len(machines))
                if rel not in entry["files"]:
                    entry["files"].append(rel)
                result.machine_index = result.machine_index or entry["index"]
        if isinstance(data, dict):
            result.benchmark = str(data.get("benchmark", ""))
            result.date = str(data.get("date", ""))
        for table in find_tables(data):
            fingerprint = _fingerprint(table)
            if fingerprint in seen_tables and table.rows:
                table = Table(table.title, [], [], f"same table as {seen_tables[fingerprint]}")
            else:
                seen_tables[fingerprint] = f"{rel}: {table.title}"
            result.tables.append(table)
        if not result.tables and not result.commands:
            other.append(Listed(rel, "JSON of an unknown shape (no table found)"))
            continue
        files.append(result)

    groups: dict[str, dict[str, list[Figure]]] = {}
    quality: list[Figure] = []
    for path in entries:
        rel_path = path.relative_to(root)
        if path.suffix.lower() in IMAGE_TYPES:
            figure = _embed(path)
            figure.name = rel_path.as_posix()
            group = _figure_group(path)
            if group == "quality":
                quality.append(figure)
            else:
                folder = rel_path.parent.as_posix()
                groups.setdefault(group, {}).setdefault(folder if folder != "." else "", [])
                groups[group][folder if folder != "." else ""].append(figure)
        elif path.suffix.lower() != ".json":
            other.append(Listed(rel_path.as_posix()))
    order = ("Confusion matrices", "Reliability diagrams", "Other figures")
    figure_groups = [
        {"title": g, "anchor": slug(g), "folders": sorted(groups[g].items())}
        for g in order
        if g in groups
    ]
    return {
        "title": title or f"affedge results: {root.resolve().name}",
        "root": str(root),
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": _version(),
        "files": files,
        "quality_figures": quality,
        "figure_groups": figure_groups,
        "image_count": len(quality) + sum(len(v) for g in groups.values() for v in g.values()),
        "machines": sorted(machines.values(), key=lambda m: m["index"]),
        "commands": commands,
        "other_files": other,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("affedge")
    except PackageNotFoundError:
        return "unknown"


def render(context: dict[str, Any]) -> str:
    """The page: Jinja2 with autoescape on, undefined names an error."""
    import jinja2
    from markupsafe import Markup

    from affedge.bench.report_template import CSS, TEMPLATE

    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    # CSS is our own constant; Markup keeps its quotes intact inside <style>.
    return env.from_string(TEMPLATE).render(css=Markup(CSS), **context)


def write_report_html(root: Path, output: Path, title: str | None = None) -> dict[str, Any]:
    """Render ``root`` into ``output`` (atomically: on any error nothing is written)."""
    output = Path(output)
    if output.is_dir():
        raise InputError(f"{output}: is a folder; -o names the HTML file to write")
    context = build_context(root, title, exclude=output)
    html = render(context)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, html)
    return {
        "path": output,
        "bytes": len(html.encode("utf-8")),
        "files": len(context["files"]),
        "figures": context["image_count"],
        "listed": len(context["other_files"]),
    }
