"""The `affedge` command line.

Every user error ends as one line on stderr and exit status 2 (see :mod:`affedge.errors`);
Ctrl-C and SIGTERM end with status 130 and leave ``--output``'s ``.partial`` for ``--resume``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from affedge.errors import AffedgeError, InputError
from affedge.tasks import (
    ALL_TASKS,
    BENCHMARKS,
    CLASSIFY_TASKS,
    SCORE_TASKS,
    TASKS,
    get_benchmark,
    get_task,
)

app = typer.Typer(
    name="affedge",
    help="Fast, private, offline affect annotation with small language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Models affedge can run.", no_args_is_help=True)
tasks_app = typer.Typer(help="Tasks in the registry.", no_args_is_help=True)
datasets_app = typer.Typer(help="Benchmark datasets affedge can read.", no_args_is_help=True)
train_app = typer.Typer(help="Train affect models (needs the train extra).", no_args_is_help=True)
export_app = typer.Typer(
    help="Export trained models (needs the export extra).", no_args_is_help=True
)
app.add_typer(train_app, name="train")
app.add_typer(export_app, name="export")
app.add_typer(models_app, name="models")
app.add_typer(tasks_app, name="tasks")
app.add_typer(datasets_app, name="datasets")


class Format(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    table = "table"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Options shared by classify and score (one definition, two commands).
InputArg = Annotated[
    str, typer.Argument(help="Input file (.txt, .csv, .tsv, .jsonl) or - for stdin.")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Built-in model name or path to a local model.")
]
FormatOpt = Annotated[
    Format | None,
    typer.Option(
        "--format", "-f", help="Output format [default: table on a terminal, else jsonl]."
    ),
]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.")
]
TextFieldOpt = Annotated[
    str | None, typer.Option(help="Text column (.csv/.tsv) or field (.jsonl) [default: text].")
]
InputFormatOpt = Annotated[
    str | None,
    typer.Option(help="Input format when the suffix does not say: txt, csv, tsv, jsonl."),
]
EncodingOpt = Annotated[str, typer.Option(help="Text encoding of the input.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run into the same --output.")
]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads [default: all cores].")]
LabelsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated label set replacing the task's labels.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]


def _output_format(fmt: Format | None, output: Path | None) -> str:
    if fmt is not None:
        return fmt.value
    if output is not None:
        return "csv" if output.suffix.lower() == ".csv" else "jsonl"
    return "table" if sys.stdout.isatty() else "jsonl"


def _progress(total: int, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


def _annotate(
    command: str,
    input_path: str,
    task_name: str,
    model: str | None,
    labels: list[str] | None,
    fmt: Format | None,
    output: Path | None,
    text_field: str | None,
    input_format: str | None,
    encoding: str,
    resume: bool,
    threads: int | None,
    quiet: bool,
    max_rounds: int = 3,
    trace: bool = False,
    agree_threshold: float = 0.5,
) -> None:
    """Shared body of `classify`, `score` and `negotiate`: validate, (resume,) run, write
    atomically."""
    from affedge.annotate import all_heads_row, label_row, score_row
    from affedge.engines import open_engine
    from affedge.io import (
        MAX_ITEM_CHARS,
        InputReader,
        ResultSink,
        partial_path,
        read_partial,
        scan,
    )
    from affedge.models import resolve_model

    kind = "score" if command == "score" else "classify"
    every_head = task_name == ALL_TASKS
    task = None if every_head else get_task(task_name, kind)  # type: ignore[arg-type]
    out_format = _output_format(fmt, output)
    if resume and output is None:
        raise InputError("--resume needs --output (a run to stdout cannot be resumed)")
    if output is not None and output.is_dir():
        raise InputError(f"{output}: is a folder; --output needs a file path")
    if output is not None and not output.parent.exists():
        raise InputError(f"{output.parent}: output folder does not exist")

    reader = InputReader(input_path, input_format, text_field, encoding)
    total = scan(reader)  # every input problem surfaces here, before any model work
    ref = resolve_model(model)
    header: dict[str, Any] = {
        "command": command,
        "input": str(Path(input_path).resolve()) if input_path != "-" else "-",
        "task": task_name,
        "labels": list(labels) if labels else None,
        "model": ref.name,
        "options": {"max_rounds": max_rounds, "trace": trace, "agree": agree_threshold}
        if command == "negotiate"
        else None,
        "items": total,
    }

    done_ids: list[int | str] = []
    partial = None
    if output is not None:
        part = partial_path(output)
        if part.exists():
            if not resume:
                raise InputError(
                    f"{part} holds an interrupted run: pass --resume to continue it, or delete it"
                )
            partial = read_partial(part)
            for key in ("command", "input", "task", "labels", "model", "items", "options"):
                if partial.header.get(key) != header[key]:
                    raise InputError(
                        f"{part}: cannot resume: it was started with {key}="
                        f"{partial.header.get(key)!r}, this run has {header[key]!r}"
                    )
            done_ids = partial.ids
        elif resume and output.exists():
            if not quiet:
                _stderr(f"affedge: {output} is already complete; nothing to resume")
            return

    engine = open_engine(ref, threads=threads)
    if command == "negotiate" and not hasattr(engine, "chat"):
        engine.close()
        raise InputError(f"negotiation needs a generative (GGUF) model; {ref.name} is not one")
    if every_head and not hasattr(engine, "analyze"):
        engine.close()
        raise InputError(
            f"--task all needs a multi-head encoder model; {ref.name} answers one task per run"
        )
    sink = ResultSink(output, out_format, header, resume=partial)
    done = len(done_ids)

    def remaining() -> Iterator[Any]:
        for index, record in enumerate(reader):
            if index < done:
                if str(done_ids[index]) != record.id:
                    raise InputError(
                        f"{partial_path(output)}: record {index + 1} has id {done_ids[index]}, "
                        f"the input has {record.id}: the input changed; delete the partial file"
                    )
                continue
            yield record

    order: deque[Any] = deque()  # records handed to the engine, waiting for their result
    started = time.perf_counter()
    processed = 0
    truncated = 0
    try:
        with _progress(total, quiet) as progress:
            bar = progress.add_task(command, total=total, completed=done)
            if command == "negotiate":
                from affedge.negotiate import Negotiator, negotiation_row

                negotiator = Negotiator(
                    engine, task, labels, max_rounds, agree_threshold=agree_threshold
                )
                results = negotiator.run(_tap(remaining(), order))

                def make_row(record, name, result, model_name):
                    return negotiation_row(record, name, result, model_name, trace)
            elif every_head:
                results = engine.analyze(_tap(remaining(), order))  # type: ignore[attr-defined]
                make_row = all_heads_row
            elif kind == "classify":
                results = engine.classify(_tap(remaining(), order), task, labels)
                make_row = label_row
            else:
                results = engine.score(_tap(remaining(), order), task)
                make_row = score_row
            for result in results:
                record = order.popleft()
                row = make_row(record, task_name, result, ref.name)
                sink.write(row)
                processed += 1
                truncated += bool(row.get("truncated"))
                progress.advance(bar)
        sink.finish()
    except KeyboardInterrupt:
        sink.abandon()
        where = f"; rerun with --resume to continue into {output}" if output else ""
        _stderr(f"affedge: interrupted after {done + processed} of {total} items{where}")
        raise typer.Exit(130) from None
    except BaseException:
        sink.abandon()
        raise
    finally:
        engine.close()

    if not quiet:
        seconds = time.perf_counter() - started
        rate = processed / seconds if seconds > 0 else 0.0
        notes = []
        if reader.stats.blank:
            notes.append(f"{reader.stats.blank} blank lines skipped")
        if reader.stats.clipped:
            notes.append(f"{reader.stats.clipped} items over {MAX_ITEM_CHARS:,} characters cut")
        if truncated:
            notes.append(f"{truncated} items truncated to the context window")
        if done:
            notes.append(f"{done} items resumed from the partial run")
        where = f" -> {output}" if output else ""
        extra = f" ({'; '.join(notes)})" if notes else ""
        verb = {"classify": "classified", "score": "scored", "negotiate": "negotiated"}[command]
        _stderr(
            f"affedge: {processed} items {verb} in {seconds:.1f} s ({rate:.1f} items/s) "
            f"with {ref.name}{extra}{where}"
        )


def _tap(records: Iterator[Any], seen: deque[Any]) -> Iterator[Any]:
    """Pass ``records`` through, remembering each so its result can be paired with it."""
    for record in records:
        seen.append(record)
        yield record


NEGOTIATE_TASKS = ("emotion", "sentiment", "sarcasm")


def _labels(value: str | None) -> list[str] | None:
    if value is None:
        return None
    labels = [lab.strip() for lab in value.split(",") if lab.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise InputError(f"--labels needs at least two distinct comma-separated labels: {value!r}")
    return labels


@app.command()
def classify(
    input: InputArg,
    task: Annotated[
        str,
        typer.Option(
            "--task",
            "-t",
            help=f"One of: {', '.join(CLASSIFY_TASKS)}, or all (every head of an encoder model).",
        ),
    ] = "sentiment",
    model: ModelOpt = None,
    labels: LabelsOpt = None,
    format: FormatOpt = None,
    output: OutputOpt = None,
    text_field: TextFieldOpt = None,
    input_format: InputFormatOpt = None,
    encoding: EncodingOpt = "utf-8",
    resume: ResumeOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Label every item of INPUT with a probability for each label."""
    _annotate(
        "classify", input, task, model, _labels(labels), format, output, text_field,
        input_format, encoding, resume, threads, quiet,
    )  # fmt: skip


@app.command()
def score(
    input: InputArg,
    task: Annotated[
        str,
        typer.Option(
            "--task", "-t", help=f"One of: {', '.join(SCORE_TASKS)}, or all (every head)."
        ),
    ],
    model: ModelOpt = None,
    format: FormatOpt = None,
    output: OutputOpt = None,
    text_field: TextFieldOpt = None,
    input_format: InputFormatOpt = None,
    encoding: EncodingOpt = "utf-8",
    resume: ResumeOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Score the intensity (0 to 1) of every item of INPUT."""
    _annotate(
        "score", input, task, model, None, format, output, text_field, input_format,
        encoding, resume, threads, quiet,
    )  # fmt: skip


@app.command()
def negotiate(
    input: InputArg,
    task: Annotated[
        str, typer.Option("--task", "-t", help="emotion, sentiment or sarcasm.")
    ] = "emotion",
    max_rounds: Annotated[
        int, typer.Option(min=1, help="Generator/discriminator rounds before the fallback.")
    ] = 3,
    trace: Annotated[bool, typer.Option("--trace", help="Add every round to each record.")] = False,
    agree_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="P(agree) the discriminator needs.")
    ] = 0.5,
    model: ModelOpt = None,
    labels: LabelsOpt = None,
    format: FormatOpt = None,
    output: OutputOpt = None,
    text_field: TextFieldOpt = None,
    input_format: InputFormatOpt = None,
    encoding: EncodingOpt = "utf-8",
    resume: ResumeOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Label INPUT by SANM negotiation: the model proposes, judges itself, and repeats."""
    if task not in NEGOTIATE_TASKS:
        raise InputError(f"negotiate supports --task {', '.join(NEGOTIATE_TASKS)}, not {task!r}")
    _annotate(
        "negotiate", input, task, model, _labels(labels), format, output, text_field,
        input_format, encoding, resume, threads, quiet, max_rounds, trace, agree_threshold,
    )  # fmt: skip


@app.command("eval")
def eval_(
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task to evaluate.")] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Benchmark dataset.")
    ] = None,
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="First N items only.")] = None,
    model: ModelOpt = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Dataset folder [default: $AFFEDGE_DATA].")
    ] = None,
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
) -> None:
    """Evaluate a model on a benchmark (or --all of them); prints the metrics."""
    from affedge.datasets import load_dataset
    from affedge.engines import open_engine
    from affedge.evaluate import evaluate
    from affedge.io import atomic_write

    if all_:
        if task or dataset:
            raise InputError("--all evaluates every benchmark: drop --task/--dataset")
        from affedge.bench.eval_all import eval_all

        log = (lambda m: None) if quiet else _stderr
        result = eval_all(model, limit, out, data_dir, threads, split=split, log=log)
        if out is None:
            print(json.dumps(result, indent=2))
        return
    if task is None or dataset is None:
        raise InputError("eval needs --task and --dataset, or --all")
    bench = get_benchmark(task, dataset)
    load_dataset(bench.dataset, split, root=data_dir, limit=1)  # fail fast on data problems
    with open_engine(model, threads=threads) as engine, _progress(0, quiet) as progress:
        bar = progress.add_task(f"{task}/{dataset}", total=limit)
        report = evaluate(
            engine, bench, split, limit, data_dir, on_item=lambda: progress.advance(bar)
        )
    text = json.dumps(report.to_dict(), indent=2)
    if output is not None:
        atomic_write(output, lambda fh: fh.write(text + "\n"))
    print(text)


@app.command("bench")
def bench_cmd(
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated models (names or paths) [default: the default model]."),
    ] = None,
    threads: Annotated[str, typer.Option(help="Comma-separated thread counts.")] = "2",
    input: Annotated[
        Path | None, typer.Option("--input", help="Unlabelled input file instead of SST-2.")
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Items per pass.")] = 200,
    reps: Annotated[int, typer.Option(min=1, help="Repetitions (the median is quoted).")] = 3,
    latency_n: Annotated[int, typer.Option(min=1, help="Items timed one at a time.")] = 30,
    peers: Annotated[
        str, typer.Option(help="Comma-separated: vader, textblob, transformers, generation.")
    ] = "vader,textblob,transformers,generation",
    task: Annotated[str, typer.Option("--task", "-t", help="Classification task.")] = "polarity",
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Labelled inputs.")] = "sst2",
    source: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=FOLDER: torch source of an ONNX model (transformers peer)."),
    ] = None,
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for bench.json/.md and the plot.")] = Path(
        "bench-results"
    ),
) -> None:
    """Speed, latency, cold start and memory of models against their peers, same inputs."""
    from affedge.bench.harness import bench_markdown, bench_points, plot_quality_speed, run_bench
    from affedge.bench.reporting import stamp, write_report
    from affedge.models import default_model_name

    try:
        thread_list = [int(t) for t in threads.split(",") if t.strip()]
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
    get_benchmark(task, dataset) if input is None else get_task(task, "classify")
    model_list = [m.strip() for m in (models or default_model_name()).split(",") if m.strip()]
    report = run_bench(
        model_list, thread_list, [p.strip() for p in peers.split(",") if p.strip()], n, reps,
        latency_n, input, task, dataset, sources, data_dir,
    )  # fmt: skip
    report = {**stamp("bench", None), **report}
    report["command"] = "affedge bench " + " ".join(sys.argv[2:])
    plot = plot_quality_speed(
        bench_points(report), out / "bench_quality_vs_speed.png", "accuracy vs items/s"
    )
    report["plot"] = plot.name
    write_report(out / "bench", report, bench_markdown(report))


@models_app.command("list")
def models_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Built-in models: name, format, whether installed, and where."""
    from affedge.models import list_models

    listing = list_models()
    if json_out:
        print(json.dumps([asdict(m) for m in listing], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("name", "format", "default", "installed", "size MB", "path / how to install"):
        table.add_column(col)
    for m in listing:
        table.add_row(
            m.name,
            m.format,
            "yes" if m.default else "",
            "yes" if m.available else "no",
            f"{m.size_mb}" if m.size_mb is not None else "",
            m.path or m.install,
        )
    Console().print(table)
    print("Any local GGUF file or exported ONNX folder also works: --model PATH")


@tasks_app.command("list")
def tasks_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Tasks with their labels, level, metric and benchmarks."""
    rows = [
        {
            "task": t.name,
            "kind": t.kind,
            "level": t.level,
            "labels": list(t.labels),
            "metric": t.metric,
            "datasets": [b.dataset for b in BENCHMARKS if b.task == t.name],
            "description": t.description,
        }
        for t in TASKS.values()
    ]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("task", "kind", "level", "labels", "metric", "datasets"):
        table.add_column(col)
    for r in rows:
        labels = ", ".join(r["labels"]) or "0..1"
        table.add_row(
            r["task"], r["kind"], r["level"], labels, r["metric"], ", ".join(r["datasets"])
        )
    Console().print(table)


@datasets_app.command("list")
def datasets_list(
    json_out: Annotated[bool, typer.Option("--json")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset folder.")] = None,
) -> None:
    """Datasets affedge reads, their splits and label layers."""
    from affedge.datasets import DATASETS

    rows = [
        {
            "dataset": d.name,
            "splits": list(d.splits),
            "layers": {k: list(v) for k, v in d.layers.items()},
            "scores": list(d.score_layers),
            "dialogue": d.dialogue,
            "description": d.description,
        }
        for d in DATASETS.values()
    ]
    if json_out:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("dataset", "splits", "label layers", "scores", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["dataset"],
            ", ".join(r["splits"]),
            ", ".join(r["layers"]),
            ", ".join(r["scores"]),
            r["description"],
        )
    Console().print(table)


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise AffedgeError(f"this command needs the {extra} extra: pip install 'affedge[{extra}]'")


DataDirOpt = Annotated[Path | None, typer.Option(help="Dataset folder [default: $AFFEDGE_DATA].")]


@train_app.command("encoder")
def train_encoder_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    base: Annotated[
        Path | None, typer.Option(help="Local HF encoder folder [default: all-MiniLM-L6-v2 wheel].")
    ] = None,
    steps: Annotated[int, typer.Option(min=1)] = 3000,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: float = 5e-5,
    max_length: Annotated[int, typer.Option(min=8)] = 96,
    tawl: Annotated[bool, typer.Option("--tawl/--no-tawl", help="Task-level AWL.")] = True,
    dawl: Annotated[bool, typer.Option("--dawl/--no-dawl", help="Data-level AWL.")] = True,
    focal_gamma: Annotated[float, typer.Option(min=0.0, help="0 turns focal loss off.")] = 2.0,
    seed: int = 13,
    eval_limit: Annotated[
        int, typer.Option(min=1, help="Validation items per source scored after training.")
    ] = 1000,
    datasets: Annotated[
        str | None, typer.Option(help="Comma-separated training datasets [default: all].")
    ] = None,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train the multi-task encoder (sentiment, emotion, sarcasm, valence, intensity heads)."""
    _require("torch", "train")
    import torch

    from affedge.train.encoder import EncoderConfig, default_base, train_encoder

    if threads:
        torch.set_num_threads(threads)
    cfg = EncoderConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        max_length=max_length,
        tawl=tawl,
        dawl=dawl,
        focal_gamma=focal_gamma,
        seed=seed,
        eval_limit=eval_limit,
        datasets=[d.strip() for d in datasets.split(",")] if datasets else [],
    )
    base_path = base or default_base()
    if not base_path.exists():
        raise AffedgeError(f"{base_path}: no such base model folder")
    manifest = train_encoder(base_path, out, cfg, data_dir, log=_stderr)
    print(json.dumps({"out": str(out), "validation": manifest["validation"]}, indent=2))


# Options shared by `train progressive` and `train multitask` (decoder LLMs, LoRA/QLoRA).
LLMBaseOpt = Annotated[
    str,
    typer.Option(help="Base LLM: HF folder, GGUF file or built-in name [default: SmolLM2]."),
]
QuantOpt = Annotated[
    str | None, typer.Option(help="nf4 (QLoRA) or none (LoRA) [default: nf4 on CUDA, else none].")
]
LimitOpt = Annotated[
    int | None, typer.Option(min=1, help="Training examples per dataset (seeded sample).")
]
StepsOpt = Annotated[
    int | None, typer.Option(min=1, help="Optimizer steps per stage [default: --epochs].")
]
EpochsOpt = Annotated[float | None, typer.Option(min=0.01, help="Passes over the data [1].")]
RequireGpuOpt = Annotated[
    bool, typer.Option("--require-gpu", help="Fail unless a CUDA GPU is visible.")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")]
DataMapOpt = Annotated[
    list[str] | None,
    typer.Option("--data", help="KEY=DATASET[,DATASET...] (repeatable), e.g. sa=sst2,meld."),
]


def _llm_common(**kw: Any) -> dict[str, Any]:
    return {
        "base": kw["base"],
        "quant": kw["quant"],
        "rank": kw["rank"],
        "alpha": kw["alpha"],
        "steps": kw["steps"],
        "epochs": kw["epochs"],
        "batch_size": kw["batch_size"],
        "grad_accum": kw["grad_accum"],
        "max_length": kw["max_length"],
        "limit": kw["limit"],
        "eval_limit": kw["eval_limit"],
        "save_every": kw["save_every"],
        "seed": kw["seed"],
        "threads": kw["threads"],
        "require_gpu": kw["require_gpu"],
        "data_dir": str(kw["data_dir"]) if kw["data_dir"] else None,
    }


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@train_app.command("progressive")
def train_progressive_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    base: LLMBaseOpt = "smollm2-135m-instruct",
    stages: Annotated[str, typer.Option(help="Comma-separated stages in order.")] = "sa,erc,sd",
    data: DataMapOpt = None,
    lr: Annotated[
        str | None, typer.Option(help="One LR for all stages, or sa=8e-5,erc=2e-4,sd=1e-4.")
    ] = None,
    quant: QuantOpt = None,
    rank: Annotated[int, typer.Option(min=1)] = 16,
    alpha: Annotated[int, typer.Option(min=1)] = 32,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    grad_accum: Annotated[int, typer.Option(min=1)] = 1,
    max_length: Annotated[int, typer.Option(min=32)] = 256,
    limit: LimitOpt = None,
    eval_limit: Annotated[int, typer.Option(min=1, help="Validation items per dataset.")] = 200,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint every N steps.")] = 50,
    seed: int = 13,
    resume: ResumeOpt = False,
    require_gpu: RequireGpuOpt = False,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Progressive chain-of-LoRA tuning of a decoder LLM: SA -> ERC -> SD (GSA)."""
    _require("torch", "train")
    from affedge.train.progressive import ProgressiveConfig, parse_stage_map, train_progressive

    lrs: dict[str, float] = {}
    if lr and "=" in lr:
        lrs = parse_stage_map(lr.replace(",", " "), float)
    elif lr:
        lrs = {s: float(lr) for s in _split_list(stages)}
    cfg = ProgressiveConfig(
        **_llm_common(**locals()),
        stages=_split_list(stages),
        data=parse_stage_map(" ".join(data or []), _split_list),
        lr=lrs,
    )
    manifest = train_progressive(cfg, out, resume=resume, log=_stderr)
    summary = {"out": str(out), "validation": manifest["validation"]}
    print(json.dumps({**summary, "forgetting": manifest["forgetting"]}, indent=2))


@train_app.command("multitask")
def train_multitask_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    base: LLMBaseOpt = "smollm2-135m-instruct",
    tasks: Annotated[
        str, typer.Option(help="Comma-separated registry tasks.")
    ] = "sentiment,emotion,valence,anger,fear,joy,sadness,implicit",
    data: DataMapOpt = None,
    lr: float = 2e-4,
    tawl: Annotated[bool, typer.Option("--tawl/--no-tawl", help="Task-level AWL.")] = True,
    dawl: Annotated[bool, typer.Option("--dawl/--no-dawl", help="Data-level AWL.")] = True,
    focal_gamma: Annotated[float, typer.Option(min=0.0, help="0 turns focal loss off.")] = 0.0,
    aux: Annotated[
        bool, typer.Option("--aux/--no-aux", help="LLM-generated aspect/opinion tasks.")
    ] = True,
    aux_model: Annotated[
        str | None, typer.Option(help="GGUF teacher for the auxiliary targets [SmolLM2].")
    ] = None,
    quant: QuantOpt = None,
    rank: Annotated[int, typer.Option(min=1)] = 16,
    alpha: Annotated[int, typer.Option(min=1)] = 32,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    grad_accum: Annotated[int, typer.Option(min=1)] = 1,
    max_length: Annotated[int, typer.Option(min=32)] = 256,
    limit: LimitOpt = None,
    eval_limit: Annotated[int, typer.Option(min=1, help="Validation items per dataset.")] = 200,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint every N steps.")] = 50,
    seed: int = 13,
    resume: ResumeOpt = False,
    require_gpu: RequireGpuOpt = False,
    data_dir: DataDirOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Multi-task instruction tuning: classification + intensity (+ MT-ISA auxiliaries)."""
    _require("torch", "train")
    from affedge.train.multitask import MultitaskConfig, train_multitask
    from affedge.train.progressive import parse_stage_map

    cfg = MultitaskConfig(
        **_llm_common(**locals()),
        tasks=_split_list(tasks),
        data=parse_stage_map(" ".join(data or []), _split_list),
        lr=lr,
        tawl=tawl,
        dawl=dawl,
        focal_gamma=focal_gamma,
        aux=aux,
        aux_model=aux_model,
    )
    manifest = train_multitask(cfg, out, resume=resume, log=_stderr)
    print(json.dumps({"out": str(out), "validation": manifest["validation"]}, indent=2))


@export_app.command("onnx")
def export_onnx_cmd(
    model_dir: Annotated[
        Path, typer.Argument(help="Trained encoder folder, or a decoder HF folder / GGUF file.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the artifacts.")],
    quant: Annotated[str, typer.Option(help="Comma-separated: fp32, int8.")] = "int8",
    sample: Annotated[int, typer.Option(min=10, help="Validation items to verify on.")] = 500,
    data_dir: DataDirOpt = None,
    threads: Annotated[int, typer.Option(min=1)] = 2,
    min_agreement: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Agreement floor for every artifact [default: per type]."
        ),
    ] = None,
) -> None:
    """Export to ONNX, quantize, and verify against the source model.

    Multi-task encoders export with their heads; decoder LLMs export the single forward pass
    label scoring needs (no KV cache). Each artifact lands in OUT/<type>/ only if it passes."""
    _require("torch", "export")
    quants = [q.strip() for q in quant.split(",") if q.strip()]
    if _is_encoder(model_dir):
        from affedge.export.onnx_encoder import export_onnx

        reports = export_onnx(model_dir, out, quants, sample, data_dir, threads)
    else:
        from affedge.export.onnx_decoder import export_onnx_decoder

        reports = export_onnx_decoder(
            model_dir, out, quants, sample, data_dir, threads, _stderr, min_agreement
        )
    print(json.dumps(reports, indent=2))


def _is_encoder(model_dir: Path) -> bool:
    manifest = model_dir / "affedge.json"
    if not manifest.is_file():
        return False
    try:
        kind = json.loads(manifest.read_text(encoding="utf-8")).get("kind")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return kind == "affedge-encoder-multitask"


@export_app.command("gguf")
def export_gguf_cmd(
    model_dir: Annotated[Path, typer.Argument(help="HF model folder (or a GGUF file).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the artifacts.")],
    quant: Annotated[
        str, typer.Option(help="Comma-separated: f32, f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0...")
    ] = "q8_0,q4_k_m",
    sample: Annotated[int, typer.Option(min=10, help="Validation items to verify on.")] = 500,
    data_dir: DataDirOpt = None,
    threads: Annotated[int, typer.Option(min=1)] = 2,
    min_agreement: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Agreement floor for every artifact [default: per type]."
        ),
    ] = None,
) -> None:
    """Write GGUF (llama, mistral, qwen2), quantize with llama.cpp, verify each artifact.

    Each artifact lands in OUT/<quant>/ (model + affedge.json with the verification report)
    only if its label agreement with the source model reaches the floor for its type."""
    _require("torch", "export")
    _require("gguf", "export")
    from affedge.export.gguf_export import export_gguf

    quants = [q.strip() for q in quant.split(",") if q.strip()]
    reports = export_gguf(model_dir, out, quants, sample, data_dir, threads, _stderr, min_agreement)
    print(json.dumps(reports, indent=2))


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cli_exceptions() -> tuple[type[Exception], type[BaseException], type[BaseException]]:
    """Usage-error, exit and abort exception types of whichever click typer runs on
    (typer >= 0.20 vendors its own copy of click under ``typer._click``)."""
    try:
        from typer._click import ClickException
        from typer.exceptions import Abort, Exit
    except ImportError:  # older typer on the click package
        from click.exceptions import Abort, ClickException, Exit
    return ClickException, Exit, Abort


def main() -> None:
    """Entry point: user errors become one line and exit 2, never a traceback."""
    click_error, click_exit, click_abort = _cli_exceptions()
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except AffedgeError as exc:
        _stderr(f"affedge: error: {exc}")
        sys.exit(2)
    except click_exit as exc:
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except click_error as exc:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except (KeyboardInterrupt, click_abort):
        _stderr("affedge: interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
