"""SemEval-2018 Task 1 (Affect in Tweets): E-c multi-label emotion, EI-reg emotion intensity,
V-reg valence, all from the official train/dev/test-gold TSVs.

Quirks: the ``2018-En-mystery-*`` rows (16,937 per test-gold file, placeholder score 0.000) are
dropped. Tweets keep their HTML entities (``&amp;``) and the two-character escape ``\\n`` that
stands for a line break in some tweets (e.g. 384 E-c train rows; TweetEval emotion, built from
this data, has them too), exactly as in the source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from affedge.datasets._common import Loader, to_float, tsv_rows
from affedge.errors import DataError
from affedge.records import Record

EC_EMOTIONS = (
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "love",
    "optimism",
    "pessimism",
    "sadness",
    "surprise",
    "trust",
)
#: The emotions of the EI-reg intensity files.
EI_EMOTIONS = ("anger", "fear", "joy", "sadness")
_SEMEVAL18_SPLIT = {"train": "train", "validation": "dev", "test": "test-gold"}
_REG_HEADER = ("ID", "Tweet", "Affect Dimension", "Intensity Score")
_MYSTERY = "2018-En-mystery-"


def load_semeval2018_ec(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "semeval2018_task1" / "E-c" / f"E-c-En-{_SEMEVAL18_SPLIT[split]}.txt"
    for number, fields in tsv_rows(path, ("ID", "Tweet", *EC_EMOTIONS)):
        flags = fields[2:]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataError(f"{path}:{number}: emotion columns must be 0 or 1")
        text = fields[1].strip()
        if not text:
            raise DataError(f"{path}:{number}: empty tweet")
        yield Record(
            id=fields[0],
            text=text,
            labels={
                "emotions": tuple(e for e, f in zip(EC_EMOTIONS, flags, strict=True) if f == "1")
            },
            split=split,
            dataset=name,
        )


def load_semeval2018_reg(folder: str, stem: str, dimension: str) -> Loader:
    """EI-reg (``dimension`` = the emotion) or V-reg (``valence``): one score in [0, 1]."""

    def load(root: Path, split: str, name: str) -> Iterator[Record]:
        path = root / "semeval2018_task1" / folder / f"{stem}-{_SEMEVAL18_SPLIT[split]}.txt"
        for number, (tweet_id, tweet, affect, score) in tsv_rows(path, _REG_HEADER):
            if tweet_id.startswith(_MYSTERY):  # unlabelled EEC distractors, score 0.000
                continue
            if affect != dimension:
                raise DataError(f"{path}:{number}: affect dimension {affect!r}, not {dimension}")
            text = tweet.strip()
            if not text:
                raise DataError(f"{path}:{number}: empty tweet")
            yield Record(
                id=tweet_id,
                text=text,
                scores={dimension: to_float(score, f"{path}:{number}")},
                split=split,
                dataset=name,
            )

    return load
