"""Loaders for the benchmark datasets in ``shared/data`` (see ``SOURCES.md`` there).

Every loader yields :class:`~affedge.records.Record` objects in the order of the source file,
with labels mapped to affedge's lower-case vocabularies (:data:`DATASETS` lists them). Splits are
always called ``train``, ``validation`` and ``test``; ``dev``/``val`` are accepted as aliases of
``validation``.

This module is the registry: the one place that lists the datasets, each with its
:class:`DatasetInfo` and loader. The loaders live in one module per family, whose docstrings
record the quirks of their sources: :mod:`~affedge.datasets.sst`,
:mod:`~affedge.datasets.tweet_eval`, :mod:`~affedge.datasets.dialogue` (MELD, EmoryNLP,
DailyDialog), :mod:`~affedge.datasets.sarcasm` (MUStARD, MUStARD++),
:mod:`~affedge.datasets.semeval2018`, :mod:`~affedge.datasets.emobank` and
:mod:`~affedge.datasets.absa` (SemEval-2014); the readers they share are in ``_common``. A
plugin (or a test) adds its own dataset with :func:`register_dataset`.

Encodings: every file was checked and is valid UTF-8 (no BOM). Some *sources* hold text that
was already mis-decoded before it was published; it is kept as is, with one exception
(MUStARD++, see :mod:`~affedge.datasets.sarcasm`).

Made splits (the sources have none; all deterministic, no random generator): see each
:class:`DatasetInfo.split_note <DatasetInfo>` and
:func:`~affedge.datasets._common.stratified_split`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from affedge.datasets import absa, dialogue, emobank, sarcasm, semeval2018, sst, tweet_eval
from affedge.datasets._common import Loader
from affedge.errors import DataError
from affedge.records import Record

DEFAULT_ENV = "AFFEDGE_DATA"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
_SPLIT_ALIASES = {"dev": "validation", "val": "validation"}

#: The repository root; the default data folder is ``<repo root>/../shared/data``.
_REPO_ROOT = Path(__file__).resolve().parents[2]

_OFFICIAL = "official splits of the source (dev -> validation)"


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset offers: its splits, label layers (with vocabularies) and score layers."""

    name: str
    description: str
    splits: tuple[str, ...] = SPLITS
    layers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    score_layers: tuple[str, ...] = ()
    dialogue: bool = False
    split_note: str = _OFFICIAL


# --------------------------------------------------------------------------- root


def data_root(root: str | Path | None = None) -> Path:
    """The folder holding ``sst2/``, ``meld/``...

    ``root`` wins over the ``AFFEDGE_DATA`` environment variable, which wins over
    ``<repo root>/../shared/data``. A folder named explicitly (option or variable) must exist:
    falling back silently to another one would evaluate on data the user did not ask for.
    """
    if root is not None and str(root) != "":
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DataError(f"dataset folder {path} does not exist")
        return path
    env = os.environ.get(DEFAULT_ENV, "")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"{DEFAULT_ENV}={env}: no such dataset folder")
        return path
    path = _REPO_ROOT.parent / "shared" / "data"
    if path.is_dir():
        return path
    raise DataError(
        "no dataset folder: pass --data-dir or set AFFEDGE_DATA to the folder holding "
        "sst2/, meld/, ... (see SOURCES.md)"
    )


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {}

#: name -> info of every registered dataset (kept in step with :func:`register_dataset`).
DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo, loader: Loader, replace: bool = False) -> None:
    """Make ``load_dataset(info.name, ...)`` call ``loader(data root, split, name)``.

    The loader reads its files under the data root (``--data-dir``/``AFFEDGE_DATA``) and yields
    records of the canonical split it is given. A name that is taken is refused unless
    ``replace``: silently shadowing a benchmark dataset would change what evaluations score.
    """
    if not info.name:
        raise ValueError("a dataset needs a name")
    if info.name in _REGISTRY and not replace:
        raise ValueError(f"dataset {info.name!r} is already registered")
    _REGISTRY[info.name] = (info, loader)
    DATASETS[info.name] = info


def unregister_dataset(name: str) -> None:
    """Remove a dataset added with :func:`register_dataset` (no error when it is absent)."""
    _REGISTRY.pop(name, None)
    DATASETS.pop(name, None)


_MADE_7010_20 = (
    "no official split: deterministic stratified 70/10/20 train/validation/test split; within "
    "each {label} class, {unit}s are sorted by sha256({unit} key) and the first 70% (floor) go "
    "to train, the next 10% (floor) to validation, the rest to test"
)
_SEMEVAL18_NOTE = _OFFICIAL + "; test = test-gold without the 2018-En-mystery-* rows"
_ABSA_NOTE = (
    "train/test from the files; validation = the 10% (floor) of train sentences that have aspect "
    "terms with the smallest sha256(sentence id), removed from train"
)

register_dataset(
    DatasetInfo(
        "sst2",
        "SST-2 binary sentence sentiment (lower-cased, tokenised)",
        layers={"sentiment": sst.SST2_LABELS},
    ),
    sst.load_sst("sst2", "stsa.binary", sst.SST2_LABELS),
)
register_dataset(
    DatasetInfo(
        "sst5",
        "SST-5 fine-grained sentence sentiment (lower-cased, tokenised)",
        layers={"sentiment": sst.SST5_LABELS},
    ),
    sst.load_sst("sst5", "stsa.fine", sst.SST5_LABELS),
)
for _task, _description in (
    ("sentiment", "TweetEval sentiment (3 classes)"),
    ("emotion", "TweetEval emotion (4 classes)"),
    ("irony", "TweetEval irony detection"),
    ("hate", "TweetEval hate speech detection (8 empty tweets skipped)"),
    ("emoji", "TweetEval emoji prediction (20 emoji)"),
):
    _layer, _, _vocab = tweet_eval.TWEET_EVAL[_task]
    register_dataset(
        DatasetInfo(f"tweet_eval_{_task}", _description, layers={_layer: _vocab}),
        tweet_eval.load_tweet_eval(_task),
    )
register_dataset(
    DatasetInfo(
        "meld",
        "MELD: Friends utterances with emotion and sentiment, dialogue context",
        layers={"emotion": dialogue.MELD_EMOTION, "sentiment": dialogue.SENTIMENT3},
        dialogue=True,
    ),
    dialogue.load_meld,
)
register_dataset(
    DatasetInfo(
        "emorynlp",
        "EmoryNLP emotion detection (Friends), from the MELD authors' CSVs; the official train "
        "JSON is missing",
        layers={"emotion": dialogue.EMORY_EMOTION},
        dialogue=True,
        split_note=_OFFICIAL + "; all splits from the MELD-repo CSVs, which hold fewer "
        "utterances than the official JSON",
    ),
    dialogue.load_emorynlp,
)
register_dataset(
    DatasetInfo(
        "dailydialog",
        "DailyDialog: utterance emotion and dialogue act, speakers A/B",
        layers={"emotion": dialogue.DD_EMOTION, "act": dialogue.DD_ACT},
        dialogue=True,
        split_note="official ijcnlp_dailydialog train/validation/test archives",
    ),
    dialogue.load_dailydialog,
)
register_dataset(
    DatasetInfo(
        "mustard",
        "MUStARD sarcasm detection in TV dialogue",
        layers={"sarcasm": sarcasm.SARCASM},
        dialogue=True,
        split_note=_MADE_7010_20.format(label="sarcasm", unit="instance")
        + " (482/68/140 instances)",
    ),
    sarcasm.load_mustard,
)
register_dataset(
    DatasetInfo(
        "mustard_plus_plus",
        "MUStARD++ sarcasm, sarcasm type, implicit/explicit emotion, valence/arousal (1-9)",
        layers={
            "sarcasm": sarcasm.SARCASM,
            "sarcasm_type": sarcasm.MPP_TYPE,
            "implicit_emotion": sarcasm.MPP_IMPLICIT,
            "explicit_emotion": sarcasm.MPP_EXPLICIT,
        },
        score_layers=("valence", "arousal"),
        dialogue=True,
        split_note=_MADE_7010_20.format(label="sarcasm", unit="scene") + " (840/120/242 scenes)",
    ),
    sarcasm.load_mustard_pp,
)
register_dataset(
    DatasetInfo(
        "semeval2018_ec",
        "SemEval-2018 Task 1 E-c: multi-label tweet emotion (empty tuple = no emotion)",
        layers={"emotions": semeval2018.EC_EMOTIONS},
    ),
    semeval2018.load_semeval2018_ec,
)
for _emotion in semeval2018.EI_EMOTIONS:
    register_dataset(
        DatasetInfo(
            f"semeval2018_ei_{_emotion}",
            f"SemEval-2018 Task 1 EI-reg: {_emotion} intensity of tweets in [0, 1]",
            score_layers=(_emotion,),
            split_note=_SEMEVAL18_NOTE,
        ),
        semeval2018.load_semeval2018_reg("EI-reg", f"EI-reg-En-{_emotion}", _emotion),
    )
register_dataset(
    DatasetInfo(
        "semeval2018_v_reg",
        "SemEval-2018 Task 1 V-reg: valence of tweets in [0, 1]",
        score_layers=("valence",),
        split_note=_SEMEVAL18_NOTE,
    ),
    semeval2018.load_semeval2018_reg("V-reg", "Valence-reg-En", "valence"),
)
register_dataset(
    DatasetInfo(
        "emobank",
        "EmoBank: valence/arousal/dominance (1-5) of sentences from several genres",
        score_layers=("valence", "arousal", "dominance"),
        split_note=_OFFICIAL + " (the csv's split column)",
    ),
    emobank.load_emobank,
)
for _domain, _prefix in (("laptops", "Laptops"), ("restaurants", "Restaurants")):
    register_dataset(
        DatasetInfo(
            f"semeval2014_{_domain}",
            f"SemEval-2014 Task 4 {_domain}: aspect-term sentiment, implicit/explicit flags",
            layers={"sentiment": absa.ABSA_POLARITY, "implicit": absa.IMPLICIT_LABELS},
            split_note=_ABSA_NOTE,
        ),
        absa.load_absa(_domain, _prefix),
    )


# --------------------------------------------------------------------------- public API


def _resolve(name: str, split: str) -> tuple[DatasetInfo, Loader, str]:
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; choose from: {', '.join(_REGISTRY)}")
    info, loader = _REGISTRY[name]
    canonical = _SPLIT_ALIASES.get(split, split)
    if canonical not in info.splits:
        raise DataError(
            f"unknown split {split!r} for {name}; choose from: {', '.join(info.splits)}"
        )
    return info, loader, canonical


def load_dataset(
    name: str,
    split: str = "test",
    root: str | Path | None = None,
    limit: int | None = None,
) -> list[Record]:
    """The records of one split of a dataset, in file order (``limit``: only the first N)."""
    _, loader, split = _resolve(name, split)
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    records = loader(data_root(root), split, name)
    return list(records if limit is None else islice(records, limit))


def iter_dialogues(records: Iterable[Record]) -> Iterator[tuple[str, list[Record]]]:
    """Group records by dialogue: ``(dialogue id, records in input order)``.

    The dialogue id is ``meta["dialogue_id"]`` (MELD, EmoryNLP, DailyDialog); a record without
    one (MUStARD, MUStARD++, non-dialogue datasets) is a dialogue of its own, keyed by its id.
    Dialogues come in the order of their first record.
    """
    groups: dict[str, list[Record]] = {}
    for record in records:
        key = record.meta.get("dialogue_id", record.id)
        groups.setdefault(str(key), []).append(record)
    yield from groups.items()


__all__ = [
    "DATASETS",
    "DEFAULT_ENV",
    "SPLITS",
    "DatasetInfo",
    "Loader",
    "data_root",
    "iter_dialogues",
    "load_dataset",
    "register_dataset",
    "unregister_dataset",
]
