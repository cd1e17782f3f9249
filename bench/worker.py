"""Measure one system in a fresh process (run by :mod:`affedge.bench.harness`, not by hand).

A fresh process per system makes cold start honest (import + load + first item) and makes
the peak RSS that system's own. Prints one line ``AFFEDGE_BENCH_RESULT {json}`` on stdout.

    python -m affedge.bench.worker --system affedge:minilm-affect-int8 --threads 2 \\
        --spawned $(date +%s.%N) --dataset sst2 --n 200 --reps 3
    python -m affedge.bench.worker --sgemm 1024 --threads 2 --reps 5
"""

from __future__ import annotations

import time

#: Before the heavy imports: cold start counts them.
SPAWN_FALLBACK = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

MARKER = "AFFEDGE_BENCH_RESULT "


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    except ImportError:  # not POSIX: the current RSS is the best psutil offers
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20, 1)


def sgemm(n: int, reps: int) -> dict[str, Any]:
    """float32 matmul throughput of numpy's BLAS (threads set by the caller's environment)."""
    import numpy as np

    from affedge.bench.harness import matmul_gflops

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        rates.append(matmul_gflops(n, time.perf_counter() - start))
    return {"n": n, "gflops_runs": [round(r, 2) for r in rates], "gflops": statistics.median(rates)}


def load_inputs(args: argparse.Namespace) -> tuple[list[Any], list[str] | None, Any, Any]:
    """(records, gold labels or None, task, label set) of the benchmark inputs."""
    from affedge.datasets import load_dataset
    from affedge.io import InputReader
    from affedge.tasks import get_benchmark, get_task

    task = get_task(args.task, "classify")
    if args.input:
        records = list(InputReader(args.input))[: args.n]
        return records, None, task, task.labels
    bench = get_benchmark(args.task, args.dataset)
    from affedge.evaluate import select_records

    records, _ = select_records(bench, load_dataset(bench.dataset, args.split, root=args.data_dir))
    records = records[: args.n]
    return records, [str(r.labels[bench.layer]) for r in records], task, bench.label_set()


def measure(args: argparse.Namespace, spawned: float) -> dict[str, Any]:
    from affedge.bench.harness import latency_summary
    from affedge.bench.peers import forward_params, forward_tokens, open_system
    from affedge.metrics import accuracy, ece

    data_start = time.time()
    records, gold, task, labels = load_inputs(args)
    data_s = time.time() - data_start
    sources = dict(s.split("=", 1) for s in args.source)
    load_start = time.time()
    engine = open_system(args.system, args.threads, {k: Path(v) for k, v in sources.items()})
    load_s = time.time() - load_start
    list(engine.classify(records[:1], task, labels))
    first = time.time()
    cold_start_s = first - spawned - data_s

    lat_items = records[: args.latency_n]
    latency_reps = []
    for _ in range(args.reps):
        times = []
        for rec in lat_items:
            t = time.perf_counter()
            list(engine.classify([rec], task, labels))
            times.append(time.perf_counter() - t)
        latency_reps.append(times)

    rates: list[float] = []
    preds: list[str] = []
    confidence: list[float] = []
    generated = 0
    for _ in range(args.reps):
        if hasattr(engine, "generated_tokens"):
            engine.generated_tokens = 0
        t = time.perf_counter()
        results = list(engine.classify(records, task, labels))
        rates.append(len(records) / (time.perf_counter() - t))
        preds = [r.label for r in results]
        confidence = [max(r.probs.values()) for r in results]
        generated = getattr(engine, "generated_tokens", 0)
    items_per_s = statistics.median(rates)
    tokens = forward_tokens(engine, records, task, labels)
    if tokens is not None:
        tokens += generated
    params = forward_params(engine)
    out: dict[str, Any] = {
        "system": args.system,
        "threads": args.threads,
        "items": len(records),
        "reps": args.reps,
        "cold_start_s": round(cold_start_s, 3),
        "load_s": round(load_s, 3),
        **latency_summary(latency_reps),
        "items_per_s": round(items_per_s, 3),
        "items_per_s_runs": [round(r, 3) for r in rates],
        "tokens_per_pass": tokens,
        "tokens_per_s": round(tokens * items_per_s / len(records), 1) if tokens else None,
        "params": params,
        "probabilistic": bool(getattr(engine, "probabilistic", True)),
        "predictions": preds,
    }
    if gold is not None:
        out["accuracy"] = round(accuracy(gold, preds, labels), 4)
        out["ece"] = (
            round(ece(confidence, [g == p for g, p in zip(gold, preds, strict=True)]), 4)
            if out["probabilistic"]
            else None
        )
    engine.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system")
    parser.add_argument("--sgemm", type=int, help="measure float32 matmul of this size instead")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spawned", type=float, help="time.time() when the parent spawned us")
    parser.add_argument("--task", default="polarity")
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-dir")
    parser.add_argument("--input", help="unlabelled input file instead of a dataset")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--latency-n", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--source", action="append", default=[], help="MODEL=TORCH_FOLDER")
    args = parser.parse_args(argv)
    if args.sgemm:
        result = sgemm(args.sgemm, args.reps)
    else:
        result = measure(args, args.spawned or SPAWN_FALLBACK)
    sys.stdout.write(MARKER + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
