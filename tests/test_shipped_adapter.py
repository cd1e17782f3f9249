"""The fine-tuned LoRA adapters shipped inside the package, on the built-in SmolLM2 base.

Each is listed with its tasks, small enough to ship, applied by llama.cpp at load and better
than the zero-shot base on real test items (the progressive adapter on labels, the multi-task
adapter on intensities); the negotiate adapter (the progressive chain plus a
stage that trained SANM's turns) is what `negotiate` runs when no model is named
(affedge/models.py DEFAULT_CHAT_MODELS).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from affedge.artifact import ArtifactKind
from affedge.benchmarks import get_benchmark
from affedge.datasets import load_dataset
from affedge.engines import open_engine
from affedge.evaluate import evaluate_records, select_records
from affedge.models import BUILTIN, DEFAULT_CHAT_MODELS, default_model_name

NAME = "smollm2-affect-progressive"
NEGOTIATE = "smollm2-affect-negotiate"
MULTITASK = "smollm2-affect-multitask"
BASE = "smollm2-135m-instruct"
#: adapter -> (the tasks it answers, the run's adapter folders it was written from)
SHIPPED = {
    NAME: (
        {"emotion", "polarity", "sarcasm", "sentiment"},
        ["stages/sa", "stages/erc", "stages/sd"],
    ),
    NEGOTIATE: (
        {"emotion", "polarity", "sarcasm", "sentiment"},
        ["stages/sa", "stages/erc", "stages/sd", "stages/sanm"],
    ),
    MULTITASK: (
        {"sentiment", "emotion", "valence", "anger", "fear", "joy", "sadness", "implicit"},
        ["adapter"],
    ),
}


def locate(name: str):
    model = next((m for m in BUILTIN if m.name == name), None)
    assert model is not None and model.kind == ArtifactKind.LLM_GGUF_LORA
    folder = model.locate()
    assert folder is not None, f"the {name} adapter is missing from affedge/assets"
    return folder


@pytest.mark.parametrize("name", SHIPPED)
def test_manifest_names_its_base_tasks_and_verification(name):
    shipped = locate(name)
    tasks, parts = SHIPPED[name]
    manifest = json.loads((shipped / "affedge.json").read_text())
    assert manifest["kind"] == "affedge-llm-gguf-lora" and manifest["base"] == BASE
    assert set(manifest["tasks"]) == tasks
    adapter = shipped / manifest["file"]
    assert adapter.stat().st_size <= 25 * 2**20
    assert manifest["adapter"]["parts"] == parts
    report = manifest["verification"]  # adapter on the base vs the trained model in torch
    assert report["agreement"] >= report["floor"] >= 0.9 and report["n"] >= 300


def test_listed_with_their_tasks(cli):
    result = cli("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name, (tasks, _) in SHIPPED.items():
        assert rows[name]["format"] == "gguf-lora" and rows[name]["available"]
        assert set(rows[name]["tasks"].split(", ")) == tasks


@pytest.mark.slow
def test_progressive_beats_the_zero_shot_base_on_sst2_test_items(data_dir):
    """The first 120 SST-2 test sentences (llama.cpp is deterministic, so is this): the base
    is at chance (~0.5, README); the adapter must be far above it."""
    bench = get_benchmark("polarity", "sst2")
    records = select_records(bench, load_dataset("sst2", "test", root=data_dir))[0][:120]
    acc = {}
    for name in (BASE, NAME):
        with open_engine(name, threads=2) as engine:
            acc[name] = evaluate_records(engine, bench, records, split="test").metrics["accuracy"]
    assert acc[NAME] >= 0.75 and acc[NAME] >= acc[BASE] + 0.15, acc


def test_negotiate_runs_the_adapter_by_default_and_the_base_when_named(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("AFFEDGE_MODEL", raising=False)
    assert default_model_name(chat=True) == NEGOTIATE == DEFAULT_CHAT_MODELS[0]
    assert default_model_name() == "minilm-affect-int8"  # classify's default is unchanged
    src = tmp_path / "chat.txt"
    src.write_text("I can't believe you did that for me, thank you so much!\n")
    for args, name in (((), NEGOTIATE), (("-m", BASE), BASE)):
        result = cli("negotiate", str(src), "--task", "emotion", "--format", "jsonl", "-q", *args)
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout.strip().splitlines()[-1])
        assert record["model"] == name and record["label"] in record["probs"]


@pytest.mark.slow
def test_multitask_adapter_learned_intensity_on_v_reg_test_items(data_dir):
    """The first 150 SemEval-2018 V-reg test tweets: the adapter reads valence as the expected
    digit (Pearson ~0.7 on the full split, bench/results/llm_multitask.md), far above the
    zero-shot base's."""
    bench = get_benchmark("valence", "semeval2018_v_reg")
    records = select_records(bench, load_dataset(bench.dataset, "test", root=data_dir))[0][:150]
    r = {}
    for name in (BASE, MULTITASK):
        with open_engine(name, threads=2) as engine:
            r[name] = evaluate_records(engine, bench, records, split="test").metrics["pearson"]
    assert r[MULTITASK] >= 0.6 and r[MULTITASK] >= r[BASE] + 0.3, r
