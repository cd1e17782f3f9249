"""Regenerate the recorded benchmark report (bench/results/) with one command.

Runs `affedge bench` over every model with all peers, then `affedge eval --all` per model,
and writes ``report.md`` (headline ratios, calibration, roofline, links) beside
``bench.{json,md}``, ``bench_quality_vs_speed.png`` and ``eval_<model>.{json,md}`` with their
confusion matrices and quality-vs-speed plots. Fine-tuned artifacts join with ``--extra``:

    python -m affedge.bench.report
    python -m affedge.bench.report --extra runs/progressive/model.Q8_0.gguf,runs/onnx/decoder
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affedge.bench.eval_all import eval_all, slug
from affedge.bench.harness import (
    RESULTS,
    bench_markdown,
    bench_points,
    plot_quality_speed,
    run_bench,
)
from affedge.bench.reporting import stamp, write_report

DEFAULT_MODELS = ("minilm-affect-int8", "smollm2-135m-instruct")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary_markdown(report: dict[str, Any]) -> str:
    """report.md: how it was made, the headline ratios, calibration and the files."""
    bench = report["bench"]
    lines = [
        "# affedge benchmark report",
        "",
        f"`{bench['command']}` (bench) and `{report['command']}` (this page) on "
        f"{report['date']}, {report['wall_s'] / 60:.1f} minutes of wall time for this "
        f"command; {bench['machine']['cpu']} ({bench['machine']['cores_usable']} usable "
        f"cores, shared with other jobs: load average {bench['load_average']} at the start).",
        "",
        f"Limits: bench on {bench['items']}, {bench['reps']} repetitions (median quoted), "
        f"latency over {bench['latency_items']} single items, threads {bench['threads']}; "
        "eval --all on the test splits, first "
        + ", ".join(f"{m}: {lim}" for m, lim in report["eval_limits"].items())
        + " scored items per benchmark.",
        "",
        "Ratios within one run are the headline (every system saw the same items on the same "
        "machine under the same load); absolute times move with the load of the shared cores.",
        "",
        "## Speed against peers",
        "",
        "| affedge | peer | threads | x items/s | x p50 latency | x cold start | x peak RSS "
        "| quality delta |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in bench["ratios"]:
        lines.append(
            f"| {r['system']} | {r['peer']} | {r['threads']} | {r['speedup']} | "
            f"{r['latency_x']} | {r['cold_start_x']} | {r['rss_x']} | {r['quality_delta']} |"
        )
    lines += [
        "",
        f"Every measurement, ECE on the bench items and the roofline: [bench.md](bench.md); "
        f"plot: [{bench['plot']}]({bench['plot']}).",
        "",
        "## Quality and calibration (eval --all)",
        "",
        "| system | task | dataset | metric | value | ECE | n |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for ev in report["evals"]:
        for r in ev["results"]:
            if r["system"] != ev["model"]:
                continue
            ece = r.get("ece")
            lines.append(
                f"| {r['system']} | {r['task']} | {r['dataset']} | {r['metric']} | "
                f"{r['metrics'][r['metric']]:.4f} | {'' if ece is None else f'{ece:.4f}'} | "
                f"{r['n']} |"
            )
    lines += ["", "Per model, with the lexicon peers, confusion matrices and plots:", ""]
    for ev in report["evals"]:
        name = slug(ev["model"])
        lines.append(
            f"- [eval_{name}.md](eval_{name}.md), "
            f"[quality vs items/s]({ev['plots']['quality_vs_speed']})"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--extra", default="", help="more models by path, comma-separated")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--n", type=int, default=48, help="bench items (SST-2 test)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency-n", type=int, default=8)
    parser.add_argument("--eval-limit", type=int, default=500, help="per benchmark, encoders")
    parser.add_argument(
        "--eval-limit-decoder", type=int, default=40, help="per benchmark, decoder LLMs"
    )
    parser.add_argument("--eval-threads", type=int, default=1)
    parser.add_argument("--source", action="append", default=[], help="MODEL=TORCH_FOLDER")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument(
        "--reuse-bench", action="store_true", help="keep OUT/bench.json, run the evals only"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from affedge.models import resolve_model

    started = time.perf_counter()
    models = [m for m in (args.models + "," + args.extra).split(",") if m.strip()]
    sources = {k: Path(v) for k, v in (s.split("=", 1) for s in args.source)}
    threads = [int(t) for t in args.threads.split(",")]
    meta = stamp("report", argv)
    if args.reuse_bench:
        import json

        bench = json.loads((args.out / "bench.json").read_text())
    else:
        bench = run_bench(
            models, threads, n=args.n, reps=args.reps, latency_n=args.latency_n,
            sources=sources, log=_log,
        )  # fmt: skip
        bench = {**meta, **bench}
        plot = plot_quality_speed(
            bench_points(bench),
            args.out / "bench_quality_vs_speed.png",
            f"Accuracy vs items/s, {bench['items']}, {max(threads)} threads",
        )
        bench["plot"] = plot.name
        write_report(args.out / "bench", bench, bench_markdown(bench))

    evals, limits = [], {}
    if not args.skip_eval:
        for model in models:
            ref = resolve_model(model)
            limit = args.eval_limit if ref.manifest is not None and ref.manifest.heads else None
            limit = limit or args.eval_limit_decoder
            limits[ref.name] = limit
            _log(f"eval --all {ref.name} (limit {limit})")
            evals.append(eval_all(model, limit, args.out, threads=args.eval_threads, log=_log))
    report = {
        **meta,
        "wall_s": round(time.perf_counter() - started, 1),
        "eval_limits": limits,
        "bench": bench,
        "evals": [{k: v for k, v in e.items() if k != "results"} for e in evals],
    }
    markdown = summary_markdown({**report, "evals": evals})
    write_report(args.out / "report", report, markdown)


if __name__ == "__main__":
    main()
