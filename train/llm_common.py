"""What the progressive and multi-task LLM trainers share: options, data, the manifest."""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from affedge.artifact import ArtifactKind, Manifest
from affedge.errors import AffedgeError, ModelError
from affedge.models import BUILTIN
from affedge.records import Record
from affedge.train.hf_base import check_hf_folder, is_gguf
from affedge.train.lora import LoraSettings
from affedge.train.recipe import option
from affedge.train.sft_data import (
    ChatFormat,
    SFTExample,
    Source,
    build_examples,
    fingerprint,
    load_records,
)

DEFAULT_BASE = "smollm2-135m-instruct"


@dataclass
class LLMConfig:
    """Options every LLM training run takes (all recorded in the manifest).

    The defaults live here only: each field is an option of `affedge train progressive` and
    `affedge train multitask` (train/recipe.py), documented by its metadata.
    """

    base: str = field(
        default=DEFAULT_BASE,
        metadata=option("Base LLM: HF folder, GGUF file or built-in model name."),
    )
    quant: str | None = field(
        default=None,
        metadata=option(
            "nf4 (QLoRA) or none (bf16 LoRA on CUDA) (default: nf4 on CUDA for a base of 3B "
            "parameters or more, else none)."
        ),
    )
    rank: int = field(default=16, metadata=option("LoRA rank.", min=1))
    alpha: int = field(default=32, metadata=option("LoRA alpha (scale alpha/rank).", min=1))
    dropout: float = field(default=0.05, metadata=option("LoRA dropout.", min=0.0, max=1.0))
    steps: int | None = field(
        default=None,
        metadata=option("Optimizer steps, per stage if staged (default: from --epochs).", min=1),
    )
    epochs: float = field(
        default=1.0, metadata=option("Passes over the data, unless --steps is given.", min=0.01)
    )
    batch_size: int | None = field(
        default=None,
        metadata=option("Examples per micro-batch (default: 8 on the CPU, 64 on CUDA).", min=1),
    )
    grad_accum: int = field(default=1, metadata=option("Micro-batches per step.", min=1))
    max_length: int = field(
        default=256, metadata=option("Tokens per example, prompt and answer.", min=32)
    )
    limit: int | None = field(
        default=None,
        metadata=option("Training examples per dataset, a seeded sample (default: all).", min=1),
    )
    eval_limit: int = field(default=200, metadata=option("Validation items per dataset.", min=1))
    save_every: int = field(default=50, metadata=option("Checkpoint every N steps.", min=1))
    log_every: int = field(default=10, metadata=option("Log every N steps.", min=1))
    seed: int = field(default=13, metadata=option("Random seed (data order, LoRA init)."))
    threads: int | None = field(
        default=None, metadata=option("CPU threads (default: all cores).", min=1)
    )
    require_gpu: bool = field(
        default=False,
        metadata=option("Fail unless a CUDA GPU is visible.", flags=("--require-gpu",)),
    )
    data_dir: str | None = field(
        default=None, metadata=option("Dataset folder (default: $AFFEDGE_DATA).")
    )
    extra: dict[str, Any] = field(default_factory=dict, metadata=option(cli=False))

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


def run_base(manifest: dict[str, Any]) -> Path:
    """The base a trained run's manifest names, on this machine: a built-in name resolves
    here (the run may have trained elsewhere, where the file had another path), any other
    base is the recorded file or folder."""
    if any(manifest.get("base") == model.name for model in BUILTIN):
        return resolve_base(manifest["base"])
    return resolve_base(manifest["base_file"])


def steps_for(cfg: LLMConfig, n_examples: int) -> int:
    """``--steps`` if given, else ``--epochs`` passes over the examples."""
    if cfg.steps is not None:
        return cfg.steps
    if cfg.batch_size is None:
        raise ValueError("the batch size is resolved by start_llm_run before steps are derived")
    per_step = cfg.batch_size * cfg.grad_accum
    return max(1, math.ceil(cfg.epochs * n_examples / per_step))


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


#: Batches sorted by length together: a look-ahead window of this many batches in the
#: shuffled data order is sorted by token length, cut into batches, and the batches shuffled
#: again. Padding then costs little (examples range from ~30 to 256 tokens) while an epoch
#: still sees every example once in a seeded random order; 1 turns bucketing off.
BUCKET_BATCHES = 32


@functools.lru_cache(maxsize=8)
def epoch_order(n: int, seed: int, key: str, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:{key}:{epoch}").shuffle(order)
    return order


def sequential_batches(
    examples: list[SFTExample],
    batch: int,
    accum: int,
    seed: int,
    key: str,
    bucket: int = BUCKET_BATCHES,
) -> Callable[[int, int], list[SFTExample]]:
    """``next_batch(step, micro)`` walking seeded per-epoch permutations of ``examples``,
    length-bucketed within windows of ``bucket`` batches (:data:`BUCKET_BATCHES`).

    The data position is a function of the step alone (windows are fixed ranges of global
    positions, aligned to batches), which is what makes resume exact."""
    n = len(examples)
    span = batch * max(1, bucket)
    lengths = [len(e.input_ids) for e in examples]

    def item(pos: int) -> int:
        epoch, i = divmod(pos, n)
        return epoch_order(n, seed, key, epoch)[i]

    @functools.lru_cache(maxsize=4)
    def window(w: int) -> list[int]:
        idx = [item(p) for p in range(w * span, (w + 1) * span)]
        if bucket > 1:
            idx.sort(key=lambda i: lengths[i])  # stable: ties keep the shuffled order
            groups = [idx[j : j + batch] for j in range(0, span, batch)]
            random.Random(f"{seed}:{key}:window:{w}").shuffle(groups)
            idx = [i for group in groups for i in group]
        return idx

    def next_batch(step: int, micro: int) -> list[SFTExample]:
        w, offset = divmod((step * accum + micro) * batch, span)
        return [examples[i] for i in window(w)[offset : offset + batch]]

    return next_batch


def rehearsal(
    n_current: int,
    earlier: list[list[SFTExample]],
    share: float,
    seed: int,
    key: str,
) -> list[SFTExample]:
    """Examples of earlier stages mixed into a later stage (rehearsal against forgetting):
    enough that they make up ``share`` of the stage's examples, drawn evenly from every
    earlier source (a seeded sample without replacement, capped at what a source has)."""
    sources = [s for s in earlier if s]
    if share <= 0 or not sources or n_current == 0:
        return []
    want = round(n_current * share / (1.0 - share))
    rng = random.Random(f"{seed}:{key}:rehearsal")
    per_source, extra = divmod(want, len(sources))
    out: list[SFTExample] = []
    for i, src in enumerate(sources):
        k = min(len(src), per_source + (1 if i < extra else 0))
        out.extend(rng.sample(src, k))
    return out


def base_manifest(
    cfg: LLMConfig, base: Path, model: Any, fmt: ChatFormat, method: str, quant: str
) -> Manifest:
    """The manifest fields every trained LLM folder has; the trainer adds its tasks, labels
    and record (``info``) and writes it last, once the weights are in place."""
    return Manifest(
        kind=ArtifactKind.LLM_HF.value,
        base=cfg.base if not Path(cfg.base).exists() else str(base),
        info={
            "method": method,
            "base_file": str(base),
            "architecture": model.config.model_type,
            "eot_token_id": fmt.eot_id,
            "quantization": quant,
            "seed": cfg.seed,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def model_dtype_for_save(device: torch.device) -> torch.dtype:
    """fp32 on the CPU (small models); bf16 on CUDA (what the GPU trained in)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


#: Where a run keeps a LoRA adapter (peft's state-dict keys and config), read by
#: ``affedge export gguf-lora``: progressive runs in ``stages/<stage>/``, multitask in ``adapter/``.
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
STAGES_DIR = "stages"
MULTITASK_ADAPTER_DIR = "adapter"


def save_adapter(folder: Path, peft_model: Any) -> None:
    """The adapter's trained A/B weights and its peft config (so PeftModel reads them)."""
    from safetensors.torch import save_file

    from affedge.train.lora import adapter_state

    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(peft_model), folder / ADAPTER_WEIGHTS)
    config = peft_model.peft_config["default"].to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")


@dataclass
class LLMRun:
    """What every LLM recipe starts from: the device, the loaded base and its chat format."""

    device: torch.device
    quant: str
    base_path: Path
    model: Any
    tokenizer: Any
    fmt: ChatFormat
    pad_id: int
    start_time: float


def start_llm_run(
    cfg: LLMConfig, out: Path, *, resume: bool, earlier: bool, log: Callable[[str], None]
) -> LLMRun:
    """The run prologue the LLM recipes share (after their own ``check_config``): device and
    quantization, threads, refusing to overwrite an earlier run (``earlier``) unless resuming,
    and loading the base model."""
    from affedge.train.lora import (
        load_base,
        pick_device,
        resolve_batch,
        resolve_quant,
        set_threads,
    )

    device = pick_device(cfg.require_gpu)
    base_path = resolve_base(cfg.base)
    quant = resolve_quant(cfg.quant, device, base_path)
    # The device's default batch, resolved before the recipe derives its steps from it and
    # recorded in the manifest as the batch the run used.
    cfg.batch_size = resolve_batch(cfg.batch_size, device)
    set_threads(cfg.threads)
    if earlier and not resume:
        raise AffedgeError(f"{out} holds an earlier run: pass --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)
    start_time = time.perf_counter()
    log(f"loading base {base_path} ({quant}, {device})")
    model, tokenizer = load_base(base_path, quant, device)
    fmt = ChatFormat(tokenizer, model.config.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else fmt.eot_id
    return LLMRun(device, quant, base_path, model, tokenizer, fmt, pad_id, start_time)
