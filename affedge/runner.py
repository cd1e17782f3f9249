"""The annotation loop: the one place records become output rows, for the CLI and the API.

:func:`results` turns records into output rows for a :class:`Job` (classify, score,
``--task all``, negotiate) on an open engine; :func:`annotate_file` wraps it in the file
protocol: read and validate the whole input before the model loads, resume an interrupted
``--output`` run without losing or duplicating records, and write the output atomically.
With ``--long chunk`` (the default) an item longer than the model's context is read in
windows and their results averaged (:mod:`affedge.chunking`); the row says ``chunks: n``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affedge.chunking import check_long, read_long, reads_in_chunks
from affedge.device import DEFAULT_DEVICE, check_device
from affedge.engines import Capability, Engine, LabelResult, ScoreResult, open_engine
from affedge.errors import InputError, ModelError
from affedge.io import (
    MAX_CHUNKED_ITEM_CHARS,
    MAX_ITEM_CHARS,
    InputReader,
    ResultSink,
    check_output_format,
    partial_lock,
    partial_path,
    read_partial,
    record_id,
    scan,
)
from affedge.models import ModelRef, default_model_name, resolve_model
from affedge.negotiate import DEFAULT_MAX_ROUNDS
from affedge.records import Record
from affedge.tasks import ALL_TASKS, Task, get_task

COMMANDS = ("classify", "score", "negotiate")
NEGOTIATE_TASKS = ("emotion", "sentiment", "sarcasm")
#: Header fields of a partial run that a resumed run must repeat exactly.
RESUME_KEYS = ("command", "input", "task", "labels", "model", "items", "options")


@dataclass(frozen=True)
class Job:
    """What to do with each record: the command, its task and its options."""

    command: str = "classify"
    task: str = "sentiment"
    labels: tuple[str, ...] | None = None
    max_rounds: int = DEFAULT_MAX_ROUNDS
    trace: bool = False
    agree_threshold: float = 0.5
    #: Apply the model's fitted temperatures to label probabilities (``--no-calibration``).
    calibrate: bool = True
    #: Texts longer than the context: ``chunk`` reads them in windows (engines with
    #: :attr:`Capability.CHUNKS`), ``truncate`` cuts them. Negotiation always truncates.
    long: str = "chunk"

    @property
    def every_head(self) -> bool:
        return self.task == ALL_TASKS

    @property
    def chunked(self) -> bool:
        """Whether long texts are read in windows (on engines that can)."""
        return self.long == "chunk" and self.command != "negotiate"

    @property
    def max_chars(self) -> int:
        """Where the reader cuts an item: far longer when it is read in windows."""
        return MAX_CHUNKED_ITEM_CHARS if self.chunked else MAX_ITEM_CHARS

    def resolve_task(self) -> Task | None:
        """The registry task (None for ``all``); InputError for an unknown one."""
        if self.command not in COMMANDS:
            raise InputError(f"unknown command {self.command!r}: choose {', '.join(COMMANDS)}")
        check_long(self.long)
        if self.command == "negotiate" and self.task not in NEGOTIATE_TASKS:
            raise InputError(
                f"negotiate supports --task {', '.join(NEGOTIATE_TASKS)}, not {self.task!r}"
            )
        if self.every_head:
            return None
        return get_task(self.task, "score" if self.command == "score" else "classify")

    def options(self) -> dict[str, Any] | None:
        """The options a resumed run must share (None: the defaults of a classify run)."""
        if self.command != "negotiate":
            changed: dict[str, Any] = {} if self.calibrate else {"calibration": False}
            if self.long != "chunk":
                changed["long"] = self.long
            return changed or None
        options = {
            "max_rounds": self.max_rounds,
            "trace": self.trace,
            "agree": self.agree_threshold,
        }
        return options if self.calibrate else {**options, "calibration": False}

    def check_engine(self, engine: Engine) -> None:
        """One line naming the model when it cannot do this job."""
        if self.command == "negotiate" and not engine.supports(Capability.CHAT):
            raise ModelError(
                f"negotiation needs a generative (GGUF) model; {engine.name} is not one"
            )
        if self.every_head and not engine.supports(Capability.ALL_HEADS):
            raise ModelError(
                f"--task all needs a multi-head encoder model; {engine.name} answers one task "
                "per run"
            )


# ------------------------------------------------------------------------------ rows


def output_row(
    record: Record,
    task: str,
    model: str,
    fields: dict[str, Any],
    truncated: bool = False,
    chunks: int = 1,
) -> dict[str, Any]:
    """One output record: id, text, task, the result's fields, model, ``chunks`` only when
    the item was read in two or more windows, and ``truncated`` only when it was cut to fit
    the model."""
    row = {"id": record_id(record), "text": record.text, "task": task, **fields, "model": model}
    if chunks > 1:
        row["chunks"] = chunks
    if truncated:
        row["truncated"] = True
    return row


def label_row(record: Record, task: str, result: LabelResult, model: str) -> dict[str, Any]:
    fields = {"label": result.label, "probs": result.probs}
    return output_row(record, task, model, fields, result.truncated, result.chunks)


def score_row(record: Record, task: str, result: ScoreResult, model: str) -> dict[str, Any]:
    fields = {"score": result.score}
    return output_row(record, task, model, fields, result.truncated, result.chunks)


def all_heads_row(record: Record, task: str, result: dict[str, Any], model: str) -> dict[str, Any]:
    """`--task all`: every head of a multi-head encoder."""
    fields = {k: v for k, v in result.items() if k not in ("truncated", "chunks")}
    truncated, chunks = bool(result.get("truncated")), result.get("chunks", 1)
    return output_row(record, task, model, fields, truncated, chunks)


def results(engine: Engine, records: Iterable[Record], job: Job) -> Iterator[dict[str, Any]]:
    """Output rows of ``records`` in input order, computed lazily (engines batch inside);
    with ``job.long == "chunk"`` each long item is read in windows whose results are
    averaged as they come back (:func:`affedge.chunking.read_long`)."""
    task = job.resolve_task()
    job.check_engine(engine)
    order: deque[Record] = deque()  # records handed to the engine, waiting for their result
    chunked = job.chunked and reads_in_chunks(engine, job.long)

    def tap() -> Iterator[Record]:
        for record in records:
            order.append(record)
            yield record

    def read(run: Callable[[Iterable[Record]], Iterator[Any]]) -> Iterator[Any]:
        return read_long(engine, tap(), run) if chunked else run(tap())

    make_row: Callable[[Record, str, Any, str], dict[str, Any]]
    if job.command == "negotiate":
        from affedge.negotiate import Negotiator, negotiation_row

        assert task is not None
        negotiator = Negotiator(
            engine, task, job.labels, job.max_rounds, agree_threshold=job.agree_threshold
        )
        stream: Iterable[Any] = negotiator.run(tap())

        def make_row(record: Record, name: str, result: Any, model: str) -> dict[str, Any]:
            return negotiation_row(record, name, result, model, job.trace)
    elif job.every_head:
        stream, make_row = read(engine.analyze), all_heads_row
    elif job.command == "classify":
        assert task is not None
        stream, make_row = read(lambda rs: engine.classify(rs, task, job.labels)), label_row
    else:
        assert task is not None
        stream, make_row = read(lambda rs: engine.score(rs, task)), score_row
    for result in stream:
        yield make_row(order.popleft(), job.task, result, engine.name)


# ------------------------------------------------------------------------- file runs


@dataclass
class RunSummary:
    """What a finished run did (for the CLI's one-line summary)."""

    model: str
    total: int
    processed: int
    resumed: int
    truncated: int
    seconds: float
    blank: int
    clipped: int
    output: Path | None
    complete_already: bool = False
    #: Items read in two or more windows (``--long chunk``), and where items were cut.
    chunked: int = 0
    clip_chars: int = MAX_ITEM_CHARS


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM mid-run: ``OUTPUT.partial`` keeps ``done`` of ``total`` records."""

    def __init__(self, done: int, total: int, output: Path | None) -> None:
        super().__init__(done, total)
        self.done, self.total, self.output = done, total, output


def annotate_file(
    input_path: str,
    job: Job,
    model: str | None = None,
    output: Path | None = None,
    out_format: str = "jsonl",
    text_field: str | None = None,
    input_format: str | None = None,
    encoding: str = "utf-8",
    resume: bool = False,
    threads: int | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_row: Callable[[], None] | None = None,
    device: str = DEFAULT_DEVICE,
    gpu_layers: int | None = None,
) -> RunSummary:
    """Annotate ``input_path`` into ``output`` (or stdout) with ``model``.

    Every input problem surfaces before the model loads; ``resume`` continues the
    ``OUTPUT.partial`` of an interrupted identical run. ``on_start(total, done)`` and
    ``on_row()`` drive a progress display. ``device`` and ``gpu_layers``: where the model
    runs (affedge/device.py; not part of what ``--resume`` compares).
    """
    job.resolve_task()
    check_device(device, gpu_layers)
    check_output_format(out_format, to_stdout=output is None)
    if resume and output is None:
        raise InputError("--resume needs --output (a run to stdout cannot be resumed)")
    if output is not None and output.is_dir():
        raise InputError(f"{output}: is a folder; --output needs a file path")
    if output is not None and not output.parent.exists():
        raise InputError(f"{output.parent}: output folder does not exist")

    reader = InputReader(input_path, input_format, text_field, encoding, job.max_chars)
    total = scan(reader)  # every input problem surfaces here, before any model work
    if model is None:  # negotiation needs a generative model (DEFAULT_CHAT_MODELS)
        model = default_model_name(chat=job.command == "negotiate")
    ref = resolve_model(model)
    header: dict[str, Any] = {
        "command": job.command,
        "input": str(Path(input_path).resolve()) if input_path != "-" else "-",
        "task": job.task,
        "labels": list(job.labels) if job.labels else None,
        "model": ref.name,
        "options": job.options(),
        "items": total,
    }
    if output is not None:
        part = partial_path(output)
        if part.exists() and not resume:
            raise InputError(
                f"{part} holds an interrupted run: pass --resume to continue it, or delete it"
            )
        if resume and not part.exists() and output.exists():
            return RunSummary(ref.name, total, 0, 0, 0, 0.0, 0, 0, output, complete_already=True)
        with partial_lock(part, fresh=not part.exists()):
            return _run(reader, job, ref, header, total, output, out_format, threads, on_start,
                        on_row, device, gpu_layers)  # fmt: skip
    return _run(reader, job, ref, header, total, None, out_format, threads, on_start, on_row,
                device, gpu_layers)  # fmt: skip


def _run(
    reader: InputReader,
    job: Job,
    ref: ModelRef,
    header: dict[str, Any],
    total: int,
    output: Path | None,
    out_format: str,
    threads: int | None,
    on_start: Callable[[int, int], None] | None,
    on_row: Callable[[], None] | None,
    device: str = DEFAULT_DEVICE,
    gpu_layers: int | None = None,
) -> RunSummary:
    """The run itself, with ``OUTPUT.partial`` held by this process."""
    done_ids: list[int | str] = []
    partial = None
    if output is not None and partial_path(output).stat().st_size > 0:
        part = partial_path(output)
        partial = read_partial(part)
        for key in RESUME_KEYS:
            if partial.header.get(key) != header[key]:
                raise InputError(
                    f"{part}: cannot resume: it was started with {key}="
                    f"{partial.header.get(key)!r}, this run has {header[key]!r}"
                )
        done_ids = partial.ids
    done = len(done_ids)

    engine = open_engine(ref, threads=threads, device=device, gpu_layers=gpu_layers)
    engine.calibrate = job.calibrate
    try:
        job.check_engine(engine)
    except BaseException:
        engine.close()
        raise
    if not reads_in_chunks(engine, job.long):  # this model truncates: cut as --long truncate
        reader.max_chars = min(reader.max_chars, MAX_ITEM_CHARS)
    # Finished records of the block the interrupted run stopped in are computed again (not
    # written again), so every block reaches the engine whole, as in an uninterrupted run.
    replay = done % engine.block_size

    def remaining() -> Iterator[Record]:
        for index, record in enumerate(reader):
            if index < done and str(done_ids[index]) != record.id:
                raise InputError(
                    f"{partial_path(output)}: record {index + 1} has id {done_ids[index]}, "
                    f"the input has {record.id}: the input changed; delete the partial file"
                )
            if index >= done - replay:
                yield record

    sink = ResultSink(output, out_format, header, resume=partial)
    started = time.perf_counter()
    processed = truncated = chunked = 0
    try:
        if on_start is not None:
            on_start(total, done)
        for index, row in enumerate(results(engine, remaining(), job)):
            if index < replay:
                continue
            sink.write(row)
            processed += 1
            truncated += bool(row.get("truncated"))
            chunked += "chunks" in row
            if on_row is not None:
                on_row()
        sink.finish()
    except KeyboardInterrupt:
        sink.abandon()
        raise RunInterrupted(done + processed, total, output) from None
    except BaseException:
        sink.abandon()
        raise
    finally:
        engine.close()
    return RunSummary(
        model=ref.name,
        total=total,
        processed=processed,
        resumed=done,
        truncated=truncated,
        seconds=time.perf_counter() - started,
        blank=reader.stats.blank,
        clipped=reader.stats.clipped,
        output=output,
        chunked=chunked,
        clip_chars=reader.max_chars,
    )
