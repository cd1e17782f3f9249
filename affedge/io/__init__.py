"""Reading items to annotate (:mod:`.reader`), writing results in a format (:mod:`.formats`;
Parquet in and out: :mod:`.parquet`; Label Studio and Argilla: :mod:`.review`) and the
crash-safe, resumable ``--output`` protocol (:mod:`.partial`)."""

from affedge.atomic import atomic_write
from affedge.io.formats import (
    OUTPUT_FORMATS,
    check_output_format,
    format_rows,
    record_id,
    write_csv,
    write_table,
)
from affedge.io.partial import (
    PARTIAL_SUFFIX,
    PARTIAL_VERSION,
    PartialRun,
    ResultSink,
    iter_partial_rows,
    partial_lock,
    partial_path,
    read_partial,
)
from affedge.io.reader import (
    INPUT_FORMATS,
    MAX_CHUNKED_ITEM_CHARS,
    MAX_ITEM_CHARS,
    InputReader,
    InputStats,
    parse_context,
    scan,
)

__all__ = [
    "INPUT_FORMATS",
    "MAX_CHUNKED_ITEM_CHARS",
    "MAX_ITEM_CHARS",
    "OUTPUT_FORMATS",
    "PARTIAL_SUFFIX",
    "PARTIAL_VERSION",
    "InputReader",
    "InputStats",
    "PartialRun",
    "ResultSink",
    "atomic_write",
    "check_output_format",
    "format_rows",
    "iter_partial_rows",
    "parse_context",
    "partial_lock",
    "partial_path",
    "read_partial",
    "record_id",
    "scan",
    "write_csv",
    "write_table",
]
