"""Test-set report of a progressive LLM run: metrics per stage and forgetting.

Evaluates exactly the models the run made:

* ``base``: the zero-shot base (full precision);
* after each stage but the last: rebuilt the way train/progressive.py built it during
  training, with the trainer's own functions: the stage adapter the run kept
  (``<run>/stages/<stage>/adapter.safetensors``) is loaded onto the model so far, loaded with
  the run's quantization (NF4 for a QLoRA run: the merged model is quantized again before the
  next stage, as in training), and folded in by :func:`affedge.train.lora.merge` (eqs. 2-6);
* after the last stage: the saved model itself (``<run>/model.safetensors``, the folder the
  exports read), not a rebuild. The rebuild of the last stage is compared with it and the
  largest weight difference is reported.

Each stage's headline benchmark is scored on the *test* split with the literature's metric
(SST-2 accuracy, MELD weighted-F1, MUStARD weighted-F1 and F1 of the sarcastic class) the way
the runtime scores labels (full label continuation at the answer position,
train/llm_eval.py), on the GPU when torch sees one (``--device``).

    python -m affedge.bench.train_report runs/progressive-smollm2 --limit 200 \
        --out bench/results/train_progressive_smollm2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from affedge.artifact import Manifest
from affedge.benchmarks import report_targets
from affedge.tasks import TASKS
from affedge.train.llm_common import run_base
from affedge.train.llm_eval import evaluate_source
from affedge.train.lora import load_base
from affedge.train.progressive import ROLE_STAGES, STAGES
from affedge.train.rebuild import adapter_files, chain
from affedge.train.sft_data import ChatFormat, find_source, load_records

#: stage -> (dataset, level) of the benchmark the GSA paper reports for the stage: the
#: benchmark table's ``train_report`` row at the stage's level (the negotiation-roles stage
#: has none of its own: bench/negotiate_eval.py judges it).
HEADLINE: dict[str, tuple[str, str]] = {
    stage: (b.dataset, level)
    for stage, level in STAGES.items()
    for b in report_targets("train_report")
    if TASKS[b.task].level == level and stage not in ROLE_STAGES
}


def stage_models(
    run: Path, manifest: dict[str, Any], device: torch.device
) -> Iterator[tuple[str, Any, Any, float | None]]:
    """Yield (label, model, tokenizer, difference): the base, the model after each stage
    (rebuilt by train/rebuild.py's :func:`chain`, as the trainer built it), and last the saved
    model with the largest weight difference between it and the rebuilt last stage (None for
    the others)."""
    base = run_base(manifest)
    model, tok = load_base(base, "none", device)
    yield "base", model, tok, None
    del model
    stages = [label for label, _ in adapter_files(run, manifest)]
    rebuilt: dict[str, Any] = {}
    for label, model, _ in chain(run, manifest, device):
        if label == stages[-1]:
            rebuilt = model.state_dict()
        else:
            yield label, model, tok, None
    saved, _ = load_base(run, "none", device)
    kept = saved.state_dict()
    difference = max(
        float((rebuilt[k].float() - kept[k].float()).abs().max()) for k in kept if k in rebuilt
    )
    del rebuilt
    saved.eval()
    yield stages[-1], saved, tok, difference


def report(
    run: Path, limit: int, seed: int, data_dir: str | None, device: torch.device
) -> dict[str, Any]:
    manifest = Manifest.read(run).to_dict()
    stages = [s["stage"] for s in manifest["stages"]]
    sources = {s: find_source(*HEADLINE[s]) for s in stages if s in HEADLINE}
    tests = {s: load_records(src, "test", limit, seed, data_dir) for s, src in sources.items()}
    results: dict[str, dict[str, Any]] = {}
    rebuilt_vs_saved = None
    for label, model, tok, difference in stage_models(run, manifest, device):
        rebuilt_vs_saved = difference if difference is not None else rebuilt_vs_saved
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
        "rebuilt_vs_saved_max_abs_diff": rebuilt_vs_saved,
        "training": {
            s["stage"]: {
                k: s[k] for k in ("examples", "steps", "lr", "train_seconds", "tokens_per_s")
            }
            for s in manifest["stages"]
        },
        "run_seconds": manifest["seconds"],
        "hyperparameters": manifest["hyperparameters"],
        "machine": (
            f"{platform.machine()}, {torch.cuda.get_device_name(device)}"
            if device.type == "cuda"
            else f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU"
        ),
        "quantization": manifest.get("quantization"),
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
        f"The last row of each benchmark is the saved model itself; the chain rebuilt from "
        f"the stage adapters ({rep['quantization']}) differs from it by at most "
        f"{rep['rebuilt_vs_saved_max_abs_diff']} per weight.",
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
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if seen"
    )
    parser.add_argument("--command", default="", help="The training command, for the report.")
    parser.add_argument("--out", type=Path, required=True, help="Path stem for .md and .json.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    rep = report(args.run, args.limit, args.seed, args.data_dir, device)
    rep["report_seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rep, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rep, args.command))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
