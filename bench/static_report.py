"""The static tier against the lexicons and the transformer encoder, in one process.

Speed: VADER, TextBlob, the static model (``--static``) and the int8 ONNX encoder
(``--onnx``, the default model) label the same SST-2 test texts (all 1,821, task polarity)
through the same :class:`~affedge.engines.Engine` interface; every repetition runs every system
once, in turn, so load on a shared machine hits them alike; the table gives each system's
median items/s and its ratio to VADER. The static model is also timed on ``--task all``
(every head). Quality: the static model on the test splits of the issue's benchmarks with the
literature's metric (the same :func:`affedge.evaluate.evaluate` that ``affedge eval`` runs),
VADER and TextBlob on the two sentiment benchmarks for reference.

    python -m affedge.bench.static_report
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from affedge.bench.peers import LexiconEngine
from affedge.bench.reporting import stamp, write_report
from affedge.datasets import load_dataset
from affedge.engines import Engine, open_engine
from affedge.evaluate import evaluate
from affedge.records import Record
from affedge.tasks import TASKS, get_benchmark

RESULTS = Path(__file__).resolve().parent / "results"

#: (task, dataset, metric, goal or None) for the static tier (issue 13 item 4).
TARGETS: tuple[tuple[str, str, str, float | None], ...] = (
    ("polarity", "sst2", "accuracy", 0.80),
    ("sentiment", "tweet_eval_sentiment", "macro_recall", 0.60),
    ("emotion", "tweet_eval_emotion", "macro_f1", 0.60),
    ("sarcasm", "tweet_eval_irony", "f1_positive", None),
    ("emotion", "meld", "weighted_f1", None),
    ("valence", "semeval2018_v_reg", "pearson", None),
    ("anger", "semeval2018_ei_anger", "pearson", None),
    ("fear", "semeval2018_ei_fear", "pearson", None),
    ("joy", "semeval2018_ei_joy", "pearson", None),
    ("sadness", "semeval2018_ei_sadness", "pearson", None),
)
#: The speed goal: the static model's items/s over VADER's, same run.
SPEED_GOAL = 2.0


def quality(static: Engine, lexicons: dict[str, Engine]) -> list[dict[str, Any]]:
    rows = []
    for task, dataset, metric, goal in TARGETS:
        bench = get_benchmark(task, dataset)
        systems: dict[str, Engine] = {"static": static}
        if task in ("polarity", "sentiment"):
            systems.update(lexicons)
        for name, engine in systems.items():
            report = evaluate(engine, bench, "test")
            rows.append(
                {
                    "system": name,
                    "task": task,
                    "dataset": dataset,
                    "metric": metric,
                    "value": round(report.metrics[metric], 4),
                    "goal": goal if name == "static" else None,
                    "n": report.n,
                }
            )
    return rows


def speed(systems: dict[str, Callable[[], object]], n: int, reps: int) -> dict[str, dict[str, Any]]:
    """Median items/s of each system over ``reps`` rounds (every system once per round)."""
    for run in systems.values():
        run()  # warm-up: caches, lazy imports, first-batch allocations
    rates: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(reps):
        for name, run in systems.items():
            start = time.perf_counter()
            run()
            rates[name].append(n / (time.perf_counter() - start))
    return {
        name: {
            "items_per_s": round(statistics.median(values), 1),
            "runs": [round(v, 1) for v in values],
        }
        for name, values in rates.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--static", default="minilm-affect-static", help="static model")
    parser.add_argument("--onnx", default="minilm-affect-int8", help="ONNX encoder ('' skips)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-quality", action="store_true", help="speed only")
    parser.add_argument("--out", type=Path, default=RESULTS / "static_report")
    args = parser.parse_args(argv)

    items: list[Record] = load_dataset("sst2", "test")
    task = TASKS["polarity"]
    static = open_engine(args.static, threads=args.threads)
    lexicons: dict[str, Engine] = {"vader": LexiconEngine("vader")}
    with contextlib.suppress(ImportError):
        lexicons["textblob"] = LexiconEngine("textblob")
    engines: dict[str, Engine] = {**lexicons, "static": static}
    if args.onnx:
        engines[f"onnx int8 ({args.onnx})"] = open_engine(args.onnx, threads=args.threads)
    runs: dict[str, Callable[[], object]] = {
        name: (lambda e=engine: list(e.classify(items, task))) for name, engine in engines.items()
    }
    runs["static --task all"] = lambda: list(static.analyze(items))
    timing = speed(runs, len(items), args.reps)
    vader = timing["vader"]["items_per_s"]
    for row in timing.values():
        row["x_vader"] = round(row["items_per_s"] / vader, 2)

    report: dict[str, Any] = {
        **stamp(
            "static_report",
            list(argv) if argv is not None else None,
            "numpy",
            "tokenizers",
            "onnxruntime",
            "vaderSentiment",
            "textblob",
        ),
        "static_model": args.static,
        "onnx_threads": args.threads,
        "speed_items": f"sst2 test, {len(items)} texts, task polarity",
        "reps": args.reps,
        "speed": timing,
        "speed_goal_x_vader": SPEED_GOAL,
    }
    if not args.no_quality:
        report["quality"] = quality(static, lexicons)
    write_report(args.out, report, markdown(report))


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Static tier (`minilm-affect-static`): speed against the lexicons, quality",
        "",
        f"`{report['command']}` on {report['date']}; {m['cpu']} ({m['cores_usable']} usable "
        f"cores), {m['os']}, Python {m['python']}.",
        "",
        f"Speed: {report['speed_items']}, one process, median of {report['reps']} rounds (each "
        f"round runs every system once, in turn); ONNX at {report['onnx_threads']} threads.",
        "",
        "| system | items/s (median) | x VADER | runs |",
        "|---|---:|---:|---|",
    ]
    for name, row in report["speed"].items():
        runs = ", ".join(f"{v:.0f}" for v in row["runs"])
        lines.append(f"| {name} | {row['items_per_s']:.0f} | {row['x_vader']:.2f} | {runs} |")
    ratio = report["speed"]["static"]["x_vader"]
    goal = report["speed_goal_x_vader"]
    lines += [
        "",
        f"Speed goal: >= {goal}x VADER: {ratio:.2f}x, {'met' if ratio >= goal else 'MISSED'}.",
    ]
    if "quality" in report:
        lines += [
            "",
            "Quality: test splits, the literature's metric (as `affedge eval` computes it).",
            "",
            "| system | task | dataset | metric | value | goal | met | n |",
            "|---|---|---|---|---:|---:|---|---:|",
        ]
        for r in report["quality"]:
            goal_text = "" if r["goal"] is None else f"{r['goal']:.2f}"
            met = "" if r["goal"] is None else ("yes" if r["value"] >= r["goal"] else "no")
            lines.append(
                f"| {r['system']} | {r['task']} | {r['dataset']} | {r['metric']} | "
                f"{r['value']:.4f} | {goal_text} | {met} | {r['n']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
