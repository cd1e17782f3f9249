"""Annotation on Ray Data: many shards, many workers, one machine or a cluster (``affedge[ray]``).

Two entry points, both ``map_batches`` over a pool of stateful actors, each of which opens the
engine once (:func:`affedge.engines.open_engine`) and turns records into rows with the CLI's own
loop (:func:`affedge.runner.results`), so labels and row shapes are the single-process CLI's:

* :func:`annotate_dataset` (Python): a ``ray.data.Dataset`` of record rows (a text column and
  optional ``id``/``context``/``speaker``/``aspect`` columns) in, a Dataset of result rows out.
* :func:`annotate_shards` (`affedge classify|score DIR_OR_GLOB -o OUT_DIR --ray`): one output
  shard per input shard, each written atomically, a rerun skipping the finished ones.

Why the CLI does not read shards with ``ray.data.read_json/read_csv/read_parquet``: those give
no line numbers (the ids of the single-process CLI are 1-based line or row numbers, blank lines
counted for JSONL and skipped for CSV), and ``read_csv`` re-types columns (a text column of
digits becomes integers). Batches must also be aligned: an int8 encoder's output depends on
the aligned block of ``engine.block_size`` records an item falls in, and Ray Data cuts batches
where its blocks happen to end. So the unit of work is the shard: the Dataset holds one row per
input shard (a path), and an actor reads it with affedge's own reader and annotates it from its
first record, exactly as `affedge classify SHARD` would; the driver streams the rows of each
shard into ``OUT_DIR/NAME.partial`` and renames the finished file into place
(:class:`affedge.io.ResultSink`), so an output shard exists only when complete, with the bytes
the single-process CLI writes for that shard. The price: no parallelism inside a shard, and a
worker killed mid-shard makes Ray redo that shard; make shards many and modest (thousands to
a few hundred thousand rows each).

Fault tolerance is Ray Data's: actor pools default to ``max_restarts=-1`` and
``max_task_retries=-1`` (``ActorPoolMapOperator._apply_default_remote_args``; passing them to
``map_batches`` is deprecated since Ray 2.60), so a killed worker is restarted, reopens the
engine and redoes its shard; Ray's streaming-generator replay hands each output on once.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affedge.atomic import atomic_write_text
from affedge.chunking import reads_in_chunks
from affedge.engines import Engine, open_engine
from affedge.errors import AffedgeError, InputError
from affedge.io import (
    INPUT_FORMATS,
    MAX_ITEM_CHARS,
    InputReader,
    ResultSink,
    check_output_format,
    parse_context,
    partial_lock,
    partial_path,
    scan,
)
from affedge.models import resolve_model
from affedge.records import Record
from affedge.runner import Job, results

RAY_EXTRA = "pip install 'affedge[ray]'"
#: ``--format`` choices of a sharded run and the suffix of each output shard.
SHARD_FORMATS = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
#: Held (``flock``) by the run writing an output folder.
LOCK_NAME = ".affedge-ray.lock"
#: What the output folder holds (command, task, model, format): a rerun must repeat it.
MANIFEST_NAME = ".affedge-ray.json"
#: Result rows per batch an actor hands on (Ray may merge them into bigger blocks).
YIELD_ROWS = 4096
#: Records per ``map_batches`` batch in :func:`annotate_dataset`: the default ONNX encoder's
#: block (32 x 16), so each batch is one aligned look-ahead window of it.
DATASET_BATCH_ROWS = 512


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or one line naming the extra to install."""
    try:
        import ray
        import ray.data  # Ray Data is the part affedge uses
    except ImportError:
        raise AffedgeError(f"--ray needs Ray Data, which is not installed: {RAY_EXTRA}") from None
    return ray


# ------------------------------------------------------------------------------ actors


class _EngineActor:
    """The engine one Ray actor opens once and keeps for every batch it is given."""

    def __init__(self, job: Job, model: str | None, threads: int | None) -> None:
        self.job = job
        self.engine: Engine = open_engine(resolve_model(model), threads=threads)
        self.engine.calibrate = job.calibrate
        # Where items are cut, as runner._run decides it: far out when long texts are read
        # in windows, at MAX_ITEM_CHARS on a model that truncates them.
        chunked = reads_in_chunks(self.engine, job.long)
        self.max_chars = job.max_chars if chunked else min(job.max_chars, MAX_ITEM_CHARS)


class DatasetAnnotator(_EngineActor):
    """``map_batches`` callable: a pyarrow batch of record rows -> a batch of result rows.

    Rows are read as the JSONL/Parquet reader reads them (text stripped, blank ones skipped,
    cut where the CLI cuts them); ``id`` is the row's ``id`` value (None when the Dataset has
    no such column: Ray Data has no row numbers). ``chunks`` and ``truncated`` are always there
    (``pa.Table.from_pylist`` takes its columns from the first row), 1 and False where the CLI
    leaves them out.
    """

    def __init__(
        self, job: Job, model: str | None, threads: int | None, text_column: str = "text"
    ) -> None:
        super().__init__(job, model, threads)
        self.text_column = text_column

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        records: list[Record] = []
        ids: list[Any] = []
        for row in batch.to_pylist():
            record = self._record(row)
            if record is not None:
                records.append(record)
                ids.append(row.get("id"))
        rows = [
            {
                **row,
                "id": rid,
                "chunks": row.get("chunks", 1),
                "truncated": bool(row.get("truncated")),
            }
            for rid, row in zip(ids, results(self.engine, records, self.job), strict=True)
        ]
        return pa.Table.from_pylist(rows)

    def _record(self, row: dict[str, Any]) -> Record | None:
        where = f"row with id {row['id']!r}" if row.get("id") is not None else "a row"
        text = row.get(self.text_column)
        if not isinstance(text, str):
            got = "missing" if self.text_column not in row else type(text).__name__
            raise InputError(f"{where}: column {self.text_column!r} is {got}, not text")
        if not text.strip():
            return None
        optional = {}
        for key in ("speaker", "aspect"):
            value = row.get(key)
            if value not in (None, "") and not isinstance(value, str):
                raise InputError(f"{where}: {key!r} must be a string")
            optional[key] = value or None
        return Record(
            id=str(row.get("id", "")),
            text=text.strip()[: self.max_chars],
            context=parse_context(row.get("context"), where),
            **optional,
        )


class ShardAnnotator(_EngineActor):
    """``map_batches`` callable of :func:`annotate_shards`: rows ``{shard, path}`` in, one
    row ``{shard, line}`` per result out (``line``: the result row as JSON), in input order.

    A subclass may override :meth:`annotate_shard` (the tests make one that dies mid-shard).
    """

    def __init__(self, job: Job, model: str | None, threads: int | None, *read: Any) -> None:
        super().__init__(job, model, threads)
        self.read = read  # InputReader's format, text field and encoding

    def __call__(self, batch: Any) -> Iterator[dict[str, list[Any]]]:
        for shard, path in zip(batch["shard"].to_pylist(), batch["path"].to_pylist(), strict=True):
            lines: list[str] = []
            for row in self.annotate_shard(path):
                lines.append(json.dumps(row, ensure_ascii=False))
                if len(lines) == YIELD_ROWS:
                    yield {"shard": [shard] * len(lines), "line": lines}
                    lines = []
            if lines:
                yield {"shard": [shard] * len(lines), "line": lines}

    def annotate_shard(self, path: str) -> Iterator[dict[str, Any]]:
        """The result rows of one shard: `affedge classify SHARD`'s rows."""
        reader = InputReader(path, *self.read, max_chars=self.max_chars)
        return results(self.engine, reader, self.job)


def annotate_dataset(
    ds: Any,
    job: Job | None = None,
    model: str | None = None,
    *,
    text_column: str = "text",
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1.0,
    threads: int | None = None,
    batch_size: int = DATASET_BATCH_ROWS,
) -> Any:
    """Annotate a ``ray.data.Dataset`` of records; a (lazy) Dataset of result rows.

    ``concurrency`` actors (a fixed pool, or ``(min, max)`` to autoscale) each reserve
    ``num_cpus`` CPUs and run the engine on ``threads`` threads (default: ``num_cpus``). Each
    batch of ``batch_size`` rows is annotated as `affedge classify` would annotate a file of
    those rows: the same labels; an int8 model's probabilities can move in the last digits
    with how Ray Data cuts batches (use :func:`annotate_shards` for byte-identical files).
    """
    ray = require_ray()
    job = job or Job()
    job.resolve_task()
    resolve_model(model)  # a wrong name fails here, not in every actor
    sizes = concurrency if isinstance(concurrency, tuple) else (concurrency, concurrency)
    threads = threads or max(1, math.ceil(num_cpus))
    return ds.map_batches(
        DatasetAnnotator,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=sizes[0], max_size=sizes[1]),
        num_cpus=num_cpus,
        fn_constructor_args=(job, model, threads, text_column),
    )


# ------------------------------------------------------------------------ shard runs


def find_shards(source: str, input_format: str | None = None) -> list[Path]:
    """The input shards: the files of a folder (those with an input suffix unless
    ``input_format`` says how to read them all; hidden files never), or a glob's matches."""
    folder = Path(source)
    if folder.is_dir():
        suffixes = {f".{fmt}" for fmt in INPUT_FORMATS}
        found = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name[0] != "."]
        found = [p for p in found if input_format or p.suffix.lower() in suffixes]
        if not found:
            kinds = ", ".join(f"*.{fmt}" for fmt in INPUT_FORMATS)
            raise InputError(f"{source}: no input shards in this folder ({kinds})")
        return found
    found = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    if not found:
        raise InputError(f"{source}: no such folder, and no file matches it as a glob")
    return found


def _output_names(shards: Sequence[Path], out_dir: Path, fmt: str) -> list[Path]:
    outputs = [out_dir / (shard.stem + SHARD_FORMATS[fmt]) for shard in shards]
    seen: dict[Path, Path] = {}
    for shard, output in zip(shards, outputs, strict=True):
        if shard.resolve().parent == out_dir.resolve():
            raise InputError(f"{shard}: an input shard inside the output folder {out_dir}")
        if output in seen:
            raise InputError(
                f"{seen[output]} and {shard} would both be written to {output}: rename one"
            )
        seen[output] = shard
    return outputs


@contextmanager
def _folder_lock(out_dir: Path) -> Iterator[None]:
    """One run at a time per output folder (POSIX ``flock``; it goes with the process)."""
    fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        with suppress(ImportError):
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(
                    f"{out_dir}: another affedge run is writing this folder; wait for it"
                ) from None
        yield
    finally:
        os.close(fd)


def _check_manifest(out_dir: Path, wanted: dict[str, Any], finished: bool) -> None:
    """Refuse to mix the results of two different runs in one folder (``finished``: it
    holds output shards already)."""
    path = out_dir / MANIFEST_NAME
    try:
        found = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError):
        found = {}
    if found is not None and finished:
        for key, value in wanted.items():
            if not isinstance(found, dict) or found.get(key) != value:
                was = found.get(key) if isinstance(found, dict) else "?"
                raise InputError(
                    f"{out_dir}: holds results of a run with {key}={was!r}, this run has "
                    f"{value!r}: use another folder"
                )
    if found != wanted:
        atomic_write_text(path, json.dumps(wanted, indent=1) + "\n")


@dataclass
class _Shard:
    """One pending input shard and the output it is being streamed into."""

    index: int
    path: Path
    output: Path
    total: int
    header: dict[str, Any]
    done: int = 0
    sink: ResultSink | None = None
    held: ExitStack = field(default_factory=ExitStack)


@dataclass
class ShardRun:
    """What :func:`annotate_shards` did (for the CLI's one-line summary)."""

    model: str
    shards: int
    skipped: int
    items: int
    seconds: float
    output: Path


def annotate_shards(
    source: str,
    out_dir: Path,
    job: Job,
    model: str | None = None,
    *,
    out_format: str = "jsonl",
    workers: int = 1,
    num_cpus: float = 1.0,
    threads: int | None = None,
    address: str | None = None,
    text_field: str | None = None,
    input_format: str | None = None,
    encoding: str = "utf-8",
    annotator: type[ShardAnnotator] = ShardAnnotator,
    on_start: Callable[[int], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> ShardRun:
    """Annotate every shard of ``source`` (a folder or a glob) into ``out_dir``, one output
    shard per input shard, on ``workers`` Ray actors of ``num_cpus`` CPUs each.

    Shards whose output exists are skipped (it exists only when complete); every other shard
    is read and checked before Ray starts, then annotated whole (an interrupted shard's
    ``.partial`` is started over). Connects to ``address`` (or ``$RAY_ADDRESS``, or the
    session this process already has), else starts a local cluster of
    ``workers x num_cpus`` CPUs. On a cluster, every node must see the shards at their paths.
    """
    ray = require_ray()
    job.resolve_task()
    if out_format not in SHARD_FORMATS:
        raise InputError(f"--format {out_format}: a sharded run writes {', '.join(SHARD_FORMATS)}")
    check_output_format(out_format, to_stdout=False)
    shards = find_shards(source, input_format)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; --output needs a folder with --ray")
    if not out_dir.parent.exists():
        raise InputError(f"{out_dir.parent}: output folder does not exist")
    outputs = _output_names(shards, out_dir, out_format)
    ref = resolve_model(model)
    out_dir.mkdir(exist_ok=True)
    with _folder_lock(out_dir):
        _check_manifest(out_dir, {
            "command": job.command, "task": job.task, "model": ref.name, "format": out_format,
            "labels": list(job.labels) if job.labels else None, "options": job.options(),
        }, finished=any(output.exists() for output in outputs))  # fmt: skip
        pending: list[_Shard] = []
        for index, (path, output) in enumerate(zip(shards, outputs, strict=True)):
            if output.exists():
                continue
            total = scan(InputReader(str(path), input_format, text_field, encoding, job.max_chars))
            header = {"command": job.command, "input": str(path.resolve()), "task": job.task,
                      "labels": list(job.labels) if job.labels else None, "model": ref.name,
                      "options": job.options(), "items": total}  # fmt: skip
            pending.append(_Shard(index, path, output, total, header))
        run = ShardRun(ref.name, len(shards), len(shards) - len(pending), 0, 0.0, out_dir)
        if not pending:
            return run
        started = time.perf_counter()
        if on_start is not None:
            on_start(sum(s.total for s in pending))
        with _session(ray, address, workers * num_cpus):
            ds = ray.data.from_items(
                [{"shard": s.index, "path": str(s.path)} for s in pending],
                override_num_blocks=len(pending),
            )
            ds = ds.map_batches(
                annotator,
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=num_cpus,
                fn_constructor_args=(job, model, threads or max(1, math.ceil(num_cpus)),
                                     input_format, text_field, encoding),
            )  # fmt: skip
            run.items = _write_shards(ds, {s.index: s for s in pending}, out_format, on_rows)
        run.seconds = time.perf_counter() - started
        return run


@contextmanager
def _session(ray: Any, address: str | None, num_cpus: float) -> Iterator[None]:
    """The caller's Ray session if it has one, else a new one (shut down at the end)."""
    if ray.is_initialized():
        yield
        return
    try:
        if address is None and not os.environ.get("RAY_ADDRESS"):
            ray.init(
                num_cpus=max(1, math.ceil(num_cpus)),
                include_dashboard=False,
                logging_level=logging.ERROR,  # start-up chatter would bury the summary
            )
        else:
            ray.init(address=address, logging_level=logging.ERROR)
    except Exception as exc:  # no cluster there, a node that timed out starting...
        where = address or os.environ.get("RAY_ADDRESS")
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AffedgeError(
            f"cannot start or reach Ray at {where or 'a local cluster'}: {reason}"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def _write_shards(
    ds: Any, shards: dict[int, _Shard], fmt: str, on_rows: Callable[[int], None] | None
) -> int:
    """Stream the result rows into each shard's ``.partial``; rename each finished one."""
    written = 0
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        for batch in batches:
            lines = batch["line"].to_pylist()
            for index, line in zip(batch["shard"].to_pylist(), lines, strict=True):
                _write_row(shards[index], fmt, json.loads(line))
            written += len(lines)
            if on_rows is not None:
                on_rows(len(lines))
    except Exception as exc:
        cause = _user_error(exc)
        if cause is None:
            raise
        raise cause from None
    finally:
        if hasattr(batches, "close"):  # stop the Dataset's actors now, not when collected
            batches.close()
        for shard in shards.values():
            if shard.sink is not None:
                shard.sink.abandon()
            shard.held.close()
    short = [s for s in shards.values() if s.done != s.total]
    if short:
        s = short[0]
        raise InputError(
            f"{s.path}: {s.done} results for {s.total} items (did it change during the run?)"
        )
    return written


def _write_row(shard: _Shard, fmt: str, row: dict[str, Any]) -> None:
    if shard.done >= shard.total:
        raise InputError(f"{shard.path}: more results than its {shard.total} items")
    if shard.sink is None:
        part = partial_path(shard.output)
        shard.held.enter_context(partial_lock(part, fresh=not part.exists()))
        shard.sink = ResultSink(shard.output, fmt, shard.header)
    shard.sink.write(row)
    shard.done += 1
    if shard.done == shard.total:
        shard.sink.finish()
        shard.sink = None
        shard.held.close()


def _user_error(exc: BaseException) -> AffedgeError | None:
    """The :class:`AffedgeError` an actor raised (a bad row, a task the model cannot do),
    unwrapped from Ray's exceptions so the CLI says it in one line."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, AffedgeError) and type(error).__module__.startswith("affedge"):
            return type(error)(str(error).splitlines()[0])  # Ray appends its retry advice
        todo += [getattr(error, "cause", None), error.__cause__, error.__context__]
    return None
