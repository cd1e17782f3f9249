"""Progressive chain-of-LoRA tuning (GSA, papers/gsa-progressive-tuning.md, eqs. 2-6).

Stage i trains a fresh LoRA on ``W_pre + sum_{j<i} B_j A_j`` (the base with every earlier
stage merged in) on the tasks of its reasoning level (SA -> ERC -> SD), with the level's
progressive instruction from the task registry, and is then merged itself. The paper's
per-stage learning rates are the defaults (8e-5, 2e-4, 1e-4). After each stage, every
earlier stage's tasks are evaluated on validation data; the manifest records the metrics
and the forgetting (metric right after a stage minus the metric after the last one).

Every stage's adapter is kept under ``<out>/stages/<stage>/`` so a stage model can be
rebuilt (``bench/train_report.py``) and a resumed run skips finished stages (and reuses their
validation).

After the paper's three levels, the default chain has a fourth stage, ``sanm``: the roles of
SANM negotiation (``affedge negotiate``) on the ERC datasets (train/sanm_data.py), rehearsing
every earlier stage at its own share (``--sanm-replay``). Without it the fine-tuned model
collapses in the negotiation turns; ``--stages sa,erc,sd`` is the paper's chain. The roles
stage is judged through the runtime (bench/negotiate_eval.py); its validation checks the
earlier stages only.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affedge.artifact import has_manifest
from affedge.atomic import atomic_write_text
from affedge.benchmarks import stage_datasets
from affedge.errors import AffedgeError
from affedge.tasks import Level
from affedge.train.llm_common import (
    STAGES_DIR,
    LLMConfig,
    base_manifest,
    model_dtype_for_save,
    prepare_source,
    rehearsal,
    save_adapter,
    sequential_batches,
    start_llm_run,
    steps_for,
)
from affedge.train.llm_eval import evaluate_source
from affedge.train.lora import (
    LoopSettings,
    add_lora,
    load_adapter_state,
    load_base,
    merge,
    save_model,
    settings_dict,
    train_loop,
    versions,
)
from affedge.train.recipe import comma_list, key_map, key_map_text, option
from affedge.train.sanm_data import prepare_roles
from affedge.train.sft_data import find_source

STAGES: dict[str, Level] = {"sa": "SA", "erc": "ERC", "sd": "SD", "sanm": "ERC"}
#: Stages trained on SANM's negotiation turns instead of the classification prompt.
ROLE_STAGES = frozenset({"sanm"})
#: stage -> its default datasets: the ``progressive`` rows of the benchmark table at its level.
DEFAULT_DATA: dict[str, tuple[str, ...]] = {s: stage_datasets(lv) for s, lv in STAGES.items()}
#: GSA section 5: Adam with learning rates {8e-5, 2e-4, 1e-4} for the three levels.
PAPER_LR: dict[str, float] = {"sa": 8e-5, "erc": 2e-4, "sd": 1e-4}
#: Every stage's default rate: the paper's, and the ERC rate for the roles stage (same data).
STAGE_LR: dict[str, float] = {**PAPER_LR, "sanm": PAPER_LR["erc"]}
#: Rehearsal share of later stages (``--replay``): without it a 135M model forgets the earlier
#: stages almost entirely (issue 12: SST-2 0.78 -> 0.495 after the last stage).
DEFAULT_REPLAY = 0.25


def parse_stage_data(values: str | list[str] | None) -> dict[str, list[str]]:
    """``--data sa=sst2,meld --data erc=meld`` -> ``{"sa": ["sst2", "meld"], ...}``."""
    return key_map(values, comma_list, "STAGE")


def parse_stage_lr(value: str) -> dict[str, float]:
    """``--lr``: one learning rate for every stage, or ``sa=8e-5,erc=2e-4,sd=1e-4``."""
    if "=" in value:
        return key_map(value.replace(",", " "), float, "STAGE")
    return dict.fromkeys(STAGES, float(value))


@dataclass
class ProgressiveConfig(LLMConfig):
    """The progressive recipe: :class:`LLMConfig` plus its stages, their data and LRs."""

    stages: list[str] = field(
        default_factory=lambda: list(STAGES), metadata=option("Comma-separated stages in order.")
    )
    data: dict[str, list[str]] = field(
        default_factory=dict,
        metadata=option(
            "STAGE=DATASET,... replacing a stage's datasets; repeatable "
            f"(default: {key_map_text(DEFAULT_DATA)}).",
            parse=parse_stage_data,
            multiple=True,
        ),
    )
    lr: dict[str, float] = field(
        default_factory=dict,
        metadata=option(
            f"One LR for every stage, or STAGE=LR,... (default: {key_map_text(STAGE_LR, ',')}).",
            parse=parse_stage_lr,
        ),
    )
    replay: float = field(
        default=DEFAULT_REPLAY,
        metadata=option(
            "Share of a later stage's examples drawn from earlier stages' data (rehearsal "
            "against forgetting); 0 is the paper's pure chain.",
            min=0.0,
            max=0.9,
        ),
    )

    sanm_limit: int = field(
        default=300,
        metadata=option("Records per dataset the negotiation-roles stage trains on.", min=1),
    )
    sanm_replay: float = field(
        default=0.5,
        metadata=option(
            "Rehearsal share of the negotiation-roles stage (its turns are a new format, and "
            "at 0.25 it erased DailyDialog and irony on validation).",
            min=0.0,
            max=0.9,
        ),
    )
    sanm_max_length: int = field(
        default=512,
        metadata=option(
            "Token window of a negotiation-roles example (two rounds of turns after the "
            "dialogue; about twice a classification prompt).",
            min=64,
        ),
    )

    def datasets(self, stage: str) -> list[str]:
        return list(self.data.get(stage) or DEFAULT_DATA[stage])

    def stage_lr(self, stage: str) -> float:
        return self.lr.get(stage, STAGE_LR[stage])


def check_config(cfg: ProgressiveConfig) -> None:
    """Clear errors for unknown stages or datasets before any model is loaded."""
    if not cfg.stages:
        raise AffedgeError("no --stages given")
    for stage in [*cfg.stages, *cfg.data, *cfg.lr]:
        if stage not in STAGES:
            raise AffedgeError(f"unknown stage {stage!r}: choose from {', '.join(STAGES)}")
    if len(set(cfg.stages)) != len(cfg.stages):
        raise AffedgeError(f"a stage is repeated in --stages {','.join(cfg.stages)}")
    for stage in cfg.stages:
        for name in cfg.datasets(stage):
            find_source(name, level=STAGES[stage])


def _stage_dir(out: Path, stage: str) -> Path:
    return out / STAGES_DIR / stage


def train_progressive(
    cfg: ProgressiveConfig,
    out: Path,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run the chain of LoRA stages and write the merged model folder to ``out``."""
    from affedge.train.distributed import world

    check_config(cfg)
    dist = world()  # data-parallel: the main process logs, evaluates and saves
    log = dist.main_log(log)
    earlier = (out / STAGES_DIR).exists() or has_manifest(out)
    run = start_llm_run(cfg, out, resume=resume, earlier=earlier, log=log)
    device, quant, base_path = run.device, run.quant, run.base_path
    model, tokenizer, fmt, pad_id = run.model, run.tokenizer, run.fmt, run.pad_id
    start_time = run.start_time

    data: dict[str, list] = {}
    for stage in cfg.stages:
        prepare = prepare_roles if stage in ROLE_STAGES else prepare_source
        data[stage] = [
            prepare(fmt, find_source(name, level=STAGES[stage]), cfg)
            for name in cfg.datasets(stage)
        ]
    start_folder = _working_folder(base_path)
    validation: dict[str, dict[str, Any]] = {}
    stage_info: list[dict[str, Any]] = []

    for index, stage in enumerate(cfg.stages):
        sdir = _stage_dir(out, stage)
        current = [ex for sd in data[stage] for ex in sd.train]
        replayed = rehearsal(
            len(current),
            [sd.train for earlier in cfg.stages[:index] for sd in data[earlier]],
            cfg.sanm_replay if stage in ROLE_STAGES else cfg.replay,
            cfg.seed,
            stage,
        )
        examples = current + replayed
        steps = steps_for(cfg, len(examples))
        loop = LoopSettings(
            steps=steps,
            lr=cfg.stage_lr(stage),
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            save_every=cfg.save_every,
            log_every=cfg.log_every,
            seed=cfg.seed + index,
        )
        peft_model = add_lora(model, cfg.lora, cfg.seed + index)
        done = sdir / "done.json"
        finished = resume and done.is_file()
        if finished:
            from safetensors.torch import load_file

            load_adapter_state(peft_model, load_file(sdir / "adapter.safetensors"))
            info = json.loads(done.read_text())
            log(f"stage {stage}: finished in an earlier run, re-merging its adapter")
        else:
            result = train_loop(
                {"model": peft_model},
                sequential_batches(examples, cfg.batch_size, cfg.grad_accum, cfg.seed, stage),
                loop,
                pad_id=pad_id,
                device=device,
                checkpoint=sdir / "checkpoint",
                resume=resume,
                paged=quant == "nf4" and device.type == "cuda",
                log=log,
                label=f"stage {stage}",
                stop_after=stop_after,
            )
            info = {
                "stage": stage,
                "level": STAGES[stage],
                "datasets": [sd.data for sd in data[stage]],
                "steps": steps,
                "lr": loop.lr,
                "examples": len(examples),
                "replayed": len(replayed),
                "train_seconds": round(result.seconds, 1),
                "tokens": result.tokens,
                "tokens_per_s": result.tokens_per_s,
                "history": result.history,
            }
            if dist.main:
                _save_stage(sdir, peft_model, info)
        model = merge(peft_model, quant, start_folder, device)
        # Validation after this stage: every stage trained so far (forgetting of earlier ones);
        # a finished stage's from its record, when it has every source.
        after: dict[str, Any] = {}
        kept = info.get("validation", {}) if finished else {}
        for earlier in cfg.stages[: index + 1] if dist.main else []:
            for sd in data[earlier]:
                key = sd.source.key
                if not sd.validation or key in after:
                    continue
                after[key] = kept.get(key) or evaluate_source(model, fmt, sd.source, sd.validation)
                log(
                    f"after {stage}: {key} validation {after[key]['metric']} "
                    f"{after[key]['value']} (n={after[key]['n']})"
                )
        validation[stage] = after
        info["validation"] = after
        if dist.main:
            atomic_write_text(sdir / "done.json", json.dumps(info, indent=2) + "\n")
        stage_info.append(info)
        if quant == "nf4" and index + 1 < len(cfg.stages):
            # The next stage quantizes the merged model again: give it a folder to load.
            start_folder = out / ".work" / f"merged-{stage}"
            if dist.main:
                save_model(model, tokenizer, start_folder, model_dtype_for_save(device))
            dist.barrier()
            del model
            model, _ = load_base(start_folder, quant, device)
        elif index + 1 < len(cfg.stages):
            model.config.use_cache = False

    if not dist.main:  # the main process writes the model folder
        dist.barrier()
        return {}
    forgetting = _forgetting(cfg.stages, validation)
    manifest = base_manifest(cfg, base_path, model, fmt, "progressive", quant)
    keys = [(sd.source.bench.task, sd) for stage in cfg.stages for sd in data[stage]]
    manifest.tasks = sorted({task for task, _ in keys})
    manifest.labels = _task_labels(keys)
    manifest.info.update(
        {
            "stages": stage_info,
            "dataset_labels": {sd.source.key: list(sd.source.spec.answers) for _, sd in keys},
            "data": [sd.data for stage in cfg.stages for sd in data[stage]],
            "hyperparameters": {
                **settings_dict(cfg),
                "lr": {s: cfg.stage_lr(s) for s in cfg.stages},
                "lora_targets": list(cfg.lora.targets),
                "schedule": "linear warm-up 5% then cosine to 0; AdamW; grad clip 1.0",
            },
            "validation": validation,
            "forgetting": forgetting,
            "versions": versions(),
            "seconds": round(time.perf_counter() - start_time, 1),
        }
    )
    save_model(model, tokenizer, out, model_dtype_for_save(device))
    manifest.write(out)  # last: a folder with a manifest holds a complete model
    shutil.rmtree(out / ".work", ignore_errors=True)
    dist.barrier()
    return manifest.to_dict()


def _task_labels(keys: list[tuple[str, Any]]) -> dict[str, list[str]]:
    """Each task's answers as its first training dataset asks them (``dataset_labels`` has
    every dataset's own set, e.g. TweetEval irony's ironic / not ironic)."""
    out: dict[str, list[str]] = {}
    for task, sd in keys:
        out.setdefault(task, list(sd.source.spec.answers))
    return out


def _working_folder(base_path: Path) -> Path:
    from affedge.train.hf_base import hf_folder

    return hf_folder(base_path)


def _save_stage(sdir: Path, peft_model: Any, info: dict[str, Any]) -> None:
    """The stage's adapter (peft layout, so PeftModel.from_pretrained reads it)."""
    save_adapter(sdir, peft_model)
    shutil.rmtree(sdir / "checkpoint", ignore_errors=True)


def _forgetting(stages: list[str], validation: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """For each source trained in a stage before the last: its validation metric right after
    its own stage, after the last stage, and the drop between them (positive = forgotten)."""
    out: dict[str, Any] = {}
    last = stages[-1]
    for stage in stages[:-1]:
        own = validation[stage]
        for key, res in own.items():
            if key in out or key not in validation[last]:
                continue
            if not any(key in validation[s] for s in stages[: stages.index(stage)]):
                final = validation[last][key]["value"]
                out[key] = {
                    "metric": res["metric"],
                    "after_own_stage": res["value"],
                    "after_last_stage": final,
                    "drop": round(res["value"] - final, 4),
                    "trajectory": {
                        s: validation[s][key]["value"] for s in stages if key in validation[s]
                    },
                }
    return out
