"""Parquet input and output through pyarrow, an optional dependency (``affedge[parquet]``).

Input is read one row group at a time in record batches of the columns affedge uses (the
text column and, when present, ``context``/``speaker``/``aspect``), so memory stays bounded by
a row group, never the file. Rows go through the same field checks as JSONL objects
(:meth:`affedge.io.reader.InputReader._record_from_fields`); a problem names the file, the
1-based row of the file and its (0-based, as pyarrow counts them) row group.

Output is written only from a finished run's rows (the ``.partial`` JSONL file), in chunks:
a first pass unifies the columns every chunk has (``truncated`` may first appear in row
90,000), a second writes them. Nested fields stay nested: ``probs`` is a struct column with
one field per label, which pandas reads as dicts and polars as a Struct (``unnest``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO, Any

from affedge.errors import AffedgeError, InputError

#: Optional columns read like the JSONL fields of the same name.
OPTIONAL_COLUMNS = ("context", "speaker", "aspect")
#: Rows per record batch when reading, per written chunk when writing.
BATCH_ROWS = 1024
WRITE_CHUNK_ROWS = 10_000


def require_pyarrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or one line naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise AffedgeError(
            "Parquet needs pyarrow, which is not installed: pip install 'affedge[parquet]'"
        ) from None
    return pyarrow, pyarrow.parquet


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:160] if text else type(exc).__name__).rstrip(".")


def parquet_rows(
    source: str | bytes, name: str, text_field: str
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``(row number, where, fields)`` for every row of a Parquet file (or its bytes, from
    stdin); ``where`` is ``"NAME: row N (row group G)"`` for error messages."""
    from affedge.io.reader import _names  # reader imports this module lazily

    pa, pq = require_pyarrow()
    try:
        parquet = pq.ParquetFile(pa.BufferReader(source) if isinstance(source, bytes) else source)
        columns = parquet.schema_arrow.names
        groups = parquet.metadata.num_row_groups
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{name}: not a readable Parquet file ({_reason(exc)})") from None
    if text_field not in columns:
        raise InputError(
            f"{name}: no column {text_field!r} (columns: {_names(columns)}); pass --text-field NAME"
        )
    wanted = [text_field, *(c for c in OPTIONAL_COLUMNS if c in columns and c != text_field)]
    number = 0
    for group in range(groups):
        try:
            for batch in parquet.iter_batches(BATCH_ROWS, row_groups=[group], columns=wanted):
                for fields in batch.to_pylist():
                    number += 1
                    yield number, f"{name}: row {number} (row group {group})", fields
        except (pa.ArrowException, OSError) as exc:
            raise InputError(
                f"{name}: row group {group}: unreadable Parquet data ({_reason(exc)})"
            ) from None


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def write_parquet(rows: Iterable[dict[str, Any]], sink: IO[bytes]) -> None:
    """Write result rows as one Parquet table, nested fields as struct columns.

    ``rows`` is read twice (schema, then data) when it can be (a partial file); a one-shot
    iterator is held in memory instead.
    """
    pa, pq = require_pyarrow()
    if iter(rows) is rows:
        rows = list(rows)
    schema = None
    for chunk in _chunks(rows, WRITE_CHUNK_ROWS):
        found = pa.Table.from_pylist(chunk).schema
        schema = found if schema is None else _unify(pa, schema, found)
    if schema is None:
        schema = pa.schema([])
    with pq.ParquetWriter(sink, schema) as writer:
        for chunk in _chunks(rows, WRITE_CHUNK_ROWS):
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))


def _unify(pa: Any, schema: Any, found: Any) -> Any:
    try:
        return pa.unify_schemas([schema, found], promote_options="permissive")
    except (pa.ArrowException, TypeError) as exc:  # a field that is a number here, text there
        raise AffedgeError(f"cannot write these results as Parquet: {_reason(exc)}") from None
