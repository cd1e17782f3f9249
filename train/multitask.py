"""Multi-task instruction tuning of a decoder LLM: classification + intensity regression.

One LoRA learns every task at once (papers/emollms-affective-analysis.md): sentiment and
emotion classification, SemEval-2018 V-reg / EI-reg and EmoBank intensities (answered as a
0-9 digit, read back as the expected value), and implicit aspect sentiment (SemEval-2014)
with two auxiliary generation tasks whose targets an LLM writes
(papers/mt-isa-multitask-implicit-sentiment.md): the *aspect* a sentence evaluates and the
*opinion* it expresses about it. The teacher is the runtime's GGUF engine (SmolLM2 by
default, ``--aux-model`` for another local GGUF); its answers are cached on disk per model
file and prompt.

Every micro-batch mixes tasks (each slot draws a task with probability proportional to its
data size to the power ``alpha``), so the weighting acts within a step:

* T-AWL (``--tawl``): per-task uncertainty weights, ``exp(-s_t) * L_t + s_t``
  (train/losses.py :class:`TaskWeights`); a task whose loss stays high gets a smaller weight.
* D-AWL (``--dawl``): per-example ``exp(-s_i) * l_i + s_i`` with ``s_i`` predicted from the
  hidden state at the answer position by a zero-initialised linear head.
* focal loss (``--focal-gamma``) on the answer tokens.

The paper's weighting and auxiliary tasks are switches, off by default: measured on validation
at a CPU budget (bench/results/llm_multitask_awl.md, llm_multitask_aux.md) each made the 135M
model worse; the auxiliary targets there came from the 135M model itself as teacher.

Intensities (``--soft-scores``, on by default): the runtime reads a score as the expected
digit under the model's 0-9 distribution, so the digit token is trained towards the two-hot
distribution on the digits either side of the exact value (4.3 -> 0.7 on "4", 0.3 on "5"),
whose expected digit *is* the value. Training on the rounded digit alone teaches a peak that
throws away up to half a step of every label and rewards nothing for being near.

The weights are logged in the history and the manifest; the extra heads are not part of
the exported model.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from affedge.artifact import ArtifactKind, has_manifest
from affedge.atomic import atomic_write_text
from affedge.benchmarks import task_datasets
from affedge.errors import AffedgeError
from affedge.prompts import AUX_PROMPTS, fill_slot
from affedge.records import Record
from affedge.tasks import TASKS
from affedge.train.hf_base import cache_dir
from affedge.train.llm_common import (
    DEFAULT_BASE,
    MULTITASK_ADAPTER_DIR,
    LLMConfig,
    SourceData,
    base_manifest,
    model_dtype_for_save,
    prepare_source,
    resolve_base,
    save_adapter,
    start_llm_run,
    steps_for,
)
from affedge.train.llm_eval import evaluate_source
from affedge.train.lora import (
    LoopSettings,
    add_lora,
    answer_logits,
    merge,
    save_model,
    settings_dict,
    train_loop,
    versions,
)
from affedge.train.losses import TaskWeights, data_weighted, focal_cross_entropy
from affedge.train.recipe import comma_list, key_map, key_map_text, option
from affedge.train.sft_data import IGNORE, ChatFormat, SFTExample, encode, find_source, load_records

#: task -> its default datasets: the ``multitask`` rows of the benchmark table, in order.
DEFAULT_TASK_DATA: dict[str, tuple[str, ...]] = task_datasets()

#: The task MT-ISA's auxiliary aspect/opinion tasks (prompts: affedge.prompts.AUX_PROMPTS)
#: go with.
AUX_PARENT = "implicit"


def parse_task_data(values: str | list[str] | None) -> dict[str, list[str]]:
    """``--data valence=emobank --data sentiment=sst2,meld`` -> ``{task: [dataset, ...]}``."""
    return key_map(values, comma_list, "TASK")


@dataclass
class MultitaskConfig(LLMConfig):
    """The multi-task recipe: :class:`LLMConfig` plus its tasks, data and loss weighting."""

    tasks: list[str] = field(
        default_factory=lambda: list(DEFAULT_TASK_DATA),
        metadata=option("Comma-separated registry tasks."),
    )
    data: dict[str, list[str]] = field(
        default_factory=dict,
        metadata=option(
            "TASK=DATASET,... replacing a task's datasets; repeatable "
            f"(default: {key_map_text(DEFAULT_TASK_DATA)}).",
            parse=parse_task_data,
            multiple=True,
        ),
    )
    lr: float = field(default=2e-4, metadata=option("Learning rate of the LoRA.", min=0.0))
    # Off by default: on SmolLM2-135M at a CPU budget each hurt validation (README, Training
    # decoder LLMs: weighting on 10 of 10 datasets, auxiliary tasks on 7 of 10).
    tawl: bool = field(default=False, metadata=option("Task-level AWL."))
    dawl: bool = field(default=False, metadata=option("Data-level AWL."))
    focal_gamma: float = field(
        default=0.0, metadata=option("Focal loss gamma; 0 turns focal loss off.", min=0.0)
    )
    soft_scores: bool = field(
        default=True,
        metadata=option("Score digits learn a two-hot target whose expected digit is the value."),
    )
    aux: bool = field(default=False, metadata=option("LLM-generated aspect/opinion tasks."))
    aux_model: str | None = field(
        default=None,
        metadata=option(f"GGUF teacher for the auxiliary targets (default: {DEFAULT_BASE})."),
    )
    aux_limit: int = field(
        default=300,
        metadata=option("Implicit items per dataset that get aspect/opinion targets.", min=0),
    )
    aux_lr: float = field(
        default=1e-2, metadata=option("Learning rate of the T-AWL and D-AWL weights.", min=0.0)
    )
    mix_alpha: float = field(
        default=0.5,
        metadata=option("Task mixing: a slot draws a task with p ~ size ** alpha.", min=0.0),
    )

    def datasets(self, task: str) -> list[str]:
        return list(self.data.get(task) or DEFAULT_TASK_DATA.get(task, ()))


def check_config(cfg: MultitaskConfig) -> None:
    if not cfg.tasks:
        raise AffedgeError("no --tasks given")
    for task in [*cfg.tasks, *cfg.data]:
        if task not in TASKS:
            raise AffedgeError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    for task in cfg.tasks:
        names = cfg.datasets(task)
        if not names:
            raise AffedgeError(f"task {task!r} has no default dataset: give --data {task}=NAME")
        for name in names:
            find_source(name, task=task)


# ------------------------------------------------------------------ auxiliary targets


class AuxTargets:
    """Aspect/opinion targets written by a local GGUF model, cached per model file."""

    def __init__(self, model_path: Path, threads: int | None) -> None:
        from affedge.train.hf_base import _cache_key

        self.model_path = model_path
        self.threads = threads
        self.file = cache_dir() / "aux-targets" / f"{model_path.stem}-{_cache_key(model_path)}.json"
        self.cache: dict[str, str] = (
            json.loads(self.file.read_text(encoding="utf-8")) if self.file.is_file() else {}
        )
        self._engine: Any = None
        self.generated = 0

    @staticmethod
    def key(name: str, record: Record) -> str:
        prompt = AUX_PROMPTS[name]
        raw = json.dumps([name, prompt.instruction, prompt.body(record)])
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    def get(self, name: str, record: Record) -> str:
        key = self.key(name, record)
        if key not in self.cache:
            if self._engine is None:
                from affedge.engines import backend_for
                from affedge.models import ModelRef

                kind = ArtifactKind.LLM_GGUF.value
                ref = ModelRef(self.model_path.stem, self.model_path, kind)
                self._engine = backend_for(kind).load()(ref, threads=self.threads)
            prompt = AUX_PROMPTS[name]
            messages = fill_slot(prompt.messages(), prompt.body(record))
            text = self._engine.generate(messages, max_tokens=20, stop=["\n"])
            self.cache[key] = " ".join(text.split())[:80]
            self.generated += 1
        return self.cache[key]

    def save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.file, json.dumps(self.cache, indent=0, ensure_ascii=False))
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def aux_examples(
    fmt: ChatFormat, records: list[Record], teacher: AuxTargets, max_length: int
) -> dict[str, list[SFTExample]]:
    out: dict[str, list[SFTExample]] = {}
    for name, prompt in AUX_PROMPTS.items():
        task = f"{AUX_PARENT}:{name}"
        examples = []
        for rec in records:
            target = teacher.get(name, rec)
            if target:
                examples.append(
                    encode(
                        fmt,
                        prompt.messages(),
                        prompt.body(rec),
                        target,
                        max_length,
                        task,
                        f"{task}/{rec.dataset}",
                        rec.id,
                    )
                )
        if examples:
            out[task] = examples
    return out


# ------------------------------------------------------------------ objective


class Objective(nn.Module):
    """Per-example answer losses combined with T-AWL / D-AWL (each switchable)."""

    def __init__(
        self,
        tasks: list[str],
        hidden: int,
        tawl: bool,
        dawl: bool,
        gamma: float,
        digit_ids: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.digit_ids = digit_ids  # the 0-9 tokens: score examples get two-hot targets
        self.task_weights = TaskWeights(tasks, enabled=tawl)
        self.dawl = dawl
        self.gamma = gamma
        self.confidence = nn.Linear(hidden, 1)
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.confidence.bias)
        self.confidence.requires_grad_(dawl)

    def example_losses(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        rows: torch.Tensor,
        n: int,
        scores: list[float | None] | None = None,
    ) -> torch.Tensor:
        """Mean (focal) cross-entropy over each example's answer tokens; ``logits`` and
        ``targets`` are the answer positions of the batch, ``rows`` their example index.
        ``scores`` (per example, 0-9 scale or None): with ``digit_ids``, that example's first
        answer token (the digit) gets the two-hot target around the exact value."""
        target = torch.zeros_like(logits)
        target[torch.arange(len(targets)), targets] = 1.0
        if self.digit_ids is not None and scores is not None:
            first = torch.ones_like(rows, dtype=torch.bool)
            first[1:] = rows[1:] != rows[:-1]  # rows come sorted: nonzero() is row-major
            for pos in first.nonzero().flatten().tolist():
                value = scores[int(rows[pos])]
                if value is None:
                    continue
                low = min(int(value), 8)
                upper = min(max(value - low, 0.0), 1.0)
                target[pos] = 0.0
                target[pos, self.digit_ids[low]] = 1.0 - upper
                target[pos, self.digit_ids[low + 1]] += upper
        token_loss = focal_cross_entropy(logits, target, self.gamma)
        total = torch.zeros(n, dtype=token_loss.dtype, device=logits.device)
        count = torch.zeros(n, dtype=token_loss.dtype, device=logits.device)
        total = total.index_add(0, rows, token_loss)
        count = count.index_add(0, rows, torch.ones_like(token_loss))
        return total / count.clamp(min=1)

    def combine(
        self,
        losses: torch.Tensor,
        tasks: list[str],
        hidden: torch.Tensor | None,
        everyone: list[str] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over the tasks in the batch of ``T-AWL(task, D-AWL or mean of its losses)``.

        ``everyone``: the tasks of the global batch ``tasks`` is a slice of (data-parallel
        runs, train/distributed.py). Each task's term is then scaled by the slice's share of
        the task's examples and the mean is over the global batch's tasks: T-AWL and D-AWL are
        linear in the task's mean, so the slices' results add up to the global loss (and the
        logged task losses to the global ones)."""
        log_var = self.confidence(hidden.float()).squeeze(-1) if self.dawl else None
        counts = Counter(everyone) if everyone is not None else None
        terms, logs = [], {}
        for task in sorted(set(tasks)):
            idx = torch.tensor([i for i, t in enumerate(tasks) if t == task], device=losses.device)
            task_loss = losses[idx].mean()
            if log_var is not None:
                task_term = data_weighted(losses[idx], log_var[idx])
            else:
                task_term = task_loss
            term = self.task_weights(task, task_term)
            share = 1.0 if counts is None else len(idx) / counts[task]
            terms.append(term if counts is None else term * share)
            logs[f"loss/{task}"] = float(task_loss.detach()) * share
        if counts is None:
            return torch.stack(terms).mean(), logs
        for task in counts:
            logs.setdefault(f"loss/{task}", 0.0)  # every rank logs the same keys
        return torch.stack(terms).sum() / len(counts), logs

    def loss_fn(
        self,
        model: Any,
        batch: dict[str, Any],
        examples: list[SFTExample],
        whole: list[SFTExample] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's combined loss; with ``whole`` (the global batch), this slice's
        contribution to it (see :meth:`combine`)."""
        logits, targets, rows, hidden_all = answer_logits(model, batch)
        scores = [ex.meta.get("score") for ex in examples]
        losses = self.example_losses(logits, targets, rows, len(examples), scores)
        hidden = None
        if self.dawl:
            # The state that predicts the first answer token stands for the example.
            pos = torch.tensor([ex.answer_start - 1 for ex in examples], device=losses.device)
            hidden = hidden_all[torch.arange(len(examples), device=losses.device), pos]
        everyone = None if whole is None else [ex.task for ex in whole]
        total, logs = self.combine(losses, [ex.task for ex in examples], hidden, everyone)
        if whole is None:
            logs["loss"] = float(losses.detach().mean())
        else:
            logs["loss"] = float(losses.detach().sum()) / len(whole)
        return total, logs


def mixed_batches(pools: dict[str, list[SFTExample]], batch: int, seed: int, alpha: float):
    """``next_batch(step, micro)``: every slot draws a task (probability ~ size ** alpha) and
    an example of it, from an RNG seeded by (seed, step, micro) so resume is exact."""
    names = sorted(pools)
    weights = [len(pools[n]) ** alpha for n in names]

    def next_batch(step: int, micro: int) -> list[SFTExample]:
        rng = random.Random(f"{seed}:{step}:{micro}")
        picked = rng.choices(names, weights=weights, k=batch)
        return [rng.choice(pools[name]) for name in picked]

    return next_batch


# ------------------------------------------------------------------ run


def train_multitask(
    cfg: MultitaskConfig,
    out: Path,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> dict[str, Any]:
    from affedge.train.distributed import world

    check_config(cfg)
    dist = world()
    log = dist.main_log(log)
    teacher_path = resolve_base(cfg.aux_model) if cfg.aux_model else None
    run = start_llm_run(cfg, out, resume=resume, earlier=has_manifest(out), log=log)
    device, quant, base_path = run.device, run.quant, run.base_path
    model, tokenizer, fmt, pad_id = run.model, run.tokenizer, run.fmt, run.pad_id
    start_time = run.start_time

    sources: list[SourceData] = [
        prepare_source(fmt, find_source(name, task=task), cfg)
        for task in cfg.tasks
        for name in cfg.datasets(task)
    ]
    pools: dict[str, list[SFTExample]] = {}
    for sd in sources:
        pools.setdefault(sd.source.bench.task, []).extend(sd.train)
    aux_info: dict[str, Any] = {}
    if cfg.aux and AUX_PARENT in cfg.tasks:
        from affedge.train.hf_base import is_gguf

        teacher_file = teacher_path or resolve_base(DEFAULT_BASE)
        if not is_gguf(teacher_file):
            raise AffedgeError(f"--aux-model {teacher_file}: must be a GGUF file (runtime engine)")
        # MT-ISA's auxiliary tasks are for the implicit items (the benchmark's `where`).
        records = [
            r
            for sd in sources
            if sd.source.bench.task == AUX_PARENT
            for r in load_records(
                sd.source, "train", cfg.aux_limit, cfg.seed, cfg.data_dir, where=True
            )
        ]
        log(f"auxiliary aspect/opinion targets for {len(records)} records from {teacher_file.name}")
        with dist.main_first():  # the main process generates and caches; the others read
            teacher = AuxTargets(teacher_file, cfg.threads)
            try:
                aux = aux_examples(fmt, records, teacher, cfg.max_length)
            finally:
                if dist.main:
                    teacher.save()
        pools.update(aux)
        aux_info = {
            "teacher": str(teacher_file),
            "cache": str(teacher.file),
            "generated_now": teacher.generated,
            "instructions": {k: v.instruction for k, v in AUX_PROMPTS.items()},
            "examples": {k: len(v) for k, v in aux.items()},
            "sample": {
                k: fmt.tokenizer.decode(
                    [t for t in v[0].labels if t != IGNORE], skip_special_tokens=True
                )
                for k, v in aux.items()
            },
        }

    task_names = sorted(pools)
    digit_ids = None
    if cfg.soft_scores:
        digit_ids = [fmt.prompts.target(str(d), 1)[0] for d in range(10)]
        if len(set(digit_ids)) != 10:
            raise AffedgeError("--soft-scores: digits 0-9 are not distinct tokens in this model")
    objective = Objective(
        task_names, model.config.hidden_size, cfg.tawl, cfg.dawl, cfg.focal_gamma, digit_ids
    ).to(device)
    n_examples = sum(len(v) for v in pools.values())
    steps = steps_for(cfg, n_examples)
    loop = LoopSettings(
        steps=steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        save_every=cfg.save_every,
        log_every=cfg.log_every,
        seed=cfg.seed,
    )
    peft_model = add_lora(model, cfg.lora, cfg.seed)
    result = train_loop(
        {"model": peft_model, "objective": objective},
        mixed_batches(pools, cfg.batch_size, cfg.seed, cfg.mix_alpha),
        loop,
        pad_id=pad_id,
        device=device,
        checkpoint=out / "checkpoint",
        resume=resume,
        loss_fn=objective.loss_fn,
        paged=quant == "nf4" and device.type == "cuda",
        extra_lr={"objective": cfg.aux_lr},
        log=log,
        label="multitask",
        stop_after=stop_after,
        on_log=lambda step: {"task_weights": objective.task_weights.weights()},
    )
    from affedge.train.hf_base import hf_folder

    if not dist.main:  # the main process evaluates and saves
        dist.barrier()
        return {}
    save_adapter(out / MULTITASK_ADAPTER_DIR, peft_model)  # before merging (which folds it away)
    merged = merge(peft_model, quant, hf_folder(base_path), device)
    validation = {}
    for sd in sources:
        validation[sd.source.key] = evaluate_source(merged, fmt, sd.source, sd.validation)
        res = validation[sd.source.key]
        log(f"{sd.source.key}: validation {res['metric']} {res['value']} (n={res['n']})")

    manifest = base_manifest(cfg, base_path, merged, fmt, "multitask", quant)
    manifest.tasks = list(cfg.tasks)
    for sd in sources:
        manifest.labels.setdefault(sd.source.bench.task, list(sd.source.spec.answers))
    manifest.info.update(
        {
            "stages": [],
            "dataset_labels": {sd.source.key: list(sd.source.spec.answers) for sd in sources},
            "data": [sd.data for sd in sources],
            "aux": aux_info,
            "hyperparameters": {
                **settings_dict(cfg),
                "steps": steps,
                "lora_targets": list(cfg.lora.targets),
                "schedule": "linear warm-up 5% then cosine to 0; AdamW; grad clip 1.0",
            },
            "training": {
                "examples": {k: len(v) for k, v in pools.items()},
                "seconds": round(result.seconds, 1),
                "tokens": result.tokens,
                "tokens_per_s": result.tokens_per_s,
                "history": result.history,
                "task_weights": objective.task_weights.weights(),
            },
            "validation": validation,
            "forgetting": {},
            "versions": versions(),
            "seconds": round(time.perf_counter() - start_time, 1),
        }
    )
    save_model(merged, tokenizer, out, model_dtype_for_save(device))
    manifest.write(out)  # last: a folder with a manifest holds a complete model
    dist.barrier()
    return manifest.to_dict()
