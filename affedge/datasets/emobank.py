"""EmoBank: valence/arousal/dominance (1-5) of sentences from several genres; official splits
from the csv's ``split`` column, genres from ``meta.tsv``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from affedge.datasets._common import SOURCE_SPLIT, csv_rows, to_float
from affedge.errors import DataError
from affedge.records import Record


def load_emobank(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "emobank" / "emobank.csv"
    meta_path = root / "emobank" / "meta.tsv"
    genres = {
        row["id"]: row
        for row in csv_rows(meta_path, ("id", "document", "category", "subcategory"), "\t")
    }
    source_split = SOURCE_SPLIT[split]
    for number, row in enumerate(csv_rows(path, ("id", "split", "V", "A", "D", "text")), start=2):
        if row["split"].strip() != source_split:
            continue
        where = f"{path}:row {number}"
        text = row["text"].strip()
        if not text:
            raise DataError(f"{where}: empty text")
        meta: dict[str, object] = {}
        genre = genres.get(row["id"])
        if genre is not None:
            for field in ("document", "category", "subcategory"):
                if genre[field].strip():
                    meta[field] = genre[field].strip()
        yield Record(
            id=row["id"],
            text=text,
            scores={
                "valence": to_float(row["V"], where),
                "arousal": to_float(row["A"], where),
                "dominance": to_float(row["D"], where),
            },
            split=split,
            dataset=name,
            meta=meta,
        )
