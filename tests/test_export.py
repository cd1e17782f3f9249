"""Export to GGUF and ONNX: round-trip parity, every quant type, verification, bad input."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("gguf")

from affedge.artifact import ArtifactKind
from affedge.atomic import staged_dir
from affedge.engines.gguf import GGUFEngine
from affedge.errors import ModelError
from affedge.export.gguf_quantize import ALL_TYPES
from affedge.export.gguf_writer import check_tokenizer, write_gguf
from affedge.models import ModelRef

PROMPT = (
    "<|im_start|>system\nYou label sentiment.<|im_end|>\n<|im_start|>user\n"
    "Sentence: the film is a triumph, funny and warm.<|im_end|>\n<|im_start|>assistant\n"
)


METADATA_KEYS = (
    "llama.block_count",
    "llama.embedding_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.vocab_size",
    "tokenizer.ggml.model",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
)


def _metadata(path: Path) -> dict[str, object]:
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    return {k: fields[k].contents() for k in METADATA_KEYS if k in fields}


def _llama_logits(gguf: Path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def _hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_smollm2_round_trip_f16_matches_transformers(smollm2_hf, smollm2_path, tmp_path):
    """SmolLM2 GGUF -> transformers -> our writer at F16 -> llama.cpp: same next-token logits
    as transformers at every position. Tolerance: F16 weights round each value to 11
    significant bits; over 30 layers that moved logits (scale ~36) by at most 0.05 here, so
    0.15 absolute passes F16 rounding and fails any layout error (a missing rotary permutation
    moves them by several units)."""
    out = write_gguf(smollm2_hf, tmp_path / "smol.f16.gguf", "f16")
    check_tokenizer(out, smollm2_hf)
    ours_meta, original_meta = _metadata(out), _metadata(smollm2_path)
    for key in METADATA_KEYS:
        assert ours_meta.get(key) == original_meta.get(key), key
    with GGUFEngine(
        ModelRef("smol", smollm2_path, ArtifactKind.LLM_GGUF.value), threads=2
    ) as original:
        ids = original._tokens(PROMPT, special=True)
    ours = _llama_logits(out, ids)
    reference = _hf_logits(smollm2_hf, ids)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 0.15
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def test_rotary_permutation_is_what_makes_llama_cpp_agree(tiny_llama, tmp_path, monkeypatch):
    """Without the q/k permutation the same weights give different logits (so the round-trip
    test above can fail)."""
    from affedge.export import gguf_writer

    ids = list(range(100, 140))
    good = _llama_logits(write_gguf(tiny_llama, tmp_path / "good.gguf", "f32"), ids)
    monkeypatch.setattr(gguf_writer, "PERMUTE_QK", set())
    bad = _llama_logits(write_gguf(tiny_llama, tmp_path / "bad.gguf", "f32"), ids)
    reference = _hf_logits(tiny_llama, ids)
    assert np.abs(good - reference).max() < 1e-3
    assert np.abs(bad - reference).max() > 10 * np.abs(good - reference).max()


@pytest.fixture(scope="module")
def gguf_exports(tiny_llama, tmp_path_factory, data_dir):
    """The tiny llama exported to every supported GGUF type through the CLI."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("gguf-export")
    res = run_cli(
        "export", "gguf", tiny_llama, "--out", out, "--quant", ",".join(ALL_TYPES),
        "--sample", "10", "--data-dir", data_dir,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out, json.loads(res.stdout)


def test_every_gguf_quant_type_is_written_verified_and_runs(gguf_exports, cli, data_dir):
    out, manifests = gguf_exports
    assert [m["quant"] for m in manifests] == list(ALL_TYPES)
    for m in manifests:
        folder = out / m["quant"]
        assert (folder / "affedge.json").is_file()
        assert (folder / m["file"]).is_file()
        report = m["verification"]
        assert report["agreement"] >= report["floor"]
        assert report["n"] == 10 and report["size_bytes"] > 0
        assert report["max_abs_logit_diff"] is not None
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no scratch left
    sizes = {m["quant"]: m["verification"]["size_bytes"] for m in manifests}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]
    res = cli("classify", "-", "-m", out / "q4_k_m", "--task", "polarity", input="Great fun.\n")
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    assert row["label"] in ("positive", "negative")


def test_onnx_int8_export_classifies_like_its_gguf_twin(tiny_llama, gguf_exports, cli, tmp_path):
    out = tmp_path / "onnx"
    res = cli("export", "onnx", tiny_llama, "--out", out, "--quant", "fp32,int8", "--sample", "10")
    assert res.returncode == 0, res.stderr
    manifests = json.loads(res.stdout)
    assert [m["quant"] for m in manifests] == ["fp32", "int8"]
    fp32 = manifests[0]["verification"]
    assert fp32["agreement"] == 1.0 and fp32["max_abs_logit_diff"] < 1e-3
    text = "What a dreadful, boring film.\nI loved every minute.\n"
    rows = {}
    for name, model in (("onnx", out / "int8"), ("gguf", gguf_exports[0] / "f32")):
        res = cli("classify", "-", "-m", model, "--task", "polarity", input=text)
        assert res.returncode == 0, res.stderr
        rows[name] = [json.loads(line) for line in res.stdout.splitlines()]
    for a, b in zip(rows["onnx"], rows["gguf"], strict=True):
        for label in a["probs"]:
            assert abs(a["probs"][label] - b["probs"][label]) < 0.02


def test_a_defective_artifact_fails_verification(tiny_llama, tmp_path, data_dir):
    """An artifact whose output rows of the two label tokens are swapped (a layout defect)
    flips its answers; verification measures that and refuses it."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from affedge.export.artifact import check_floor
    from affedge.export.verify import TorchSource, sample_records, verify

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    pos, neg = (tok.encode(w, add_special_tokens=False)[0] for w in ("positive", "negative"))
    model = LlamaForCausalLM.from_pretrained(tiny_llama)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    model.config.tie_word_embeddings = False
    other = LlamaForCausalLM(model.config)
    other.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        other.lm_head.weight.copy_(model.model.embed_tokens.weight)
        other.lm_head.weight[[pos, neg]] = other.lm_head.weight[[neg, pos]].clone()
    other.save_pretrained(broken)
    gguf = write_gguf(broken, tmp_path / "broken.gguf", "f32")
    records = sample_records("polarity", "sst2", 30, data_dir)
    with GGUFEngine(ModelRef("broken", gguf, ArtifactKind.LLM_GGUF.value), threads=2) as eng:
        report = verify(TorchSource(model), eng, "f32", gguf, "polarity", "sst2", records, 2)
    assert report.agreement < 0.2
    assert report.max_abs_logit_diff > 1e-3
    with pytest.raises(ModelError, match="below the 99% floor"):
        check_floor(report)


def test_staged_artifact_vanishes_on_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt), staged_dir(tmp_path / "q8_0") as folder:
        (folder / "model.gguf").write_bytes(b"GGUF" + b"\0" * 100)
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad input


def _one_line_error(res, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("affedge: error:")]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("kind", ["gguf", "onnx"])
def test_missing_model_folder(cli, tmp_path, kind):
    res = cli("export", kind, tmp_path / "nope", "--out", tmp_path / "out")
    _one_line_error(res, "nope", "no such model")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_lists_the_supported_ones(cli, tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    res = cli("export", "gguf", folder, "--out", tmp_path / "out")
    _one_line_error(res, "unsupported architecture 'bert'", "llama", "qwen2")


def test_model_folder_without_tokenizer(cli, tiny_llama, tmp_path):
    folder = tmp_path / "notok"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / name, folder / name)
    res = cli("export", "gguf", folder, "--out", tmp_path / "out", "--quant", "q8_0")
    _one_line_error(res, "no tokenizer")
    assert not (tmp_path / "out").exists()


def test_unknown_quant_type(cli, tiny_llama, tmp_path):
    res = cli("export", "gguf", tiny_llama, "--out", tmp_path / "out", "--quant", "q9_9")
    _one_line_error(res, "q9_9", "q4_k_m")


def _limit_file_size() -> None:
    # A 2 MB file-size limit stands in for a full disk: writes past it fail with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))


def test_full_disk_mid_write_leaves_nothing(tiny_llama, tmp_path, data_dir):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "affedge.cli", "export", "gguf", str(tiny_llama), "--out",
         str(out), "--quant", "q8_0", "--sample", "10", "--data-dir", str(data_dir)],
        capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=600,
    )  # fmt: skip
    _one_line_error(proc, "cannot write the export")
    assert not out.exists()


# ------------------------------------------------------------------ batched source scoring


def _sharp_tiny_llama():
    """A random 2-layer llama whose outputs depend strongly on every input token (weights
    drawn wide), so a padding or position mistake moves log-probabilities by far more than
    the tolerance."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def test_batched_source_scoring_matches_one_at_a_time():
    from affedge.export.verify import TorchSource
    from affedge.prompts import PromptTokens
    from affedge.train.llm_eval import length_batches, score_answers, score_many

    model = _sharp_tiny_llama()
    rng = np.random.default_rng(3)
    lengths = [int(n) for n in rng.integers(3, 60, size=23)]
    prompts = [[int(t) for t in rng.integers(1, 97, size=n)] for n in lengths]
    answers = [[5], [6, 7], [8, 9, 10]]  # one- and multi-token continuations
    one = np.array([score_answers(model, p, answers) for p in prompts])
    for batch_size in (4, 16):
        many = score_many(model, prompts, answers, pad_id=0, batch_size=batch_size)
        np.testing.assert_allclose(many, one, atol=1e-4, rtol=0)
    # what the tolerance guards: prompts differ from each other by far more than it
    assert np.abs(one - one.mean(0)).max() > 0.1

    batches = length_batches(lengths, 4, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all((len(b) <= 4 and len(b) * max(lengths[i] for i in b) <= 100) or len(b) == 1
               for b in batches)  # fmt: skip
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)

    source = TorchSource(model)
    prep = PromptTokens(head=[], suffix=[], answers=answers, first_only=False)
    rows = source.answer_logprobs_many(prompts + prompts[:3], prep, batch_size=8)
    np.testing.assert_allclose(np.array(rows[:23]), one, atol=1e-4, rtol=0)
    assert all(rows[23 + i] is rows[i] for i in range(3))  # memoised, scored once
    np.testing.assert_allclose(source.answer_logprobs(prompts[5], prep), one[5], atol=1e-4)
