"""Quality and speed of the multi-task encoder against its targets (issue: edge encoder).

Quality: every target benchmark on its test split with the literature's metric, for the int8
and fp32 ONNX artifacts (int8 must stay within 1 point of fp32). Speed, one process, the
same 512 SST-2/TweetEval test items, median of ``--reps`` runs: int8 ONNX, fp32 ONNX and
transformers fp32 of the same weights (batch 32), plus the GGUF default on a subset. Cold
start: wall time of ``affedge classify`` on a 10-line file in a fresh process (median of 5).

    python -m affedge.bench.encoder_report --int8 affedge/assets/minilm-affect-int8 \\
        --fp32 runs/onnx/fp32 --torch runs/encoder-main
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from affedge.bench.reporting import stamp, write_report
from affedge.benchmarks import report_targets
from affedge.datasets import load_dataset
from affedge.engines import open_engine
from affedge.evaluate import evaluate
from affedge.models import ModelRef
from affedge.records import Record
from affedge.tasks import TASKS, get_benchmark

RESULTS = Path(__file__).resolve().parent / "results"

#: (task, dataset, metric, target) as the issue states them: the benchmark table's
#: ``encoder_report`` rows and goals.
TARGETS: tuple[tuple[str, str, str, float], ...] = tuple(
    (b.task, b.dataset, b.metric, b.goals["encoder_report"])
    for b in report_targets("encoder_report")
    if "encoder_report" in b.goals
)


def quality(model: Path, threads: int) -> list[dict[str, Any]]:
    engine = open_engine(ModelRef.from_path(model), threads=threads)
    rows = []
    for task, dataset, metric, target in TARGETS:
        report = evaluate(engine, get_benchmark(task, dataset), "test")
        rows.append(
            {
                "task": task,
                "dataset": dataset,
                "metric": metric,
                "target": target,
                "value": round(report.metrics[metric], 4),
                "n": report.n,
            }
        )
    return rows


def _median_rate(run: Callable[[], object], n: int, reps: int) -> float:
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        rates.append(n / (time.perf_counter() - start))
    return round(statistics.median(rates), 2)


def speed(
    int8: Path, fp32: Path | None, torch_dir: Path | None, threads: int, reps: int
) -> list[dict[str, Any]]:
    items: list[Record] = load_dataset("sst2", "test", limit=256) + load_dataset(
        "tweet_eval_sentiment", "test", limit=256
    )
    task = TASKS["sentiment"]
    rows = []
    engines = {"onnx int8": int8, "onnx fp32": fp32}
    for name, path in engines.items():
        if path is None:
            continue
        engine = open_engine(ModelRef.from_path(path), threads=threads)
        list(engine.classify(items[:32], task))  # warm-up
        rate = _median_rate(lambda e=engine: list(e.classify(items, task)), len(items), reps)
        rows.append({"engine": name, "items_per_s": rate, "items": len(items)})
    if torch_dir is not None:  # the same weights on the torch-encoder backend, fp32
        engine = open_engine(ModelRef.from_path(torch_dir), threads=threads)
        list(engine.classify(items[:32], task))  # warm-up
        rate = _median_rate(lambda e=engine: list(e.classify(items, task)), len(items), reps)
        rows.append(
            {"engine": "transformers fp32 (torch)", "items_per_s": rate, "items": len(items)}
        )
    gguf = open_engine("smollm2-135m-instruct", threads=threads)
    subset = items[:: len(items) // 32][:32]
    rate = _median_rate(lambda: list(gguf.classify(subset, task)), len(subset), 1)
    rows.append({"engine": "gguf smollm2-135m (label-logit)", "items_per_s": rate, "items": 32})
    base = next((r["items_per_s"] for r in rows if r["engine"].startswith("transformers")), None)
    for row in rows:
        row["x_transformers_fp32"] = round(row["items_per_s"] / base, 2) if base else None
    return rows


def cold_start(model: Path, runs: int = 5) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "ten.txt"
        src.write_text("\n".join(f"Line {i}: what a lovely surprise." for i in range(10)) + "\n")
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "affedge.cli", "classify", str(src), "-m", str(model), "-q"],
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--int8", type=Path, required=True)
    parser.add_argument("--fp32", type=Path)
    parser.add_argument("--torch", type=Path, help="trained model folder (safetensors)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_report")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        **stamp("encoder_report", argv, "onnxruntime", "torch", "llama-cpp-python"),
        "threads": args.threads,
        "quality": {"int8": quality(args.int8, args.threads)},
    }
    if args.fp32:
        report["quality"]["fp32"] = quality(args.fp32, args.threads)
    report["speed"] = speed(args.int8, args.fp32, args.torch, args.threads, args.reps)
    report["cold_start_s"] = cold_start(args.int8)
    write_report(args.out, report, markdown(report))


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    fp32 = {(r["task"], r["dataset"]): r["value"] for r in report["quality"].get("fp32", [])}
    lines = [
        "# Multi-task encoder: targets, quality and speed",
        "",
        f"`{report['command']}` on {report['date']}; {m['cpu']} ({m['cores_usable']} usable "
        f"cores), {report['threads']} threads. Test splits, the literature's metric.",
        "",
        "| task | dataset | metric | target | int8 | fp32 | n | met |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report["quality"]["int8"]:
        f = fp32.get((r["task"], r["dataset"]))
        lines.append(
            f"| {r['task']} | {r['dataset']} | {r['metric']} | {r['target']:.2f} | "
            f"{r['value']:.4f} | {'' if f is None else f'{f:.4f}'} | {r['n']} | "
            f"{'yes' if r['value'] >= r['target'] else 'no'} |"
        )
    lines += [
        "",
        "| engine | items/s (median) | x transformers fp32 |",
        "|---|---:|---:|",
    ]
    for r in report["speed"]:
        lines.append(f"| {r['engine']} | {r['items_per_s']} | {r['x_transformers_fp32']} |")
    lines += [
        "",
        f"Cold start of `affedge classify` on a 10-line file: {report['cold_start_s']} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
