"""SANM negotiation versus single-pass classification, same model, same items.

On the first ``--n`` utterances of the MELD and EmoryNLP test splits (whole dialogues, so
every item has its real history window): weighted-F1 of both, the consensus rate and mean
rounds of negotiation, and its cost as a ratio of single-pass time, all in one process.

    python -m affedge.bench.negotiate_eval --n 100 --threads 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affedge.bench.reporting import stamp, write_report
from affedge.datasets import load_dataset
from affedge.engines import open_engine
from affedge.metrics import weighted_f1
from affedge.negotiate import DEFAULT_MAX_ROUNDS, Negotiator
from affedge.tasks import TASKS, get_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def run(dataset: str, n: int, engine: Any, max_rounds: int) -> dict[str, Any]:
    bench = get_benchmark("emotion", dataset)
    labels = bench.label_set()
    records = load_dataset(dataset, "test", limit=n)
    gold = [str(r.labels["emotion"]) for r in records]
    task = TASKS["emotion"]

    start = time.perf_counter()
    single = [res.label for res in engine.classify(records, task, labels)]
    single_s = time.perf_counter() - start

    negotiator = Negotiator(engine, task, labels, max_rounds)
    start = time.perf_counter()
    outcomes = list(negotiator.run(records))
    negotiate_s = time.perf_counter() - start
    pred = [o.label for o in outcomes]
    return {
        "dataset": dataset,
        "items": len(records),
        "single_pass_weighted_f1": round(weighted_f1(gold, single, labels), 4),
        "negotiate_weighted_f1": round(weighted_f1(gold, pred, labels), 4),
        "consensus_rate": round(sum(o.consensus for o in outcomes) / len(outcomes), 4),
        "mean_rounds": round(sum(len(o.rounds) for o in outcomes) / len(outcomes), 3),
        "changed_vs_single_pass": sum(a != b for a, b in zip(single, pred, strict=True)),
        "single_pass_s": round(single_s, 2),
        "negotiate_s": round(negotiate_s, 2),
        "cost_ratio": round(negotiate_s / single_s, 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-rounds", type=int, default=DEFAULT_MAX_ROUNDS)
    parser.add_argument("--out", type=Path, default=RESULTS / "negotiate_eval")
    args = parser.parse_args(argv)
    engine = open_engine(args.model, threads=args.threads)
    rows = [run(d, args.n, engine, args.max_rounds) for d in ("meld", "emorynlp")]
    report = {
        **stamp("negotiate_eval", argv, "llama-cpp-python"),
        "model": engine.name,
        "max_rounds": args.max_rounds,
        "threads": args.threads,
        "results": rows,
    }
    write_report(args.out, report, markdown(report))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# SANM negotiation vs single-pass classification",
        "",
        f"`{report['command']}` on {report['date']}: {report['model']}, max "
        f"{report['max_rounds']} rounds, {report['threads']} threads, "
        f"{report['machine']['cpu']}. Test splits, first N utterances.",
        "",
        "| dataset | N | w-F1 single | w-F1 SANM | consensus | mean rounds | changed | "
        "cost x single |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['dataset']} | {r['items']} | {r['single_pass_weighted_f1']} | "
            f"{r['negotiate_weighted_f1']} | {r['consensus_rate']} | {r['mean_rounds']} | "
            f"{r['changed_vs_single_pass']} | {r['cost_ratio']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
