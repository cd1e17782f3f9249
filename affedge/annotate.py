"""The Python API: ``affedge.load(model).classify(texts, task=...)``, mirroring the CLI.

Everything goes through the same loop as the CLI (:mod:`affedge.runner`): ``annotate`` gives
the CLI's output rows for any command and task (``task="all"``, negotiation), and
:func:`annotate_file` is `affedge classify|score|negotiate` as a function. ``long="chunk"``
(the default, as ``--long``) reads texts longer than the model's context in windows and
averages their results (``result.chunks``); ``long="truncate"`` cuts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from affedge.chunking import read_long, reads_in_chunks
from affedge.device import DEFAULT_DEVICE
from affedge.engines import Engine, LabelResult, ScoreResult, open_engine
from affedge.errors import InputError
from affedge.io import parse_context
from affedge.models import ModelRef, resolve_model
from affedge.negotiate import DEFAULT_MAX_ROUNDS
from affedge.records import Record
from affedge.runner import Job, annotate_file, results
from affedge.tasks import ALL_TASKS, get_task

Item = str | Mapping[str, Any] | Record


def as_record(item: Item, number: int) -> Record:
    """A string, a dict with ``text`` (and ``context``/``speaker``/``aspect``) or a Record."""
    if isinstance(item, Record):
        return item
    if isinstance(item, str):
        return Record(id=str(number), text=item)
    if isinstance(item, Mapping) and isinstance(item.get("text"), str):
        return Record(
            id=str(number),
            text=item["text"],
            context=parse_context(item.get("context"), f"item {number}"),
            speaker=item.get("speaker"),
            aspect=item.get("aspect"),
        )
    raise InputError(f"item {number}: expected a string or a mapping with a 'text' string")


def as_records(items: Iterable[Item]) -> Iterator[Record]:
    for number, item in enumerate(items, 1):
        yield as_record(item, number)


class Annotator:
    """A loaded model ready to classify and score text.

    >>> model = affedge.load()                       # the built-in default
    >>> model.classify(["what a lovely day"], task="sentiment")[0].label
    """

    def __init__(
        self,
        model: str | ModelRef | None = None,
        threads: int | None = None,
        device: str = DEFAULT_DEVICE,
        gpu_layers: int | None = None,
    ) -> None:
        self.ref = resolve_model(model)
        self.engine: Engine = open_engine(
            self.ref, threads=threads, device=device, gpu_layers=gpu_layers
        )

    @property
    def name(self) -> str:
        return self.ref.name

    def _read(
        self, items: Iterable[Item], run: Callable[[Iterable[Record]], Iterator[Any]], long: str
    ) -> Iterator[Any]:
        """``run`` over the items, long texts read in windows unless ``long="truncate"``."""
        if reads_in_chunks(self.engine, long):
            return read_long(self.engine, as_records(items), run)
        return run(as_records(items))

    def iter_classify(
        self,
        items: Iterable[Item],
        task: str = "sentiment",
        labels: Sequence[str] | None = None,
        long: str = "chunk",
    ) -> Iterator[Any]:
        """Lazily classify ``items``; results come in input order. ``task="all"`` gives a dict
        of every head per item (multi-head encoders)."""
        if task == ALL_TASKS:
            Job(task=ALL_TASKS).check_engine(self.engine)
            return self._read(items, self.engine.analyze, long)
        spec = get_task(task, "classify")
        return self._read(items, lambda rs: self.engine.classify(rs, spec, labels), long)

    def classify(
        self,
        items: Iterable[Item],
        task: str = "sentiment",
        labels: Sequence[str] | None = None,
        long: str = "chunk",
    ) -> list[Any]:
        """Label probabilities for every item (``result.label``, ``result.probs``)."""
        return list(self.iter_classify(items, task, labels, long))

    def iter_score(
        self, items: Iterable[Item], task: str = "valence", long: str = "chunk"
    ) -> Iterator[ScoreResult]:
        spec = get_task(task, "score")
        return self._read(items, lambda rs: self.engine.score(rs, spec), long)

    def score(
        self, items: Iterable[Item], task: str = "valence", long: str = "chunk"
    ) -> list[ScoreResult]:
        """An intensity in [0, 1] for every item (``result.score``)."""
        return list(self.iter_score(items, task, long))

    def annotate(
        self,
        items: Iterable[Item],
        task: str = "sentiment",
        command: str = "classify",
        labels: Sequence[str] | None = None,
        **options: Any,
    ) -> Iterator[dict[str, Any]]:
        """The CLI's output rows (``id``, ``text``, ``task``, ``label``/``probs``/``score``...)
        for ``command`` (classify, score, negotiate); ``options``: ``long``, ``calibrate``, and
        ``max_rounds``, ``trace``, ``agree_threshold`` for negotiation."""
        job = Job(command, task, tuple(labels) if labels else None, **options)
        return results(self.engine, as_records(items), job)

    def negotiate(
        self,
        items: Iterable[Item],
        task: str = "emotion",
        labels: Sequence[str] | None = None,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        trace: bool = False,
    ) -> list[dict[str, Any]]:
        """SANM negotiation (generative models): rows with ``label``, ``rounds``, ``consensus``."""
        rows = self.annotate(items, task, "negotiate", labels, max_rounds=max_rounds, trace=trace)
        return list(rows)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Annotator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(
    model: str | None = None,
    threads: int | None = None,
    device: str = DEFAULT_DEVICE,
    gpu_layers: int | None = None,
) -> Annotator:
    """Load a model by built-in name or local path (None: the default model) on ``device``
    (``auto``: a GPU when the installed packages can use one, else the CPU; ``cpu``; ``cuda``)
    with ``gpu_layers`` llama.cpp layers offloaded (GGUF; default all)."""
    return Annotator(model, threads=threads, device=device, gpu_layers=gpu_layers)


__all__ = ["Annotator", "LabelResult", "ScoreResult", "annotate_file", "as_records", "load"]
