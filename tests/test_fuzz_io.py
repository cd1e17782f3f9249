"""Property-based fuzzing of every input reader and of the partial/resume file (issue 15, item 1).

The invariant: reading an input either fails with one :class:`InputError` line that names the
file (and the line, where there is one), or yields one record per non-blank item, in order,
with the right ids (line numbers for .txt/.jsonl, data-row numbers for .csv/.tsv); no other
exception ever escapes. Structured inputs are generated together with their expected outcome
(an oracle written from the formats, not from the reader); random bytes get the invariant.

CI runs a fixed number of examples per property from a fixed seed (``derandomize``). For a
longer run set ``AFFEDGE_FUZZ_EXAMPLES=N`` (N examples per property; the CLI property, which
starts a process per example, runs N // 25) and add ``--hypothesis-show-statistics``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from affedge.errors import InputError
from affedge.io import (
    MAX_ITEM_CHARS,
    InputReader,
    PartialRun,
    ResultSink,
    partial_path,
    read_partial,
)

EXAMPLES = int(os.environ.get("AFFEDGE_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LINE_END = re.compile(r"\r\n|\r|\n")
ENDINGS = ("\n", "\r\n", "\r")
WIDE = ("utf-16", "utf-16-le", "utf-16-be", "utf-32")
ENCODINGS = ("utf-8", "latin-1", "cp1252", "shift_jis", *WIDE)
BLANKS = ("", " ", "\t", " \x0b\x0c ")


# ------------------------------------------------------------------ outcomes


@dataclass
class Expected:
    """What reading a generated input must give: records ``(id, text)``, or an error whose
    message names ``error_line`` (``0``: the file only)."""

    records: list[tuple[str, str]] = field(default_factory=list)
    error_line: int | None = None


@dataclass
class Doc:
    """A generated input: its bytes, how to read it, and the expected outcome."""

    data: bytes
    fmt: str
    encoding: str
    expected: Expected
    lines: int


def read(path: str, fmt: str, encoding: str = "utf-8") -> list | str:
    """The records of ``path``, or the InputError's message (anything else propagates)."""
    try:
        reader = InputReader(path, fmt, None, encoding)
        records = list(reader)
    except InputError as exc:
        return str(exc)
    assert reader.stats.items == len(records)
    return records


def check_invariant(got: list | str, name: str, lines: int) -> None:
    """The property every input must satisfy, whatever its bytes."""
    if isinstance(got, str):
        assert len(got.splitlines()) == 1, f"error of more than one line: {got!r}"
        assert got.startswith(f"{name}:"), f"error not naming the file: {got!r}"
        line = re.match(rf"{re.escape(name)}:(\d+): ", got)
        if line:
            assert 1 <= int(line[1]) <= max(lines, 1), got
        return
    ids = [int(r.id) for r in got]
    assert ids == sorted(set(ids)) and all(i >= 1 for i in ids), ids
    for record in got:
        assert record.text.strip() and not record.text[0].isspace(), record
        assert len(record.text) <= MAX_ITEM_CHARS
        record.text.encode("utf-8")  # never a lone surrogate


def check_expected(got: list | str, name: str, expected: Expected) -> None:
    if expected.error_line is not None:
        assert isinstance(got, str), f"expected an error, got {len(got)} records"
        if expected.error_line:
            assert got.startswith(f"{name}:{expected.error_line}: "), got
        return
    assert not isinstance(got, str), got
    assert [(r.id, r.text) for r in got] == expected.records


@contextmanager
def written(name: str, data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        yield path


@contextmanager
def stdin_bytes(data: bytes) -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(data))
    try:
        yield
    finally:
        sys.stdin = saved


def jsonl(text: str) -> list:
    """JSON Lines are split at LF only (str.splitlines also splits at U+0085, U+2028...)."""
    return [json.loads(line) for line in text.removesuffix("\n").split("\n")] if text else []


def _clip(text: str) -> str:
    return text.strip()[:MAX_ITEM_CHARS]


# ------------------------------------------------------------------ strategies


@st.composite
def item_text(draw: st.DrawFn, chars: st.SearchStrategy[str]) -> str:
    """Mostly short text, some blank, a few over MAX_ITEM_CHARS."""
    kind = draw(st.integers(0, 24))
    if kind == 0:
        return "x" + draw(chars) * draw(st.integers(MAX_ITEM_CHARS - 2, MAX_ITEM_CHARS + 3))
    if kind <= 4:
        return draw(st.sampled_from(BLANKS))
    return draw(st.text(chars, max_size=30))


def chars(encoding: str, exclude: str = "") -> st.SearchStrategy[str]:
    """Characters that ``encoding`` round-trips (Shift-JIS maps two onto ASCII)."""
    return st.characters(codec=encoding, exclude_characters="\xa5\u203e" + exclude)


def encode(text: str, encoding: str, bom: bool) -> bytes:
    bom_ok = bom and encoding.startswith("utf")
    return (("\ufeff" if bom_ok else "") + text).encode(encoding)


@st.composite
def txt_docs(draw: st.DrawFn) -> Doc:
    encoding = draw(st.sampled_from(ENCODINGS))
    lines = draw(st.lists(item_text(chars(encoding, "\r\n")), max_size=12))
    ending = draw(st.sampled_from(ENDINGS))
    bom = draw(st.booleans())
    text = ending.join(lines) + (ending if lines and draw(st.booleans()) else "")
    if lines and not (bom and encoding.startswith("utf")):
        lines[0] = lines[0].removeprefix("\ufeff")  # the reader takes it for a BOM
    records = [(str(i), _clip(line)) for i, line in enumerate(lines, 1) if line.strip()]
    return Doc(encode(text, encoding, bom), "txt", encoding, Expected(records), len(lines))


def _csv_row(cells: list[str], delimiter: str, quote_all: bool) -> str:
    """One CSV row, quoted as RFC 4180 says; Python's writer leaves a lone CR unquoted when
    the line terminator is LF, which no reader can tell from a line end."""

    def quoted(cell: str) -> str:
        special = any(c in cell for c in (delimiter, '"', "\r", "\n"))
        if quote_all or special or (len(cells) == 1 and not cell):
            return '"' + cell.replace('"', '""') + '"'
        return cell

    return delimiter.join(map(quoted, cells))


def name_chars(encoding: str = "utf-8") -> st.SearchStrategy[str]:
    """Characters of column and field names: line and record separators more than by chance."""
    special = [c for c in '\n\r\x1e\x85\u2028\t,"' if c.encode(encoding, "ignore") != b""]
    return st.one_of(chars(encoding), st.sampled_from(special))


CSV_COLUMNS = ("id", "label", "speaker", "aspect", "note", "x y", "context")


@st.composite
def csv_docs(draw: st.DrawFn) -> Doc:
    fmt = draw(st.sampled_from(["csv", "tsv"]))
    encoding = draw(st.sampled_from(ENCODINGS))
    cell_chars = chars(encoding)  # delimiters, quotes and line breaks included
    names = st.one_of(st.sampled_from(CSV_COLUMNS), st.text(name_chars(encoding), max_size=8))
    columns = draw(st.lists(names, unique_by=str.strip, max_size=3))
    columns = [c for c in columns if c.strip() != "text" and (c in CSV_COLUMNS or c.strip())]
    has_text = draw(st.integers(0, 9)) > 0
    if has_text:
        columns.insert(draw(st.integers(0, len(columns))), "text")
    width = len(columns)
    cell = st.one_of(item_text(cell_chars), st.sampled_from(BLANKS))
    rows = draw(
        st.lists(
            st.one_of(
                st.lists(cell, min_size=width, max_size=width),
                st.lists(cell, max_size=width + 2),  # ragged (or blank, or right by chance)
            ),
            max_size=8,
        )
    )
    ending = draw(st.sampled_from(ENDINGS))
    quote_all = draw(st.booleans())
    delimiter = "\t" if fmt == "tsv" else ","
    text = _csv_row(columns, delimiter, quote_all) + ending
    ends: list[int] = []  # the physical line each data row ends on
    for row in rows:
        text += _csv_row(row, delimiter, quote_all)
        ends.append(len(LINE_END.split(text)))
        text += ending
    if rows and draw(st.booleans()):
        text = text.removesuffix(ending)
    expected = Expected(error_line=None if has_text else 0)
    number = 0
    for row, end in zip(rows, ends, strict=True):
        if not has_text:
            break
        cells = [LINE_END.sub("\n", c) for c in row]
        if not any(c.strip() for c in cells):
            continue
        number += 1
        if len(cells) != width:
            expected.error_line = end
            break
        fields = dict(zip([c.strip() for c in columns], cells, strict=True))
        if not fields["text"].strip():
            continue
        if fields.get("context", "") != "":
            expected.error_line = end
            break
        expected.records.append((str(number), _clip(fields["text"])))
    if expected.error_line is not None:
        expected.records = []
    bom = draw(st.booleans())
    return Doc(encode(text, encoding, bom), fmt, encoding, expected, len(LINE_END.split(text)))


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
NOT_TEXT = st.one_of(
    st.integers(), st.floats(), st.booleans(), st.none(), st.lists(JSON_SCALARS, max_size=2),
    st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2),
)  # fmt: skip
NOT_NAME = st.one_of(
    st.integers(), st.booleans(), st.lists(JSON_SCALARS, min_size=1, max_size=2)
).filter(lambda v: v != "")
BAD_CONTEXT = st.one_of(
    st.text(min_size=1, max_size=5),
    st.integers(),
    st.dictionaries(st.text(max_size=3), JSON_SCALARS, min_size=1, max_size=2),
    st.lists(st.one_of(st.integers(), st.none(), st.just({"text": 5}),
                       st.just({"text": "ok", "speaker": 3})), min_size=1, max_size=2),
)  # fmt: skip
TURNS = st.lists(
    st.one_of(
        st.text(max_size=10),
        st.builds(lambda t: {"text": t}, st.text(max_size=10)),
        st.builds(lambda s, t: {"speaker": s, "text": t}, st.text(max_size=5), st.text(max_size=5)),
    ),
    max_size=3,
)


@st.composite
def jsonl_line(draw: st.DrawFn) -> tuple[str, str | None, bool]:
    """One line: (its text, the record text it yields or None, whether it is an error)."""
    text = draw(item_text(st.characters(codec="utf-8")))
    good = "x" + text  # a text that is not blank
    extra = draw(
        st.dictionaries(st.text(max_size=5).map(lambda k: "x_" + k), JSON_VALUES, max_size=3)
    )
    ascii_only = draw(st.booleans())

    def dump(obj: object) -> str:
        return json.dumps(obj, ensure_ascii=ascii_only)

    kind = draw(st.integers(0, 15))
    if kind <= 5:
        obj = {"text": text, **extra}
        if draw(st.booleans()):
            obj["speaker"] = draw(st.one_of(st.none(), st.text(max_size=5)))
            obj["aspect"] = draw(st.one_of(st.none(), st.text(max_size=5)))
            obj["context"] = draw(st.one_of(st.none(), st.just(""), TURNS))
        line = dump(obj)
        if draw(st.booleans()):
            pad = st.sampled_from(["", " ", "\t"])  # JSON's own white space
            line = draw(pad) + line + draw(pad)
        return line, _clip(text) if text.strip() else None, False
    if kind == 6:
        return draw(st.sampled_from(BLANKS)), None, False
    if kind == 7:  # deep nesting, huge numbers and lone surrogates, fine or not
        depth = draw(st.sampled_from([10, 100_000]))
        number = draw(st.sampled_from(["1" * 5000, "1" * 5000 + ".5", "1e999", "-0"]))
        bad = depth > 1000 or ("." not in number and len(number) > 4300)
        line = f'{{"text": {dump(good)}, "d": {"[" * depth}{"]" * depth}, "n": {number}}}'
        return line, None if bad else _clip(good), bad
    if kind == 8:
        where = draw(st.sampled_from(["text", "speaker", "context", "key"]))
        if where == "key":  # a key with a lone surrogate is not read: no error
            return f'{{"\\ud800": 1, "text": {dump(good)}}}', _clip(good), False
        surrogate = '"a\\udc80b"'
        value = f"[{surrogate}]" if where == "context" else surrogate
        rest = "" if where == "text" else f', "text": {dump(good)}'
        return f'{{"{where}": {value}{rest}}}', None, True
    if kind == 9:
        return dump(draw(st.one_of(JSON_SCALARS, st.lists(JSON_VALUES, max_size=3)))), None, True
    if kind == 10:
        return dump({"text": draw(NOT_TEXT), **extra}), None, True
    if kind == 11:  # no text field; its keys end up in the message
        keys = st.text(name_chars(), max_size=12).filter(lambda k: k != "text")
        return dump(draw(st.dictionaries(keys, JSON_SCALARS, max_size=4))), None, True
    if kind == 12:
        key = draw(st.sampled_from(["speaker", "aspect"]))
        return dump({"text": good, key: draw(NOT_NAME)}), None, True
    if kind == 13:
        return dump({"text": good, "context": draw(BAD_CONTEXT)}), None, True
    whole = dump({"text": text, **extra})
    cut = draw(st.integers(0, len(whole) - 1))
    garbage = draw(st.sampled_from(["", "{text: 1}", "[", "nul", "{'text': 'x'}", "\x00"]))
    line = whole[:cut] + garbage
    return line, None, bool(line.strip())


@st.composite
def jsonl_docs(draw: st.DrawFn) -> Doc:
    lines = draw(st.lists(jsonl_line(), max_size=10))
    encoding = draw(st.sampled_from(["utf-8", *WIDE]))
    ending = draw(st.sampled_from(ENDINGS))
    text = ending.join(line for line, _, _ in lines)
    if lines and draw(st.booleans()):
        text += ending
    expected = Expected()
    for number, (_, record, bad) in enumerate(lines, 1):
        if bad:
            expected = Expected(error_line=number)
            break
        if record is not None:
            expected.records.append((str(number), record))
    bom = draw(st.booleans())
    return Doc(encode(text, encoding, bom), "jsonl", encoding, expected, len(lines))


FRAGMENTS = (b"\r", b"\n", b"\r\n", b'"', b",", b"\t", b"{", b"}", b'"text"', b":", b"\x00",
             b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"text,b\n", b'{"text": "', b"\\u",
             b"\xe9", b"\xc3", b"\xed\xa0\x80", b" ")  # fmt: skip
RANDOM_BYTES = st.lists(
    st.one_of(st.binary(max_size=6), st.sampled_from(FRAGMENTS)), max_size=40
).map(b"".join)


# ------------------------------------------------------------------ readers


@FUZZ
@given(txt_docs())
def test_txt_reader(doc: Doc) -> None:
    with written("in.txt", doc.data) as path:
        got = read(str(path), "txt", doc.encoding)
        check_invariant(got, str(path), doc.lines)
        check_expected(got, str(path), doc.expected)


@FUZZ
@given(csv_docs())
@example(Doc(b'"a\nb",c\nx,y\n', "csv", "utf-8", Expected(error_line=0), 3))
def test_csv_and_tsv_readers(doc: Doc) -> None:
    with written(f"in.{doc.fmt}", doc.data) as path:
        got = read(str(path), doc.fmt, doc.encoding)
        check_invariant(got, str(path), doc.lines)
        check_expected(got, str(path), doc.expected)


@FUZZ
@given(jsonl_docs())
@example(Doc(b'{"a\\nb": 1, "\\u2028": 2}\n', "jsonl", "utf-8", Expected(error_line=1), 1))
@example(Doc(b'{"' + b"k" * 100_000 + b'": 1}\n', "jsonl", "utf-8", Expected(error_line=1), 1))
def test_jsonl_reader(doc: Doc) -> None:
    with written("in.jsonl", doc.data) as path:
        got = read(str(path), "jsonl", doc.encoding)
        check_invariant(got, str(path), doc.lines)
        check_expected(got, str(path), doc.expected)
        if isinstance(got, str):
            assert len(got) < 2000, "an error message quoting a whole input line"


@FUZZ
@given(st.one_of(txt_docs(), csv_docs(), jsonl_docs()))
def test_stdin_reader(doc: Doc) -> None:
    with stdin_bytes(doc.data):
        got = read("-", doc.fmt, doc.encoding)
    check_invariant(got, "<stdin>", doc.lines)
    check_expected(got, "<stdin>", doc.expected)


@FUZZ
@given(
    RANDOM_BYTES,
    st.sampled_from(["txt", "csv", "tsv", "jsonl", "parquet"]),
    st.sampled_from(ENCODINGS),
)
def test_random_bytes_in_every_format_and_encoding(data: bytes, fmt: str, encoding: str) -> None:
    with written(f"in.{fmt}", data) as path:
        got = read(str(path), fmt, encoding)
    check_invariant(got, str(path), len(re.split(rb"\r\n|\r|\n", data)))


@FUZZ
@given(RANDOM_BYTES)
def test_random_bytes_as_utf8_text_lines(data: bytes) -> None:
    """An independent model of .txt in UTF-8: split on any line end, decode each line."""
    pieces = re.split(rb"\r\n|\r|\n", data)
    if pieces[-1] == b"":
        pieces.pop()
    expected = Expected()
    for number, piece in enumerate(pieces, 1):
        try:
            line = piece.decode("utf-8")
        except UnicodeDecodeError:
            expected = Expected(error_line=number)
            break
        if number == 1:
            line = line.removeprefix("\ufeff")
        if line.strip():
            expected.records.append((str(number), _clip(line)))
    with written("in.txt", data) as path:
        got = read(str(path), "txt")
        check_invariant(got, str(path), len(pieces))
        check_expected(got, str(path), expected)


# ------------------------------------------------------------------ Parquet


@st.composite
def parquet_docs(draw: st.DrawFn) -> tuple[bytes, Expected]:
    """A Parquet file (a few row groups) with its expected outcome; or a real file cut short."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = st.one_of(item_text(chars("utf-8")), st.none())
    column = draw(
        st.one_of(
            st.lists(texts, max_size=12),
            st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=3),  # not text
        )
    )
    names = draw(st.lists(st.text(name_chars(), max_size=6), unique=True, max_size=2))
    names = [n for n in names if n not in ("text", "speaker", "aspect", "context")]
    has_text = draw(st.integers(0, 9)) > 0
    table = {("text" if has_text else "x_text"): column}
    table.update({n: [draw(st.text(max_size=3))] * len(column) for n in names})
    if draw(st.booleans()):
        table["speaker"] = [draw(st.one_of(st.none(), st.text(max_size=4))) for _ in column]
    sink = io.BytesIO()
    pq.write_table(pa.table(table), sink, row_group_size=draw(st.integers(1, 5)))
    data = sink.getvalue()
    expected = Expected(error_line=None if has_text else 0)
    for number, text in enumerate(column if has_text else [], 1):
        if not isinstance(text, str):
            expected = Expected(error_line=0)  # null or a number: names the row, not a line
            break
        if text.strip():
            expected.records.append((str(number), _clip(text)))
    if draw(st.integers(0, 4)) == 0:
        return data[: draw(st.integers(0, len(data) - 1))], Expected(error_line=0)
    return data, expected


@FUZZ
@given(parquet_docs(), st.booleans())
@example((b"PAR1", Expected(error_line=0)), False)
def test_parquet_reader(doc: tuple[bytes, Expected], stdin: bool) -> None:
    data, expected = doc
    if stdin:
        with stdin_bytes(data):
            got = read("-", "parquet")
        name = "<stdin>"
    else:
        with written("in.parquet", data) as path:
            got = read(str(path), "parquet")
        name = str(path)
    check_invariant(got, name, 0)
    check_expected(got, name, expected)


def test_parquet_column_names_in_an_error_stay_on_one_line(tmp_path: Path) -> None:
    """Found by the property above (a column named with a line break)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"a\nb": ["x"], "\u2028": ["y"]}), path)
    got = read(str(path), "parquet")
    assert isinstance(got, str) and len(got.splitlines()) == 1, got


# ------------------------------------------------------------------ the partial file


def _rows(texts: list[str]) -> list[dict]:
    return [{"id": i, "text": t, "task": "sentiment", "label": "neutral"}
            for i, t in enumerate(texts, 1)]  # fmt: skip


def _line(row: dict, encoding: str = "utf-8") -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode(encoding)


@dataclass
class Torn:
    """A partial file as a writer left it (``clean``) and after a crash or tampering."""

    rows: list[dict]
    clean: bytes
    damaged: bytes
    how: str

    @property
    def header_end(self) -> int:
        return self.clean.index(b"\n") + 1


@st.composite
def torn_partials(draw: st.DrawFn) -> Torn:
    rows = _rows(draw(st.lists(st.text(max_size=12), min_size=1, max_size=8)))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        sink = ResultSink(out, "jsonl", {"task": "sentiment", "items": len(rows)})
        for row in rows[: draw(st.integers(0, len(rows)))]:
            sink.write(row)
        sink.abandon()
        clean = partial_path(out).read_bytes()
    done = clean.count(b"\n") - 1
    how = draw(st.sampled_from(["cut", "append", "encoded", "extra", "insert", "flip"]))
    if how == "cut":  # a kill mid-write
        return Torn(rows, clean, clean[: draw(st.integers(0, len(clean)))], how)
    if how == "append":
        return Torn(rows, clean, clean + draw(RANDOM_BYTES), how)
    if how == "encoded":  # the next record in UTF-16/32: JSON to json.loads(bytes), not ours
        encoding = draw(st.sampled_from(["utf-16-be", "utf-16-le", "utf-32-be", "utf-32-le"]))
        return Torn(rows, clean, clean + _line(rows[0] | {"id": done + 1}, encoding), how)
    if how == "extra":  # every record, then records the input does not have
        clean = clean[: clean.index(b"\n") + 1] + b"".join(map(_line, rows))
        extra = [rows[-1] | {"id": len(rows) + k} for k in range(1, draw(st.integers(2, 4)))]
        return Torn(rows, clean, clean + b"".join(map(_line, extra)), how)
    data = bytearray(clean)
    at = draw(st.integers(0, len(data) - 1))
    if how == "insert":
        data[at:at] = draw(RANDOM_BYTES) + b"\n"
    else:
        data[at] = draw(st.integers(0, 255))
    return Torn(rows, clean, bytes(data), how)


def _finish(part: Path, run: PartialRun, rows: list[dict], fmt: str = "jsonl") -> str:
    """Resume as the runner does: append the records after the last one kept, finish."""
    out = part.with_name(part.name.removesuffix(".partial"))
    sink = ResultSink(out, fmt, run.header, resume=run)
    for row in rows[len(run.ids) :]:
        sink.write(row)
    sink.finish()
    assert not part.exists()
    return out.read_text(encoding="utf-8")


def _check_partial_error(exc: InputError, part: Path) -> None:
    message = str(exc)
    assert len(message.splitlines()) == 1 and message.startswith(f"{part}: "), message


@FUZZ
@given(torn_partials())
def test_partial_file_after_a_crash_or_tampering(torn: Torn) -> None:
    """A kill mid-write, garbage after the last record, a record in another encoding or
    past the item count: the intact records survive, the rest is cut, and the resumed run
    writes every record once. Bytes changed inside: an error line, or a cut at a line end."""
    with written("out.jsonl.partial", torn.damaged) as part:
        try:
            run = read_partial(part)
        except InputError as exc:
            _check_partial_error(exc, part)
            assert torn.how in ("insert", "flip") or len(torn.damaged) < torn.header_end
            return
        kept = part.read_bytes()
        assert torn.damaged.startswith(kept) and kept.endswith(b"\n")
        assert len(run.ids) <= len(torn.rows)
        if torn.how in ("insert", "flip"):
            if run.ids == list(range(1, len(run.ids) + 1)):  # else the runner refuses it
                rows = jsonl(_finish(part, run, torn.rows))
                assert [r["id"] for r in rows] == [r["id"] for r in torn.rows]
            return
        intact = torn.damaged[: len(torn.clean)].count(b"\n") - 1
        if torn.how == "cut" and not torn.damaged.endswith(b"\n"):
            intact = torn.damaged.count(b"\n") - 1
        assert run.ids == list(range(1, min(intact, len(torn.rows)) + 1)), run.ids
        assert jsonl(_finish(part, run, torn.rows)) == torn.rows  # nothing lost or duplicated


@FUZZ
@given(RANDOM_BYTES, st.booleans())
def test_random_partial_files(data: bytes, with_header: bool) -> None:
    header = b'{"affedge_partial": 1, "task": "sentiment", "items": 3}\n'
    with written("out.jsonl.partial", (header if with_header else b"") + data) as part:
        try:
            run = read_partial(part)
        except InputError as exc:
            _check_partial_error(exc, part)
            assert not with_header
            return
        assert len(run.ids) <= 3
        if run.ids == list(range(1, len(run.ids) + 1)):
            table = _finish(part, run, _rows(["a", "b", "c"]), "csv")
            assert len(list(csv.reader(io.StringIO(table)))) == 4  # a header, 3 records


# ------------------------------------------------------------------ the CLI


SUFFIX = {"txt": "txt", "csv": "csv", "tsv": "tsv", "jsonl": "jsonl"}


@settings(FUZZ, max_examples=max(6, EXAMPLES // 25))
@given(st.one_of(txt_docs(), csv_docs(), jsonl_docs()), st.booleans())
def test_cli_exit_code_and_one_line_errors(doc: Doc, stdin: bool) -> None:
    """`affedge classify` end to end: exit 0 with the expected records, or exit 2 with one
    line on stderr and nothing at --output."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"in.{SUFFIX[doc.fmt]}"
        src.write_bytes(doc.data)
        out = Path(tmp) / "out.jsonl"
        args = ["-" if stdin else str(src), "-o", str(out), "-q", "--encoding", doc.encoding]
        if stdin:
            args += ["--input-format", doc.fmt]
        proc = subprocess.run(
            [sys.executable, "-m", "affedge.cli", "classify", *args],
            input=doc.data if stdin else None,
            capture_output=True,
            timeout=300,
        )
        err = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode in (0, 2), err
        assert "Traceback" not in err
        assert not partial_path(out).exists()
        if proc.returncode == 2:
            assert len(err.splitlines()) == 1 and err.startswith("affedge: error: "), err
            assert not out.exists()
            assert doc.expected.error_line is not None or not doc.expected.records, err
            return
        rows = jsonl(out.read_text(encoding="utf-8"))
        # The CLI may read a long item whole (--long chunk): compare up to the reader's cut.
        got = [(str(r["id"]), r["text"][:MAX_ITEM_CHARS]) for r in rows]
        assert got == doc.expected.records
