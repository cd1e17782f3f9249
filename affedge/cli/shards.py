"""`affedge classify|score DIR_OR_GLOB -o OUT_DIR --ray`: the CLI side of
:mod:`affedge.ray_data` (which, like Ray, is imported only when ``--ray`` is given)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from affedge.cli.options import Format, progress, stderr
from affedge.errors import InputError
from affedge.runner import Job

RayOpt = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Annotate a folder or glob of shards on Ray Data into the folder --output, one "
        "output shard per input shard; a rerun skips finished shards. A local cluster unless "
        "--ray-address or $RAY_ADDRESS names one.",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(help="Ray cluster to run on (host:port, or auto); implies --ray."),
]
WorkersOpt = Annotated[
    int,
    typer.Option(min=1, help="With --ray: model workers (each loads the model once and takes "
                 "--threads CPUs, default 1)."),
]  # fmt: skip


def run_ray(
    job: Job,
    source: str,
    model: str | None,
    fmt: Format | None,
    output: Path | None,
    text_field: str | None,
    input_format: str | None,
    encoding: str,
    threads: int | None,
    quiet: bool,
    address: str | None,
    workers: int,
) -> None:
    """Run ``job`` over the shards of ``source`` on Ray, with a progress bar and a summary."""
    if output is None:
        raise InputError("--ray needs --output OUT_DIR (a folder for the output shards)")
    from affedge.ray_data import annotate_shards, require_ray

    require_ray()
    # Ray Data logs a worker's error with its traceback before raising it; the CLI says it in
    # one line (or, for a bug, raises it with its traceback), so its own logging stays quiet.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    out_format = str(fmt.value) if fmt is not None else "jsonl"
    with progress(quiet) as display:
        bar = display.add_task(job.command, total=None)
        summary = annotate_shards(
            source, output, job, model, out_format=out_format, workers=workers,
            num_cpus=float(threads or 1), threads=threads, address=address,
            text_field=text_field, input_format=input_format, encoding=encoding,
            on_start=lambda total: display.update(bar, total=total),
            on_rows=lambda n: display.advance(bar, n),
        )  # fmt: skip
    if quiet:
        return
    skipped = f"; {summary.skipped} already done" if summary.skipped else ""
    if summary.items == 0:
        stderr(f"affedge: all {summary.shards} shards in {summary.output} are already done")
        return
    rate = summary.items / summary.seconds if summary.seconds > 0 else 0.0
    stderr(
        f"affedge: {summary.items} items in {summary.shards - summary.skipped} shards "
        f"in {summary.seconds:.1f} s ({rate:.1f} items/s, Ray start-up included) with "
        f"{summary.model} on {workers} Ray workers{skipped} -> {summary.output}"
    )
