"""LoRA / QLoRA on decoder LLMs: setup, a resumable training loop, merging, saving.

* LoRA (peft) on the attention projections q/k/v/o, as GSA and LoRA do.
* QLoRA: the base linears in 4-bit NF4 with double quantization (bitsandbytes), bf16 compute
  on CUDA (fp32 on the CPU, where bitsandbytes also runs, slowly), peft's
  ``prepare_model_for_kbit_training``, paged 8-bit AdamW on CUDA.
* Merging never writes into 4-bit weights: the base is reloaded in full precision, every NF4
  linear is replaced by its dequantised weight (exactly the weight the adapter was trained
  against), the adapter is attached again and peft's ``merge_and_unload`` folds it in. Plain
  LoRA merges in place (fp32 on the CPU).
* The loop checkpoints the trainable weights, the optimizer, the RNG states and the step
  every ``save_every`` steps; the data order is a function of (seed, step), so ``--resume``
  continues exactly where the checkpoint left off (same final adapter as an uninterrupted run).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from affedge.errors import AffedgeError, ModelError
from affedge.train.checkpoint import (
    has_checkpoint,
    load_optimizer_state,
    optimizer_state,
    read_checkpoint,
    rng_state,
    section,
    set_rng_state,
    write_checkpoint,
)
from affedge.train.hf_base import hf_folder, load_causal_lm
from affedge.train.sft_data import IGNORE, SFTExample, collate

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
QUANTS = ("nf4", "none")


class Interrupted(AffedgeError):
    """Training stopped on request after a checkpoint (``stop_after``); resume with --resume."""


# ------------------------------------------------------------------ device and base


def pick_device(require_gpu: bool = False) -> torch.device:
    """CUDA when visible (``cuda:LOCAL_RANK`` in a data-parallel run), else the CPU."""
    if torch.cuda.is_available():
        from affedge.train.distributed import world

        return world().device(torch.device("cuda", 0))
    if require_gpu:
        raise AffedgeError("--require-gpu given but no CUDA GPU is visible to torch")
    return torch.device("cpu")


#: On CUDA the default is plain bf16 LoRA below this many base parameters and QLoRA (NF4) from
#: it on. Small models' bf16 weights are a few GB at most, while NF4 dequantizes every weight
#: in every matmul and needs gradient checkpointing: a QLoRA run of SmolLM2-135M on an H100
#: trained at 2.5-4.6k tokens/s with 7-20% GPU utilisation (DESIGN.md).
QLORA_MIN_PARAMS = 3_000_000_000
#: Default examples per micro-batch by device type: 8 on the CPU (a step already takes
#: seconds), 64 on CUDA, where 8 short examples (~400 tokens) leave the GPU waiting on kernel
#: launches.
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}


def count_parameters(folder: Path) -> int:
    """Parameters of the HF model in ``folder``, read from its safetensors headers (no
    weights are loaded); 0 when it has no safetensors files."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                total += math.prod(f.get_slice(key).get_shape())
    return total


def resolve_quant(quant: str | None, device: torch.device, base: Path | None = None) -> str:
    """``nf4`` or ``none``. The default is plain LoRA on the CPU, and on CUDA plain (bf16)
    LoRA for a base below :data:`QLORA_MIN_PARAMS` parameters, QLoRA for a bigger one."""
    if quant is None:
        big = base is not None and count_parameters(hf_folder(base)) >= QLORA_MIN_PARAMS
        quant = "nf4" if device.type == "cuda" and big else "none"
    if quant not in QUANTS:
        raise AffedgeError(f"unknown --quant {quant!r}: choose one of {', '.join(QUANTS)}")
    if quant == "nf4":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise AffedgeError("--quant nf4 needs bitsandbytes: pip install 'affedge[train]'")
    return quant


def resolve_batch(batch_size: int | None, device: torch.device) -> int:
    """``--batch-size`` if given, else the device's default (:data:`DEFAULT_BATCH`)."""
    if batch_size is not None:
        return batch_size
    return DEFAULT_BATCH.get(device.type, DEFAULT_BATCH["cpu"])


def compute_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_base(path: Path, quant: str, device: torch.device) -> tuple[Any, Any]:
    """(model ready for adapters, tokenizer) from a HF folder or GGUF file."""
    folder = hf_folder(path)
    if quant == "nf4":
        from peft import prepare_model_for_kbit_training

        device_map = {"": device.index or 0} if device.type == "cuda" else None
        model, tok = load_causal_lm(
            folder, quantize_4bit=True, compute_dtype=compute_dtype(device), device_map=device_map
        )
        # Non-reentrant checkpointing: torch warns the reentrant default will raise, and
        # the non-reentrant variant works with inputs that do not require grad (LoRA).
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=device.type == "cuda",
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model, tok = load_causal_lm(folder)
        model.to(device=device, dtype=compute_dtype(device))
    model.config.use_cache = False
    return model, tok


def load_fp(path: Path, device: torch.device) -> Any:
    """The model at ``path`` in full precision (fp32 on CPU, bf16 on CUDA), for merging."""
    model, _ = load_causal_lm(hf_folder(path))
    return model.to(device=device, dtype=compute_dtype(device))


# ------------------------------------------------------------------ adapters


@dataclass
class LoraSettings:
    """The adapter's shape; a recipe's defaults for it live in its config (LLMConfig)."""

    rank: int
    alpha: int
    dropout: float
    targets: tuple[str, ...] = ATTENTION_PROJECTIONS


def add_lora(model: Any, settings: LoraSettings, seed: int) -> Any:
    """A fresh LoRA (A Gaussian/Kaiming, B zero, so the delta starts at 0) on ``model``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def adapter_state(peft_model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def load_adapter_state(peft_model: Any, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ModelError(f"adapter does not fit this model: unexpected keys {unexpected[:3]}")


def dequantized_base(quant_model: Any, fp_model: Any) -> Any:
    """Copy the dequantised weight of every NF4 linear of ``quant_model`` into ``fp_model``
    (the rest of the two models is already equal full-precision weights)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    base = quant_model.get_base_model() if hasattr(quant_model, "get_base_model") else quant_model
    n = 0
    for name, module in base.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            target = fp_model.get_submodule(name.removesuffix(".base_layer"))
            w = dequantize_4bit(module.weight.data, module.weight.quant_state)
            with torch.no_grad():
                target.weight.copy_(w.to(device=target.weight.device, dtype=target.weight.dtype))
            n += 1
    if n == 0:
        raise ModelError("no 4-bit linear layers found in the quantized model")
    return fp_model


def merge(peft_model: Any, quant: str, start: Path | None, device: torch.device) -> Any:
    """The full-precision model with the adapter folded in (see module docstring).

    ``start`` is the folder the quantized model was loaded from (QLoRA only)."""
    if quant == "none":
        return peft_model.merge_and_unload()
    if start is None:
        raise ValueError("QLoRA merging needs the folder the 4-bit model was loaded from")
    from peft import get_peft_model

    # Dequantise a fresh 4-bit load of ``start`` (NF4 quantization is deterministic, so these
    # are the weights training started from): bitsandbytes' CPU backend repacks the weights
    # of a model that has run forward passes, and dequantize_4bit then reads garbage.
    quantized, _ = load_causal_lm(
        hf_folder(start),
        quantize_4bit=True,
        compute_dtype=compute_dtype(device),
        device_map={"": device.index or 0} if device.type == "cuda" else None,
    )
    fp = dequantized_base(quantized, load_fp(start, device))
    del quantized
    config = peft_model.peft_config["default"]
    fresh = get_peft_model(fp, config)
    load_adapter_state(fresh, adapter_state(peft_model))
    return fresh.merge_and_unload()


# ------------------------------------------------------------------ optimisation


@dataclass
class LoopSettings:
    steps: int
    lr: float
    batch_size: int = 8
    grad_accum: int = 1
    warmup: float = 0.05
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    save_every: int = 50
    log_every: int = 10
    seed: int = 13


def make_optimizer(params: Sequence[dict[str, Any]], paged: bool, weight_decay: float) -> Any:
    """Paged 8-bit AdamW for QLoRA on CUDA (as in the QLoRA paper), else torch's AdamW: its
    fused kernel when every parameter is on CUDA (one launch per step for all of LoRA's small
    tensors instead of several per tensor), the multi-tensor (foreach) one elsewhere."""
    if paged:
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, weight_decay=weight_decay)
    tensors = [p for group in params for p in group["params"]]
    if tensors and all(p.is_cuda for p in tensors):
        return torch.optim.AdamW(params, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(params, weight_decay=weight_decay, foreach=True)


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up then cosine decay to zero."""
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _trainable(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{m}.{n}": p
        for m, module in modules.items()
        for n, p in module.named_parameters()
        if p.requires_grad
    }


@dataclass
class LoopResult:
    steps: int
    seconds: float
    tokens: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return round(self.tokens / self.seconds, 1) if self.seconds else 0.0


def save_checkpoint(
    folder: Path, step: int, modules: dict[str, torch.nn.Module], opt: Any, result: LoopResult
) -> None:
    """Trainable weights, optimizer, RNG states and step, written atomically into ``folder``
    as safetensors + JSON (train/checkpoint.py: loading one never unpickles anything)."""
    opt_tensors, opt_meta = optimizer_state(opt)
    rng_tensors, rng_meta = rng_state()
    weights = {f"weights.{k}": v for k, v in _trainable(modules).items()}
    meta = {
        "step": step,
        "optimizer": opt_meta,
        "rng": rng_meta,
        "tokens": result.tokens,
        "seconds": result.seconds,
        "history": result.history,
    }
    write_checkpoint(folder, {**weights, **opt_tensors, **rng_tensors}, meta)


def load_checkpoint(
    folder: Path, modules: dict[str, torch.nn.Module], opt: Any, result: LoopResult
) -> int:
    """Restore :func:`save_checkpoint`'s state; one AffedgeError line if the checkpoint is
    unreadable or belongs to other adapters."""
    tensors, meta = read_checkpoint(folder)
    weights = section(tensors, "weights.")
    params = _trainable(modules)
    mismatch = sorted(set(params) ^ set(weights)) or sorted(
        k for k, p in params.items() if weights[k].shape != p.shape
    )
    if mismatch:
        raise AffedgeError(
            f"{folder}: checkpoint does not match this run's adapters ({mismatch[:2]}); "
            "use the same options as the interrupted run or delete the checkpoint"
        )
    try:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(weights[k].to(p.device))
        load_optimizer_state(opt, tensors, meta["optimizer"])
        set_rng_state(tensors, meta["rng"])
        result.tokens, result.seconds = int(meta["tokens"]), float(meta["seconds"])
        result.history = list(meta["history"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise AffedgeError(f"{folder}: malformed checkpoint ({type(exc).__name__})") from None
    return meta["step"]


#: ``loss_fn(model, batch, examples)``; in a data-parallel run it is also given the global
#: batch (``whole=``) and returns this slice's contribution to the global loss and logs
#: (train/distributed.py).
LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
BatchFn = Callable[[int, int], list[SFTExample]]


def answer_logits(
    model: Any, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the answer positions only: (logits [N, V], targets [N], example index [N],
    last hidden states [B, T, H]).

    The vocabulary projection of every prompt position is the costliest part of a small
    model's step (49k x 576 for SmolLM2) and the loss ignores it, so the decoder body is run
    alone and ``lm_head`` only sees the N positions that predict answer tokens."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    rows, cols = mask.nonzero(as_tuple=True)
    logits = base.lm_head(hidden[rows, cols])
    return logits.float(), targets[rows, cols], rows, hidden


def answer_tokens(examples: Sequence[SFTExample]) -> int:
    """How many answer tokens the loss of ``examples`` averages over (as in :func:`answer_logits`:
    the labels after the first position that are not -100)."""
    return sum(sum(1 for t in ex.labels[1:] if t != IGNORE) for ex in examples)


def causal_lm_loss(
    model: Any,
    batch: dict[str, Any],
    examples: list[SFTExample],
    whole: Sequence[SFTExample] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over the answer tokens (labels != -100) of the batch (the same
    value as the HF model's own ``loss``, computed on the answer positions only).

    With ``whole`` (the global batch ``examples`` is a slice of, train/distributed.py): this
    slice's share of the global mean, its token sum over the global batch's answer tokens."""
    logits, targets, _, _ = answer_logits(model, batch)
    if whole is None:
        loss = torch.nn.functional.cross_entropy(logits, targets)
    else:
        total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        loss = total / answer_tokens(whole)
    return loss, {"loss": float(loss.detach())}


def train_loop(
    modules: dict[str, torch.nn.Module],
    next_batch: BatchFn,
    settings: LoopSettings,
    *,
    pad_id: int,
    device: torch.device,
    checkpoint: Path,
    resume: bool = False,
    loss_fn: LossFn = causal_lm_loss,
    paged: bool = False,
    extra_lr: dict[str, float] | None = None,
    log: Callable[[str], None] = print,
    label: str = "train",
    stop_after: int | None = None,
    on_log: Callable[[int], dict[str, Any]] | None = None,
) -> LoopResult:
    """Optimise the trainable parameters of ``modules`` (``"model"`` is the one called).

    ``next_batch(step, micro)`` returns the examples of one micro-batch; ``extra_lr`` sets
    the learning rate of other modules (T-AWL, D-AWL heads). ``stop_after`` ends the run
    with :class:`Interrupted` after that many steps (what a kill after a checkpoint leaves).

    Launched data-parallel (train/distributed.py), each process trains on its slice of every
    micro-batch, the gradients are summed once per step, and only the main process logs and
    writes checkpoints.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from affedge.train.distributed import TOKENS, world

    dist = world()
    dist.check_batch(settings.batch_size)
    log = dist.main_log(log)
    model = modules["model"]
    groups = []
    for name, module in modules.items():
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            lr = (extra_lr or {}).get(name, settings.lr)
            groups.append({"params": params, "lr": lr, "base_lr": lr, "name": name})
    opt = make_optimizer(groups, paged, settings.weight_decay)
    result = LoopResult(steps=settings.steps, seconds=0.0, tokens=0)
    step = 0
    if resume and has_checkpoint(checkpoint):
        step = load_checkpoint(checkpoint, modules, opt, result)
        log(f"{label}: resuming from step {step}/{settings.steps} ({checkpoint})")
    else:
        random.seed(settings.seed)
        torch.manual_seed(settings.seed)
    params = [p for g in opt.param_groups for p in g["params"]]
    dist.broadcast_parameters(params)
    model.train()
    console = Console(stderr=True)
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal or not dist.main,
    ) as progress:
        bar = progress.add_task(label, total=settings.steps, completed=step, loss=float("nan"))
        while step < settings.steps:
            t0 = time.perf_counter()
            factor = lr_factor(step, settings.steps, settings.warmup)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            logs: dict[str, float] = {}
            tokens = 0
            dist.seed_step(settings.seed, step)
            for micro in range(settings.grad_accum):
                examples = next_batch(step, micro)
                if dist.distributed:
                    whole, examples = examples, dist.shard(examples)
                    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
                    loss, parts = loss_fn(model, batch, examples, whole=whole)
                else:
                    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
                    loss, parts = loss_fn(model, batch, examples)
                (loss / settings.grad_accum).backward()
                tokens += int(batch["attention_mask"].sum())
                for k, v in parts.items():
                    logs[k] = logs.get(k, 0.0) + v / settings.grad_accum
            if dist.distributed:
                dist.sum_gradients(params)
                logs = dist.sum_values({**logs, TOKENS: tokens})
                tokens = int(logs.pop(TOKENS))
            result.tokens += tokens
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            result.seconds += time.perf_counter() - t0
            progress.update(bar, completed=step, loss=logs.get("loss", float("nan")))
            if step % settings.log_every == 0 or step == settings.steps:
                entry = {"step": step, "lr": round(settings.lr * factor, 8)}
                entry.update({k: round(v, 4) for k, v in logs.items()})
                if on_log:
                    entry.update(on_log(step))
                result.history.append(entry)
                log(
                    f"{label}: step {step}/{settings.steps} "
                    + " ".join(f"{k} {v}" for k, v in entry.items() if k != "step")
                    + f" ({result.tokens / max(result.seconds, 1e-9):.0f} tok/s)"
                )
            if step % settings.save_every == 0 or step == settings.steps:
                if dist.main:
                    save_checkpoint(checkpoint, step, modules, opt, result)
                dist.barrier()
            if stop_after is not None and step >= stop_after and step < settings.steps:
                raise Interrupted(f"{label}: stopped after step {step} (resume with --resume)")
    dist.check_replicas(params, label)
    return result


# ------------------------------------------------------------------ saving


def save_model(model: Any, tokenizer: Any, out: Path, dtype: torch.dtype) -> None:
    """Merged weights (``model.safetensors`` + config) and the tokenizer files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype=dtype)
    model.config.use_cache = True
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("affedge", "torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def settings_dict(obj: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(obj).items()}
