"""The static tier (`minilm-affect-static`): engine, fast path, CLI, artifact checks, training."""

from __future__ import annotations

import json
import random
import shutil
import string
from pathlib import Path

import numpy as np
import pytest

from affedge.artifact import ArtifactKind, Manifest
from affedge.encoding import EncoderTokenizer
from affedge.engines import open_engine
from affedge.engines.static import StaticEncoderEngine
from affedge.errors import ModelError
from affedge.models import BUILTIN, ModelRef
from affedge.records import Record, Turn
from affedge.tasks import HEADS, TASKS

NAME = "minilm-affect-static"


@pytest.fixture(scope="module")
def folder() -> Path:
    model = next(m for m in BUILTIN if m.name == NAME)
    path = model.locate()
    if path is None:
        pytest.fail(f"the shipped static model is missing: {model.install}")
    return path


@pytest.fixture(scope="module")
def static(folder) -> StaticEncoderEngine:
    engine = open_engine(NAME)
    assert isinstance(engine, StaticEncoderEngine)
    return engine


def _records() -> list[Record]:
    """Fast-path texts, texts the tokenizer must handle (non-ASCII, control characters,
    special-token strings), conversation items and an aspect item."""
    return [
        Record("1", "What a wonderful, moving film!"),
        Record("2", "Never again. The food was cold & the staff rude :("),
        Record("3", "Café au lait, naïve résumé 😀"),
        Record("4", "tab\tseparated\x0bvertical tab"),
        Record("5", "a [MASK] and a [cls] token"),
        Record(
            "6",
            "Sure, great idea.",
            context=(Turn("Let's repaint the kitchen pink.", "A"), Turn("Why?", "B")),
            speaker="B",
        ),
        Record("7", "The battery life is short", aspect="battery life"),
        Record("8", "!!!"),
        Record("9", "x" * 150 + " ok"),
    ]


def test_the_builtin_loads_as_a_static_encoder(static, folder):
    manifest = Manifest.read(folder)
    assert manifest.kind == ArtifactKind.ENCODER_STATIC.value
    assert list(static.heads) == list(HEADS)
    assert static.table.dtype == np.float32 and static.table.shape[1] == static.dim
    assert static._fast is not None  # the shipped tokenizer is BERT WordPiece: fast path on
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 30 * 2**20


def test_the_runtime_does_not_import_torch_or_onnxruntime(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; import affedge; from affedge.engines import open_engine; "
        f"e = open_engine({NAME!r}); from affedge.tasks import TASKS; "
        "from affedge.records import Record; "
        "list(e.classify([Record('1', 'fine')], TASKS['sentiment'])); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_same_record_gives_the_same_result_in_any_batch(static):
    records = _records()
    task = TASKS["sentiment"]
    together = list(static.classify(records, task))
    alone = [next(static.classify([r], task)) for r in records]
    reversed_ = list(static.classify(records[::-1], task))[::-1]
    size = static.batch_size
    try:
        static.batch_size = 2
        small = list(static.classify(records, task))
    finally:
        static.batch_size = size
    for a, b, c, d in zip(together, alone, reversed_, small, strict=True):
        for other in (b, c, d):
            assert a.label == other.label and a.truncated == other.truncated
            for label, p in a.probs.items():
                assert abs(p - other.probs[label]) < 1e-6


def _fast_and_slow(static, records):
    """Pooled text vectors of ``records`` by the fast path and by the tokenizer path."""
    texts = [r.text for r in records]
    assert static._fast is not None
    limit = static._tokenizer.max_length - static._fast.added
    flat, starts, lens, cut = static._fast.encode(texts, limit)
    fast = static._pool_flat(flat, starts, lens)
    inputs, truncated = static._tokenizer.encode(records, static.context_turns)
    slow, _ = static.pool(inputs)
    return fast, slow, list(cut), truncated


def test_the_ascii_fast_path_matches_the_tokenizer(static):
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + string.punctuation + "  \t\n_"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))) for _ in range(300)]
    texts += ["a" * 101, "b" * 100 + "!", "UPPER lower MiXeD 123abc", "don't won't can't"]
    texts = [t for t in texts if t.strip()]
    records = [Record(str(i), t) for i, t in enumerate(texts)]
    assert static._fast.eligible(texts) == list(range(len(texts)))
    fast, slow, fast_cut, slow_cut = _fast_and_slow(static, records)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)
    assert fast_cut == slow_cut
    # the ids themselves: the tokenizer's, without [CLS]/[SEP]
    tokenizer = EncoderTokenizer(Path(static.path).parent / "tokenizer.json", 10_000)
    enc, _ = tokenizer.encode(records[:50], 0)
    flat, starts, lens, _ = static._fast.encode(texts[:50], 10_000)
    for row, start, length in zip(enc["input_ids"], starts, lens, strict=True):
        ids = [i for i in row if not static.skip[i]]
        assert ids == flat[start : start + length].tolist()


def test_truncation_is_flagged_on_both_paths(static):
    words = " ".join(["good"] * (static._tokenizer.max_length + 10))
    long_ascii, long_other = Record("1", words), Record("2", words + " café")
    results = list(
        static.classify([long_ascii, long_other, Record("3", "short")], TASKS["sentiment"])
    )
    assert [r.truncated for r in results] == [True, True, False]
    fast, slow, fast_cut, slow_cut = _fast_and_slow(static, [long_ascii])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)
    assert fast_cut == slow_cut == [True]


def test_outputs_have_the_onnx_encoder_shape(static):
    results = list(static.analyze(_records()))
    for result in results:
        for name, head in HEADS.items():
            if head.kind == "classify":
                assert set(result[name]["probs"]) == set(head.labels)
                assert abs(sum(result[name]["probs"].values()) - 1) < 1e-6
            else:
                for label in head.labels:
                    assert 0.0 <= result[label] <= 1.0
    scores = list(static.score(_records(), TASKS["joy"]))
    assert all(0.0 <= s.score <= 1.0 for s in scores)


def test_the_fast_overrides_equal_the_shared_head_logic(static):
    """classify/analyze are overridden only for speed: same output as EncoderEngine's."""
    from affedge.engines.encoder import EncoderEngine

    records = _records()
    assert list(static.analyze(records)) == list(EncoderEngine.analyze(static, records))
    for task in ("sentiment", "polarity", "emotion", "sarcasm"):
        ours = list(static.classify(records, TASKS[task]))
        assert ours == list(EncoderEngine.classify(static, records, TASKS[task]))
    subset = ["anger", "joy", "optimism", "sadness"]
    ours = list(static.classify(records, TASKS["emotion"], subset))
    assert ours == list(EncoderEngine.classify(static, records, TASKS["emotion"], subset))


def test_obvious_sentences_get_obvious_sentiment(static):
    positive = ["I love this movie, it is wonderful and beautiful.", "Best day ever, so happy!"]
    negative = ["This is terrible, I hate it.", "The worst, most boring film I have ever seen."]
    task = TASKS["polarity"]
    records = [Record(str(i), t) for i, t in enumerate(positive + negative)]
    labels = [r.label for r in static.classify(records, task)]
    assert labels == ["positive"] * len(positive) + ["negative"] * len(negative)
    joy = [
        r.score
        for r in static.score(
            [
                Record("1", "I am so happy and delighted!"),
                Record("2", "The report is due on Monday."),
            ],
            TASKS["joy"],
        )
    ]
    assert joy[0] > joy[1]


def test_cli_classify_task_all_and_score(cli, tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [
        {"text": "What a wonderful, moving film."},
        {
            "text": "Sure, great idea.",
            "speaker": "B",
            "context": [{"speaker": "A", "text": "Let's repaint the kitchen pink."}],
        },
        {"text": "Ça ne va pas du tout."},
    ]
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = cli("classify", src, "-m", NAME, "--task", "all", "--format", "jsonl", "-q")
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["id"] for r in records] == [1, 2, 3]
    for record in records:
        assert record["model"] == NAME
        assert set(record["emotion"]["probs"]) == set(HEADS["emotion"].labels)
        assert 0.0 <= record["valence"] <= 1.0 and 0.0 <= record["anger"] <= 1.0
    assert records[0]["sentiment"]["label"] == "positive"
    res = cli("score", src, "-m", NAME, "--task", "valence", "--format", "jsonl", "-q")
    assert res.returncode == 0, res.stderr
    assert all(0.0 <= json.loads(x)["score"] <= 1.0 for x in res.stdout.splitlines())


def test_sst2_accuracy_floor(static, data_dir):
    from affedge.evaluate import evaluate
    from affedge.tasks import get_benchmark

    report = evaluate(static, get_benchmark("polarity", "sst2"), "test", data_dir=data_dir)
    assert report.n == 1821
    assert report.metrics["accuracy"] >= 0.78


# ------------------------------------------------------------------ untrusted artifacts


@pytest.fixture
def copy(folder, tmp_path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(folder, out)
    return out


def _open_fails(path: Path, match: str) -> None:
    with pytest.raises(ModelError, match=match) as info:
        StaticEncoderEngine(ModelRef.from_path(path))
    assert "\n" not in str(info.value)


def _edit_manifest(path: Path, edit) -> None:
    data = json.loads((path / "affedge.json").read_text())
    edit(data)
    (path / "affedge.json").write_text(json.dumps(data))


def test_a_truncated_table_is_one_line(copy):
    table = copy / "embeddings.npy"
    table.write_bytes(table.read_bytes()[:-1000])
    _open_fails(copy, "truncated")


def test_an_oversized_table_is_one_line(copy):
    with (copy / "embeddings.npy").open("ab") as fh:
        fh.write(b"\0" * 4096)
    _open_fails(copy, "oversized")


def test_garbage_and_pickled_arrays_are_refused(copy):
    (copy / "embeddings.npy").write_bytes(b"not an array at all")
    _open_fails(copy, "not a readable .npy")
    np.save(copy / "embeddings.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _open_fails(copy, "not a numeric array")


def test_arrays_must_match_the_manifest(copy):
    layer = json.loads((copy / "affedge.json").read_text())["static"]["heads"]["sentiment"]
    weight = copy / layer["layers"][-1][0]
    np.save(weight, np.load(weight)[:, :2])  # two logits for a three-label head
    _open_fails(copy, "head 'sentiment' layer")
    np.save(weight, np.zeros((3, 3), dtype=np.float64))
    _open_fails(copy, "dtype float64")


def test_a_table_for_another_tokenizer_is_refused(copy):
    table = np.load(copy / "embeddings.npy")
    np.save(copy / "embeddings.npy", table[:-5])
    _open_fails(copy, "rows for a tokenizer of")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("static"), "field 'static'"),
        (lambda d: d["static"].update(skip_ids=[10**9]), "skip_ids"),
        (lambda d: d["static"]["heads"].pop("emotion"), "every head"),
        (
            lambda d: d["static"]["heads"]["valence"].update(layers=[["../x.npy", "b.npy"]]),
            "inside the model folder",
        ),
        (lambda d: d["static"].update(batch_size=0), "batch_size"),
        (lambda d: d.update(file="missing.npy"), "missing"),
    ],
)
def test_invalid_static_manifests_are_one_line(copy, edit, match):
    _edit_manifest(copy, edit)
    with pytest.raises(ModelError, match=match) as info:
        StaticEncoderEngine(ModelRef.from_path(copy))
    assert "\n" not in str(info.value)


def test_a_corrupt_model_through_the_cli_is_one_line(cli, copy, tmp_path):
    (copy / "embeddings.npy").write_bytes(b"\x93NUMPY garbage")
    src = tmp_path / "x.txt"
    src.write_text("hello\n")
    res = cli("classify", src, "-m", copy)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "embeddings.npy" in res.stderr


# ------------------------------------------------------------------ training


def _tiny_bert(folder: Path) -> Path:
    """A random one-layer BERT whose vocabulary is the first 2,500 WordPiece entries of
    all-MiniLM-L6-v2's (special tokens, characters, the most frequent words): model2vec
    distils it in a second."""
    import torch
    from transformers import BertConfig, BertModel

    from affedge.train.static import default_base

    data = json.loads((default_base() / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["vocab"] = {t: i for t, i in data["model"]["vocab"].items() if i < 2500}
    data["truncation"] = data["padding"] = None
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=2500,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def test_a_tiny_training_run_writes_a_loadable_artifact(tmp_path, data_dir):
    """Distil a tiny random BERT with model2vec, train a few steps on a sample of five
    sources, and open the artifact with the runtime."""
    pytest.importorskip("model2vec")
    pytest.importorskip("transformers")
    from affedge.train.static import StaticConfig, train_static

    cfg = StaticConfig(
        base=str(_tiny_bert(tmp_path / "tiny-bert")),
        dim=16,
        hidden=8,
        steps=12,
        batch_size=32,
        eval_every=6,
        eval_limit=20,
        limit=40,
        max_length=64,
        datasets=[
            "sst2",
            "tweet_eval_emotion",
            "tweet_eval_irony",
            "semeval2018_v_reg",
            "semeval2018_ei_joy",
        ],
    )
    out = tmp_path / "static"
    manifest = train_static(cfg, out, data_dir, log=lambda _: None)
    assert manifest["kind"] == ArtifactKind.ENCODER_STATIC.value
    assert set(manifest["validation"]) >= {"sst2", "tweet_eval_emotion", "mean"}
    assert manifest["data"]["train"]["sources"]["sst2"]["examples"] == 40
    engine = open_engine(str(out))
    assert isinstance(engine, StaticEncoderEngine) and engine.dim == 16
    assert engine._fast is not None
    results = list(engine.analyze([Record("1", "fine"), Record("2", "Café")]))
    expected = {n for n, h in HEADS.items() if h.kind == "classify"}
    expected |= {label for h in HEADS.values() if h.kind == "regress" for label in h.labels}
    assert set(results[0]) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["static", "tiny-bert"]  # no staging
