"""Review-tool exports (``--format labelstudio``, ``--format argilla``): the finished rows as
pre-annotations a person corrects in Label Studio or Argilla, instead of a hand-written
converter.

Each row yields one prediction per task (one per head for ``--task all``): a label with its
probability, or a regression score.

**Label Studio** (``labelstudio``): one JSON array of tasks in the "Basic Label Studio JSON
format" with a ``predictions`` list, as documented in Label Studio's guides "Import
pre-annotated data into Label Studio" (docs/source/guide/predictions.md: ``model_version``,
``score``, ``result[].id/from_name/to_name/type/value``; "The prediction score applies to the
entire prediction") and "Get data into Label Studio" (guide/tasks.md: ``data`` holds the object
tag's value and may hold other fields, e.g. ``ref_id``). A label becomes a ``choices`` result
(``value: {"choices": [label]}``, as in tasks.md's text-classification example) from the
control named after the task (``<Choices name="sentiment" toName="text">``); a score becomes
a ``number`` result (``value: {"number": x}``, the ``<Number>`` tag). Each result carries its
label's probability as ``score``; the prediction's ``score`` (0..1, which Label Studio's Data
Manager sorts by, lowest first) is the least confident head's; every label's probability is
in the task's ``meta`` (Label Studio's field for "user imported data ... passed to ML").

**Argilla** (``argilla``): JSONL of Argilla 2.x records: ``id``, ``fields``, ``metadata`` and
``suggestions`` whose items are the keyword arguments of ``rg.Suggestion(question_name, value,
score, agent, type)`` (argilla/src/argilla/suggestions.py; docs "rg.Record", "rg.Suggestion"),
so ``rg.Record(id=r["id"], fields=r["fields"], metadata=r["metadata"],
suggestions=[rg.Suggestion(**s) for s in r["suggestions"]])`` loads a line. A label is a
suggestion for a ``LabelQuestion`` named after the task, ``score`` its probability; Argilla has
no numeric question, so a 0..1 score is suggested for a ``RatingQuestion`` with values 0..10
(``round(10 * score)``) and kept exactly in metadata. Question and metadata names are lower
case ``[a-z0-9_-]``, as Argilla's server requires; each label's probability is a float
metadata value ``<task>-<label>`` (filterable once declared as a ``FloatMetadataProperty``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

#: Row fields that describe the item or the run rather than a head's prediction.
_ROW_FIELDS = frozenset(
    {"id", "text", "task", "model", "chunks", "truncated", "label", "probs", "score", "rounds",
     "consensus", "fallback", "trace"}
)  # fmt: skip
#: Row fields worth keeping next to a pre-annotation (negotiation's outcome, a cut item, a
#: long one read in windows).
_NOTES = ("chunks", "truncated", "rounds", "consensus", "fallback")


@dataclass(frozen=True)
class Prediction:
    """One head's answer for one item: a label with probabilities, or a score."""

    name: str
    label: str | None = None
    probs: dict[str, float] | None = None
    score: float | None = None

    @property
    def confidence(self) -> float | None:
        if self.label is None or not self.probs:
            return None
        return self.probs.get(self.label)


def predictions(row: dict[str, Any]) -> list[Prediction]:
    """The predictions in one output row (classify, score, negotiate or ``--task all``)."""
    if "label" in row:
        return [Prediction(row["task"], row["label"], row.get("probs") or {})]
    if "score" in row:
        return [Prediction(row["task"], score=float(row["score"]))]
    found = []
    for key, value in row.items():
        if key in _ROW_FIELDS:
            continue
        if isinstance(value, dict) and "label" in value:
            found.append(Prediction(key, value["label"], value.get("probs") or {}))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found.append(Prediction(key, score=float(value)))
    return found


# ------------------------------------------------------------------------ Label Studio


def labelstudio_task(row: dict[str, Any]) -> dict[str, Any]:
    """One Label Studio task with one prediction holding a result per head."""
    rid = row["id"]
    results: list[dict[str, Any]] = []
    probs: dict[str, dict[str, float]] = {}
    confidences: list[float] = []
    for p in predictions(row):
        result: dict[str, Any] = {"id": f"{rid}-{p.name}", "from_name": p.name, "to_name": "text"}
        if p.label is not None:
            result.update(type="choices", value={"choices": [p.label]})
            probs[p.name] = dict(p.probs or {})
            if p.confidence is not None:
                result["score"] = p.confidence
                confidences.append(p.confidence)
        else:
            result.update(type="number", value={"number": p.score})
        results.append(result)
    prediction: dict[str, Any] = {"model_version": row["model"], "result": results}
    if confidences:
        prediction["score"] = min(confidences)
    meta: dict[str, Any] = {"id": rid, "task": row["task"], "probs": probs}
    meta.update({k: row[k] for k in _NOTES if k in row})
    return {"data": {"text": row["text"], "ref_id": rid}, "predictions": [prediction], "meta": meta}


def write_labelstudio(rows: Iterable[dict[str, Any]], stream: IO[str]) -> None:
    """A JSON array of tasks, written one task at a time (no need to hold all rows)."""
    stream.write("[")
    for i, row in enumerate(rows):
        task = json.dumps(labelstudio_task(row), ensure_ascii=False)
        stream.write(("\n" if i == 0 else ",\n") + task)
    stream.write("\n]\n")


# ---------------------------------------------------------------------------- Argilla

_ARGILLA_BAD = re.compile(r"[^a-z0-9_-]+")


def argilla_name(name: str) -> str:
    """A question or metadata name Argilla accepts: lower case letters, digits, ``_``, ``-``."""
    return _ARGILLA_BAD.sub("_", name.lower()).strip("_") or "_"


def argilla_rating(score: float) -> int:
    """A 0..1 score as a value of a 0..10 ``RatingQuestion``."""
    return round(min(max(score, 0.0), 1.0) * 10)


def argilla_record(row: dict[str, Any]) -> dict[str, Any]:
    """One Argilla record (the keyword arguments of ``rg.Record``, suggestions as dicts)."""
    suggestions: list[dict[str, Any]] = []
    metadata: dict[str, Any] = {"task": row["task"]}
    for p in predictions(row):
        question = argilla_name(p.name)
        suggestion: dict[str, Any] = {"question_name": question}
        if p.label is not None:
            suggestion["value"] = p.label
            if p.confidence is not None:
                suggestion["score"] = p.confidence
            for label, prob in (p.probs or {}).items():
                metadata[f"{question}-{argilla_name(label)}"] = prob
        else:
            assert p.score is not None
            suggestion["value"] = argilla_rating(p.score)
            metadata[question] = p.score
        suggestion.update(agent=row["model"], type="model")
        suggestions.append(suggestion)
    metadata.update({k: row[k] for k in _NOTES if k in row})
    return {
        "id": str(row["id"]),
        "fields": {"text": row["text"]},
        "suggestions": suggestions,
        "metadata": metadata,
    }


def write_argilla(rows: Iterable[dict[str, Any]], stream: IO[str]) -> None:
    for row in rows:
        stream.write(json.dumps(argilla_record(row), ensure_ascii=False) + "\n")
