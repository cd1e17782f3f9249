"""Training data of the multi-task encoder: which dataset feeds which head, and how.

Emotion label harmonisation onto :data:`affedge.tasks.EMOTION_LABELS` (neutral, anger, disgust,
fear, joy, sadness, surprise, optimism):

* MELD and DailyDialog: the same seven Ekman+neutral labels (the loader maps DailyDialog's
  "no emotion" to neutral and "happiness" to joy);
* TweetEval emotion: anger, joy, optimism, sadness as they are;
* SemEval-2018 E-c (multi-label): a soft target spread evenly over the mapped emotions of a
  tweet: love -> joy, pessimism -> sadness, anger/disgust/fear/joy/optimism/sadness/surprise
  as they are; anticipation and trust have no counterpart and are ignored; a tweet with no
  emotion at all is neutral; a tweet with only anticipation/trust is skipped;
* EmoryNLP is not used: two of its seven labels (peaceful, powerful) have no counterpart.

Regression targets are on [0, 1]: SemEval-2018 V-reg and EI-reg as given, EmoBank valence
rescaled from its 1-5 scale (the benchmark row's ``score_range``).

Which datasets feed the encoder, in which order, is the ``encoder`` use of the benchmark table
(:func:`affedge.benchmarks.training_sources`); the head of a row is the one answering its task.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affedge.benchmarks import Benchmark, training_sources
from affedge.datasets import load_dataset
from affedge.errors import DataError
from affedge.records import Record
from affedge.tasks import EMOTION_LABELS, HEADS, LABEL_ALIASES, head_for_task

EC_TO_HARMONISED = {
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "joy": "joy",
    "love": "joy",
    "optimism": "optimism",
    "pessimism": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
}


@dataclass(frozen=True)
class Example:
    """One training item for one head.

    ``target`` is a probability vector over the head's labels (classification; one-hot for
    single-label data) or a list of [0, 1] values with ``mask`` naming the outputs it
    supervises (regression).
    """

    record: Record
    head: str
    dataset: str
    target: tuple[float, ...]
    mask: tuple[float, ...] = ()


def _one_hot(label: str, labels: tuple[str, ...]) -> tuple[float, ...]:
    return tuple(1.0 if lab == label else 0.0 for lab in labels)


Converter = Callable[[Record], Example | None]


def _classify(head: str, layer: str) -> Converter:
    labels = HEADS[head].labels

    def convert(rec: Record) -> Example | None:
        value = rec.labels.get(layer)
        if not isinstance(value, str):
            return None
        value = LABEL_ALIASES.get(value, value)  # TweetEval's "ironic" is the head's "sarcastic"
        if value not in labels:
            return None
        return Example(rec, head, rec.dataset or "", _one_hot(value, labels))

    return convert


def _ec(rec: Record) -> Example | None:
    emotions = rec.labels.get("emotions", ())
    mapped = [EC_TO_HARMONISED[e] for e in emotions if e in EC_TO_HARMONISED]
    if not emotions:
        mapped = ["neutral"]
    if not mapped:
        return None
    target = tuple(mapped.count(lab) / len(mapped) for lab in EMOTION_LABELS)
    return Example(rec, "emotion", rec.dataset or "", target)


def _regress(head: str, layer: str, low: float = 0.0, high: float = 1.0) -> Converter:
    outputs = HEADS[head].labels

    def convert(rec: Record) -> Example | None:
        if layer not in rec.scores:
            return None
        value = (rec.scores[layer] - low) / (high - low)
        target = tuple(value if name == layer or len(outputs) == 1 else 0.0 for name in outputs)
        mask = tuple(1.0 if name == layer or len(outputs) == 1 else 0.0 for name in outputs)
        return Example(rec, head, rec.dataset or "", target, mask)

    return convert


#: Datasets whose layer needs its own conversion (multi-label E-c: soft emotion targets).
SOFT_TARGETS: dict[str, Converter] = {"semeval2018_ec": _ec}


def _converter(bench: Benchmark) -> Converter:
    """How a benchmark row's records become examples of the head answering its task."""
    if bench.dataset in SOFT_TARGETS:
        return SOFT_TARGETS[bench.dataset]
    head = head_for_task(bench.task)
    if head.kind == "classify":
        return _classify(head.name, bench.layer)
    return _regress(head.name, bench.layer, *bench.score_range)


def _sources() -> dict[str, tuple[tuple[str, Converter], ...]]:
    """dataset -> its (source key, converter) pairs, datasets in the encoder's order. A dataset's
    first row is keyed by its name, a further one by ``dataset:head`` (MELD's sentiment)."""
    out: dict[str, list[tuple[str, Converter]]] = {}
    for bench in training_sources("encoder"):
        uses = out.setdefault(bench.dataset, [])
        key = f"{bench.dataset}:{head_for_task(bench.task).name}" if uses else bench.dataset
        uses.append((key, _converter(bench)))
    return {name: tuple(uses) for name, uses in out.items()}


#: dataset -> how its records become examples (source key and converter, head inside).
SOURCES: dict[str, tuple[tuple[str, Converter], ...]] = _sources()


def build_examples(
    split: str,
    root: str | Path | None = None,
    datasets: list[str] | None = None,
    limit: int | None = None,
) -> dict[str, list[Example]]:
    """Examples per source (``dataset`` or ``dataset:head``) of ``split``."""
    out: dict[str, list[Example]] = {}
    for name in datasets or list(SOURCES):
        if name not in SOURCES:
            raise DataError(
                f"dataset {name!r} feeds no encoder head; encoder datasets: {', '.join(SOURCES)}"
            )
        records = load_dataset(name, split, root=root, limit=limit)
        for key, convert in SOURCES[name]:
            examples = [ex for ex in map(convert, records) if ex is not None]
            if examples:
                out[key] = examples
    return out


def data_fingerprint(sources: dict[str, list[Example]], root: Path) -> dict[str, Any]:
    """Counts and a content hash per source, plus the hash of the data folder's SHA256SUMS."""
    out: dict[str, Any] = {"root": str(root), "sources": {}}
    sums = root / "SHA256SUMS"
    if sums.is_file():
        out["SHA256SUMS"] = hashlib.sha256(sums.read_bytes()).hexdigest()
    for key, examples in sources.items():
        digest = hashlib.sha256()
        for ex in examples:
            digest.update(f"{ex.record.id}\t{ex.record.text}\t{ex.target}\n".encode())
        out["sources"][key] = {"examples": len(examples), "sha256": digest.hexdigest()}
    return out
