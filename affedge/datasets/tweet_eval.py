"""TweetEval (sentiment, emotion, irony, hate, emoji): parallel ``*_text.txt`` /
``*_labels.txt`` files plus a ``mapping.txt`` per task; ids are ``<split>-<line number>``.

Quirks (counts measured on the copies described in ``SOURCES.md``):

* ``tweet_eval_hate``: 8 lines are empty in the source text files (train lines 1468, 1983, 3844,
  6644, 6792, 7115, 8219 and validation line 265, all labelled 0). They are skipped, so the
  splits hold 8,993 / 999 / 2,970 records; ids keep the source line numbers. The hate tweets
  also hold double-encoded Spanish/German text (``OrbÃ¡n``), kept verbatim: the same text as
  the TweetEval/Hugging Face release.
* ``tweet_eval_sentiment`` train text is a whitespace-stripped reconstruction; as all texts are
  stripped here, it matches val/test behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from affedge.datasets._common import Loader, read_lines, to_int
from affedge.errors import DataError
from affedge.records import Record

_EMOJI = (
    "\u2764",  # red heart (no variation selector, as in mapping.txt)
    "\U0001f60d",
    "\U0001f602",
    "\U0001f495",
    "\U0001f525",
    "\U0001f60a",
    "\U0001f60e",
    "\u2728",
    "\U0001f499",
    "\U0001f618",
    "\U0001f4f7",
    "\U0001f1fa\U0001f1f8",  # United States flag
    "\u2600",
    "\U0001f49c",
    "\U0001f609",
    "\U0001f4af",
    "\U0001f601",
    "\U0001f384",
    "\U0001f4f8",
    "\U0001f61c",
)

#: task -> (layer, {name in mapping.txt: affedge label}, vocabulary in mapping order)
TWEET_EVAL: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "sentiment": (
        "sentiment",
        {"negative": "negative", "neutral": "neutral", "positive": "positive"},
        ("negative", "neutral", "positive"),
    ),
    "emotion": (
        "emotion",
        {"anger": "anger", "joy": "joy", "optimism": "optimism", "sadness": "sadness"},
        ("anger", "joy", "optimism", "sadness"),
    ),
    "irony": ("irony", {"non_irony": "not ironic", "irony": "ironic"}, ("not ironic", "ironic")),
    "hate": ("hate", {"not-hate": "not hate", "hate": "hate"}, ("not hate", "hate")),
    "emoji": ("emoji", {e: e for e in _EMOJI}, _EMOJI),
}
_TWEET_EVAL_SPLIT = {"train": "train", "validation": "val", "test": "test"}


def _tweet_eval_mapping(path: Path, names: dict[str, str]) -> list[str]:
    """Label index -> affedge label, read from mapping.txt (``id<TAB>name[<TAB>...]``)."""
    out: dict[int, str] = {}
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in names:
            raise DataError(f"{path}:{number}: unexpected label line {line!r}")
        out[to_int(fields[0], f"{path}:{number}")] = names[fields[1]]
    if sorted(out) != list(range(len(out))):
        raise DataError(f"{path}: label ids are not 0..{len(out) - 1}")
    return [out[i] for i in range(len(out))]


def load_tweet_eval(task: str) -> Loader:
    layer, names, vocab = TWEET_EVAL[task]

    def load(root: Path, split: str, name: str) -> Iterator[Record]:
        folder = root / "tweet_eval" / task
        mapping = _tweet_eval_mapping(folder / "mapping.txt", names)
        if tuple(mapping) != vocab:  # DATASETS promises the source's order
            raise DataError(f"{folder / 'mapping.txt'}: labels {mapping}, expected {list(vocab)}")
        stem = _TWEET_EVAL_SPLIT[split]
        text_path, label_path = folder / f"{stem}_text.txt", folder / f"{stem}_labels.txt"
        texts, labels = read_lines(text_path), read_lines(label_path)
        if len(texts) != len(labels):
            raise DataError(
                f"{text_path} has {len(texts)} lines but {label_path} has {len(labels)}"
            )
        for number, (raw, label) in enumerate(zip(texts, labels, strict=True), start=1):
            text = raw.strip()
            if not text:  # 8 empty tweets in tweet_eval/hate (see module docstring)
                continue
            index = to_int(label.strip(), f"{label_path}:{number}")
            if not 0 <= index < len(mapping):
                raise DataError(f"{label_path}:{number}: label {label!r} out of range")
            yield Record(
                id=f"{split}-{number}",
                text=text,
                labels={layer: mapping[index]},
                split=split,
                dataset=name,
                meta={"line": number},
            )

    return load
