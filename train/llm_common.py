"""What the progressive and multi-task LLM trainers share: options, data, the manifest."""

from __future__ import annotations

import functools
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from affedge.errors import AffedgeError, ModelError
from affedge.models import BUILTIN
from affedge.records import Record
from affedge.train.hf_base import check_hf_folder, is_gguf
from affedge.train.lora import LoraSettings
from affedge.train.sft_data import (
    ChatFormat,
    SFTExample,
    Source,
    build_examples,
    fingerprint,
    load_records,
)

MANIFEST = "affedge.json"
MANIFEST_KIND = "affedge-llm"
DEFAULT_BASE = "smollm2-135m-instruct"


@dataclass
class LLMConfig:
    """Options every LLM training run takes (all recorded in the manifest)."""

    base: str = DEFAULT_BASE
    quant: str | None = None  # None: nf4 on CUDA, none on the CPU
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    limit: int | None = None
    eval_limit: int = 200
    save_every: int = 50
    log_every: int = 10
    seed: int = 13
    threads: int | None = None
    require_gpu: bool = False
    data_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lora(self) -> LoraSettings:
        return LoraSettings(rank=self.rank, alpha=self.alpha, dropout=self.dropout)


def resolve_base(base: str) -> Path:
    """A base given as a path (HF folder or GGUF file) or a built-in model name."""
    for model in BUILTIN:
        if base == model.name:
            path = model.locate()
            if path is None:
                raise ModelError(f"built-in base {base} is not installed: run `{model.install}`")
            return path
    path = Path(base).expanduser()
    if not path.exists():
        raise ModelError(f"base model {base}: no such file or folder (or built-in model name)")
    if not is_gguf(path):
        check_hf_folder(path)
    return path


def steps_for(cfg: LLMConfig, n_examples: int) -> int:
    """``--steps`` if given, else ``--epochs`` (default 1) passes over the examples."""
    if cfg.steps is not None:
        return cfg.steps
    per_step = cfg.batch_size * cfg.grad_accum
    return max(1, math.ceil((cfg.epochs or 1.0) * n_examples / per_step))


@dataclass
class SourceData:
    """A source's training examples, validation records and data fingerprint."""

    source: Source
    train: list[SFTExample]
    validation: list[Record]
    data: dict[str, Any]


def prepare_source(fmt: ChatFormat, source: Source, cfg: LLMConfig) -> SourceData:
    records = load_records(source, "train", cfg.limit, cfg.seed, cfg.data_dir)
    if not records:
        raise AffedgeError(f"{source.dataset}: no training records with a {source.key} answer")
    examples, answers = build_examples(fmt, source, records, cfg.max_length)
    val = load_records(source, "validation", cfg.eval_limit, cfg.seed, cfg.data_dir, where=True)
    return SourceData(
        source,
        examples,
        val,
        {
            "dataset": source.dataset,
            "task": source.bench.task,
            "split": "train",
            "n": len(examples),
            "truncated": sum(e.truncated for e in examples),
            "sha256": fingerprint(records, answers),
            "labels": list(source.spec.answers),
        },
    )


@functools.lru_cache(maxsize=8)
def epoch_order(n: int, seed: int, key: str, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:{key}:{epoch}").shuffle(order)
    return order


def sequential_batches(examples: list[SFTExample], batch: int, accum: int, seed: int, key: str):
    """``next_batch(step, micro)`` walking seeded per-epoch permutations of ``examples``:
    the data position is a function of the step, which is what makes resume exact."""

    def next_batch(step: int, micro: int) -> list[SFTExample]:
        start = (step * accum + micro) * batch
        out = []
        for pos in range(start, start + batch):
            epoch, i = divmod(pos, len(examples))
            out.append(examples[epoch_order(len(examples), seed, key, epoch)[i]])
        return out

    return next_batch


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def base_manifest(
    cfg: LLMConfig, base: Path, model: Any, fmt: ChatFormat, method: str, quant: str
) -> dict[str, Any]:
    return {
        "kind": MANIFEST_KIND,
        "method": method,
        "base": cfg.base if not Path(cfg.base).exists() else str(base),
        "base_file": str(base),
        "architecture": model.config.model_type,
        "eot_token_id": fmt.eot_id,
        "quantization": quant,
        "seed": cfg.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def model_dtype_for_save(device: torch.device) -> torch.dtype:
    """fp32 on the CPU (small models); bf16 on CUDA (what the GPU trained in)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32
