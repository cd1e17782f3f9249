"""Emotion in conversation: MELD, EmoryNLP and DailyDialog, each record with the earlier turns of
its dialogue as context and ``meta["dialogue_id"]``.

Quirks (counts measured on the copies described in ``SOURCES.md``):

* ``meld``: the CSVs use CRLF line ends and curly quotes (U+2019 etc.), which decode correctly as
  UTF-8. 72 train, 2 dev and 2 test dialogues have gaps in ``Utterance_ID`` (utterances the
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
"""

from __future__ import annotations

import ast
from collections.abc import Hashable, Iterator
from pathlib import Path

from affedge.datasets._common import (
    SOURCE_SPLIT,
    check_label,
    csv_rows,
    dialogue_contexts,
    read_lines,
    to_int,
)
from affedge.errors import DataError
from affedge.records import Record, Turn

# --------------------------------------------------------------------------- MELD

MELD_EMOTION = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SENTIMENT3 = ("negative", "neutral", "positive")
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


def load_meld(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "meld" / f"{SOURCE_SPLIT[split]}_sent_emo.csv"
    rows = csv_rows(path, _MELD_COLUMNS)
    keys: list[tuple[Hashable, int]] = []
    turns: list[Turn] = []
    for number, row in enumerate(rows, start=2):
        where = f"{path}:row {number}"
        dialogue = to_int(row["Dialogue_ID"], where)
        utterance = to_int(row["Utterance_ID"], where)
        keys.append((dialogue, utterance))
        turns.append(Turn(row["Utterance"].strip(), row["Speaker"].strip() or None))
    contexts = dialogue_contexts(keys, turns)
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
                "emotion": check_label(MELD_EMOTION, row["Emotion"].strip().lower(), where),
                "sentiment": check_label(SENTIMENT3, row["Sentiment"].strip().lower(), where),
            },
            split=split,
            dataset=name,
            meta={
                "dialogue_id": dialogue,
                "utterance_id": utterance,
                "sr_no": to_int(row["Sr No."], where),
                "season": to_int(row["Season"], where),
                "episode": to_int(row["Episode"], where),
                "start_time": row["StartTime"],
                "end_time": row["EndTime"],
            },
        )


# --------------------------------------------------------------------------- EmoryNLP

EMORY_EMOTION = ("neutral", "joyful", "peaceful", "powerful", "scared", "mad", "sad")
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


def load_emorynlp(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "emorynlp" / f"emorynlp_{SOURCE_SPLIT[split]}_final.csv"
    rows = csv_rows(path, _EMORY_COLUMNS)
    keys: list[tuple[Hashable, int]] = []
    turns: list[Turn] = []
    parsed: list[tuple[int, int, int, int, tuple[str, ...]]] = []
    for number, row in enumerate(rows, start=2):
        where = f"{path}:row {number}"
        season, episode = to_int(row["Season"], where), to_int(row["Episode"], where)
        scene, utterance = to_int(row["Scene_ID"], where), to_int(row["Utterance_ID"], where)
        speakers = _speakers(row["Speaker"], where)
        parsed.append((season, episode, scene, utterance, speakers))
        keys.append(((season, episode, scene), utterance))
        turns.append(Turn(row["Utterance"].strip(), ", ".join(speakers) or None))
    contexts = dialogue_contexts(keys, turns)
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
            labels={"emotion": check_label(EMORY_EMOTION, row["Emotion"].strip().lower(), where)},
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

DD_EMOTION = ("neutral", "anger", "disgust", "fear", "joy", "sadness", "surprise")
DD_ACT = ("inform", "question", "directive", "commissive")  # source ids 1..4


def load_dailydialog(root: Path, split: str, name: str) -> Iterator[Record]:
    folder = root / "dailydialog" / split
    text_path = folder / f"dialogues_{split}.txt"
    emotion_path = folder / f"dialogues_emotion_{split}.txt"
    act_path = folder / f"dialogues_act_{split}.txt"
    dialogues, emotions = read_lines(text_path), read_lines(emotion_path)
    acts = read_lines(act_path)
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
            e, a = to_int(emotion, where), to_int(act, f"{act_path}:{number}")
            if not 0 <= e < len(DD_EMOTION) or not 1 <= a <= len(DD_ACT):
                raise DataError(f"{where}: emotion {emotion!r} / act {act!r} out of range")
            speaker = "A" if turn_index % 2 == 0 else "B"
            yield Record(
                id=f"{split}-{number}-{turn_index}",
                text=text,
                context=tuple(earlier),
                speaker=speaker,
                labels={"emotion": DD_EMOTION[e], "act": DD_ACT[a - 1]},
                split=split,
                dataset=name,
                meta={"dialogue_id": f"{split}-{number}", "turn": turn_index},
            )
            earlier.append(Turn(text, speaker))
