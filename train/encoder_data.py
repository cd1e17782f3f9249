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
rescaled from its 1-5 scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from affedge.datasets import load_dataset
from affedge.records import Record
from affedge.tasks import EMOTION_LABELS, HEADS, LABEL_ALIASES

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


def _classify(head: str, layer: str, alias: dict[str, str] | None = None):
    labels = HEADS[head].labels

    def convert(rec: Record) -> Example | None:
        value = rec.labels.get(layer)
        if not isinstance(value, str):
            return None
        value = (alias or {}).get(value, value)
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


def _regress(head: str, layer: str, low: float = 0.0, high: float = 1.0):
    outputs = HEADS[head].labels

    def convert(rec: Record) -> Example | None:
        if layer not in rec.scores:
            return None
        value = (rec.scores[layer] - low) / (high - low)
        target = tuple(value if name == layer or len(outputs) == 1 else 0.0 for name in outputs)
        mask = tuple(1.0 if name == layer or len(outputs) == 1 else 0.0 for name in outputs)
        return Example(rec, head, rec.dataset or "", target, mask)

    return convert


#: dataset -> how its records become examples (the head is inside the converter).
SOURCES: dict[str, Callable[[Record], Example | None]] = {
    "tweet_eval_sentiment": _classify("sentiment", "sentiment"),
    "sst2": _classify("sentiment", "sentiment"),
    "meld": _classify("emotion", "emotion"),
    "dailydialog": _classify("emotion", "emotion"),
    "tweet_eval_emotion": _classify("emotion", "emotion"),
    "semeval2018_ec": _ec,
    "tweet_eval_irony": _classify("sarcasm", "irony", LABEL_ALIASES),
    "mustard": _classify("sarcasm", "sarcasm"),
    "mustard_plus_plus": _classify("sarcasm", "sarcasm"),
    "semeval2018_v_reg": _regress("valence", "valence"),
    "emobank": _regress("valence", "valence", 1.0, 5.0),
    **{
        f"semeval2018_ei_{e}": _regress("intensity", e) for e in ("anger", "fear", "joy", "sadness")
    },
}

#: MELD also carries utterance sentiment: a second source for the sentiment head.
EXTRA_SOURCES: dict[str, Callable[[Record], Example | None]] = {
    "meld": _classify("sentiment", "sentiment"),
}


def build_examples(
    split: str,
    root: str | Path | None = None,
    datasets: list[str] | None = None,
    limit: int | None = None,
) -> dict[str, list[Example]]:
    """Examples per source (``dataset`` or ``dataset:head``) of ``split``."""
    out: dict[str, list[Example]] = {}
    for name in datasets or list(SOURCES):
        records = load_dataset(name, split, root=root, limit=limit)
        converters = [(name, SOURCES[name])]
        if name in EXTRA_SOURCES:
            converters.append((f"{name}:sentiment", EXTRA_SOURCES[name]))
        for key, convert in converters:
            examples = [ex for ex in map(convert, records) if ex is not None]
            if examples:
                out[key] = examples
    return out
