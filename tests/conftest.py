"""Shared fixtures: the real SmolLM2 GGUF, the dataset folder, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from affedge.models import BUILTIN

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    smollm2 = next(m for m in BUILTIN if m.name == SMOLLM2)
    path = smollm2.locate()
    if path is None:
        pytest.fail(f"the SmolLM2 GGUF is not installed: run `{smollm2.install}`")
    return path


@pytest.fixture(scope="session")
def engine(smollm2_path):
    from affedge.artifact import ArtifactKind
    from affedge.engines.gguf import GGUFEngine
    from affedge.models import ModelRef

    eng = GGUFEngine(ModelRef(SMOLLM2, smollm2_path, ArtifactKind.LLM_GGUF.value), threads=2)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from affedge.datasets import data_root
    from affedge.errors import DataError

    try:
        return data_root()
    except DataError as exc:
        pytest.skip(str(exc))


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, input: str | None = None, cwd: Path | None = None) -> Result:
    """Run the real `affedge` entry point in a subprocess (as a user would)."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "affedge.cli", *map(str, args)],
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path) -> Path:
    """SmolLM2 as a HF folder (converted from the GGUF once, cached under $AFFEDGE_CACHE)."""
    pytest.importorskip("transformers")
    from affedge.train.hf_base import hf_folder

    return hf_folder(smollm2_path)


@pytest.fixture(scope="session")
def tiny_llama(smollm2_hf, tmp_path_factory) -> Path:
    """A tiny randomly initialised llama (2 layers, hidden 64) with SmolLM2's tokenizer and
    chat template: real architecture and tokenizer, seconds to train or export."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT (2 layers, hidden 32) with the shipped encoder base's tokenizer:
    encoder training code paths in seconds."""
    import shutil

    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel

    from affedge.train.encoder_model import default_base

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
