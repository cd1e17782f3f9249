"""`affedge eval`, `bench` and `report` (mounted through the ``affedge.commands`` entry points).

Each Typer holds one command and no callback, so it collapses into that command:
``affedge eval --task ...``, not ``affedge eval eval``. Nothing heavy is imported until a
command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from affedge.cli.options import (
    DataDirOpt,
    DeviceOpt,
    GpuLayersOpt,
    ModelOpt,
    QuietOpt,
    ThreadsOpt,
    progress,
    split_list,
    stderr,
)
from affedge.errors import InputError

eval_app = typer.Typer(name="eval", add_completion=False)
bench_app = typer.Typer(name="bench", add_completion=False)
report_app = typer.Typer(name="report", add_completion=False)


@eval_app.command("eval")
def eval_(
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task to evaluate.")] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Benchmark dataset.")
    ] = None,
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="First N items only.")] = None,
    model: ModelOpt = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write JSON here.")
    ] = None,
    quiet: QuietOpt = False,
    all_: Annotated[
        bool,
        typer.Option(
            "--all", help="Every task x dataset the model can do, with ECE and plots (--out)."
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="--all: folder for JSON, markdown and PNGs.")
    ] = None,
    device: DeviceOpt = "auto",
    gpu_layers: GpuLayersOpt = None,
) -> None:
    """Evaluate a model on a benchmark (or --all of them); prints the metrics."""
    if all_:
        if task or dataset:
            raise InputError("--all evaluates every benchmark: drop --task/--dataset")
        from affedge.bench.eval_all import eval_all

        log = (lambda m: None) if quiet else stderr
        result = eval_all(
            model, limit, out, data_dir, threads, split=split, log=log, device=device,
            gpu_layers=gpu_layers,
        )  # fmt: skip
        if out is None:
            print(json.dumps(result, indent=2))
        return
    if task is None or dataset is None:
        raise InputError("eval needs --task and --dataset, or --all")
    from affedge.atomic import atomic_write_text
    from affedge.benchmarks import get_benchmark
    from affedge.datasets import load_dataset
    from affedge.engines import open_engine
    from affedge.evaluate import evaluate

    bench = get_benchmark(task, dataset)
    load_dataset(bench.dataset, split, root=data_dir, limit=1)  # fail fast on data problems
    with (
        open_engine(model, threads=threads, device=device, gpu_layers=gpu_layers) as engine,
        progress(quiet) as bar_display,
    ):
        bar = bar_display.add_task(f"{task}/{dataset}", total=limit)
        report = evaluate(
            engine, bench, split, limit, data_dir, on_item=lambda: bar_display.advance(bar)
        )
    text = json.dumps(report.to_dict(), indent=2)
    if output is not None:
        atomic_write_text(output, text + "\n")
    print(text)


@bench_app.command("bench")
def bench(
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated models, names or paths (default: the default model)."),
    ] = None,
    threads: Annotated[str, typer.Option(help="Comma-separated thread counts.")] = "2",
    input: Annotated[
        Path | None, typer.Option("--input", help="Unlabelled input file instead of SST-2.")
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Items per pass.")] = 200,
    reps: Annotated[int, typer.Option(min=1, help="Repetitions (the median is quoted).")] = 3,
    latency_n: Annotated[int, typer.Option(min=1, help="Items timed one at a time.")] = 30,
    peers: Annotated[
        str,
        typer.Option(
            help="Comma-separated: vader, textblob, transformers (batch 32, input order), "
            "transformers-sorted (batch 32, length-sorted), generation."
        ),
    ] = "vader,textblob,transformers,transformers-sorted,generation",
    task: Annotated[str, typer.Option("--task", "-t", help="Classification task.")] = "polarity",
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Labelled inputs.")] = "sst2",
    source: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=FOLDER: torch source of an ONNX model (transformers peer)."),
    ] = None,
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for bench.* and the plot.")] = Path(
        "bench-results"
    ),
    output_format: Annotated[
        str,
        typer.Option(
            "--output-format",
            help="Comma-separated files to write: md, json, csv, jsonl, sql (json always).",
        ),
    ] = "md,json,csv,jsonl,sql",
) -> None:
    """Speed, latency, cold start and memory of models against their peers, same inputs."""
    from affedge.bench.formats import parse_formats, write_bench
    from affedge.bench.harness import bench_markdown, bench_points, plot_quality_speed, run_bench
    from affedge.bench.reporting import stamp
    from affedge.benchmarks import get_benchmark
    from affedge.models import default_model_name
    from affedge.tasks import get_task

    formats = parse_formats(output_format)
    try:
        thread_list = [int(t) for t in split_list(threads)]
    except ValueError:
        raise InputError(f"--threads needs comma-separated integers: {threads!r}") from None
    if not thread_list or min(thread_list) < 1:
        raise InputError(f"--threads needs positive integers: {threads!r}")
    sources = {}
    for item in source or []:
        key, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--source needs MODEL=FOLDER, got {item!r}")
        sources[key] = Path(path)
    if input is not None and not input.is_file():
        raise InputError(f"{input}: no such input file")
    if input is None:
        get_benchmark(task, dataset)
    else:
        get_task(task, "classify")
    model_list = split_list(models or default_model_name())
    report = run_bench(
        model_list, thread_list, split_list(peers), n, reps, latency_n, input, task, dataset,
        sources, data_dir,
    )  # fmt: skip
    report = {**stamp("bench", None), **report}
    report["command"] = "affedge bench " + " ".join(sys.argv[2:])
    plot = plot_quality_speed(
        bench_points(report), out / "bench_quality_vs_speed.png", "accuracy vs items/s"
    )
    report["plot"] = plot.name
    markdown = bench_markdown(report)
    write_bench(out / "bench", report, markdown, formats)
    print(markdown)


@report_app.command("report")
def report(
    results: Annotated[Path, typer.Argument(help="A results folder (bench/results/ is one).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file to write (default RESULTS/report.html)."),
    ] = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
) -> None:
    """One self-contained HTML page of a results folder: tables, figures, machines, commands."""
    from affedge.bench.html_report import write_report_html

    written = write_report_html(results, output or results / "report.html", title)
    stderr(
        f"wrote {written['path']} ({written['bytes'] / 1e6:.2f} MB): {written['files']} result "
        f"files, {written['figures']} figures, {written['listed']} other files listed"
    )
