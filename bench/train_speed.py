"""LoRA training throughput of the LLM recipes on this machine (issue 12, item 1).

One process runs the real training loop (train/lora.py ``train_loop``, the optimizer the
recipes use, the progressive recipe's batcher, train/llm_common.py ``sequential_batches``)
for ``--steps`` optimizer steps per setting on the same examples (each stage's default
datasets, a seeded sample), in one run:

* ``--quant``: each quantization loaded once (``none``: LoRA on fp32 weights on the CPU,
  bf16 on CUDA; ``nf4``: QLoRA, bitsandbytes);
* ``--batch-size``: each micro-batch size;
* ``unsorted`` (shuffled batches padded to their longest example, the loop before length
  bucketing) and ``bucketed`` (the default, windows of ``BUCKET_BATCHES`` batches sorted by
  length);
* on the CPU, each ``--threads`` value.

Tokens/s counts real (unpadded) tokens, the unit the loop logs; the first ``--warmup``
steps of every setting are not timed. ``x first`` is the ratio to the run's first setting at
the same thread count (the baseline: list the old default first). On CUDA each row also
records the peak GPU memory (``torch.cuda.max_memory_allocated``) and the median GPU
utilisation sampled by NVML every 0.2 s while the row ran (nvidia-ml-py, where installed).
Speeds move with the machine's load: compare ratios within one run.

Run (2 CPU cores; an H100):

    python -m affedge.bench.train_speed --steps 12 --threads 1 2 --limit 300
    python -m affedge.bench.train_speed --device cuda --quant nf4 none --batch-size 8 64 \
        --steps 30 --warmup 5 --limit 2000 --out bench/results/train_speed_h100
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affedge.bench.reporting import stamp, write_report

RESULTS = Path(__file__).resolve().parent / "results"


def _examples(cfg: Any, fmt: Any) -> list:
    from affedge.train.llm_common import prepare_source
    from affedge.train.progressive import DEFAULT_DATA, STAGES
    from affedge.train.sft_data import find_source

    out = []
    for stage, names in DEFAULT_DATA.items():
        for name in names:
            out.extend(prepare_source(fmt, find_source(name, level=STAGES[stage]), cfg).train)
    return out


class _GPUUtil:
    """Median GPU utilisation (%) sampled by NVML in a thread; None without nvidia-ml-py."""

    def __init__(self, index: int) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml: Any = pynvml
        except Exception:  # no NVML library or no driver: the row simply has no utilisation
            self._nvml = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __enter__(self) -> _GPUUtil:
        if self._nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def _measure(
    model: Any,
    examples: list,
    pad_id: int,
    device: Any,
    paged: bool,
    bucket: int,
    batch: int,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    import torch

    from affedge.train.llm_common import sequential_batches
    from affedge.train.lora import LoopSettings, train_loop

    next_batch = sequential_batches(examples, batch, 1, 13, "bench", bucket=bucket)
    starts: list[float] = []
    tokens: list[int] = []
    padded: list[int] = []

    def timed(step: int, micro: int) -> list:
        batch_examples = next_batch(step, micro)
        tokens.append(sum(len(e.input_ids) for e in batch_examples))
        padded.append(len(batch_examples) * max(len(e.input_ids) for e in batch_examples))
        # On CUDA a step's tail may still run here; the total is timed after a synchronize.
        starts.append(time.perf_counter())
        return batch_examples

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with (
        tempfile.TemporaryDirectory() as tmp,
        _GPUUtil(device.index or 0) if cuda else (contextlib.nullcontext()) as util,
    ):
        settings = LoopSettings(
            steps=steps + warmup, lr=1e-4, batch_size=batch, save_every=10**9, log_every=10**9
        )
        t0 = time.perf_counter()
        train_loop(
            {"model": model},
            timed,
            settings,
            pad_id=pad_id,
            device=device,
            checkpoint=Path(tmp) / "ckpt",
            paged=paged,
            log=lambda _msg: None,
            label="bench",
        )
        if cuda:
            torch.cuda.synchronize(device)
        end = time.perf_counter()
    bounds = [*starts[warmup:], end]
    durations = [b - a for a, b in itertools.pairwise(bounds)]
    timed_tokens = sum(tokens[warmup:])
    seconds = end - starts[warmup]
    row: dict[str, Any] = {
        "bucket": bucket,
        "steps": steps,
        "batch_size": batch,
        "tokens": timed_tokens,
        "padding_share": round(1 - timed_tokens / max(1, sum(padded[warmup:])), 3),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(timed_tokens / seconds, 1),
        "median_step_s": round(statistics.median(durations), 4),
        "total_s": round(end - t0, 2),
    }
    if cuda:
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        row["gpu_util_median"] = util.median()
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quant", nargs="+", choices=("none", "nf4"), default=["none"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per setting")
    parser.add_argument("--limit", type=int, default=300, help="training examples per dataset")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU only")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_speed")
    args = parser.parse_args(argv)

    import torch

    from affedge.train.llm_common import BUCKET_BATCHES, LLMConfig, resolve_base
    from affedge.train.lora import LoraSettings, add_lora, load_base, pick_device, set_threads
    from affedge.train.sft_data import ChatFormat

    device = torch.device(args.device) if args.device != "auto" else pick_device(False)
    cuda = device.type == "cuda"
    thread_counts = [None] if cuda else args.threads
    cfg = LLMConfig(base=args.base, limit=args.limit, eval_limit=1)
    base = resolve_base(args.base)
    rows: list[dict[str, Any]] = []
    examples: list = []
    for quant in args.quant:
        model, tokenizer = load_base(base, quant, device)
        fmt = ChatFormat(tokenizer, model.config.eos_token_id)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else fmt.eot_id
        examples = examples or _examples(cfg, fmt)
        model = add_lora(model, LoraSettings(rank=16, alpha=32, dropout=0.05), 13)
        for threads in thread_counts:
            if threads is not None:
                set_threads(threads)
            for batch in args.batch_size:
                for bucket in (1, BUCKET_BATCHES):
                    row = _measure(
                        model,
                        examples,
                        pad_id,
                        device,
                        quant == "nf4" and cuda,
                        bucket,
                        batch,
                        args.steps,
                        args.warmup,
                    )
                    row.update(
                        quant=quant,
                        threads=threads,
                        setting="bucketed" if bucket > 1 else "unsorted",
                    )
                    rows.append(row)
                    print(row, flush=True)
        del model
        if cuda:
            torch.cuda.empty_cache()
    first: dict[Any, float] = {}
    for r in rows:
        first.setdefault(r["threads"], r["tokens_per_s"])
        r["x_first"] = round(r["tokens_per_s"] / first[r["threads"]], 2)
    where = torch.cuda.get_device_name(device) if cuda else "the CPU"
    report = {
        **stamp("train_speed", list(argv) if argv is not None else None, "torch", "peft"),
        "device": where,
        "examples": len(examples),
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    lines = [
        f"# LoRA training throughput ({'CUDA' if cuda else 'CPU'})",
        "",
        f"`{report['command']}` on {report['machine']['cpu']} ({where}); load average at the "
        f"end {', '.join(f'{x:.1f}' for x in report['load_average'])}. {len(examples)} "
        f"examples (every progressive stage's datasets, {args.limit} per dataset), LoRA r=16 "
        f"on q/k/v/o, {args.steps} timed steps per row after {args.warmup} untimed; x first: "
        "tokens/s over the first row's (same threads).",
        "",
        "| quant | batch | setting | threads | tokens/s | x first | padding share "
        "| median step s | peak GPU MB | GPU util % |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['quant']} | {r['batch_size']} | {r['setting']} | {r['threads'] or '-'} | "
            f"{r['tokens_per_s']} | {r['x_first']} | {r['padding_share']} | "
            f"{r['median_step_s']} | {r.get('peak_gpu_mb', '-')} | "
            f"{r.get('gpu_util_median') if r.get('gpu_util_median') is not None else '-'} |"
        )
    write_report(args.out, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
