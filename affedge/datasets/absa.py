"""SemEval-2014 Task 4 aspect-term sentiment (laptops, restaurants), from the XML files with
implicit-sentiment annotations: one record per aspect term.

Quirks: 136 laptop-train sentences start with whitespace; the text is stripped and
``meta["from"]``/``meta["to"]`` are shifted so that ``text[from:to] == aspect`` still holds.
Conflict terms carry no implicit flag, so their records have no ``implicit`` layer. The official
laptop files hold sentence 227 (same text and term) in both train and test; kept.

The source has no validation split: it is the 10% (floor) of labelled train sentences with the
smallest sha256(sentence id), removed from train.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path

from affedge.datasets._common import Loader, check_file, check_label, sha256_hex, to_int
from affedge.errors import DataError
from affedge.records import Record

ABSA_POLARITY = ("positive", "negative", "neutral", "conflict")
_IMPLICIT = {"True": "implicit", "False": "explicit"}
IMPLICIT_LABELS = tuple(_IMPLICIT.values())


def _absa_sentences(path: Path) -> list[ET.Element]:
    check_file(path)
    try:
        return ET.parse(path).getroot().findall("sentence")
    except ET.ParseError as exc:
        raise DataError(f"{path}: malformed XML ({exc})") from exc


def _absa_validation_ids(sentences: Iterable[ET.Element]) -> set[str]:
    """The 10% of labelled train sentences (floor) with the smallest sha256(sentence id)."""
    ids = [s.get("id", "") for s in sentences if s.find("aspectTerms/aspectTerm") is not None]
    ordered = sorted(ids, key=lambda i: (sha256_hex(i), i))
    return set(ordered[: len(ordered) // 10])


def load_absa(folder: str, prefix: str) -> Loader:
    def load(root: Path, split: str, name: str) -> Iterator[Record]:
        stem = "Test_Gold" if split == "test" else "Train_v2"
        path = root / "semeval2014_absa" / folder / f"{prefix}_{stem}_Implicit_Labeled.xml"
        sentences = _absa_sentences(path)
        held_out = _absa_validation_ids(sentences) if split != "test" else set()
        for sentence in sentences:
            sentence_id = sentence.get("id", "")
            if split != "test" and (sentence_id in held_out) != (split == "validation"):
                continue
            terms = sentence.findall("aspectTerms/aspectTerm")
            if not terms:
                continue
            raw = sentence.findtext("text") or ""
            text = raw.strip()
            shift = len(raw) - len(raw.lstrip())
            where = f"{path}: sentence {sentence_id}"
            if not text:
                raise DataError(f"{where}: empty text")
            categories = tuple(
                (c.get("category", ""), c.get("polarity", ""))
                for c in sentence.findall("aspectCategories/aspectCategory")
            )
            for index, term in enumerate(terms):
                labels: dict[str, str | tuple[str, ...]] = {
                    "sentiment": check_label(ABSA_POLARITY, term.get("polarity", ""), where)
                }
                flag = term.get("implicit_sentiment")
                if flag is not None:
                    if flag not in _IMPLICIT:
                        raise DataError(f"{where}: implicit_sentiment={flag!r}")
                    labels["implicit"] = _IMPLICIT[flag]
                meta: dict[str, object] = {
                    "sentence_id": sentence_id,
                    "from": to_int(term.get("from", ""), where) - shift,
                    "to": to_int(term.get("to", ""), where) - shift,
                }
                if term.get("opinion_words") is not None:
                    meta["opinion_words"] = term.get("opinion_words")
                if categories:
                    meta["aspect_categories"] = categories
                yield Record(
                    id=f"{sentence_id}-t{index}",
                    text=text,
                    aspect=term.get("term", ""),
                    labels=labels,
                    split=split,
                    dataset=name,
                    meta=meta,
                )

    return load
