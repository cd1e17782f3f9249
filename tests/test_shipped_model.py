"""The int8 encoder shipped inside the package: it loads, its manifest matches, it works."""

from __future__ import annotations

import json

import pytest

from affedge.engines import open_engine
from affedge.models import BUILTIN, default_model_name, resolve_model
from affedge.records import Record
from affedge.tasks import HEADS, TASKS

NAME = "minilm-affect-int8"


@pytest.fixture(scope="module")
def shipped():
    model = next(m for m in BUILTIN if m.name == NAME)
    folder = model.locate()
    assert folder is not None, "the encoder artifact is missing from affedge/assets"
    return folder


@pytest.fixture(scope="module")
def encoder(shipped):
    engine = open_engine(NAME, threads=2)
    yield engine
    engine.close()


def test_it_is_the_default_model(monkeypatch, shipped):
    monkeypatch.delenv("AFFEDGE_MODEL", raising=False)
    assert default_model_name() == NAME
    assert resolve_model(None).path == shipped


def test_manifest_matches_the_artifact_and_the_registry(shipped):
    manifest = json.loads((shipped / "affedge.json").read_text())
    assert manifest["kind"] == "affedge-encoder-multitask"
    assert {n: tuple(h["labels"]) for n, h in manifest["heads"].items()} == {
        n: h.labels for n, h in HEADS.items()
    }
    onnx = shipped / manifest["onnx"]["file"]
    report = manifest["export"]
    assert report["quant"] == "int8"
    assert report["label_agreement"] >= report["min_agreement"] >= 0.95
    assert onnx.stat().st_size / 2**20 == pytest.approx(report["size_mb"], abs=0.01)
    assert onnx.stat().st_size <= 30 * 2**20
    assert (shipped / "tokenizer.json").is_file()
    assert manifest["validation"]["mean"] > 0.5


def test_obvious_sentences_get_obvious_answers(encoder):
    recs = [
        Record(id="1", text="I absolutely love this, it is wonderful!"),
        Record(id="2", text="This is the worst thing ever, I hate it."),
        Record(id="3", text="I'm terrified of what the test results will show."),
    ]
    sentiment = [r.label for r in encoder.classify(recs, TASKS["sentiment"])]
    assert sentiment[:2] == ["positive", "negative"]
    assert next(encoder.classify(recs[2:], TASKS["emotion"])).label == "fear"
    valence = [r.score for r in encoder.score(recs[:2], TASKS["valence"])]
    assert valence[0] > 0.6 > 0.4 > valence[1]
    fear = [r.score for r in encoder.score(recs, TASKS["fear"])]
    assert fear[2] > fear[0]


def test_real_quality_on_a_test_slice(encoder, data_dir):
    from affedge.evaluate import evaluate
    from affedge.tasks import get_benchmark

    report = evaluate(encoder, get_benchmark("polarity", "sst2"), "test", limit=300)
    assert report.metrics["accuracy"] > 0.8


def test_cli_default_run_uses_the_encoder(cli, monkeypatch, tmp_path):
    monkeypatch.delenv("AFFEDGE_MODEL", raising=False)
    (tmp_path / "a.txt").write_text("What a great day!\n")
    res = cli("classify", tmp_path / "a.txt", "--task", "all", "-q")
    row = json.loads(res.stdout)
    assert row["model"] == NAME and row["sentiment"]["label"] == "positive"
