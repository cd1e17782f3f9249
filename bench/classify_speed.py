"""Label-logit scoring with prefix reuse versus generation-based classification.

Same model, same threads, same prompt tokens, same items (SST-2 test), one process:

* ``label-logit + prefix reuse``: affedge's GGUF engine (the instruction head's KV cache is
  evaluated once; each item costs one forward pass over its own tokens);
* ``label-logit, no prefix reuse``: the same scoring, re-evaluating the whole prompt per item;
* ``generation``: ``Llama.create_completion`` on the identical prompt tokens, greedy, up to
  ``--max-tokens`` tokens, the answer matched to a label (llama-cpp-python keeps the longest
  common prompt prefix between calls, so this baseline reuses the head too);
* ``generation, no prefix reuse``: the same after ``Llama.reset()`` before every item.

Each method runs ``--reps`` times; items/s is the median. Run:

    python -m affedge.bench.classify_speed --n 150 --reps 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from affedge.bench.peers import parse_answer
from affedge.bench.reporting import stamp, write_report
from affedge.datasets import load_dataset
from affedge.engines.gguf import GGUFEngine
from affedge.metrics import accuracy
from affedge.models import resolve_model
from affedge.records import Record
from affedge.tasks import get_benchmark, get_task

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(run: Callable[[], list[str]], reps: int) -> tuple[list[str], list[float]]:
    times, preds = [], []
    for _ in range(reps):
        start = time.perf_counter()
        preds = run()
        times.append(time.perf_counter() - start)
    return preds, times


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="GGUF name or path")
    parser.add_argument("--n", type=int, default=150, help="SST-2 test items (first N)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "classify_speed")
    args = parser.parse_args(argv)

    from llama_cpp import Llama

    task = get_task("polarity")
    labels = get_benchmark("polarity", "sst2").label_set()
    records: list[Record] = load_dataset("sst2", "test", limit=args.n)
    gold = [str(r.labels["sentiment"]) for r in records]
    ref = resolve_model(args.model)
    engine = GGUFEngine(ref, threads=args.threads)
    prompts = [engine.prompt_tokens(task, r) for r in records]
    llm = Llama(
        model_path=str(ref.path),
        n_ctx=engine.n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
        seed=0,
    )

    def logit_reuse() -> list[str]:
        return [res.label for res in engine.classify(records, task, labels)]

    def logit_fresh() -> list[str]:
        out = []
        for rec in records:
            engine._cached_head = None  # force re-evaluating the head for this item
            out.append(next(engine.classify([rec], task, labels)).label)
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
                out.append(parse_answer(completion["choices"][0]["text"], labels))
            return out

        return run

    methods = {
        "label-logit + prefix reuse": logit_reuse,
        "label-logit, no prefix reuse": logit_fresh,
        "generation (create_completion)": generate(reset=False),
        "generation, no prefix reuse": generate(reset=True),
    }
    rows = []
    predictions: dict[str, list[str]] = {}
    for name, run in methods.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        preds, times = _timed(run, args.reps)
        predictions[name] = preds
        rates = [len(records) / t for t in times]
        rows.append(
            {
                "method": name,
                "items_per_s_median": round(statistics.median(rates), 2),
                "items_per_s_runs": [round(r, 2) for r in rates],
                "accuracy": round(accuracy(gold, preds, labels), 4),
                "unparsed": sum(p == "<unparsed>" for p in preds),
            }
        )
    base = next(r for r in rows if r["method"] == "generation (create_completion)")
    main_preds = predictions["label-logit + prefix reuse"]
    for row in rows:
        row["speedup_vs_generation"] = round(
            row["items_per_s_median"] / base["items_per_s_median"], 2
        )
        row["agreement_with_label_logit"] = round(
            accuracy(main_preds, predictions[row["method"]], labels), 4
        )
    report = {
        **stamp("classify_speed", argv, "llama-cpp-python"),
        "model": ref.name,
        "items": f"SST-2 test, first {len(records)}",
        "threads": args.threads,
        "reps": args.reps,
        "max_tokens": args.max_tokens,
        "results": rows,
    }
    write_report(args.out, report, _markdown(report))


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Label-logit scoring vs generation-based classification",
        "",
        f"`{report['command']}` on {report['date']}: {report['model']}, {report['items']}, "
        f"{report['threads']} threads, median of {report['reps']} runs; {m['cpu']} "
        f"({m['cores_usable']} usable cores), llama-cpp-python "
        f"{m['packages'].get('llama-cpp-python')}.",
        "",
        "| method | items/s (median) | x generation | accuracy | agreement | unparsed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['method']} | {r['items_per_s_median']} | {r['speedup_vs_generation']} | "
            f"{r['accuracy']} | {r['agreement_with_label_logit']} | {r['unparsed']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
