"""Safe output: results written to ``--output`` go first to ``OUTPUT.partial`` (a header line,
then one JSON record per line, flushed as produced). Only a finished run turns it into
``OUTPUT`` in the requested format, through a temporary file and an atomic rename, so
``OUTPUT`` is never half-written; an interrupted run leaves the ``.partial`` behind for
``--resume``, and one OS-level lock keeps a second run off the same output.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from affedge.atomic import atomic_write
from affedge.errors import InputError
from affedge.io.formats import _flat, format_rows, output_format

PARTIAL_SUFFIX = ".partial"
PARTIAL_VERSION = 1
_HEADER_START = json.dumps({"affedge_partial": PARTIAL_VERSION}).encode()[:-1]
_MAX_HEADER_BYTES = 2**20


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
    except OSError as exc:  # a read-only or full folder
        raise InputError(f"{part}: cannot write the output here ({exc.strerror})") from None
    held = False
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
        # The run that held the lock may have finished (and removed the file) between our
        # open and our lock: a lock on a file no longer at ``part`` guards nothing.
        try:
            moved = not os.path.samestat(os.fstat(fd), os.stat(part))
        except FileNotFoundError:
            moved = True
        if moved:
            raise InputError(f"{part}: the partial run vanished (another run finished it)")
        held = True
        if not fresh:
            _drop_torn_header(fd)
            _remove_stale_temporaries(part)
        yield
    finally:
        # A run that stopped before its header (bad model, refused task) leaves nothing; a
        # run refused the lock leaves the holder's file alone, empty or not.
        with suppress(OSError):
            if held and os.fstat(fd).st_size == 0 and os.path.samestat(os.fstat(fd), os.stat(part)):
                part.unlink()
        os.close(fd)


def _drop_torn_header(fd: int) -> None:
    """Empty a partial file that holds only the start of a header line: a run killed (or
    out of disk space) while writing its header left nothing to resume."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0) if 0 < size <= _MAX_HEADER_BYTES else b"\n"
    if b"\n" not in data and (data.startswith(_HEADER_START) or _HEADER_START.startswith(data)):
        os.ftruncate(fd, 0)


def _remove_stale_temporaries(part: Path) -> None:
    """Temporary outputs (atomic_write's ``.OUTPUT.xxxxxxxx.tmp``) of runs killed while
    writing OUTPUT: with the lock held, no other run is writing them."""
    output = part.name.removesuffix(PARTIAL_SUFFIX)
    mkstemp_name = re.compile(rf"\.{re.escape(output)}\.[a-z0-9_]{{8}}\.tmp")
    for path in part.parent.glob(f".{output}.*.tmp"):
        if mkstemp_name.fullmatch(path.name):
            with suppress(OSError):
                path.unlink()


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A full disk, a file-size limit or a read-only folder, as one line."""
    try:
        yield
    except OSError as exc:
        raise InputError(
            f"{path}: cannot write ({exc.strerror or exc}); rerun with --resume once it can be"
        ) from None


def _parse_line(raw: bytes) -> Any:
    """One line of a partial file as this writer wrote it: UTF-8 JSON (``json.loads`` alone
    would also take UTF-16/32 bytes). ValueError or RecursionError otherwise."""
    return json.loads(raw.decode("utf-8"))


def read_partial(path: Path) -> PartialRun:
    """Load a ``.partial`` file, cutting a last line that a kill left incomplete (and
    anything after the records that this writer did not write)."""
    good_end = 0
    header: dict[str, Any] | None = None
    ids: list[int | str] = []
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                obj = _parse_line(raw)
            except (ValueError, RecursionError):  # bad JSON or UTF-8, a huge number, [[[[...
                break
            if header is None:
                if not isinstance(obj, dict) or obj.get("affedge_partial") != PARTIAL_VERSION:
                    raise InputError(f"{path}: not an affedge partial output; delete it")
                header = obj
            else:
                rid = obj.get("id") if isinstance(obj, dict) else None
                if isinstance(rid, bool) or not isinstance(rid, int | str):
                    break  # not a record this writer wrote: cut it off like a torn line
                items = header.get("items")
                if isinstance(items, int) and len(ids) >= items:
                    break  # more records than the input has items: not this run's
                ids.append(rid)
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
            with _writing(part):
                if resume is None:
                    self._fh = part.open("w", encoding="utf-8")
                    line = json.dumps({"affedge_partial": PARTIAL_VERSION, **header})
                    self._fh.write(line + "\n")
                    self._fh.flush()
                else:
                    self._fh = part.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            with _writing(Path(self._fh.name)):
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
            if self.format not in ("jsonl", "csv"):  # those two streamed row by row
                format_rows(self._buffer, self.format, sys.stdout)
            return
        assert self._fh is not None
        part = partial_path(self.output)
        with _writing(part):
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        self._fh = None
        rows = PartialRows(part)
        binary = output_format(self.format).binary
        with _writing(self.output):
            atomic_write(self.output, lambda fh: format_rows(rows, self.format, fh), binary=binary)
            part.unlink()

    def abandon(self) -> None:
        """Stop writing, keeping whatever the partial file holds for ``--resume``."""
        if self._fh is not None:
            with suppress(OSError):
                self._fh.flush()
                self._fh.close()
            self._fh = None


class PartialRows:
    """The rows of a partial file, readable more than once (Parquet reads them twice: its
    columns, then its data) without holding them in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_partial_rows(self.path)


def iter_partial_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a partial file (read in binary: a JSON string may hold a CR)."""
    with path.open("rb") as fh:
        next(fh)
        for line in fh:
            yield _parse_line(line)
