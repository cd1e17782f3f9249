"""SST-2 and SST-5 (Stanford Sentiment Treebank, sentence level): ``<label> <sentence>`` lines.

Official splits (``train``/``dev``/``test`` files); ids are ``<split>-<line number>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from affedge.datasets._common import SOURCE_SPLIT, Loader, read_lines, to_int
from affedge.errors import DataError
from affedge.records import Record

SST2_LABELS = ("negative", "positive")
SST5_LABELS = ("very negative", "negative", "neutral", "positive", "very positive")


def load_sst(folder: str, stem: str, vocab: tuple[str, ...]) -> Loader:
    def load(root: Path, split: str, name: str) -> Iterator[Record]:
        path = root / folder / f"{stem}.{SOURCE_SPLIT[split]}"
        for number, line in enumerate(read_lines(path), start=1):
            label, _, text = line.partition(" ")
            index = to_int(label, f"{path}:{number}")
            if not 0 <= index < len(vocab):
                raise DataError(f"{path}:{number}: label {label!r} out of range")
            text = text.strip()
            if not text:
                raise DataError(f"{path}:{number}: empty sentence")
            yield Record(
                id=f"{split}-{number}",
                text=text,
                labels={"sentiment": vocab[index]},
                split=split,
                dataset=name,
                meta={"line": number},
            )

    return load
