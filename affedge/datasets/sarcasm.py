"""Sarcasm in TV dialogue: MUStARD and MUStARD++ (one record per utterance, with its context).

Neither source has splits: both get the deterministic stratified 70/10/20 split of
:func:`~affedge.datasets._common.stratified_split` (by instance, by scene).

Quirks of ``mustard_plus_plus`` (counts measured on the copy described in ``SOURCES.md``):

* 13 apostrophes are stored as ``Õ`` (U+2019 read as Mac Roman) and one as ``ā€™`` (its UTF-8
  bytes read as cp1257); the file itself is valid UTF-8. Only these exact sequences are
  repaired to ``’``.
* One utterance row (scene ``1_S11E03_067``) has KEY ``Disgust`` instead of ``1_S11E03_067_u``.
  Rows are classified per scene: ``*_u`` and any row with a filled ``Sarcasm`` column are the
  scene's utterance, ``*_c_N`` are context. That row therefore becomes the utterance
  ``1_S11E03_067_u`` (``meta["key"]`` keeps ``Disgust``).
* Context numbering has gaps in 4 scenes (e.g. ``c_0, c_1, c_4``); context is ordered by N.
  Speaker ``-`` (1,315 context rows) means unknown and becomes ``None``. 149 sentences hold
  line breaks (subtitle lines); they are kept inside the text. Doubled apostrophes
  (``You'’re``) are the source's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from affedge.datasets._common import (
    check_label,
    csv_rows,
    read_text,
    stratified_split,
    to_float,
    to_int,
)
from affedge.errors import DataError
from affedge.records import Record, Turn

# --------------------------------------------------------------------------- MUStARD

SARCASM = ("not sarcastic", "sarcastic")


def load_mustard(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "mustard" / "sarcasm_data.json"
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of instances")
    by_label: dict[str, list[str]] = {}
    for key, item in data.items():
        if not isinstance(item, dict) or not isinstance(item.get("sarcasm"), bool):
            raise DataError(f"{path}: instance {key!r} has no boolean 'sarcasm'")
        by_label.setdefault(str(item["sarcasm"]), []).append(key)
    assigned = stratified_split(by_label)
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
            labels={"sarcasm": SARCASM[int(item["sarcasm"])]},
            split=split,
            dataset=name,
            meta={"show": item.get("show")},
        )


# --------------------------------------------------------------------------- MUStARD++

MPP_TYPE = ("none", "pro", "ill", "emb", "lik")
MPP_IMPLICIT = (
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
MPP_EXPLICIT = tuple(e for e in MPP_IMPLICIT if e != "ridicule")
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


def load_mustard_pp(root: Path, split: str, name: str) -> Iterator[Record]:
    path = root / "mustard_plus_plus" / "mustard++_text.csv"
    rows = csv_rows(path, _MPP_COLUMNS)
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
    assigned = stratified_split(by_label)
    for scene, (utterances, context) in scenes.items():
        if assigned[scene] != split:
            continue
        number, row = utterances[0]
        where = f"{path}:row {number}"
        context.sort(key=lambda item: item[0])
        sarcasm = to_int(row["Sarcasm"].strip(), where)
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
                "sarcasm": SARCASM[sarcasm],
                "sarcasm_type": check_label(MPP_TYPE, row["Sarcasm_Type"].strip().lower(), where),
                "implicit_emotion": check_label(
                    MPP_IMPLICIT, row["Implicit_Emotion"].strip().lower(), where
                ),
                "explicit_emotion": check_label(
                    MPP_EXPLICIT, row["Explicit_Emotion"].strip().lower(), where
                ),
            },
            scores={
                "valence": to_float(row["Valence"], where),
                "arousal": to_float(row["Arousal"], where),
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
