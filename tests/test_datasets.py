"""Tests of affedge.datasets against the real data in shared/data (skipped when it is absent).

Expected values were read off the raw files (``SOURCES.md``, ``head``/``grep``/``csv``), not
produced by the loaders under test.
"""

from __future__ import annotations

import csv
import functools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest

from affedge import datasets as ds
from affedge.benchmarks import Benchmark
from affedge.datasets import (
    DATASETS,
    DEFAULT_ENV,
    SPLITS,
    DatasetInfo,
    data_root,
    iter_dialogues,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from affedge.engines import Engine, LabelResult, ScoreResult
from affedge.errors import DataError
from affedge.evaluate import evaluate
from affedge.records import Record, Turn
from affedge.tasks import Task


def _find_root() -> Path | None:
    try:
        return data_root()
    except DataError:
        return None


ROOT = _find_root()
needs_data = pytest.mark.skipif(
    ROOT is None, reason=f"no dataset folder (set {DEFAULT_ENV} to shared/data)"
)

# (train, validation, test) record counts. Official splits: SOURCES.md. Made splits: documented
# in DatasetInfo.split_note, with the source totals checked in test_made_split_totals.
EXPECTED: dict[str, tuple[int, int, int]] = {
    "sst2": (6920, 872, 1821),
    "sst5": (8544, 1101, 2210),
    "tweet_eval_sentiment": (45615, 2000, 12284),
    "tweet_eval_emotion": (3257, 374, 1421),
    "tweet_eval_irony": (2862, 955, 784),
    "tweet_eval_hate": (8993, 999, 2970),  # 9,000 / 1,000 lines less 7 / 1 empty tweets
    "tweet_eval_emoji": (45000, 5000, 50000),
    "meld": (9989, 1109, 2610),
    "emorynlp": (7551, 954, 984),
    "dailydialog": (87170, 8069, 7740),
    "mustard": (482, 68, 140),
    "mustard_plus_plus": (840, 120, 242),
    "semeval2018_ec": (6838, 886, 3259),
    "semeval2018_ei_anger": (1701, 388, 1002),
    "semeval2018_ei_fear": (2252, 389, 986),
    "semeval2018_ei_joy": (1616, 290, 1105),
    "semeval2018_ei_sadness": (1533, 397, 975),
    "semeval2018_v_reg": (1181, 449, 937),
    "emobank": (8062, 1000, 1000),
    "semeval2014_laptops": (2109, 249, 654),
    "semeval2014_restaurants": (3314, 379, 1134),
}

CASES = [(name, split) for name in EXPECTED for split in SPLITS]


@functools.cache
def load(name: str, split: str) -> tuple[Record, ...]:
    """Cached loads (tests only read them), so the whole file stays fast."""
    return tuple(load_dataset(name, split))


def by_id(name: str, split: str) -> dict[str, Record]:
    return {r.id: r for r in load(name, split)}


# --------------------------------------------------------------------------- registry


def test_registry_matches_expected() -> None:
    assert set(DATASETS) == set(EXPECTED)
    for name, info in DATASETS.items():
        assert isinstance(info, DatasetInfo)
        assert info.name == name
        assert info.splits == SPLITS == ("train", "validation", "test")
        assert info.layers or info.score_layers, name
        assert info.description and info.split_note
        for layer, vocab in info.layers.items():
            assert vocab and len(set(vocab)) == len(vocab), (name, layer)
            assert all(v == v.lower() for v in vocab), (name, layer)


def test_vocabularies() -> None:
    assert DATASETS["sst5"].layers["sentiment"] == (
        "very negative",
        "negative",
        "neutral",
        "positive",
        "very positive",
    )
    assert DATASETS["tweet_eval_irony"].layers == {"irony": ("not ironic", "ironic")}
    assert DATASETS["tweet_eval_hate"].layers == {"hate": ("not hate", "hate")}
    assert DATASETS["meld"].layers["emotion"][:3] == ("neutral", "joy", "surprise")
    assert DATASETS["dailydialog"].layers["act"] == (
        "inform",
        "question",
        "directive",
        "commissive",
    )
    assert len(DATASETS["semeval2018_ec"].layers["emotions"]) == 11
    assert DATASETS["semeval2018_ei_fear"].score_layers == ("fear",)
    assert DATASETS["emobank"].score_layers == ("valence", "arousal", "dominance")
    assert DATASETS["mustard_plus_plus"].score_layers == ("valence", "arousal")
    dialogue = {n for n, i in DATASETS.items() if i.dialogue}
    assert dialogue == {"meld", "emorynlp", "dailydialog", "mustard", "mustard_plus_plus"}
    for name in ("mustard", "mustard_plus_plus", "semeval2014_laptops"):
        assert "sha256" in DATASETS[name].split_note


# --------------------------------------------------------------------------- every split


@needs_data
@pytest.mark.parametrize(("name", "split"), CASES)
def test_split_contents(name: str, split: str) -> None:
    info = DATASETS[name]
    records = load(name, split)
    assert len(records) == EXPECTED[name][SPLITS.index(split)]
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids), "ids must be unique within a split"
    for r in records:
        assert r.dataset == name and r.split == split
        assert r.text and r.text == r.text.strip(), r.id
        assert set(r.labels) <= set(info.layers), r.id
        for layer, value in r.labels.items():
            vocab = info.layers[layer]
            if isinstance(value, tuple):
                assert all(v in vocab for v in value), (r.id, value)
            else:
                assert value in vocab, (r.id, layer, value)
        assert set(r.scores) == set(info.score_layers), r.id
        assert all(isinstance(v, float) for v in r.scores.values())
        for turn in r.context:
            assert isinstance(turn, Turn) and turn.text, r.id
    # every non-optional layer is present on every record
    required = set(info.layers) - {"implicit"}
    assert all(required <= set(r.labels) for r in records)
    if not info.dialogue:
        assert all(r.context == () for r in records)


@needs_data
def test_score_ranges() -> None:
    for name in ("semeval2018_ei_anger", "semeval2018_v_reg"):
        for split in SPLITS:
            values = [v for r in load(name, split) for v in r.scores.values()]
            assert min(values) >= 0.0 and max(values) <= 1.0
    for split in SPLITS:
        for r in load("emobank", split):
            assert all(1.0 <= v <= 5.0 for v in r.scores.values())
        for r in load("mustard_plus_plus", split):
            assert all(1.0 <= v <= 9.0 for v in r.scores.values())


@needs_data
def test_made_split_totals() -> None:
    def total(name: str) -> int:
        return sum(len(load(name, s)) for s in SPLITS)

    assert total("mustard") == 690
    assert total("mustard_plus_plus") == 1202
    # validation is carved out of the train file: train + validation = the train file's terms
    laptops = len(load("semeval2014_laptops", "train")) + len(
        load("semeval2014_laptops", "validation")
    )
    assert laptops == 2358
    restaurants = len(load("semeval2014_restaurants", "train")) + len(
        load("semeval2014_restaurants", "validation")
    )
    assert restaurants == 3693


# --------------------------------------------------------------------------- spot checks


@needs_data
def test_sst_first_lines() -> None:
    first = load("sst2", "train")[0]
    assert first.id == "train-1"
    assert first.labels == {"sentiment": "positive"}
    assert first.text == (
        "a stirring , funny and finally transporting re-imagining of beauty and the beast "
        "and 1930s horror films"
    )
    dev = load("sst5", "validation")[0]
    assert dev.labels == {"sentiment": "neutral"}  # label 2
    assert dev.text.startswith("in his first stab at the form , jacquot")
    assert Counter(r.labels["sentiment"] for r in load("sst2", "test")) == {
        "negative": 912,
        "positive": 909,
    }


@needs_data
def test_tweet_eval_spot_checks() -> None:
    val = load("tweet_eval_sentiment", "validation")[0]
    # raw line ends in a space; label file line 1 is "1"
    assert (
        val.text
        == "Dark Souls 3 April Launch Date Confirmed With New Trailer: Embrace the darkness."
    )
    assert val.labels == {"sentiment": "neutral"}
    train = load("tweet_eval_sentiment", "train")[0]
    assert train.text.startswith('"QT @user In the original draft')  # quotes kept
    assert train.labels == {"sentiment": "positive"}
    irony = load("tweet_eval_irony", "test")[0]
    assert irony.text.startswith("@user Can U Help?||More conservatives")
    assert irony.labels == {"irony": "not ironic"}
    hate_train = by_id("tweet_eval_hate", "train")
    assert "train-1468" not in hate_train and "train-1469" in hate_train
    assert "validation-265" not in by_id("tweet_eval_hate", "validation")


@needs_data
def test_tweet_eval_emoji_vocabulary_from_mapping() -> None:
    assert ROOT is not None
    lines = (ROOT / "tweet_eval" / "emoji" / "mapping.txt").read_text("utf-8").splitlines()
    emoji = tuple(line.split("\t")[1] for line in lines)
    assert DATASETS["tweet_eval_emoji"].layers["emoji"] == emoji
    labels = (ROOT / "tweet_eval" / "emoji" / "test_labels.txt").read_text().split()
    records = load("tweet_eval_emoji", "test")
    assert [r.labels["emoji"] for r in records[:50]] == [emoji[int(x)] for x in labels[:50]]


@needs_data
def test_meld_context_and_encoding() -> None:
    test = by_id("meld", "test")
    second = test["dia0_utt1"]
    assert second.speaker == "Rachel"
    assert second.text.startswith("Oh. That’s so Monica can keep track.")  # curly quote
    assert second.context == (
        Turn("Why do all you’re coffee mugs have numbers on the bottom?", "Mark"),
    )
    assert second.labels == {"emotion": "anger", "sentiment": "negative"}
    assert second.meta["dialogue_id"] == 0 and second.meta["utterance_id"] == 1
    # train dialogue 1 lacks utterances 6 and 7: utterance 8 sees the 6 that exist
    train = by_id("meld", "train")
    utt8 = train["dia1_utt8"]
    assert len(utt8.context) == 6
    assert utt8.context[-1] == Turn("All right, well...", "Joey")
    for split in SPLITS:
        for r in load("meld", split):
            for bad in ("â€", "Ã", "Â", "\ufffd"):
                assert bad not in r.text, r.id


@needs_data
def test_emorynlp_ids_speakers_and_context() -> None:
    assert ROOT is not None
    dev = load("emorynlp", "validation")
    assert dev[0].id == "s01_e15_c01_u001"
    assert (dev[0].text, dev[0].speaker, dev[0].labels) == (
        "Coffee.",
        "Rachel Green",
        {"emotion": "neutral"},
    )
    assert dev[1].context == (Turn("Coffee.", "Rachel Green"),)
    # train CSV line 328: Shut up!,"['Monica Geller', 'Phoebe Buffay']",Mad,12,5,1,4,...
    shut_up = by_id("emorynlp", "train")["s01_e04_c12_u005"]
    assert shut_up.text == "Shut up!"
    assert shut_up.speaker == "Monica Geller, Phoebe Buffay"
    assert shut_up.meta["speakers"] == ("Monica Geller", "Phoebe Buffay")
    assert shut_up.labels == {"emotion": "mad"}
    # the rebuilt ids are the official JSON ids, with the same transcript and emotion
    for split, stem in (("validation", "dev"), ("test", "tst")):
        data = json.loads((ROOT / "emorynlp" / f"emotion-detection-{stem}.json").read_text("utf-8"))
        official = {
            u["utterance_id"]: u
            for episode in data["episodes"]
            for scene in episode["scenes"]
            for u in scene["utterances"]
        }
        for r in load("emorynlp", split):
            assert official[r.id]["transcript"].strip() == r.text
            assert official[r.id]["emotion"].lower() == r.labels["emotion"]


@needs_data
def test_dailydialog_mapping_and_turns() -> None:
    test = by_id("dailydialog", "test")
    # test line 1 emotions "0 6 0 ...", acts "3 2 3 ..."
    assert test["test-1-0"].text == "Hey man , you wanna buy some weed ?"
    assert test["test-1-0"].labels == {"emotion": "neutral", "act": "directive"}
    assert test["test-1-1"].labels == {"emotion": "surprise", "act": "question"}
    assert test["test-1-1"].speaker == "B" and test["test-1-2"].speaker == "A"
    assert test["test-1-1"].context == (Turn("Hey man , you wanna buy some weed ?", "A"),)
    # train line 1: emotions "0 0 0 0 0 0 4 4 4 4", acts "3 4 2 2 2 3 4 1 3 4"
    train = by_id("dailydialog", "train")
    assert train["train-1-6"].labels == {"emotion": "joy", "act": "commissive"}
    assert "train-1-10" not in train and "train-1-9" in train
    assert len(train["train-1-9"].context) == 9
    assert not any("__eou__" in r.text for r in load("dailydialog", "train"))
    dialogues = list(iter_dialogues(load("dailydialog", "test")))
    assert len(dialogues) == 1000
    for _key, turns in dialogues[:50]:
        assert [len(r.context) for r in turns] == list(range(len(turns)))


@needs_data
def test_mustard_instance_and_stratification() -> None:
    inst = next(r for s in SPLITS for r in load("mustard", s) if r.id == "1_60")
    assert inst.text == "It's just a privilege to watch your mind at work."
    assert inst.speaker == "SHELDON"
    assert inst.context == (
        Turn(
            "I never would have identified the fingerprints of string theory in the aftermath "
            "of the Big Bang.",
            "LEONARD",
        ),
        Turn("My apologies. What's your plan?", "SHELDON"),
    )
    assert inst.labels == {"sarcasm": "sarcastic"} and inst.meta["show"] == "BBT"
    for split, n in zip(SPLITS, (241, 34, 70), strict=True):
        counts = Counter(r.labels["sarcasm"] for r in load("mustard", split))
        assert counts == {"sarcastic": n, "not sarcastic": n}


@needs_data
def test_mustard_plus_plus_quirks() -> None:
    records = {r.id: r for s in SPLITS for r in load("mustard_plus_plus", s)}
    odd = records["1_S11E03_067_u"]  # the row whose KEY is "Disgust"
    assert odd.meta["key"] == "Disgust"
    assert odd.text == "I'm not setting her up with Raj."
    assert odd.speaker == "BERNADETTE"
    assert len(odd.context) == 10 and odd.context[0] == Turn("Hey, just a reminder--", None)
    assert odd.labels["implicit_emotion"] == "disgust" and odd.scores == {
        "valence": 4.0,
        "arousal": 5.0,
    }
    # context numbering with gaps (c_0, c_1, c_4, c_5) keeps its order
    assert len(records["1_S09E13_024_u"].context) == 4
    # mojibake repaired: "donÕt" and "Weā€™re" in the source
    assert records["2_115_u"].text == "I am sorry, we don’t have your sheep."
    assert records["2_272_u"].text == "We’re not peeking?"
    assert not any("Õ" in r.text or any("Õ" in t.text for t in r.context) for r in records.values())
    assert Counter(r.labels["sarcasm"] for r in records.values()) == {
        "sarcastic": 601,
        "not sarcastic": 601,
    }
    assert all(
        (r.labels["sarcasm_type"] == "none") == (r.labels["sarcasm"] == "not sarcastic")
        for r in records.values()
    )
    first = records["1_10004_u"]
    assert first.context[0].text == "Well, I'm sure that, uh, you...\nhave a lot of questions."
    for split, n in zip(SPLITS, (420, 60, 121), strict=True):
        counts = Counter(r.labels["sarcasm"] for r in load("mustard_plus_plus", split))
        assert counts == {"sarcastic": n, "not sarcastic": n}


@needs_data
def test_semeval2018_ec_multilabel() -> None:
    train = load("semeval2018_ec", "train")
    assert train[0].id == "2017-En-21441"
    assert train[0].text.startswith("“Worry is a down payment on a problem")
    assert train[0].labels == {"emotions": ("anticipation", "optimism", "trust")}
    no_emotion = by_id("semeval2018_ec", "train")["2017-En-21744"]
    assert no_emotion.labels == {"emotions": ()}
    # the source's two-character "\\n" escape is kept verbatim
    assert no_emotion.text == "And it's hard to dance with a devil on your back\\nSo shake him off."
    assert sum(1 for r in train if r.labels["emotions"] == ()) == 204


@needs_data
def test_semeval2018_mystery_rows_dropped() -> None:
    assert ROOT is not None
    test = load("semeval2018_ei_anger", "test")
    assert test[0].id == "2018-En-02328" and test[0].scores == {"anger": 0.734}
    for name in ("anger", "fear", "joy", "sadness", "v_reg"):
        dataset = f"semeval2018_ei_{name}" if name != "v_reg" else "semeval2018_v_reg"
        assert not any("mystery" in r.id for r in load(dataset, "test"))
    raw = (ROOT / "semeval2018_task1/EI-reg/EI-reg-En-anger-test-gold.txt").read_text("utf-8")
    raw_rows = raw.rstrip("\n").split("\n")[1:]
    assert len(raw_rows) == 17939 == len(test) + 16937


@needs_data
def test_emobank_rows_and_genres() -> None:
    train = by_id("emobank", "train")
    first = train["110CYL068_1036_1079"]
    assert first.text == 'Remember what she said in my last letter? "'
    assert first.scores == {"valence": 3.0, "arousal": 3.0, "dominance": 3.2}
    assert first.meta["category"] == "letters"
    assert "110CYL068_1079_1110" in by_id("emobank", "test")


@needs_data
def test_absa_terms_offsets_and_flags() -> None:
    laptops = by_id("semeval2014_laptops", "train") | by_id("semeval2014_laptops", "validation")
    cord = laptops["2339-t0"]
    assert cord.aspect == "cord" and cord.labels == {"sentiment": "neutral", "implicit": "implicit"}
    battery = laptops["2339-t1"]
    assert battery.labels == {"sentiment": "positive", "implicit": "explicit"}
    assert battery.meta["opinion_words"] == "good"
    # sentence 917 starts with a no-break space: offsets shift with the stripped text
    gui = laptops["917-t0"]
    assert gui.text.startswith("One night") and gui.meta["from"] == 88
    for name in ("semeval2014_laptops", "semeval2014_restaurants"):
        for split in SPLITS:
            for r in load(name, split):
                assert r.text[r.meta["from"] : r.meta["to"]] == r.aspect, r.id
                assert ("implicit" in r.labels) == (r.labels["sentiment"] != "conflict")
    flags = Counter(r.labels.get("implicit") for r in laptops.values())
    assert flags == {"implicit": 716, "explicit": 1597, None: 45}
    test = load("semeval2014_restaurants", "test")
    assert Counter(r.labels.get("implicit") for r in test) == {
        "implicit": 267,
        "explicit": 853,
        None: 14,
    }
    bread = test[0]  # first sentence of the file: "The bread is top notch as well."
    assert (bread.id, bread.aspect, bread.text) == (
        "32897564#894393#2-t0",
        "bread",
        "The bread is top notch as well.",
    )
    assert bread.meta["opinion_words"] == "top notch"
    assert bread.meta["aspect_categories"] == (("food", "positive"),)


# --------------------------------------------------------------------------- made splits


@needs_data
@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("mustard", "id"),
        ("mustard_plus_plus", "scene"),
        ("semeval2014_laptops", "sentence_id"),
        ("semeval2014_restaurants", "sentence_id"),
    ],
)
def test_made_splits_deterministic_and_disjoint(name: str, key: str) -> None:
    units: dict[str, set[str]] = {}
    for split in SPLITS:
        fresh = load_dataset(name, split)
        assert fresh == load_dataset(name, split)
        assert fresh == list(load(name, split))
        units[split] = {r.id if key == "id" else str(r.meta[key]) for r in fresh}
    assert not units["train"] & units["validation"]
    assert not units["validation"] & units["test"]
    # the official laptop files share one sentence (id 227, same text and term) in train and test
    shared = {"227"} if name == "semeval2014_laptops" else set()
    assert units["train"] & units["test"] == shared


# --------------------------------------------------------------------------- API behaviour


@needs_data
def test_limit_and_aliases() -> None:
    assert load_dataset("sst2", "train", limit=5) == list(load("sst2", "train")[:5])
    assert load_dataset("meld", "test", limit=0) == []
    assert load_dataset("sst2", "dev", limit=3) == list(load("sst2", "validation")[:3])
    assert load_dataset("sst2") == list(load("sst2", "test"))
    with pytest.raises(DataError, match="limit"):
        load_dataset("sst2", limit=-1)


@needs_data
def test_iter_dialogues_groups_meld() -> None:
    dialogues = list(iter_dialogues(load("meld", "test")))
    assert len(dialogues) == 280
    assert sum(len(v) for _, v in dialogues) == 2610
    singles = list(iter_dialogues(load("mustard", "test")))
    assert len(singles) == 140


def test_unknown_dataset() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'nope'.*sst2.*meld"):
        load_dataset("nope")


def test_unknown_split() -> None:
    with pytest.raises(DataError, match=r"unknown split 'dev2'.*train, validation, test"):
        load_dataset("sst2", "dev2")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        data_root(tmp_path / "nope")
    with pytest.raises(DataError, match=r"stsa\.binary\.test"):
        load_dataset("sst2", root=tmp_path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "tweet_eval" / "irony"
    folder.mkdir(parents=True)
    (folder / "mapping.txt").write_text("0\tnon_irony\n1\tirony", encoding="utf-8")
    (folder / "test_text.txt").write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test_labels\.txt"):
        load_dataset("tweet_eval_irony", root=tmp_path)
    (folder / "test_labels.txt").write_text("1\n", encoding="utf-8")
    [record] = load_dataset("tweet_eval_irony", root=tmp_path)
    assert record.labels == {"irony": "ironic"} and record.id == "test-1"


def test_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "stsa.binary.test").write_bytes(b"1 caf\xe9 ok\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_dataset("sst2", root=tmp_path)


def test_malformed_csv_row(tmp_path: Path) -> None:
    (tmp_path / "emobank").mkdir()
    (tmp_path / "emobank" / "meta.tsv").write_text("id\tdocument\tcategory\tsubcategory\n")
    (tmp_path / "emobank" / "emobank.csv").write_text("id,split,V,A,D,text\nx1,test,3.0\n")
    with pytest.raises(DataError, match="wrong number of fields"):
        load_dataset("emobank", root=tmp_path)


def test_dailydialog_misaligned_dialogue_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "dailydialog" / "test"
    folder.mkdir(parents=True)
    (folder / "dialogues_test.txt").write_text(
        "Hi . __eou__ Hello . __eou__\nOne . __eou__ Two . __eou__\n", encoding="utf-8"
    )
    (folder / "dialogues_emotion_test.txt").write_text("0 4 \n0 \n", encoding="utf-8")
    (folder / "dialogues_act_test.txt").write_text("1 2 \n1 2 \n", encoding="utf-8")
    records = load_dataset("dailydialog", root=tmp_path)
    assert [r.id for r in records] == ["test-1-0", "test-1-1"]
    assert records[1].labels == {"emotion": "joy", "act": "question"}


def test_env_var_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(DEFAULT_ENV, str(tmp_path))
    assert data_root() == tmp_path
    assert data_root(other) == other  # the option wins over the variable
    monkeypatch.setenv(DEFAULT_ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=DEFAULT_ENV):
        data_root()
    monkeypatch.delenv(DEFAULT_ENV)
    monkeypatch.setattr(ds, "_REPO_ROOT", tmp_path / "repo")
    with pytest.raises(DataError, match="no dataset folder: pass --data-dir or set AFFEDGE_DATA"):
        data_root()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert data_root() == tmp_path / "shared" / "data"


def test_mustard_plus_plus_raw_counts() -> None:
    """The raw CSV (quoted newlines, CRLF) has the records and scenes SOURCES.md states."""
    if ROOT is None:
        pytest.skip(f"no dataset folder (set {DEFAULT_ENV})")
    with (ROOT / "mustard_plus_plus" / "mustard++_text.csv").open(
        encoding="utf-8", newline=""
    ) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6041
    assert len({r["SCENE"] for r in rows}) == 1202


def test_default_root_is_next_to_the_repository() -> None:
    assert Path(__file__).resolve().parents[1] == ds._REPO_ROOT


# ------------------------------------------------------------------ the public registry

TINY = "test_tiny_reviews"


def _tiny_loader(root: Path, split: str, name: str) -> Iterator[Record]:
    """``<label>\\t<text>`` lines of ``<root>/tiny_reviews/<split>.tsv``, as a plugin reads."""
    path = root / "tiny_reviews" / f"{split}.tsv"
    if not path.is_file():
        raise DataError(f"missing dataset file {path}")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        label, text = line.split("\t")
        yield Record(
            id=f"{split}-{number}",
            text=text,
            labels={"sentiment": label},
            split=split,
            dataset=name,
        )


class _LoveEngine(Engine):
    """Positive exactly when the text says "love"."""

    name = "love-detector"

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        for record in records:
            p = 0.9 if "love" in record.text else 0.1
            yield LabelResult({"positive": p, "negative": 1 - p})

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        raise AssertionError("not a score task")


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "tiny_reviews"
    folder.mkdir()
    (folder / "test.tsv").write_text(
        "positive\tI love it\nnegative\tbroke in a day\npositive\tworks fine\n"
        "negative\tI love nothing about it\nnegative\tnever again\n",
        encoding="utf-8",
    )
    (folder / "validation.tsv").write_text("positive\tlove love love\n", encoding="utf-8")
    info = DatasetInfo(TINY, "five product reviews", layers={"sentiment": ("negative", "positive")})
    register_dataset(info, _tiny_loader)
    yield tmp_path
    unregister_dataset(TINY)


def test_a_registered_dataset_loads_and_evaluates_through_the_public_api(tiny: Path) -> None:
    assert DATASETS[TINY].splits == SPLITS and DATASETS[TINY].layers["sentiment"]
    assert [r.text for r in load_dataset(TINY, "dev", root=tiny)] == ["love love love"]
    records = load_dataset(TINY, root=tiny, limit=2)
    assert [r.id for r in records] == ["test-1", "test-2"] and records[0].dataset == TINY
    bench = Benchmark("polarity", TINY, "sentiment", "accuracy", extra_metrics=("macro_f1",))
    report = evaluate(_LoveEngine(), bench, "test", data_dir=tiny)
    # predicted positive, negative, negative, positive, negative against the gold above
    assert (report.n, report.dropped, report.model) == (5, 0, "love-detector")
    assert report.metrics["accuracy"] == pytest.approx(3 / 5)
    assert report.confusion == {
        "positive": {"positive": 1, "negative": 1},
        "negative": {"positive": 1, "negative": 2},
    }


def test_registration_refuses_a_taken_name_and_can_be_undone(tiny: Path) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetInfo("sst2", "shadow"), _tiny_loader)
    assert DATASETS["sst2"].description.startswith("SST-2")
    replaced = DatasetInfo(TINY, "replaced", splits=("test",))
    register_dataset(replaced, _tiny_loader, replace=True)
    assert DATASETS[TINY] is replaced
    with pytest.raises(DataError, match="unknown split 'validation'"):
        load_dataset(TINY, "validation", root=tiny)
    unregister_dataset(TINY)
    assert TINY not in DATASETS
    with pytest.raises(DataError, match=f"unknown dataset '{TINY}'"):
        load_dataset(TINY, root=tiny)
