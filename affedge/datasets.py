"""Loaders for the benchmark datasets in ``shared/data`` (see ``SOURCES.md`` there).

Every loader yields :class:`~affedge.records.Record` objects in the order of the source file,
with labels mapped to affedge's lower-case vocabularies (:data:`DATASETS` lists them). Splits are
always called ``train``, ``validation`` and ``test``; ``dev``/``val`` are accepted as aliases of
``validation``.

Encodings: every file was checked and is valid UTF-8 (no BOM). The MELD CSVs use CRLF line
ends and curly quotes (U+2019 etc.), which decode correctly as UTF-8. Some *sources* hold text
that was already mis-decoded before it was published; it is kept as is, with one exception:

* ``tweet_eval_hate`` has double-encoded Spanish/German tweets (``OrbÃ¡n``). Kept verbatim, the
  same text as the TweetEval/Hugging Face release.
* ``mustard_plus_plus``: 13 apostrophes are stored as ``Õ`` (U+2019 read as Mac Roman) and one as
  ``ā€™`` (its UTF-8 bytes read as cp1257). Only these exact sequences are repaired to ``’``.

Quirks handled, per dataset (counts measured on the copies described in ``SOURCES.md``):

* ``tweet_eval_hate``: 8 lines are empty in the source text files (train lines 1468, 1983, 3844,
  6644, 6792, 7115, 8219 and validation line 265, all labelled 0). They are skipped, so the
  splits hold 8,993 / 999 / 2,970 records; ids keep the source line numbers.
* ``tweet_eval_sentiment`` train text is a whitespace-stripped reconstruction; as all texts are
  stripped here, it matches val/test behaviour.
* ``meld``: 72 train, 2 dev and 2 test dialogues have gaps in ``Utterance_ID`` (utterances the
  MELD authors dropped); context is the preceding utterances that exist. ``Sr No.`` is not unique
  in train (9,932 distinct values for 9,989 rows), so it only goes into ``meta``.
* ``emorynlp``: the official train JSON is missing, so all three splits come from the MELD
  authors' CSVs (7,551 / 954 / 984 rows, fewer than the official 9,934 / 1,344 / 1,328).
  Ids are rebuilt in the official form ``s01_e15_c01_u001`` from Season/Episode/Scene_ID/
  Utterance_ID; for dev and test all 954 + 984 of them match an utterance of the official JSON
  with the same transcript and emotion. Scenes are often incomplete in the CSV (most start at
  utterance 2), so context holds only the utterances the CSV kept.
* ``dailydialog``: every dialogue line ends in ``__eou__`` (the empty piece after it is dropped);
  dialogues whose emotion or act count differs from the utterance count are skipped. In these
  official split files there are 0 such dialogues (train 11,118, validation 1,000, test 1,000
  all match), so nothing is skipped. The corpus repeats some dialogues (569 duplicates inside
  train, 92 train dialogues also in test, 68 in validation); they are kept, as published.
* ``mustard_plus_plus``: one utterance row (scene ``1_S11E03_067``) has KEY ``Disgust`` instead
  of ``1_S11E03_067_u``. Rows are classified per scene: ``*_u`` and any row with a filled
  ``Sarcasm`` column are the scene's utterance, ``*_c_N`` are context. That row therefore becomes
  the utterance ``1_S11E03_067_u`` (``meta["key"]`` keeps ``Disgust``). Context numbering has
  gaps in 4 scenes (e.g. ``c_0, c_1, c_4``); context is ordered by N. Speaker ``-`` (1,315
  context rows) means unknown and becomes ``None``. 149 sentences hold line breaks (subtitle
  lines); they are kept inside the text. Doubled apostrophes (``You'’re``) are the source's.
* ``semeval2018_*``: the ``2018-En-mystery-*`` rows (16,937 per test-gold file, placeholder score
  0.000) are dropped. Tweets keep their HTML entities (``&amp;``) and the two-character escape
  ``\\n`` that stands for a line break in some tweets (e.g. 384 E-c train rows; TweetEval
  emotion, built from this data, has them too), exactly as in the source.
* ``semeval2014_*``: 136 laptop-train sentences start with whitespace; the text is stripped and
  ``meta["from"]``/``meta["to"]`` are shifted so that ``text[from:to] == aspect`` still holds.
  Conflict terms carry no implicit flag, so their records have no ``implicit`` layer. The
  official laptop files hold sentence 227 (same text and term) in both train and test; kept.

Made splits (the sources have none; all deterministic, no random generator): see each
:class:`DatasetInfo.split_note <DatasetInfo>` and :func:`_stratified_split`.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from affedge.errors import DataError
from affedge.records import Record, Turn

DEFAULT_ENV = "AFFEDGE_DATA"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
_SPLIT_ALIASES = {"dev": "validation", "val": "validation"}

#: The repository root; the default data folder is ``<repo root>/../shared/data``.
_REPO_ROOT = Path(__file__).resolve().parents[1]

#: A loader yields the records of one split: ``loader(data root, split, dataset name)``.
Loader = Callable[[Path, str, str], Iterator[Record]]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset offers: its splits, label layers (with vocabularies) and score layers."""

    name: str
    description: str
    splits: tuple[str, ...]
    layers: dict[str, tuple[str, ...]]
    score_layers: tuple[str, ...]
    dialogue: bool
    split_note: str


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


# --------------------------------------------------------------------------- file helpers


def _check(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing dataset file {path} (see SOURCES.md)")
    return path


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8, with no newline translation (a stray CR stays in its line)."""
    try:
        return _check(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc})") from exc


def _lines(path: Path) -> list[str]:
    """Lines split on ``\\n`` only (``str.splitlines`` would also break on U+2028, \\x85...)."""
    text = _read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _csv_rows(path: Path, columns: Sequence[str], delimiter: str = ",") -> list[dict[str, str]]:
    _check(path)
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


def _tsv(path: Path, header: Sequence[str]) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a quote-free TSV whose first line must equal ``header``."""
    lines = _lines(path)
    if not lines or lines[0].split("\t") != list(header):
        raise DataError(f"{path}: expected header {' '.join(header)!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(f"{path}:{number}: expected {len(header)} fields, got {len(fields)}")
        rows.append((number, fields))
    return rows


def _label(vocab: Sequence[str], value: str, where: str) -> str:
    if value not in vocab:
        raise DataError(f"{where}: label {value!r} not in {', '.join(vocab)}")
    return value


def _int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not an integer") from None


def _float(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not a number") from None


def _contexts(
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


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _stratified_split(keys_by_label: dict[str, list[str]]) -> dict[str, str]:
    """Deterministic stratified 70/10/20 split: key -> split name.

    Within each label, keys are sorted by the sha256 hex digest of the key (then the key); the
    first ``n*70//100`` go to train, the next ``n*10//100`` to validation, the rest to test. It
    depends on nothing but the keys: no random generator, no Python hash seed.
    """
    out: dict[str, str] = {}
    for keys in keys_by_label.values():
        ordered = sorted(keys, key=lambda k: (_hash(k), k))
        n_train, n_val = len(ordered) * 70 // 100, len(ordered) * 10 // 100
        for rank, key in enumerate(ordered):
            out[key] = (
                "train" if rank < n_train else "validation" if rank < n_train + n_val else "test"
            )
    return out


# --------------------------------------------------------------------------- SST


_SST2 = ("negative", "positive")
_SST5 = ("very negative", "negative", "neutral", "positive", "very positive")
_SOURCE_SPLIT = {"train": "train", "validation": "dev", "test": "test"}


def _load_sst(folder: str, stem: str, vocab: tuple[str, ...]) -> Loader:
    def load(root: Path, split: str, name: str) -> Iterator[Record]:
        path = root / folder / f"{stem}.{_SOURCE_SPLIT[split]}"
        for number, line in enumerate(_lines(path), start=1):
            label, _, text = line.partition(" ")
            index = _int(label, f"{path}:{number}")
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


# --------------------------------------------------------------------------- TweetEval

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
_TWEET_EVAL: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
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
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in names:
            raise DataError(f"{path}:{number}: unexpected label line {line!r}")
        out[_int(fields[0], f"{path}:{number}")] = names[fields[1]]
    if sorted(out) != list(range(len(out))):
        raise DataError(f"{path}: label ids are not 0..{len(out) - 1}")
    return [out[i] for i in range(len(out))]


def _load_tweet_eval(task: str) -> Loader:
    layer, names, vocab = _TWEET_EVAL[task]

    def load(root: Path, split: str, name: str) -> Iterator[Record]:
        folder = root / "tweet_eval" / task
        mapping = _tweet_eval_mapping(folder / "mapping.txt", names)
        if tuple(mapping) != vocab:  # DATASETS promises the source's order
            raise DataError(f"{folder / 'mapping.txt'}: labels {mapping}, expected {list(vocab)}")
        stem = _TWEET_EVAL_SPLIT[split]
        text_path, label_path = folder / f"{stem}_text.txt", folder / f"{stem}_labels.txt"
        texts, labels = _lines(text_path), _lines(label_path)
        if len(texts) != len(labels):
            raise DataError(
                f"{text_path} has {len(texts)} lines but {label_path} has {len(labels)}"
            )
        for number, (raw, label) in enumerate(zip(texts, labels, strict=True), start=1):
            text = raw.strip()
            if not text:  # 8 empty tweets in tweet_eval/hate (see module docstring)
                continue
            index = _int(label.strip(), f"{label_path}:{number}")
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


# --------------------------------------------------------------------------- MELD

_MELD_EMOTION = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
_SENTIMENT3 = ("negative", "neutral", "positive")
_MELD_COLUMNS = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)


def _load_meld(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "meld" / f"{_SOURCE_SPLIT[split]}_sent_emo.csv"
    rows = _csv_rows(path, _MELD_COLUMNS)
    keys: list[tuple[Hashable, int]] = []
    turns: list[Turn] = []
    for number, row in enumerate(rows, start=2):
        where = f"{path}:row {number}"
        dialogue = _int(row["Dialogue_ID"], where)
        utterance = _int(row["Utterance_ID"], where)
        keys.append((dialogue, utterance))
        turns.append(Turn(row["Utterance"].strip(), row["Speaker"].strip() or None))
    contexts = _contexts(keys, turns)
    for number, (row, (dialogue, utterance), turn, context) in enumerate(
        zip(rows, keys, turns, contexts, strict=True), start=2
    ):
        where = f"{path}:row {number}"
        if not turn.text:
            raise DataError(f"{where}: empty utterance")
        yield Record(
            id=f"dia{dialogue}_utt{utterance}",
            text=turn.text,
            context=context,
            speaker=turn.speaker,
            labels={
                "emotion": _label(_MELD_EMOTION, row["Emotion"].strip().lower(), where),
                "sentiment": _label(_SENTIMENT3, row["Sentiment"].strip().lower(), where),
            },
            split=split,
            dataset=name,
            meta={
                "dialogue_id": dialogue,
                "utterance_id": utterance,
                "sr_no": _int(row["Sr No."], where),
                "season": _int(row["Season"], where),
                "episode": _int(row["Episode"], where),
                "start_time": row["StartTime"],
                "end_time": row["EndTime"],
            },
        )


# --------------------------------------------------------------------------- EmoryNLP

_EMORY_EMOTION = ("neutral", "joyful", "peaceful", "powerful", "scared", "mad", "sad")
_EMORY_COLUMNS = (
    "Utterance",
    "Speaker",
    "Emotion",
    "Scene_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "Start_Time",
    "End_Time",
)


def _speakers(value: str, where: str) -> tuple[str, ...]:
    """Parse the Python-list literal of the Speaker column (``"['Ross Geller']"``)."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise DataError(f"{where}: speaker {value!r} is not a list literal") from None
    if not isinstance(parsed, list | tuple) or not all(isinstance(s, str) for s in parsed):
        raise DataError(f"{where}: speaker {value!r} is not a list of names")
    return tuple(s.strip() for s in parsed if s.strip())


def _load_emorynlp(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "emorynlp" / f"emorynlp_{_SOURCE_SPLIT[split]}_final.csv"
    rows = _csv_rows(path, _EMORY_COLUMNS)
    keys: list[tuple[Hashable, int]] = []
    turns: list[Turn] = []
    parsed: list[tuple[int, int, int, int, tuple[str, ...]]] = []
    for number, row in enumerate(rows, start=2):
        where = f"{path}:row {number}"
        season, episode = _int(row["Season"], where), _int(row["Episode"], where)
        scene, utterance = _int(row["Scene_ID"], where), _int(row["Utterance_ID"], where)
        speakers = _speakers(row["Speaker"], where)
        parsed.append((season, episode, scene, utterance, speakers))
        keys.append(((season, episode, scene), utterance))
        turns.append(Turn(row["Utterance"].strip(), ", ".join(speakers) or None))
    contexts = _contexts(keys, turns)
    for number, (row, info, turn, context) in enumerate(
        zip(rows, parsed, turns, contexts, strict=True), start=2
    ):
        where = f"{path}:row {number}"
        season, episode, scene, utterance, speakers = info
        if not turn.text:
            raise DataError(f"{where}: empty utterance")
        dialogue_id = f"s{season:02d}_e{episode:02d}_c{scene:02d}"
        yield Record(
            id=f"{dialogue_id}_u{utterance:03d}",
            text=turn.text,
            context=context,
            speaker=turn.speaker,
            labels={"emotion": _label(_EMORY_EMOTION, row["Emotion"].strip().lower(), where)},
            split=split,
            dataset=name,
            meta={
                "dialogue_id": dialogue_id,
                "season": season,
                "episode": episode,
                "scene_id": scene,
                "utterance_id": utterance,
                "speakers": speakers,
                "start_time": row["Start_Time"],
                "end_time": row["End_Time"],
            },
        )


# --------------------------------------------------------------------------- DailyDialog

_DD_EMOTION = ("neutral", "anger", "disgust", "fear", "joy", "sadness", "surprise")
_DD_ACT = ("inform", "question", "directive", "commissive")  # source ids 1..4


def _load_dailydialog(root: Path, split: str, name: str) -> Iterator[Record]:
    folder = root / "dailydialog" / split
    text_path = folder / f"dialogues_{split}.txt"
    emotion_path = folder / f"dialogues_emotion_{split}.txt"
    act_path = folder / f"dialogues_act_{split}.txt"
    dialogues, emotions, acts = _lines(text_path), _lines(emotion_path), _lines(act_path)
    if not len(dialogues) == len(emotions) == len(acts):
        raise DataError(
            f"{folder}: {len(dialogues)} dialogues but {len(emotions)} emotion and "
            f"{len(acts)} act lines"
        )
    for number, (line, emotion_line, act_line) in enumerate(
        zip(dialogues, emotions, acts, strict=True), start=1
    ):
        utterances = [u.strip() for u in line.split("__eou__")]
        if utterances and not utterances[-1]:
            utterances.pop()  # the empty piece after the final __eou__
        emotion_ids, act_ids = emotion_line.split(), act_line.split()
        if (
            not utterances
            or not all(utterances)
            or len(emotion_ids) != len(utterances)
            or len(act_ids) != len(utterances)
        ):
            continue  # misaligned dialogue: skipped (none in the official split files)
        where = f"{emotion_path}:{number}"
        earlier: list[Turn] = []
        for turn_index, (text, emotion, act) in enumerate(
            zip(utterances, emotion_ids, act_ids, strict=True)
        ):
            e, a = _int(emotion, where), _int(act, f"{act_path}:{number}")
            if not 0 <= e < len(_DD_EMOTION) or not 1 <= a <= len(_DD_ACT):
                raise DataError(f"{where}: emotion {emotion!r} / act {act!r} out of range")
            speaker = "A" if turn_index % 2 == 0 else "B"
            yield Record(
                id=f"{split}-{number}-{turn_index}",
                text=text,
                context=tuple(earlier),
                speaker=speaker,
                labels={"emotion": _DD_EMOTION[e], "act": _DD_ACT[a - 1]},
                split=split,
                dataset=name,
                meta={"dialogue_id": f"{split}-{number}", "turn": turn_index},
            )
            earlier.append(Turn(text, speaker))


# --------------------------------------------------------------------------- MUStARD

_SARCASM = ("not sarcastic", "sarcastic")


def _load_mustard(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "mustard" / "sarcasm_data.json"
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of instances")
    by_label: dict[str, list[str]] = {}
    for key, item in data.items():
        if not isinstance(item, dict) or not isinstance(item.get("sarcasm"), bool):
            raise DataError(f"{path}: instance {key!r} has no boolean 'sarcasm'")
        by_label.setdefault(str(item["sarcasm"]), []).append(key)
    assigned = _stratified_split(by_label)
    for key, item in data.items():
        if assigned[key] != split:
            continue
        context, speakers = item.get("context", []), item.get("context_speakers", [])
        if len(context) != len(speakers):
            raise DataError(
                f"{path}: instance {key!r} has {len(context)} context lines "
                f"but {len(speakers)} context speakers"
            )
        text = str(item.get("utterance", "")).strip()
        if not text:
            raise DataError(f"{path}: instance {key!r} has an empty utterance")
        yield Record(
            id=key,
            text=text,
            context=tuple(
                Turn(str(t).strip(), str(s).strip() or None)
                for t, s in zip(context, speakers, strict=True)
            ),
            speaker=str(item.get("speaker", "")).strip() or None,
            labels={"sarcasm": _SARCASM[int(item["sarcasm"])]},
            split=split,
            dataset=name,
            meta={"show": item.get("show")},
        )


# --------------------------------------------------------------------------- MUStARD++

_MPP_TYPE = ("none", "pro", "ill", "emb", "lik")
_MPP_IMPLICIT = (
    "anger",
    "disgust",
    "excitement",
    "fear",
    "frustration",
    "happiness",
    "neutral",
    "ridicule",
    "sadness",
    "surprise",
)
_MPP_EXPLICIT = tuple(e for e in _MPP_IMPLICIT if e != "ridicule")
_MPP_COLUMNS = (
    "SCENE",
    "KEY",
    "SENTENCE",
    "END_TIME",
    "SPEAKER",
    "SHOW",
    "Sarcasm",
    "Sarcasm_Type",
    "Implicit_Emotion",
    "Explicit_Emotion",
    "Valence",
    "Arousal",
)
# Source-level mojibake of U+2019 (the file itself is valid UTF-8); see the module docstring.
_MPP_REPAIRS = (("\u0101\u20ac\u2122", "\u2019"), ("\u00d5", "\u2019"))
_CONTEXT_KEY = re.compile(r"_c_(\d+)$")


def _mpp_text(value: str) -> str:
    for bad, good in _MPP_REPAIRS:
        value = value.replace(bad, good)
    return value.strip()


def _mpp_speaker(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "-") else value


def _load_mustard_pp(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "mustard_plus_plus" / "mustard++_text.csv"
    rows = _csv_rows(path, _MPP_COLUMNS)
    scenes: dict[str, tuple[list[tuple[int, dict[str, str]]], list[tuple[int, dict[str, str]]]]]
    scenes = {}
    for number, row in enumerate(rows, start=2):
        scene, key = row["SCENE"].strip(), row["KEY"].strip()
        utterances, context = scenes.setdefault(scene, ([], []))
        match = _CONTEXT_KEY.search(key)
        if key.endswith("_u") or (row["Sarcasm"].strip() and not match):
            utterances.append((number, row))
        elif match:
            context.append((int(match.group(1)), row))
        else:
            raise DataError(f"{path}:row {number}: cannot tell what row KEY {key!r} is")
    by_label: dict[str, list[str]] = {}
    for scene, (utterances, _context) in scenes.items():
        if len(utterances) != 1:
            raise DataError(f"{path}: scene {scene!r} has {len(utterances)} utterance rows")
        by_label.setdefault(utterances[0][1]["Sarcasm"].strip(), []).append(scene)
    assigned = _stratified_split(by_label)
    for scene, (utterances, context) in scenes.items():
        if assigned[scene] != split:
            continue
        number, row = utterances[0]
        where = f"{path}:row {number}"
        context.sort(key=lambda item: item[0])
        sarcasm = _int(row["Sarcasm"].strip(), where)
        if sarcasm not in (0, 1):
            raise DataError(f"{where}: Sarcasm {row['Sarcasm']!r} is not 0/1")
        text = _mpp_text(row["SENTENCE"])
        if not text:
            raise DataError(f"{where}: empty sentence")
        yield Record(
            id=f"{scene}_u",
            text=text,
            context=tuple(
                Turn(_mpp_text(c["SENTENCE"]), _mpp_speaker(c["SPEAKER"])) for _, c in context
            ),
            speaker=_mpp_speaker(row["SPEAKER"]),
            labels={
                "sarcasm": _SARCASM[sarcasm],
                "sarcasm_type": _label(_MPP_TYPE, row["Sarcasm_Type"].strip().lower(), where),
                "implicit_emotion": _label(
                    _MPP_IMPLICIT, row["Implicit_Emotion"].strip().lower(), where
                ),
                "explicit_emotion": _label(
                    _MPP_EXPLICIT, row["Explicit_Emotion"].strip().lower(), where
                ),
            },
            scores={
                "valence": _float(row["Valence"], where),
                "arousal": _float(row["Arousal"], where),
            },
            split=split,
            dataset=name,
            meta={
                "scene": scene,
                "key": row["KEY"].strip(),
                "show": row["SHOW"].strip(),
                "end_time": row["END_TIME"].strip(),
            },
        )


# --------------------------------------------------------------------------- SemEval-2018 Task 1

_EC_EMOTIONS = (
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
_SEMEVAL18_SPLIT = {"train": "train", "validation": "dev", "test": "test-gold"}
_REG_HEADER = ("ID", "Tweet", "Affect Dimension", "Intensity Score")
_MYSTERY = "2018-En-mystery-"


def _load_semeval2018_ec(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "semeval2018_task1" / "E-c" / f"E-c-En-{_SEMEVAL18_SPLIT[split]}.txt"
    for number, fields in _tsv(path, ("ID", "Tweet", *_EC_EMOTIONS)):
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
                "emotions": tuple(e for e, f in zip(_EC_EMOTIONS, flags, strict=True) if f == "1")
            },
            split=split,
            dataset=name,
        )


def _load_semeval2018_reg(folder: str, stem: str, dimension: str) -> Loader:
    """EI-reg (``dimension`` = the emotion) or V-reg (``valence``): one score in [0, 1]."""

    def load(root: Path, split: str, name: str) -> Iterator[Record]:
        path = root / "semeval2018_task1" / folder / f"{stem}-{_SEMEVAL18_SPLIT[split]}.txt"
        for number, (tweet_id, tweet, affect, score) in _tsv(path, _REG_HEADER):
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
                scores={dimension: _float(score, f"{path}:{number}")},
                split=split,
                dataset=name,
            )

    return load


# --------------------------------------------------------------------------- EmoBank


def _load_emobank(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "emobank" / "emobank.csv"
    meta_path = root / "emobank" / "meta.tsv"
    genres = {
        row["id"]: row
        for row in _csv_rows(meta_path, ("id", "document", "category", "subcategory"), "\t")
    }
    source_split = _SOURCE_SPLIT[split]
    for number, row in enumerate(_csv_rows(path, ("id", "split", "V", "A", "D", "text")), start=2):
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
                "valence": _float(row["V"], where),
                "arousal": _float(row["A"], where),
                "dominance": _float(row["D"], where),
            },
            split=split,
            dataset=name,
            meta=meta,
        )


# --------------------------------------------------------------------------- SemEval-2014 ABSA

_ABSA_POLARITY = ("positive", "negative", "neutral", "conflict")
_IMPLICIT = {"True": "implicit", "False": "explicit"}


def _absa_sentences(path: Path) -> list[ET.Element]:
    _check(path)
    try:
        return ET.parse(path).getroot().findall("sentence")
    except ET.ParseError as exc:
        raise DataError(f"{path}: malformed XML ({exc})") from exc


def _absa_validation_ids(sentences: Iterable[ET.Element]) -> set[str]:
    """The 10% of labelled train sentences (floor) with the smallest sha256(sentence id)."""
    ids = [s.get("id", "") for s in sentences if s.find("aspectTerms/aspectTerm") is not None]
    ordered = sorted(ids, key=lambda i: (_hash(i), i))
    return set(ordered[: len(ordered) // 10])


def _load_absa(folder: str, prefix: str) -> Loader:
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
                    "sentiment": _label(_ABSA_POLARITY, term.get("polarity", ""), where)
                }
                flag = term.get("implicit_sentiment")
                if flag is not None:
                    if flag not in _IMPLICIT:
                        raise DataError(f"{where}: implicit_sentiment={flag!r}")
                    labels["implicit"] = _IMPLICIT[flag]
                meta: dict[str, object] = {
                    "sentence_id": sentence_id,
                    "from": _int(term.get("from", ""), where) - shift,
                    "to": _int(term.get("to", ""), where) - shift,
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


# --------------------------------------------------------------------------- registry

_OFFICIAL = "official splits of the source (dev -> validation)"
_MADE_7010_20 = (
    "no official split: deterministic stratified 70/10/20 train/validation/test split; within "
    "each {label} class, {unit}s are sorted by sha256({unit} key) and the first 70% (floor) go "
    "to train, the next 10% (floor) to validation, the rest to test"
)
_ABSA_NOTE = (
    "train/test from the files; validation = the 10% (floor) of train sentences that have aspect "
    "terms with the smallest sha256(sentence id), removed from train"
)


def _info(
    name: str,
    description: str,
    layers: dict[str, tuple[str, ...]] | None = None,
    scores: tuple[str, ...] = (),
    dialogue: bool = False,
    split_note: str = _OFFICIAL,
) -> DatasetInfo:
    return DatasetInfo(name, description, SPLITS, layers or {}, scores, dialogue, split_note)


_REGISTRY: dict[str, tuple[DatasetInfo, Loader]] = {}


def _register(info: DatasetInfo, loader: Loader) -> None:
    _REGISTRY[info.name] = (info, loader)


_register(
    _info("sst2", "SST-2 binary sentence sentiment (lower-cased, tokenised)", {"sentiment": _SST2}),
    _load_sst("sst2", "stsa.binary", _SST2),
)
_register(
    _info(
        "sst5",
        "SST-5 fine-grained sentence sentiment (lower-cased, tokenised)",
        {"sentiment": _SST5},
    ),
    _load_sst("sst5", "stsa.fine", _SST5),
)
for _task, _description in (
    ("sentiment", "TweetEval sentiment (3 classes)"),
    ("emotion", "TweetEval emotion (4 classes)"),
    ("irony", "TweetEval irony detection"),
    ("hate", "TweetEval hate speech detection (8 empty tweets skipped)"),
    ("emoji", "TweetEval emoji prediction (20 emoji)"),
):
    _register(
        _info(f"tweet_eval_{_task}", _description, {_TWEET_EVAL[_task][0]: _TWEET_EVAL[_task][2]}),
        _load_tweet_eval(_task),
    )
_register(
    _info(
        "meld",
        "MELD: Friends utterances with emotion and sentiment, dialogue context",
        {"emotion": _MELD_EMOTION, "sentiment": _SENTIMENT3},
        dialogue=True,
    ),
    _load_meld,
)
_register(
    _info(
        "emorynlp",
        "EmoryNLP emotion detection (Friends), from the MELD authors' CSVs; the official train "
        "JSON is missing",
        {"emotion": _EMORY_EMOTION},
        dialogue=True,
        split_note=_OFFICIAL + "; all splits from the MELD-repo CSVs, which hold fewer "
        "utterances than the official JSON",
    ),
    _load_emorynlp,
)
_register(
    _info(
        "dailydialog",
        "DailyDialog: utterance emotion and dialogue act, speakers A/B",
        {"emotion": _DD_EMOTION, "act": _DD_ACT},
        dialogue=True,
        split_note="official ijcnlp_dailydialog train/validation/test archives",
    ),
    _load_dailydialog,
)
_register(
    _info(
        "mustard",
        "MUStARD sarcasm detection in TV dialogue",
        {"sarcasm": _SARCASM},
        dialogue=True,
        split_note=_MADE_7010_20.format(label="sarcasm", unit="instance")
        + " (482/68/140 instances)",
    ),
    _load_mustard,
)
_register(
    _info(
        "mustard_plus_plus",
        "MUStARD++ sarcasm, sarcasm type, implicit/explicit emotion, valence/arousal (1-9)",
        {
            "sarcasm": _SARCASM,
            "sarcasm_type": _MPP_TYPE,
            "implicit_emotion": _MPP_IMPLICIT,
            "explicit_emotion": _MPP_EXPLICIT,
        },
        ("valence", "arousal"),
        dialogue=True,
        split_note=_MADE_7010_20.format(label="sarcasm", unit="scene") + " (840/120/242 scenes)",
    ),
    _load_mustard_pp,
)
_register(
    _info(
        "semeval2018_ec",
        "SemEval-2018 Task 1 E-c: multi-label tweet emotion (empty tuple = no emotion)",
        {"emotions": _EC_EMOTIONS},
    ),
    _load_semeval2018_ec,
)
for _emotion in ("anger", "fear", "joy", "sadness"):
    _register(
        _info(
            f"semeval2018_ei_{_emotion}",
            f"SemEval-2018 Task 1 EI-reg: {_emotion} intensity of tweets in [0, 1]",
            scores=(_emotion,),
            split_note=_OFFICIAL + "; test = test-gold without the 2018-En-mystery-* rows",
        ),
        _load_semeval2018_reg("EI-reg", f"EI-reg-En-{_emotion}", _emotion),
    )
_register(
    _info(
        "semeval2018_v_reg",
        "SemEval-2018 Task 1 V-reg: valence of tweets in [0, 1]",
        scores=("valence",),
        split_note=_OFFICIAL + "; test = test-gold without the 2018-En-mystery-* rows",
    ),
    _load_semeval2018_reg("V-reg", "Valence-reg-En", "valence"),
)
_register(
    _info(
        "emobank",
        "EmoBank: valence/arousal/dominance (1-5) of sentences from several genres",
        scores=("valence", "arousal", "dominance"),
        split_note=_OFFICIAL + " (the csv's split column)",
    ),
    _load_emobank,
)
for _domain, _prefix in (("laptops", "Laptops"), ("restaurants", "Restaurants")):
    _register(
        _info(
            f"semeval2014_{_domain}",
            f"SemEval-2014 Task 4 {_domain}: aspect-term sentiment, implicit/explicit flags",
            {"sentiment": _ABSA_POLARITY, "implicit": ("implicit", "explicit")},
            split_note=_ABSA_NOTE,
        ),
        _load_absa(_domain, _prefix),
    )

DATASETS: dict[str, DatasetInfo] = {name: info for name, (info, _) in _REGISTRY.items()}


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
    "data_root",
    "iter_dialogues",
    "load_dataset",
]
