"""Readers and helpers every dataset family shares: strict UTF-8 files, CSV/TSV with checked
columns, label and number checks, dialogue contexts and the deterministic made split.

Every failure is a :class:`~affedge.errors.DataError` naming the file (and line or row).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path

from affedge.errors import DataError
from affedge.records import Record, Turn

#: A loader yields the records of one split: ``loader(data root, split, dataset name)``.
Loader = Callable[[Path, str, str], Iterator[Record]]

#: Canonical split -> the source's file stem (SST, MELD, EmoryNLP, EmoBank call it ``dev``).
SOURCE_SPLIT = {"train": "train", "validation": "dev", "test": "test"}


def check_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing dataset file {path} (see SOURCES.md)")
    return path


def read_text(path: Path) -> str:
    """The file decoded as UTF-8, with no newline translation (a stray CR stays in its line)."""
    try:
        return check_file(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc})") from exc


def read_lines(path: Path) -> list[str]:
    """Lines split on ``\\n`` only (``str.splitlines`` would also break on U+2028, \\x85...)."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def csv_rows(path: Path, columns: Sequence[str], delimiter: str = ",") -> list[dict[str, str]]:
    check_file(path)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
    for number, row in enumerate(rows, start=2):
        if None in row or None in row.values():  # too many / too few fields
            raise DataError(f"{path}: CSV record {number} has the wrong number of fields")
    return rows


def tsv_rows(path: Path, header: Sequence[str]) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a quote-free TSV whose first line must equal ``header``."""
    lines = read_lines(path)
    if not lines or lines[0].split("\t") != list(header):
        raise DataError(f"{path}: expected header {' '.join(header)!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(f"{path}:{number}: expected {len(header)} fields, got {len(fields)}")
        rows.append((number, fields))
    return rows


def check_label(vocab: Sequence[str], value: str, where: str) -> str:
    if value not in vocab:
        raise DataError(f"{where}: label {value!r} not in {', '.join(vocab)}")
    return value


def to_int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not an integer") from None


def to_float(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not a number") from None


def dialogue_contexts(
    keys: Sequence[tuple[Hashable, int]], turns: Sequence[Turn]
) -> list[tuple[Turn, ...]]:
    """Context of every row: the earlier turns of its dialogue.

    ``keys[i]`` is ``(dialogue key, position)``; within a dialogue, turns are ordered by position
    (stable for ties, so file order breaks them). Each dialogue's turns are collected once and
    every row gets a tuple of the ones before it.
    """
    groups: dict[Hashable, list[int]] = {}
    for index, (dialogue, _position) in enumerate(keys):
        groups.setdefault(dialogue, []).append(index)
    out: list[tuple[Turn, ...]] = [()] * len(keys)
    for indices in groups.values():
        indices.sort(key=lambda i: keys[i][1])
        earlier: list[Turn] = []
        for index in indices:
            out[index] = tuple(earlier)
            earlier.append(turns[index])
    return out


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def stratified_split(keys_by_label: dict[str, list[str]]) -> dict[str, str]:
    """Deterministic stratified 70/10/20 split: key -> split name.

    Within each label, keys are sorted by the sha256 hex digest of the key (then the key); the
    first ``n*70//100`` go to train, the next ``n*10//100`` to validation, the rest to test. It
    depends on nothing but the keys: no random generator, no Python hash seed.
    """
    out: dict[str, str] = {}
    for keys in keys_by_label.values():
        ordered = sorted(keys, key=lambda k: (sha256_hex(k), k))
        n_train, n_val = len(ordered) * 70 // 100, len(ordered) * 10 // 100
        for rank, key in enumerate(ordered):
            out[key] = (
                "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
            )
    return out
