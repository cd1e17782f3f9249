"""`affedge classify`, `score` and `negotiate`: thin wrappers over :func:`annotate_file`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affedge.cli.options import (
    CalibrationOpt,
    DeviceOpt,
    EncodingOpt,
    FormatOpt,
    GpuLayersOpt,
    InputArg,
    InputFormatOpt,
    LabelsOpt,
    Long,
    LongOpt,
    ModelOpt,
    OutputOpt,
    QuietOpt,
    ResumeOpt,
    TextFieldOpt,
    ThreadsOpt,
    output_format,
    parse_labels,
    progress,
    stderr,
)
from affedge.cli.shards import RayAddressOpt, RayOpt, WorkersOpt, run_ray
from affedge.device import check_device
from affedge.errors import InputError
from affedge.negotiate import DEFAULT_MAX_ROUNDS
from affedge.runner import NEGOTIATE_TASKS, Job, RunInterrupted, RunSummary, annotate_file
from affedge.tasks import CLASSIFY_TASKS, SCORE_TASKS

VERBS = {"classify": "classified", "score": "scored", "negotiate": "negotiated"}


def run(
    job: Job,
    input_path: str,
    model: str | None,
    fmt: FormatOpt,
    output: Path | None,
    text_field: str | None,
    input_format: str | None,
    encoding: str,
    resume: bool,
    threads: int | None,
    quiet: bool,
    device: str = "auto",
    gpu_layers: int | None = None,
) -> None:
    """Run ``job`` over a file with a progress bar and a one-line summary on stderr."""
    with progress(quiet) as bar_display:
        bar = bar_display.add_task(job.command, total=None)

        def on_start(total: int, done: int) -> None:
            bar_display.update(bar, total=total, completed=done)

        try:
            summary = annotate_file(
                input_path, job, model, output, output_format(fmt, output), text_field,
                input_format, encoding, resume, threads, on_start, lambda: bar_display.advance(bar),
                device=device, gpu_layers=gpu_layers,
            )  # fmt: skip
        except RunInterrupted as stop:
            where = f"; rerun with --resume to continue into {output}" if output else ""
            stderr(f"affedge: interrupted after {stop.done} of {stop.total} items{where}")
            raise typer.Exit(130) from None
    if not quiet:
        _summary(job.command, summary)


def _summary(command: str, s: RunSummary) -> None:
    if s.complete_already:
        stderr(f"affedge: {s.output} is already complete; nothing to resume")
        return
    rate = s.processed / s.seconds if s.seconds > 0 else 0.0
    notes = []
    if s.blank:
        notes.append(f"{s.blank} blank lines skipped")
    if s.clipped:
        notes.append(f"{s.clipped} items over {s.clip_chars:,} characters cut")
    if s.chunked:
        notes.append(f"{s.chunked} long items read in windows")
    if s.truncated:
        notes.append(f"{s.truncated} items truncated to the context window")
    if s.resumed:
        notes.append(f"{s.resumed} items resumed from the partial run")
    where = f" -> {s.output}" if s.output else ""
    extra = f" ({'; '.join(notes)})" if notes else ""
    stderr(
        f"affedge: {s.processed} items {VERBS[command]} in {s.seconds:.1f} s ({rate:.1f} items/s) "
        f"with {s.model}{extra}{where}"
    )


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
    calibration: CalibrationOpt = True,
    long: LongOpt = Long.chunk,  # type: ignore[attr-defined]
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    device: DeviceOpt = "auto",
    gpu_layers: GpuLayersOpt = None,
) -> None:
    """Label every item of INPUT with a probability for each label."""
    job = Job("classify", task, parse_labels(labels), calibrate=calibration, long=long.value)
    if ray or ray_address:
        _ray_on_cpu(device, gpu_layers)
        return run_ray(job, input, model, format, output, text_field, input_format, encoding,
                       threads, quiet, ray_address, workers)  # fmt: skip
    run(job, input, model, format, output, text_field, input_format, encoding, resume, threads,
        quiet, device, gpu_layers)  # fmt: skip


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
    long: LongOpt = Long.chunk,  # type: ignore[attr-defined]
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    device: DeviceOpt = "auto",
    gpu_layers: GpuLayersOpt = None,
) -> None:
    """Score the intensity (0 to 1) of every item of INPUT."""
    job = Job("score", task, long=long.value)
    if ray or ray_address:
        _ray_on_cpu(device, gpu_layers)
        return run_ray(job, input, model, format, output, text_field, input_format, encoding,
                       threads, quiet, ray_address, workers)  # fmt: skip
    run(job, input, model, format, output, text_field, input_format, encoding, resume, threads,
        quiet, device, gpu_layers)  # fmt: skip


def negotiate(
    input: InputArg,
    task: Annotated[
        str, typer.Option("--task", "-t", help=", ".join(NEGOTIATE_TASKS) + ".")
    ] = "emotion",
    max_rounds: Annotated[
        int, typer.Option(min=1, help="Generator/discriminator rounds before the fallback.")
    ] = DEFAULT_MAX_ROUNDS,
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
    calibration: CalibrationOpt = True,
    device: DeviceOpt = "auto",
    gpu_layers: GpuLayersOpt = None,
) -> None:
    """Label INPUT by SANM negotiation: the model proposes, judges itself, and repeats.

    Texts longer than the model's context are truncated (no --long chunk, unlike classify).
    """
    job = Job(
        "negotiate", task, parse_labels(labels), max_rounds, trace, agree_threshold, calibration
    )
    run(job, input, model, format, output, text_field, input_format, encoding, resume, threads,
        quiet, device, gpu_layers)  # fmt: skip


def _ray_on_cpu(device: str, gpu_layers: int | None) -> None:
    """Ray workers run their engines on the CPU: --device cuda or --gpu-layers is refused."""
    if check_device(device, gpu_layers) == "cuda" or gpu_layers:
        raise InputError("--ray runs its workers on the CPU: drop --device cuda / --gpu-layers")


def register(app: typer.Typer) -> None:
    app.command()(classify)
    app.command()(score)
    app.command()(negotiate)
