"""Reading items to annotate and writing results, safely.

Inputs stream from ``.txt`` (one item per line), ``.csv``/``.tsv`` (a text column) or
``.jsonl`` (a text field, optional ``context``/``speaker``/``aspect``), or ``-`` for stdin.
Every problem is an :class:`~affedge.errors.InputError` naming the file and line.

Results written to ``--output`` go first to ``OUTPUT.partial`` (a header line, then one JSON
record per line, flushed as produced). Only a finished run turns it into ``OUTPUT`` in the
requested format, through a temporary file and an atomic rename, so ``OUTPUT`` is never
half-written; an interrupted run leaves the ``.partial`` behind for ``--resume``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from affedge.atomic import atomic_write
from affedge.errors import InputError
from affedge.records import Record, Turn

INPUT_FORMATS = ("txt", "csv", "tsv", "jsonl")
OUTPUT_FORMATS = ("jsonl", "csv", "table")
PARTIAL_SUFFIX = ".partial"
PARTIAL_VERSION = 1

# Items longer than this are cut here before tokenizing (engines then cut to the context
# window); a multi-megabyte "line" is almost always a file read with the wrong format.
MAX_ITEM_CHARS = 200_000
csv.field_size_limit(2**30)


def _input_format(path: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in INPUT_FORMATS:
            raise InputError(f"unknown input format {fmt!r}: choose {', '.join(INPUT_FORMATS)}")
        return fmt
    if path == "-":
        return "txt"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in INPUT_FORMATS:
        return suffix
    if suffix in ("text", ""):
        return "txt"
    if suffix == "json":
        raise InputError(f"{path}: JSON arrays are not read; write one object per line (.jsonl)")
    raise InputError(
        f"{path}: cannot tell the format from the suffix .{suffix}; pass --input-format "
        f"({', '.join(INPUT_FORMATS)})"
    )


@dataclass
class InputStats:
    """What reading an input found: items yielded, blank lines skipped, items cut short."""

    items: int = 0
    blank: int = 0
    clipped: int = 0


class InputReader:
    """Re-iterable stream of :class:`Record` from one input file (or stdin, read once).

    ``Record.id`` is the item's 1-based line number (``.txt``/``.jsonl``) or data-row number
    (``.csv``/``.tsv``); ``stats`` describes the last complete pass.
    """

    def __init__(
        self,
        path: str,
        fmt: str | None = None,
        text_field: str | None = None,
        encoding: str = "utf-8",
    ) -> None:
        self.path = path
        self.format = _input_format(path, fmt)
        self.text_field = text_field or "text"
        self.encoding = encoding
        self.stats = InputStats()
        self._stdin: bytes | None = None
        try:
            "".encode(encoding)
        except LookupError:
            raise InputError(f"unknown encoding {encoding!r}") from None
        if path == "-":
            self._stdin = sys.stdin.buffer.read()
        elif not Path(path).exists():
            raise InputError(f"{path}: no such file")
        elif Path(path).is_dir():
            raise InputError(f"{path}: is a folder, not an input file")

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == "-" else self.path

    def _raw_lines(self) -> Iterator[tuple[int, str]]:
        """Decoded lines without their line ending, numbered from 1."""
        handle: IO[bytes]
        if self._stdin is not None:
            handle = io.BytesIO(self._stdin)
        else:
            try:
                handle = open(self.path, "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise InputError(f"{self.path}: cannot open ({exc.strerror})") from None
        with handle:
            for lineno, raw in enumerate(handle, 1):
                try:
                    line = raw.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    raise InputError(
                        f"{self.name}:{lineno}: byte 0x{raw[exc.start]:02x} at column "
                        f"{exc.start + 1} is not valid {self.encoding}; pass --encoding "
                        "(e.g. --encoding latin-1)"
                    ) from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                yield lineno, line.rstrip("\r\n")

    def _clip(self, text: str) -> str:
        if len(text) > MAX_ITEM_CHARS:
            self.stats.clipped += 1
            return text[:MAX_ITEM_CHARS]
        return text

    def __iter__(self) -> Iterator[Record]:
        self.stats = InputStats()
        parse = {"txt": self._txt, "jsonl": self._jsonl, "csv": self._csv, "tsv": self._csv}
        for record in parse[self.format]():
            self.stats.items += 1
            yield record

    def _txt(self) -> Iterator[Record]:
        for lineno, line in self._raw_lines():
            text = line.strip()
            if not text:
                self.stats.blank += 1
                continue
            yield Record(id=str(lineno), text=self._clip(text))

    def _jsonl(self) -> Iterator[Record]:
        where = self.name
        for lineno, line in self._raw_lines():
            if not line.strip():
                self.stats.blank += 1
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"{where}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}:{lineno}: expected a JSON object, got {_kind(obj)}")
            record = self._record_from_fields(obj, lineno, f"{where}:{lineno}", "field")
            if record is not None:
                yield record

    def _csv(self) -> Iterator[Record]:
        delimiter = "\t" if self.format == "tsv" else ","
        lines = self._raw_lines()
        current = [0]

        def text_lines() -> Iterator[str]:
            for lineno, line in lines:
                current[0] = lineno
                yield line + "\n"

        reader = csv.reader(text_lines(), delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise InputError(f"{self.name}: empty file (a header row is expected)")
            header = [h.strip() for h in header]
            if self.text_field not in header:
                raise InputError(
                    f"{self.name}: no column {self.text_field!r} (columns: "
                    f"{', '.join(header)}); pass --text-field NAME"
                )
            row_number = 0
            for row in reader:
                if not row or not any(cell.strip() for cell in row):
                    self.stats.blank += 1
                    continue
                row_number += 1
                if len(row) != len(header):
                    raise InputError(
                        f"{self.name}:{current[0]}: row has {len(row)} fields, the header has "
                        f"{len(header)}"
                    )
                fields = dict(zip(header, row, strict=True))
                record = self._record_from_fields(
                    fields, row_number, f"{self.name}:{current[0]}", "column"
                )
                if record is not None:
                    yield record
        except csv.Error as exc:
            raise InputError(f"{self.name}:{current[0]}: malformed CSV ({exc})") from None

    def _record_from_fields(
        self, obj: dict[str, Any], number: int, where: str, what: str
    ) -> Record | None:
        if self.text_field not in obj:
            raise InputError(
                f"{where}: no {what} {self.text_field!r} (has: {', '.join(map(str, obj))}); "
                "pass --text-field NAME"
            )
        text = obj[self.text_field]
        if not isinstance(text, str):
            raise InputError(f"{where}: {what} {self.text_field!r} is {_kind(text)}, not text")
        if not text.strip():
            self.stats.blank += 1
            return None
        speaker = _optional_str(obj, "speaker", where)
        aspect = _optional_str(obj, "aspect", where)
        context = _context(obj.get("context"), where) if "context" in obj else ()
        return Record(
            id=str(number),
            text=self._clip(text.strip()),
            context=context,
            speaker=speaker,
            aspect=aspect,
        )


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r} must be a string, got {_kind(value)}")
    return value


def _context(value: object, where: str) -> tuple[Turn, ...]:
    """``context``: earlier turns as strings or ``{"speaker": ..., "text": ...}`` objects."""
    if value is None or value == "":
        return ()
    if not isinstance(value, list):
        raise InputError(f"{where}: 'context' must be a list of turns, got {_kind(value)}")
    turns = []
    for i, turn in enumerate(value):
        if isinstance(turn, str):
            turns.append(Turn(text=turn))
        elif isinstance(turn, dict) and isinstance(turn.get("text"), str):
            speaker = turn.get("speaker")
            turns.append(Turn(text=turn["text"], speaker=speaker if speaker else None))
        else:
            raise InputError(
                f"{where}: context[{i}] must be a string or an object with a 'text' string"
            )
    return tuple(turns)


def scan(reader: InputReader) -> int:
    """Read the whole input once to find every problem before any model work; item count."""
    count = sum(1 for _ in reader)
    if count == 0:
        blank = f" ({reader.stats.blank} blank lines skipped)" if reader.stats.blank else ""
        raise InputError(f"{reader.name}: no items to annotate{blank}")
    return count


# ---------------------------------------------------------------------------- output


def record_id(record: Record) -> int | str:
    """Position ids are written as numbers."""
    return int(record.id) if record.id.isdigit() else record.id


def format_rows(rows: Iterable[dict[str, Any]], fmt: str, stream: IO[str]) -> None:
    """Write finished result rows in ``fmt`` (JSONL streams; csv and table need all rows)."""
    if fmt == "jsonl":
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        write_csv(list(rows), stream)
    elif fmt == "table":
        write_table(list(rows), stream)
    else:
        raise InputError(f"unknown output format {fmt!r}: choose {', '.join(OUTPUT_FORMATS)}")


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
                if k not in ("id", "text", "task", "model", "truncated")
            ]
            result, p = ", ".join(parts), ""
        table.add_row(str(row["id"]), row["text"], row["task"], result, p)
    console = Console(file=stream, width=None if stream.isatty() else 120)
    console.print(table)


@dataclass
class PartialRun:
    """An interrupted run found next to ``--output``: its header and finished records."""

    header: dict[str, Any]
    ids: list[int | str]


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX)


@contextmanager
def partial_lock(part: Path, fresh: bool) -> Iterator[None]:
    """Hold ``part`` for this run alone: a fresh run creates it exclusively, a resumed run
    takes an exclusive lock on it, and a second run on the same output fails with one line
    instead of writing the same records twice. The lock (POSIX ``flock``) goes with the
    process, so a killed run never leaves it held."""
    busy = f"{part}: another affedge run is writing this output; wait for it or stop it"
    try:
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if fresh else 0)
        fd = os.open(part, flags, 0o666)
    except FileExistsError:
        raise InputError(busy) from None
    except FileNotFoundError:
        raise InputError(f"{part}: the partial run vanished (another run finished it)") from None
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(busy) from None
        yield
    finally:
        # A run that stopped before its header (bad model, refused task) leaves nothing.
        with suppress(OSError):
            if os.fstat(fd).st_size == 0 and os.path.samestat(os.fstat(fd), os.stat(part)):
                part.unlink()
        os.close(fd)


def read_partial(path: Path) -> PartialRun:
    """Load a ``.partial`` file, cutting a last line that a kill left incomplete."""
    good_end = 0
    header: dict[str, Any] | None = None
    ids: list[int | str] = []
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if header is None:
                if not isinstance(obj, dict) or obj.get("affedge_partial") != PARTIAL_VERSION:
                    raise InputError(f"{path}: not an affedge partial output; delete it")
                header = obj
            else:
                ids.append(obj["id"])
            good_end += len(raw)
    if header is None:
        raise InputError(f"{path}: empty or unreadable partial output; delete it")
    if good_end < path.stat().st_size:
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return PartialRun(header=header, ids=ids)


class ResultSink:
    """Where result rows go: streamed to stdout, or into ``OUTPUT.partial`` then ``OUTPUT``."""

    def __init__(
        self,
        output: Path | None,
        fmt: str,
        header: dict[str, Any],
        resume: PartialRun | None = None,
    ) -> None:
        self.output = output
        self.format = fmt
        self._buffer: list[dict[str, Any]] = []
        self._fh: IO[str] | None = None
        self._stdout_csv_header = False
        if output is not None:
            part = partial_path(output)
            if resume is None:
                self._fh = part.open("w", encoding="utf-8")
                self._fh.write(json.dumps({"affedge_partial": PARTIAL_VERSION, **header}) + "\n")
                self._fh.flush()
            else:
                self._fh = part.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._fh.flush()
        elif self.format == "jsonl":
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        elif self.format == "csv":
            # stdout csv streams row by row with the columns of the first row
            flat = _flat(row)
            writer = csv.DictWriter(sys.stdout, fieldnames=list(flat), lineterminator="\n")
            if not self._stdout_csv_header:
                writer.writeheader()
                self._stdout_csv_header = True
            writer.writerow(flat)
            sys.stdout.flush()
        else:
            self._buffer.append(row)

    def finish(self) -> None:
        """Complete the run: render the table, or turn the partial into the output file."""
        if self.output is None:
            if self.format == "table":
                write_table(self._buffer, sys.stdout)
            return
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        part = partial_path(self.output)
        rows = iter_partial_rows(part)
        atomic_write(self.output, lambda fh: format_rows(rows, self.format, fh))
        part.unlink()

    def abandon(self) -> None:
        """Stop writing, keeping whatever the partial file holds for ``--resume``."""
        if self._fh is not None:
            with suppress(OSError):
                self._fh.flush()
                self._fh.close()
            self._fh = None


def iter_partial_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            yield json.loads(line)
