"""Length-bucketed encoder batches versus input-order batches, same engine, same process.

The default int8 ONNX encoder classifies the SST-2 test texts (polarity) two ways:

* ``input order``: ``window = batch_size``, i.e. batches taken in input order and padded to
  their longest item (the engine's behaviour before bucketing);
* ``bucketed``: the default look-ahead window (``WINDOW_BATCHES`` x ``batch_size`` records
  sorted by token length, results restored to input order).

Per thread count, the two alternate for ``--reps`` repetitions (interleaved, so drift in the
machine's load hits both); items/s is the median. Both are also compared with a batch-size-1
run (no padding, no batch neighbours): int8 dynamic quantization scales activations per batch,
so an item's probabilities move slightly with its batch. Run:

    python -m affedge.bench.encoder_batching --threads 1,2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from affedge.bench.reporting import stamp, write_report
from affedge.datasets import load_dataset
from affedge.engines import open_engine
from affedge.engines.encoder import WINDOW_BATCHES
from affedge.tasks import get_task

RESULTS = Path(__file__).resolve().parent / "results"


def _probs(engine, records, task) -> np.ndarray:
    return np.array([list(r.probs.values()) for r in engine.classify(records, task)])


def _compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(a - b)
    return {
        "max_abs_prob_diff": round(float(diff.max()), 4),
        "median_abs_prob_diff": round(float(np.median(diff)), 5),
        "label_agreement": round(float(np.mean(a.argmax(1) == b.argmax(1))), 4),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-affect-int8")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=0, help="first N SST-2 test texts (0: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_batching")
    args = parser.parse_args(argv)

    task = get_task("polarity")
    records = load_dataset("sst2", "test", limit=args.n or None)
    threads = [int(t) for t in args.threads.split(",")]
    rows, quality = [], {}
    for n_threads in threads:
        engine = open_engine(args.model, threads=n_threads)
        size = engine.batch_size
        modes = {"input order": size, "bucketed": WINDOW_BATCHES * size}
        if not quality:
            engine.window = None
            engine.batch_size = 1
            single = _probs(engine, records, task)
            engine.batch_size = size
            for mode, window in modes.items():
                engine.window = window
                quality[mode] = _compare(_probs(engine, records, task), single)
            engine.window = modes["input order"]
            unsorted = _probs(engine, records, task)
            engine.window = modes["bucketed"]
            quality["bucketed vs input order"] = _compare(_probs(engine, records, task), unsorted)
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for rep in range(args.reps):
            for mode, window in modes.items():
                print(f"{n_threads} threads, rep {rep + 1}: {mode} ...", file=sys.stderr)
                engine.window = window
                start = time.perf_counter()
                for _ in engine.classify(records, task):
                    pass
                times[mode].append(time.perf_counter() - start)
        engine.close()
        rates = {mode: [len(records) / t for t in ts] for mode, ts in times.items()}
        medians = {mode: statistics.median(r) for mode, r in rates.items()}
        rows.append(
            {
                "threads": n_threads,
                "batch_size": size,
                "window": modes["bucketed"],
                "items_per_s_input_order": round(medians["input order"], 1),
                "items_per_s_bucketed": round(medians["bucketed"], 1),
                "ratio": round(medians["bucketed"] / medians["input order"], 2),
                "runs_input_order": [round(r, 1) for r in rates["input order"]],
                "runs_bucketed": [round(r, 1) for r in rates["bucketed"]],
            }
        )
    best = max(rows, key=lambda r: r["items_per_s_bucketed"])
    report = {
        **stamp("encoder_batching", list(argv) if argv is not None else None, "onnxruntime"),
        "model": args.model,
        "items": f"SST-2 test, {len(records)} texts, polarity",
        "reps": args.reps,
        "results": rows,
        "fastest_threads_bucketed": best["threads"],
        "agreement_vs_batch_size_1": {k: v for k, v in quality.items() if "vs" not in k},
        "bucketed_vs_input_order": quality.get("bucketed vs input order"),
    }
    write_report(args.out, report, _markdown(report))


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Length-bucketed encoder batches",
        "",
        f"`{report['command']}` on {report['date']}: {report['model']}, {report['items']}; "
        f"median of {report['reps']} interleaved runs per mode; {m['cpu']} "
        f"({m['cores_usable']} usable cores), onnxruntime {m['packages'].get('onnxruntime')}.",
        "",
        "| threads | batch | window | input order items/s | bucketed items/s | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['threads']} | {r['batch_size']} | {r['window']} | "
            f"{r['items_per_s_input_order']} | {r['items_per_s_bucketed']} | {r['ratio']} |"
        )
    lines += [
        "",
        f"Fastest thread count (bucketed): {report['fastest_threads_bucketed']}.",
        "",
        "Probabilities against a batch-size-1 run (int8 dynamic quantization scales "
        "activations per batch, padding included):",
        "",
        "| mode | max abs prob diff | median abs prob diff | label agreement |",
        "|---|---:|---:|---:|",
    ]
    quality = dict(report["agreement_vs_batch_size_1"])
    quality["bucketed vs input order"] = report["bucketed_vs_input_order"]
    for mode, q in quality.items():
        lines.append(
            f"| {mode} | {q['max_abs_prob_diff']} | {q['median_abs_prob_diff']} | "
            f"{q['label_agreement']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
