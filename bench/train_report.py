"""Test-set report of a progressive LLM run: metrics per stage and forgetting.

Rebuilds the model after each stage from the base and the stage adapters the run kept
(``<run>/stages/<stage>/adapter.safetensors``; eqs. 2-6: W = W_pre + sum of the merged
deltas), checks that the rebuilt final model equals the run's merged ``model.safetensors``,
and scores each stage's headline benchmark on the *test* split with the literature's metric
(SST-2 accuracy, MELD weighted-F1, MUStARD weighted-F1 and F1 of the sarcastic class) the way
the runtime scores labels (full label continuation at the answer position,
train/llm_eval.py). The base model is scored too, as the zero-shot reference.

    python -m affedge.bench.train_report runs/progressive-smollm2 --limit 200 \
        --out bench/results/train_progressive_smollm2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from affedge.artifact import Manifest
from affedge.benchmarks import report_targets
from affedge.tasks import TASKS
from affedge.train.llm_common import resolve_base
from affedge.train.llm_eval import evaluate_source
from affedge.train.lora import LoraSettings, add_lora, load_adapter_state, load_base
from affedge.train.progressive import STAGES
from affedge.train.sft_data import ChatFormat, find_source, load_records

#: stage -> (dataset, level) of the benchmark the GSA paper reports for the stage: the
#: benchmark table's ``train_report`` row at the stage's level.
HEADLINE: dict[str, tuple[str, str]] = {
    stage: (b.dataset, level)
    for stage, level in STAGES.items()
    for b in report_targets("train_report")
    if TASKS[b.task].level == level
}


def stage_models(run: Path, manifest: dict[str, Any]):
    """Yield (label, model) for the base and the model after each stage."""
    from safetensors.torch import load_file

    model, tok = load_base(resolve_base(manifest["base_file"]), "none", torch.device("cpu"))
    yield "base", model, tok
    hp = manifest["hyperparameters"]
    for info in manifest["stages"]:
        stage = info["stage"]
        peft_model = add_lora(model, LoraSettings(hp["rank"], hp["alpha"], 0.0), 0)
        load_adapter_state(peft_model, load_file(run / "stages" / stage / "adapter.safetensors"))
        model = peft_model.merge_and_unload()
        yield stage, model, tok


def report(run: Path, limit: int, seed: int, data_dir: str | None) -> dict[str, Any]:
    from safetensors.torch import load_file

    manifest = Manifest.read(run).to_dict()
    stages = [s["stage"] for s in manifest["stages"]]
    sources = {s: find_source(*HEADLINE[s]) for s in stages if s in HEADLINE}
    tests = {s: load_records(src, "test", limit, seed, data_dir) for s, src in sources.items()}
    results: dict[str, dict[str, Any]] = {}
    merged_check: float | None = None
    for label, model, tok in stage_models(run, manifest):
        model.eval()
        fmt = ChatFormat(tok, model.config.eos_token_id)
        # base: every headline benchmark; after stage i: the benchmarks of stages <= i
        done = stages[: stages.index(label) + 1] if label != "base" else list(sources)
        results[label] = {}
        for s in done:
            if s in sources:
                res = evaluate_source(model, fmt, sources[s], tests[s])
                results[label][sources[s].key] = res
                print(f"{label}: {sources[s].key} test {res['metrics']} n={res['n']}", flush=True)
        if label == stages[-1]:
            saved = load_file(run / "model.safetensors")
            state = model.state_dict()
            merged_check = max(
                float((state[k].float() - saved[k].float()).abs().max()) for k in saved
            )
    forgetting = {}
    for s in stages[:-1]:
        key = sources[s].key if s in sources else None
        if key and key in results[s] and key in results[stages[-1]]:
            own, last = results[s][key]["value"], results[stages[-1]][key]["value"]
            forgetting[key] = {
                "after_own_stage": own,
                "after_last_stage": last,
                "drop": round(own - last, 4),
            }
    return {
        "run": str(run),
        "limit_per_test_set": limit,
        "results": results,
        "forgetting_test": forgetting,
        "forgetting_validation": manifest["forgetting"],
        "rebuilt_vs_saved_max_abs_diff": merged_check,
        "training": {
            s["stage"]: {
                k: s[k] for k in ("examples", "steps", "lr", "train_seconds", "tokens_per_s")
            }
            for s in manifest["stages"]
        },
        "run_seconds": manifest["seconds"],
        "hyperparameters": manifest["hyperparameters"],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU only",
        "versions": manifest["versions"],
    }


def markdown(rep: dict[str, Any], command: str) -> str:
    lines = [
        "# Progressive chain-of-LoRA on SmolLM2-135M-Instruct: CPU budget run",
        "",
        "**This is a CPU budget run, not the full-size GPU run**: a handful of training "
        "examples per dataset, one epoch, on 2 shared CPU cores. The numbers show that the "
        "pipeline works end to end; they are not the model's quality after real training.",
        "",
        f"Training command: `{command}`",
        "",
        f"Machine: {rep['machine']}. Training + validation wall time: {rep['run_seconds']} s.",
        f"Test items per benchmark: first-seeded sample of {rep['limit_per_test_set']}.",
        f"Rebuilt chain (base + stage adapters) vs saved merged model: max abs weight "
        f"difference {rep['rebuilt_vs_saved_max_abs_diff']}.",
        "",
        "| model | benchmark | metric | value | other metrics | n |",
        "|---|---|---|---|---|---|",
    ]
    for label, res in rep["results"].items():
        for key, r in res.items():
            others = ", ".join(f"{k} {v}" for k, v in r["metrics"].items() if k != r["metric"])
            lines.append(
                f"| {label} | {key} | {r['metric']} | {r['value']} | {others} | {r['n']} |"
            )
    lines += ["", "## Forgetting (test; drop = after own stage - after last stage)", ""]
    for key, f in rep["forgetting_test"].items():
        lines.append(
            f"- {key}: {f['after_own_stage']} -> {f['after_last_stage']} (drop {f['drop']})"
        )
    lines += ["", "## Training per stage", ""]
    for stage, t in rep["training"].items():
        lines.append(
            f"- {stage}: {t['examples']} examples, {t['steps']} steps, lr {t['lr']}, "
            f"{t['train_seconds']} s, {t['tokens_per_s']} tokens/s"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--command", default="", help="The training command, for the report.")
    parser.add_argument("--out", type=Path, required=True, help="Path stem for .md and .json.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rep = report(args.run, args.limit, args.seed, args.data_dir)
    rep["report_seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rep, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rep, args.command))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
