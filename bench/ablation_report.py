"""Table of an AWL/focal ablation from the manifests of its training runs.

Every run trains the same encoder on the same data, steps and seed with one switch changed
(see runs/ablation.sh in the README); the scores are the runs' own validation metrics
(macro-F1 for classification sources, Pearson for regression sources).

    python -m affedge.bench.ablation_report runs/ablation-*
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from affedge.artifact import Manifest
from affedge.bench.reporting import write_report

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_ablation")
    args = parser.parse_args(argv)
    runs = []
    for folder in args.runs:
        manifest = Manifest.read(folder).to_dict()
        hp = manifest["hyper_parameters"]
        runs.append(
            {
                "run": folder.name,
                "tawl": hp["tawl"],
                "dawl": hp["dawl"],
                "focal_gamma": hp["focal_gamma"],
                "steps": hp["steps"],
                "validation": manifest["validation"],
                "final_task_weights": manifest["training"]["history"][-1]["task_weights"],
            }
        )
    sources = [k for k in runs[0]["validation"] if k != "mean"] + ["mean"]
    lines = [
        "# Encoder ablation: T-AWL, D-AWL, focal loss (validation splits)",
        "",
        f"{runs[0]['steps']} steps each, same seed and data; macro-F1 (classification) or "
        "Pearson (regression) per training source on its validation split.",
        "",
        "| source | " + " | ".join(r["run"] for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for source in sources:
        values = [r["validation"].get(source, float("nan")) for r in runs]
        best = max(values)
        cells = [f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in values]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    write_report(args.out, {"runs": runs}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
