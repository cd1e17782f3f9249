"""LoRA adapters as llama.cpp adapter GGUFs on a GGUF base (export/gguf_lora.py, the
``affedge-llm-gguf-lora`` artifact kind and the llama.cpp backend that applies it at load).

A real progressive run on the tiny random llama (two stages, a few LoRA steps each, merged by
the trainer) is the source: its merged model written by our GGUF writer at F32 is what the
adapter on the F32 base must reproduce, through llama.cpp itself (no stand-ins).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from affedge.artifact import ArtifactKind, Manifest
from affedge.errors import ModelError
from affedge.export import gguf_writer
from affedge.export.gguf_lora import (
    GGUFBase,
    LoraAdapter,
    adapter_folders,
    plan_lora,
    read_adapter,
    read_base,
    write_lora_gguf,
)
from affedge.models import ModelRef, bundled_adapters, resolve_model

#: Token ids of a short chat prompt (any ids in the vocabulary do; these are real text).
PROMPT = (
    "<|im_start|>user\nSentence: the film is a triumph, funny and warm.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def lora_run(tiny_llama, data_dir, tmp_path_factory) -> Path:
    """`affedge train progressive` on the tiny llama: stages sa and erc, 3 LoRA steps each."""
    from affedge.train.progressive import ProgressiveConfig, train_progressive

    cfg = ProgressiveConfig(
        base=str(tiny_llama),
        quant="none",
        rank=4,
        alpha=8,
        steps=3,
        batch_size=2,
        max_length=128,
        limit=4,
        eval_limit=2,
        seed=5,
        threads=1,
        data_dir=str(data_dir),
        stages=["sa", "erc"],
        lr={"sa": 2e-2, "erc": 2e-2},
    )
    out = tmp_path_factory.mktemp("lora-run") / "run"
    train_progressive(cfg, out, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def ggufs(lora_run, tiny_llama, tmp_path_factory) -> tuple[Path, Path]:
    """(the unmodified tiny llama, the run's merged model), both F32 GGUF by our writer."""
    folder = tmp_path_factory.mktemp("lora-ggufs")
    base = gguf_writer.write_gguf(tiny_llama, folder / "base.f32.gguf", "f32")
    merged = gguf_writer.write_gguf(lora_run, folder / "merged.f32.gguf", "f32")
    return base, merged


@pytest.fixture(scope="module")
def ids(tiny_llama) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)(PROMPT)["input_ids"]


def _adapter(run: Path, base: Path, out: Path, out_type: str = "f32") -> Path:
    adapters = [read_adapter(f) for f in adapter_folders(run)]
    info = read_base(base)
    return write_lora_gguf(plan_lora(adapters, info), info, out, out_type, "test")


def _logits(model: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    """llama.cpp's next-token logits at every position (the adapter applied at load)."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(model),
        lora_path=str(lora) if lora else None,
        n_ctx=256,
        logits_all=True,
        n_threads=1,
        verbose=False,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


# ------------------------------------------------------------------ the format


def test_adapter_on_base_equals_the_merged_model(lora_run, ggufs, ids, tmp_path):
    """Tolerance 1e-3 absolute at F32 (the two compute W·x + s·B·(A·x) and (W + s·BA)·x in
    different orders); the adapter itself moves the logits by far more, so this can fail."""
    base, merged = ggufs
    adapter = _adapter(lora_run, base, tmp_path / "adapter.gguf")
    want = _logits(merged, ids)
    got = _logits(base, ids, adapter)
    alone = _logits(base, ids)
    diff = float(np.abs(got - want).max())
    effect = float(np.abs(alone - want).max())
    print(f"adapter on base vs merged: max |diff| {diff:.2e}; adapter's own effect {effect:.3f}")
    assert diff < 1e-3
    assert effect > 0.05 and effect > 100 * diff
    # F16 adapter tensors: rounding only (11 significant bits of small deltas).
    f16 = _logits(base, ids, _adapter(lora_run, base, tmp_path / "adapter.f16.gguf", "f16"))
    assert float(np.abs(f16 - want).max()) < 1e-2


def test_adapter_file_has_llama_cpp_names_shapes_and_metadata(lora_run, ggufs, tmp_path):
    import gguf

    adapter = _adapter(lora_run, ggufs[0], tmp_path / "adapter.gguf")
    reader = gguf.GGUFReader(str(adapter))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields[gguf.Keys.General.ARCHITECTURE] == "llama"
    assert fields[gguf.Keys.General.TYPE] == "adapter"
    assert fields[gguf.Keys.Adapter.TYPE] == "lora"
    # Two stages of rank 4, alpha 8 -> one adapter of rank 8 with the same alpha/rank.
    assert fields[gguf.Keys.Adapter.LORA_ALPHA] == pytest.approx(16.0)
    shapes = {t.name: [int(d) for d in t.shape] for t in reader.tensors}  # GGUF ne order
    assert len(shapes) == 2 * 4 * 2  # 2 layers x q/k/v/o x (a, b)
    assert shapes["blk.0.attn_q.weight.lora_a"] == [64, 8]  # ne = [n_in, rank]
    assert shapes["blk.0.attn_q.weight.lora_b"] == [8, 64]  # ne = [rank, n_out]
    assert shapes["blk.1.attn_k.weight.lora_b"] == [8, 32]  # 2 kv heads x 16
    assert shapes["blk.1.attn_output.weight.lora_a"] == [64, 8]


def test_the_rotary_permutation_of_q_k_is_what_makes_it_agree(
    lora_run, ggufs, ids, tmp_path, monkeypatch
):
    base, merged = ggufs
    want = _logits(merged, ids)
    good = float(
        np.abs(_logits(base, ids, _adapter(lora_run, base, tmp_path / "g.gguf")) - want).max()
    )
    monkeypatch.setattr(gguf_writer, "PERMUTE_QK", set())
    bad_file = _adapter(lora_run, base, tmp_path / "unpermuted.gguf")
    bad = float(np.abs(_logits(base, ids, bad_file) - want).max())
    print(f"q/k B rows unpermuted: max |diff| {bad:.4f} (permuted: {good:.2e})")
    # Fails the 1e-3 equality above (measured 7e-3 after 3 steps: the q/k deltas are small
    # next to the v/o ones) and is thousands of times the permuted adapter's difference.
    assert bad > 1e-3 and bad > 1000 * good


def test_stages_of_different_scales_fold_into_one_adapter():
    """Stage deltas s_i B_i A_i of different scales sum exactly in the written adapter."""
    rng = np.random.default_rng(0)
    module = "model.layers.0.mlp.up_proj"  # not q/k: no permutation in the way
    parts = []
    for rank, scale in ((2, 4.0), (3, 0.5)):
        a = rng.standard_normal((rank, 8)).astype(np.float32)
        b = rng.standard_normal((6, rank)).astype(np.float32)
        parts.append(LoraAdapter(Path(f"s{rank}"), rank, scale, {module: (a, b)}))
    base = GGUFBase(Path("b.gguf"), "llama", 2, 2, 1, {"blk.0.ffn_up.weight": (6, 8)}, "f32")
    plan = plan_lora(parts, base)
    ((name, a, b),) = plan.tensors
    want = sum(p.scale * p.pairs[module][1] @ p.pairs[module][0] for p in parts)
    assert name == "blk.0.ffn_up.weight" and plan.rank == 5
    np.testing.assert_allclose(plan.alpha / plan.rank * b @ a, want, atol=1e-5)


def test_an_adapter_for_another_base_is_refused(lora_run, smollm2_path, ggufs, tmp_path):
    """The export checks the shapes itself; llama.cpp refuses such a file at load too, and the
    engine says so in one ModelError (never a crash or a silently unadapted model)."""
    from affedge.engines.gguf import GGUFEngine

    with pytest.raises(ModelError, match="does not fit the base"):
        _adapter(lora_run, smollm2_path, tmp_path / "never.gguf")
    adapter = _adapter(lora_run, ggufs[0], tmp_path / "tiny.gguf")
    ref = ModelRef("x", adapter, ArtifactKind.LLM_GGUF_LORA.value, None, smollm2_path)
    with pytest.raises(ModelError, match=r"llama\.cpp refused this LoRA adapter"):
        GGUFEngine(ref, threads=1)


# ------------------------------------------------------------------ runtime


def test_engine_applies_the_adapter_on_every_path(lora_run, ggufs, ids, tmp_path, data_dir):
    """Single-item, batched (a second llama.cpp context) and chat paths score like the merged
    model; the base alone does not (so a path that dropped the adapter would fail)."""
    from affedge.datasets import load_dataset
    from affedge.engines.gguf import GGUFEngine
    from affedge.tasks import TASKS

    base, merged = ggufs
    adapter = _adapter(lora_run, base, tmp_path / "adapter.gguf")
    records = load_dataset("sst2", "validation", root=data_dir, limit=6)
    task = TASKS["polarity"]
    refs = {
        "adapter": ModelRef("a", adapter, ArtifactKind.LLM_GGUF_LORA.value, None, base),
        "merged": ModelRef("m", merged, ArtifactKind.LLM_GGUF.value),
        "base": ModelRef("b", base, ArtifactKind.LLM_GGUF.value),
    }
    probs: dict[tuple[str, int], np.ndarray] = {}
    for key, ref in refs.items():
        for batch in (1, 4):
            with GGUFEngine(ref, threads=1, batch_size=batch) as eng:
                rows = list(eng.classify(records, task))
                probs[key, batch] = np.array([[r.probs[k] for k in sorted(r.probs)] for r in rows])
                if batch == 1:
                    probs[key, 0] = eng.next_token_logits(ids)
    for batch in (0, 1, 4):
        assert np.abs(probs["adapter", batch] - probs["merged", batch]).max() < 1e-3, batch
    moved = np.abs(probs["base", 4] - probs["merged", 4]).max()
    assert moved > 1e-2, moved


@pytest.fixture(scope="module")
def exported(lora_run, ggufs, data_dir, tmp_path_factory) -> tuple[Path, dict]:
    from conftest import run_cli

    out = tmp_path_factory.mktemp("lora-export") / "tiny-affect"
    res = run_cli(
        "export", "gguf-lora", lora_run, "--out", out, "--base", ggufs[0], "--type", "f32",
        "--sample", "10", "--data-dir", data_dir, "--threads", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out, json.loads(res.stdout)


def test_export_writes_a_verified_artifact_that_classify_runs(exported, lora_run, ggufs, cli):
    out, manifest = exported
    assert sorted(p.name for p in out.iterdir()) == ["adapter.gguf", "affedge.json"]
    assert manifest["kind"] == "affedge-llm-gguf-lora" and manifest["file"] == "adapter.gguf"
    assert manifest["base"] == str(ggufs[0].resolve())
    run = Manifest.read(lora_run)
    assert manifest["tasks"] == run.tasks and manifest["labels"] == run.labels
    report = manifest["verification"]
    assert report["n"] == 10 and report["agreement"] == 1.0 and report["floor"] == 0.99
    assert report["max_abs_logit_diff"] < 1e-3
    assert manifest["adapter"]["rank"] == 8
    assert manifest["adapter"]["parts"] == ["stages/sa", "stages/erc"]
    res = cli("classify", "-", "-m", out, "--task", "polarity", input="Great fun.\nDull.\n")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["label"] in ("positive", "negative") for r in rows] == [True, True]


def test_manifest_round_trip_and_resolution(exported, ggufs, tmp_path):
    out, _ = exported
    manifest = Manifest.read(out)
    assert Manifest.from_dict(manifest.to_dict(), "again") == manifest
    for named in (out, out / "adapter.gguf"):
        ref = resolve_model(named)
        assert ref.kind == ArtifactKind.LLM_GGUF_LORA.value and ref.format == "gguf-lora"
        assert ref.path == out / "adapter.gguf" and ref.base == ggufs[0].resolve()
        assert ref.name == "tiny-affect"
    # A relative base is relative to the artifact folder; a missing one is one clear line.
    moved = tmp_path / "shipped"
    shutil.copytree(out, moved)
    shutil.copy(ggufs[0], moved / "base.gguf")
    manifest.base = "base.gguf"
    manifest.write(moved)
    assert resolve_model(moved).base == moved / "base.gguf"
    manifest.base = "/no/such/base.gguf"
    manifest.write(moved)
    with pytest.raises(ModelError, match=r"base /no/such/base\.gguf does not exist"):
        resolve_model(moved)


def test_adapters_shipped_in_the_package_are_built_in_models(exported, tmp_path):
    out, _ = exported
    root = tmp_path / "assets"
    shutil.copytree(out, root / "tiny-affect")
    (root / "an-encoder").mkdir()
    Manifest(kind=ArtifactKind.ENCODER_STATIC.value).write(root / "an-encoder")
    (found,) = bundled_adapters(root)
    assert found.name == "tiny-affect" and found.kind == ArtifactKind.LLM_GGUF_LORA
    assert "polarity" in found.description
    ref = ModelRef.from_path(found.locate(), name=found.name)
    assert ref.kind == ArtifactKind.LLM_GGUF_LORA.value and ref.base is not None


# ------------------------------------------------------------------ bad input


def _one_line_error(res, needle: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("affedge: error:")]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def _bad_folder(lora_run: Path, tmp_path: Path, config: dict | None) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    shutil.copy(lora_run / "stages" / "sa" / "adapter.safetensors", folder)
    if config is not None:
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no-config", "no LoRA adapter (adapter_config.json"),
        ("not-lora", "not a LoRA adapter (peft_type 'PREFIX_TUNING'"),
        ("other-base", "does not fit the base SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("hf-base", "not a GGUF model; pass --base"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    case, needle, lora_run, ggufs, smollm2_path, cli, tmp_path
):
    args: list[object] = [lora_run, "--base", smollm2_path]
    if case == "no-config":
        args = [_bad_folder(lora_run, tmp_path, None), "--base", ggufs[0]]
    elif case == "not-lora":
        args = [_bad_folder(lora_run, tmp_path, {"peft_type": "PREFIX_TUNING"}), "--base", ggufs[0]]
    elif case == "hf-base":
        args = [lora_run]  # the run's recorded base is the tiny llama's HF folder
    res = cli("export", "gguf-lora", *args, "--out", tmp_path / "out")
    _one_line_error(res, needle)
    assert not (tmp_path / "out").exists()
