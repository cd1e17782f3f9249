"""The Python API: ``affedge.load(model).classify(texts, task=...)``, mirroring the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from affedge.engines import Engine, LabelResult, ScoreResult, open_engine
from affedge.errors import InputError
from affedge.io import _context, record_id
from affedge.models import ModelRef, resolve_model
from affedge.records import Record
from affedge.tasks import get_task

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
            context=_context(item.get("context"), f"item {number}"),
            speaker=item.get("speaker"),
            aspect=item.get("aspect"),
        )
    raise InputError(f"item {number}: expected a string or a mapping with a 'text' string")


def as_records(items: Iterable[Item]) -> Iterator[Record]:
    for number, item in enumerate(items, 1):
        yield as_record(item, number)


def output_row(
    record: Record, task: str, model: str, fields: dict[str, Any], truncated: bool = False
) -> dict[str, Any]:
    """One output record (the CLI's JSONL schema): id, text, task, the result's fields, model,
    and ``truncated`` only when the item was cut to fit the model."""
    row = {"id": record_id(record), "text": record.text, "task": task, **fields, "model": model}
    if truncated:
        row["truncated"] = True
    return row


def label_row(record: Record, task: str, result: LabelResult, model: str) -> dict[str, Any]:
    fields = {"label": result.label, "probs": result.probs}
    return output_row(record, task, model, fields, result.truncated)


def score_row(record: Record, task: str, result: ScoreResult, model: str) -> dict[str, Any]:
    return output_row(record, task, model, {"score": result.score}, result.truncated)


def all_heads_row(record: Record, task: str, result: dict[str, Any], model: str) -> dict[str, Any]:
    """`--task all`: every head of a multi-head encoder."""
    fields = {k: v for k, v in result.items() if k != "truncated"}
    return output_row(record, task, model, fields, bool(result.get("truncated")))


class Annotator:
    """A loaded model ready to classify and score text.

    >>> model = affedge.load()                       # the built-in default
    >>> model.classify(["what a lovely day"], task="sentiment")[0].label
    """

    def __init__(self, model: str | ModelRef | None = None, threads: int | None = None) -> None:
        self.ref = model if isinstance(model, ModelRef) else resolve_model(model)
        self.engine: Engine = open_engine(self.ref, threads=threads)

    @property
    def name(self) -> str:
        return self.ref.name

    def iter_classify(
        self, items: Iterable[Item], task: str = "sentiment", labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        """Lazily classify ``items``; results come in input order."""
        return self.engine.classify(as_records(items), get_task(task, "classify"), labels)

    def classify(
        self, items: Iterable[Item], task: str = "sentiment", labels: Sequence[str] | None = None
    ) -> list[LabelResult]:
        """Label probabilities for every item (``result.label``, ``result.probs``)."""
        return list(self.iter_classify(items, task, labels))

    def iter_score(self, items: Iterable[Item], task: str = "valence") -> Iterator[ScoreResult]:
        return self.engine.score(as_records(items), get_task(task, "score"))

    def score(self, items: Iterable[Item], task: str = "valence") -> list[ScoreResult]:
        """An intensity in [0, 1] for every item (``result.score``)."""
        return list(self.iter_score(items, task))

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Annotator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(model: str | None = None, threads: int | None = None) -> Annotator:
    """Load a model by built-in name or local path (None: the default model)."""
    return Annotator(model, threads=threads)
