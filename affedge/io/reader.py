"""Reading items to annotate: ``.txt`` (one item per line), ``.csv``/``.tsv`` (a text column),
``.jsonl`` (a text field, optional ``context``/``speaker``/``aspect``), ``.parquet`` (columns
of the same names, read by :mod:`.parquet`), or ``-`` for stdin.

Every problem is an :class:`~affedge.errors.InputError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from affedge.errors import InputError
from affedge.records import Record, Turn

INPUT_FORMATS = ("txt", "csv", "tsv", "jsonl", "parquet")

# Items longer than this are cut here before tokenizing (engines then cut to the context
# window); a multi-megabyte "line" is almost always a file read with the wrong format.
MAX_ITEM_CHARS = 200_000
# The cut when long texts are read whole in windows (``--long chunk``): a book-length item
# (about 2M tokens, a few minutes of an encoder) still runs, in memory bounded by the item.
MAX_CHUNKED_ITEM_CHARS = 8_000_000
_LINE_END = re.compile(r"\r\n|\r|\n")
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
    (``.csv``/``.tsv``); ``stats`` describes the last complete pass. Texts are cut at
    ``max_chars`` characters (counted in ``stats.clipped``).
    """

    def __init__(
        self,
        path: str,
        fmt: str | None = None,
        text_field: str | None = None,
        encoding: str = "utf-8",
        max_chars: int = MAX_ITEM_CHARS,
    ) -> None:
        self.path = path
        self.max_chars = max_chars
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
        """Decoded lines without their ending (``\\n``, ``\\r\\n`` or ``\\r``), numbered from 1."""
        handle: IO[bytes]
        if self._stdin is not None:
            handle = io.BytesIO(self._stdin)
        else:
            try:
                handle = open(self.path, "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise InputError(f"{self.path}: cannot open ({exc.strerror})") from None
        with handle:
            if "\r\n".encode(self.encoding) != b"\r\n":  # UTF-16/32, EBCDIC: no byte lines
                yield from self._wide_lines(handle.read())
                return
            lineno = 0
            for raw in handle:
                for piece in raw.removesuffix(b"\n").removesuffix(b"\r").split(b"\r"):
                    lineno += 1
                    try:
                        line = piece.decode(self.encoding)
                    except UnicodeDecodeError as exc:
                        raise self._bad_byte(piece[exc.start], lineno, exc.start + 1) from None
                    yield lineno, line.removeprefix("\ufeff") if lineno == 1 else line

    def _wide_lines(self, data: bytes) -> Iterator[tuple[int, str]]:
        try:
            text = data.decode(self.encoding).removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            before = _LINE_END.split(data[: exc.start].decode(self.encoding, "replace"))
            raise self._bad_byte(data[exc.start], len(before), len(before[-1]) + 1) from None
        lines = _LINE_END.split(text)
        yield from enumerate(lines[:-1] if lines[-1] == "" else lines, 1)

    def _bad_byte(self, byte: int, lineno: int, column: int) -> InputError:
        return InputError(
            f"{self.name}:{lineno}: byte 0x{byte:02x} at column {column} is not valid "
            f"{self.encoding}; pass --encoding (e.g. --encoding latin-1)"
        )

    def _clip(self, text: str) -> str:
        if len(text) > self.max_chars:
            self.stats.clipped += 1
            return text[: self.max_chars]
        return text

    def __iter__(self) -> Iterator[Record]:
        self.stats = InputStats()
        parse = {"txt": self._txt, "jsonl": self._jsonl, "csv": self._csv, "tsv": self._csv,
                 "parquet": self._parquet}  # fmt: skip
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
            except (ValueError, RecursionError) as exc:  # a 5000-digit number, [[[[...]]]]
                too = "nested too deeply" if isinstance(exc, RecursionError) else "a huge number"
                raise InputError(f"{where}:{lineno}: malformed JSON ({too})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}:{lineno}: expected a JSON object, got {_kind(obj)}")
            record = self._record_from_fields(obj, lineno, f"{where}:{lineno}", "field")
            if record is not None:
                yield record

    def _parquet(self) -> Iterator[Record]:
        """Rows of a Parquet file, checked like JSONL objects; ids are 1-based row numbers."""
        from affedge.io.parquet import parquet_rows  # pyarrow is optional: only for Parquet

        source = self._stdin if self._stdin is not None else self.path
        for number, where, fields in parquet_rows(source, self.name, self.text_field):
            record = self._record_from_fields(fields, number, where, "column")
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
                    f"{self.name}: no column {self.text_field!r} (columns: {_names(header)}); "
                    "pass --text-field NAME"
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
                f"{where}: no {what} {self.text_field!r} (has: {_names(obj)}); "
                "pass --text-field NAME"
            )
        text = obj[self.text_field]
        if not isinstance(text, str):
            raise InputError(f"{where}: {what} {self.text_field!r} is {_kind(text)}, not text")
        _encodable(text, where, f"{what} {self.text_field!r}")
        if not text.strip():
            self.stats.blank += 1
            return None
        speaker = _optional_str(obj, "speaker", where)
        aspect = _optional_str(obj, "aspect", where)
        context = parse_context(obj.get("context"), where) if "context" in obj else ()
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


def _names(names: Iterable[object], most: int = 20, longest: int = 40) -> str:
    """Column or field names for a one-line message: line breaks and other unprintable
    characters escaped, each name and the list cut short."""
    shown = []
    for i, name in enumerate(names):
        if i == most:
            shown.append("...")
            break
        text = str(name) if str(name).isprintable() else repr(str(name))[1:-1]
        shown.append(text if len(text) <= longest else text[: longest - 3] + "...")
    return ", ".join(shown)


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r} must be a string, got {_kind(value)}")
    return _encodable(value, where, repr(key))


def _encodable(value: str, where: str, what: str) -> str:  # JSON may hold "\\ud800" alone
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        raise InputError(f"{where}: {what} holds a lone surrogate \\u{code:04x}") from None
    return value


def parse_context(value: object, where: str) -> tuple[Turn, ...]:
    """``context``: earlier turns as strings or ``{"speaker": ..., "text": ...}`` objects."""
    if value is None or value == "":
        return ()
    if not isinstance(value, list):
        raise InputError(f"{where}: 'context' must be a list of turns, got {_kind(value)}")
    turns = []
    for i, turn in enumerate(value):
        what = f"context[{i}]"
        if isinstance(turn, str):
            turn = {"text": turn}
        speaker = turn.get("speaker") if isinstance(turn, dict) else None
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("text"), str)
            or not isinstance(speaker, str | None)
        ):
            raise InputError(
                f"{where}: {what} must be a string or an object with a 'text' string "
                "(and an optional 'speaker' string)"
            )
        turns.append(
            Turn(
                text=_encodable(turn["text"], where, what),
                speaker=_encodable(speaker, where, what) if speaker else None,
            )
        )
    return tuple(turns)


def scan(reader: InputReader) -> int:
    """Read the whole input once to find every problem before any model work; item count."""
    count = sum(1 for _ in reader)
    if count == 0:
        blank = f" ({reader.stats.blank} blank lines skipped)" if reader.stats.blank else ""
        raise InputError(f"{reader.name}: no items to annotate{blank}")
    return count
