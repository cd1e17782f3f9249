"""Test-set report of a fine-tuned LLM adapter through the runtime (issue 12, items 5 and 6).

Scores, with the engine a user runs (llama.cpp, the built-in base + the LoRA adapter GGUF,
affedge/engines/gguf_adapter.py), on the *test* splits with the literature's metric:

* ``base``: the zero-shot base model the adapter applies to;
* for a progressive run, the model after each stage but the last: the stage adapters so far
  (eqs. 2-6: ``W + sum_{j<=i} B_j A_j``) written by ``affedge export gguf-lora`` into a
  scratch folder (verified like every export, on a small sample);
* ``final``: the shipped adapter artifact itself (exactly the file a user runs).

The benchmarks are the benchmark table's ``llm_report`` rows (affedge/benchmarks.py) whose task
the adapter answers; each goal is checked for the final model. ``--limit`` bounds the final
model's items per benchmark (default: the full test split), ``--stage-limit`` the base's and
the intermediate stages' (they are references, not the product).

    python -m affedge.bench.llm_report runs/progressive-cpu \\
        --adapter affedge/assets/smollm2-affect-progressive --stage-limit 500 \\
        --out bench/results/llm_progressive
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affedge.artifact import Manifest, has_manifest
from affedge.bench.reporting import stamp, write_report
from affedge.benchmarks import report_targets
from affedge.engines import open_engine
from affedge.evaluate import evaluate

RESULTS = Path(__file__).resolve().parent / "results"


def stage_prefix_adapters(run: Path, base: str, scratch: Path, threads: int) -> list[tuple]:
    """(label, artifact folder) of the model after each progressive stage but the last."""
    from affedge.export.gguf_lora import export_gguf_lora

    manifest = Manifest.read(run) if has_manifest(run) else None
    stages = [str(s["stage"]) for s in (manifest.info.get("stages") if manifest else []) or []]
    out = []
    for i in range(1, len(stages)):
        prefix = scratch / f"run-{i}"
        (prefix / "stages").mkdir(parents=True)
        for stage in stages[:i]:
            (prefix / "stages" / stage).symlink_to((run / "stages" / stage).resolve())
        artifact = scratch / f"after-{stages[i - 1]}"
        export_gguf_lora(prefix, artifact, base=base, sample=50, threads=threads, log=print)
        out.append((f"after {'+'.join(stages[:i])}", artifact))
    return out


def score(system: str, model: str | Path, benches: list, limit: int | None, threads: int) -> list:
    engine = open_engine(str(model), threads=threads)
    rows = []
    try:
        for bench in benches:
            rep = evaluate(engine, bench, "test", limit=limit)
            row = {
                "system": system,
                "benchmark": bench.name,
                "metric": bench.metric,
                "value": round(rep.metrics[bench.metric], 4),
                "n": rep.n,
                "items_per_s": round(rep.items_per_s, 2),
                "ece": rep.ece,
            }
            print(row, flush=True)
            rows.append(row)
    finally:
        close = getattr(engine, "close", None)
        if close:
            close()
    return rows


def markdown(report: dict[str, Any]) -> str:
    systems = list(dict.fromkeys(r["system"] for r in report["rows"]))
    cell = {(r["system"], r["benchmark"]): r for r in report["rows"]}
    lines = [
        f"# Fine-tuned LLM adapter through the runtime: {report['adapter_name']}",
        "",
        f"`{report['command']}` on {report['machine']['cpu']}, {report['date']}. Test splits, "
        "the literature's metric; every system runs in llama.cpp on the built-in base "
        f"({report['base']}). `final` is the shipped adapter ({report['final_n']}); base and "
        f"intermediate stages: {report['stage_n']}.",
        "",
        "| benchmark | metric | " + " | ".join(systems) + " | goal | final vs goal |",
        "|---|---|" + "---:|" * len(systems) + "---:|---|",
    ]
    for name, goal in report["goals"].items():
        vals = []
        for s in systems:
            r = cell.get((s, name))
            vals.append(f"{r['value']:.4f} (n={r['n']})" if r else "")
        final = cell.get(("final", name))
        verdict = "" if final is None else ("met" if final["value"] >= goal else "MISSED")
        metric = next(r["metric"] for r in report["rows"] if r["benchmark"] == name)
        lines.append(f"| {name} | {metric} | " + " | ".join(vals) + f" | {goal} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the training run folder")
    parser.add_argument("--adapter", type=Path, required=True, help="the shipped adapter")
    parser.add_argument("--limit", type=int, default=None, help="final: items per benchmark")
    parser.add_argument("--stage-limit", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="systems to leave out: base,stages")
    parser.add_argument("--out", type=Path, default=RESULTS / "llm_progressive")
    args = parser.parse_args(argv)

    adapter = Manifest.read(args.adapter)
    base = str(adapter.base)
    benches = [b for b in report_targets("llm_report") if b.task in adapter.tasks]
    skip = set(filter(None, args.skip.split(",")))
    rows: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="affedge-llm-report-"))
    try:
        if "base" not in skip:
            rows += score("base", base, benches, args.stage_limit, args.threads)
        if "stages" not in skip:
            for label, folder in stage_prefix_adapters(args.run, base, scratch, args.threads):
                rows += score(label, folder, benches, args.stage_limit, args.threads)
        rows += score("final", args.adapter, benches, args.limit, args.threads)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        **stamp("llm_report", list(argv) if argv is not None else None, "llama_cpp_python"),
        "adapter_name": args.adapter.name,
        "base": base,
        "final_n": f"first {args.limit} per benchmark" if args.limit else "full test splits",
        "stage_n": f"first {args.stage_limit} items per benchmark",
        "goals": {b.name: b.goals["llm_report"] for b in benches},
        "rows": rows,
    }
    write_report(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
