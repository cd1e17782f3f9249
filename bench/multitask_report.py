"""Validation of multi-task LLM runs side by side (issue 12, item 3: T-AWL/D-AWL on and off).

Reads what each run's trainer recorded (``validation`` in ``affedge.json``,
train/multitask.py: the merged model scored on ``--eval-limit`` validation items per dataset
with the literature's metric) and the settings that differ between the runs. Nothing is
re-scored, so the table is exactly what the runs measured; test numbers through the runtime
are bench/llm_report.py's.

    python -m affedge.bench.multitask_report runs/multitask-cpu runs/multitask-cpu-noawl \\
        --out bench/results/llm_multitask_awl
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affedge.artifact import Manifest
from affedge.bench.reporting import stamp, write_report

RESULTS = Path(__file__).resolve().parent / "results"
#: Settings shown for every run (the ones an ablation changes).
SETTINGS = ("tawl", "dawl", "focal_gamma", "soft_scores", "aux", "steps", "lr", "limit")


def run_summary(run: Path) -> dict[str, Any]:
    info = Manifest.read(run).info
    hp = info["hyperparameters"]
    return {
        "run": str(run),
        "settings": {k: hp.get(k) for k in SETTINGS},
        "validation": {
            key: {"metric": r["metric"], "value": r["value"], "n": r["n"]}
            for key, r in info["validation"].items()
        },
        "task_weights": info["training"].get("task_weights", {}),
        "train_seconds": info["training"].get("seconds"),
    }


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    names = [Path(r["run"]).name for r in runs]
    lines = [
        "# Multi-task LLM runs: validation side by side",
        "",
        f"`{report['command']}` on {report['machine']['cpu']}, {report['date']}. Validation "
        "metrics as each run recorded them (merged model in torch, `--eval-limit` items per "
        "dataset).",
        "",
        "| setting | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for key in SETTINGS:
        lines.append(f"| {key} | " + " | ".join(str(r["settings"][key]) for r in runs) + " |")
    lines += ["", "| dataset | metric | " + " | ".join(names) + " |"]
    lines.append("|---|---|" + "---:|" * len(runs))
    keys = list(dict.fromkeys(k for r in runs for k in r["validation"]))
    for key in keys:
        found = [r["validation"].get(key) for r in runs]
        metric = next(f["metric"] for f in found if f)
        cells = [f"{f['value']:.3f} (n={f['n']})" if f else "" for f in found]
        lines.append(f"| {key} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="multitask run folders")
    parser.add_argument("--out", type=Path, default=RESULTS / "llm_multitask_awl")
    args = parser.parse_args(argv)
    report = {
        **stamp("multitask_report", list(argv) if argv is not None else None, "torch"),
        "runs": [run_summary(run) for run in args.runs],
    }
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
