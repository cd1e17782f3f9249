"""Forgetting table of progressive runs that differ in one setting (issue 12, item 2).

Reads the validation the trainer recorded after every stage (``forgetting`` in each run's
``affedge.json``, train/progressive.py) and lays the runs side by side: each earlier task's
metric after its own stage and after the last stage, the drop, and whether it stays within
the goal's 2 points. Nothing is re-scored here, so the table is exactly what the runs measured
(validation split, ``--eval-limit`` items per dataset); test numbers are bench/llm_report.py's.

    python -m affedge.bench.forgetting_report runs/progressive-cpu runs/progressive-cpu-replay0 \\
        --out bench/results/llm_forgetting
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affedge.artifact import Manifest
from affedge.bench.reporting import stamp, write_report

RESULTS = Path(__file__).resolve().parent / "results"
#: The issue's goal: every earlier task within 2 points of its own-stage value.
TOLERANCE = 0.02


def run_rows(run: Path) -> dict[str, Any]:
    info = Manifest.read(run).info
    hp = info["hyperparameters"]
    stages = [s["stage"] for s in info["stages"]]
    rows = []
    for key, f in info["forgetting"].items():
        rows.append(
            {
                "source": key,
                "metric": f["metric"],
                "trajectory": f["trajectory"],
                "own": f["after_own_stage"],
                "last": f["after_last_stage"],
                "drop": f["drop"],
                "within_goal": f["drop"] <= TOLERANCE,
            }
        )
    last = info["validation"][stages[-1]]
    return {
        "run": str(run),
        "replay": hp.get("replay"),
        "sanm_replay": hp.get("sanm_replay") if "sanm" in stages else None,
        "stages": stages,
        "eval_limit": hp.get("eval_limit"),
        "rows": rows,
        "last_stage": {k: v["value"] for k, v in last.items()},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Forgetting across the progressive chain (validation)",
        "",
        f"`{report['command']}` on {report['machine']['cpu']}, {report['date']}. Values are the "
        "validation metrics each run recorded after every stage (`--eval-limit` items per "
        f"dataset); drop = after own stage - after last stage; goal: drop <= {TOLERANCE}.",
        "",
    ]
    for run in report["runs"]:
        stages = run["stages"]
        lines += [
            f"## {Path(run['run']).name}: replay {run['replay']}"
            + (f", roles stage {run['sanm_replay']}" if run.get("sanm_replay") is not None else "")
            + f" (n={run['eval_limit']} per dataset)",
            "",
            "| dataset | metric | " + " | ".join(f"after {s}" for s in stages) + " | drop | goal |",
            "|---|---|" + "---:|" * len(stages) + "---:|---|",
        ]
        for r in run["rows"]:
            cells = [f"{r['trajectory'][s]:.3f}" if s in r["trajectory"] else "" for s in stages]
            verdict = "met" if r["within_goal"] else "MISSED"
            lines.append(
                f"| {r['source']} | {r['metric']} | "
                + " | ".join(cells)
                + f" | {r['drop']:+.3f} | {verdict} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="progressive run folders")
    parser.add_argument("--out", type=Path, default=RESULTS / "llm_forgetting")
    args = parser.parse_args(argv)
    report = {
        **stamp("forgetting_report", list(argv) if argv is not None else None, "torch"),
        "tolerance": TOLERANCE,
        "runs": [run_rows(run) for run in args.runs],
    }
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
