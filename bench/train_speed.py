"""LoRA training throughput of the LLM recipes on this machine (issue 12, item 1).

One process loads the base once and runs the real training loop (train/lora.py
``train_loop`` with the progressive recipe's batcher, train/llm_common.py
``sequential_batches``) for ``--steps`` optimizer steps per setting on the same examples
(each stage's default datasets, a seeded sample), in one run:

* ``unsorted``: batches in shuffled order, padded to their longest example (the loop before
  length bucketing);
* ``bucketed``: the default, windows of ``BUCKET_BATCHES`` batches sorted by length;
* each of those at every ``--threads`` value.

Tokens/s counts real (unpadded) tokens, the unit the loop logs; the first step of every
setting is a warm-up and not timed. Speeds move with the machine's load: compare ratios
within one run.

Run:

    python -m affedge.bench.train_speed --steps 12 --threads 1 2 --limit 300
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
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


def _measure(
    model: Any, examples: list, pad_id: int, bucket: int, threads: int, steps: int, batch: int
) -> dict[str, Any]:
    import torch

    from affedge.train.llm_common import sequential_batches
    from affedge.train.lora import LoopSettings, train_loop

    torch.set_num_threads(threads)
    next_batch = sequential_batches(examples, batch, 1, 13, "bench", bucket=bucket)
    per_step: list[float] = []
    tokens: list[int] = []
    padded: list[int] = []

    def timed(step: int, micro: int) -> list:
        batch_examples = next_batch(step, micro)
        tokens.append(sum(len(e.input_ids) for e in batch_examples))
        padded.append(len(batch_examples) * max(len(e.input_ids) for e in batch_examples))
        per_step.append(time.perf_counter())
        return batch_examples

    with tempfile.TemporaryDirectory() as tmp:
        settings = LoopSettings(
            steps=steps + 1, lr=1e-4, batch_size=batch, save_every=10**9, log_every=10**9
        )
        t0 = time.perf_counter()
        train_loop(
            {"model": model},
            timed,
            settings,
            pad_id=pad_id,
            device=torch.device("cpu"),
            checkpoint=Path(tmp) / "ckpt",
            log=lambda _msg: None,
            label="bench",
        )
        end = time.perf_counter()
    starts = [*per_step[1:], end]
    durations = [b - a for a, b in zip(per_step[1:], starts[1:], strict=False)]
    durations.append(end - per_step[-1])
    timed_tokens = sum(tokens[1:])
    seconds = end - per_step[1]
    return {
        "bucket": bucket,
        "threads": threads,
        "steps": steps,
        "batch_size": batch,
        "tokens": timed_tokens,
        "padding_share": round(1 - sum(tokens[1:]) / max(1, sum(padded[1:])), 3),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(timed_tokens / seconds, 1),
        "median_step_s": round(statistics.median(durations), 3),
        "total_s": round(end - t0, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=300, help="training examples per dataset")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "train_speed")
    args = parser.parse_args(argv)

    import torch

    from affedge.train.llm_common import BUCKET_BATCHES, LLMConfig, resolve_base
    from affedge.train.lora import LoraSettings, add_lora, load_base
    from affedge.train.sft_data import ChatFormat

    cfg = LLMConfig(base=args.base, limit=args.limit, eval_limit=1)
    model, tokenizer = load_base(resolve_base(args.base), "none", torch.device("cpu"))
    fmt = ChatFormat(tokenizer, model.config.eos_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else fmt.eot_id
    examples = _examples(cfg, fmt)
    model = add_lora(model, LoraSettings(rank=16, alpha=32, dropout=0.05), 13)
    rows = []
    for threads in args.threads:
        for bucket in (1, BUCKET_BATCHES):
            row = _measure(model, examples, pad_id, bucket, threads, args.steps, args.batch_size)
            row["setting"] = "bucketed" if bucket > 1 else "unsorted"
            rows.append(row)
            print(row, flush=True)
    base = {r["threads"]: r["tokens_per_s"] for r in rows if r["bucket"] == 1}
    for r in rows:
        r["x_unsorted_same_threads"] = round(r["tokens_per_s"] / base[r["threads"]], 2)
    report = {
        **stamp("train_speed", list(argv) if argv is not None else None, "torch", "peft"),
        "examples": len(examples),
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    lines = [
        "# LoRA training throughput (CPU)",
        "",
        f"`{report['command']}` on {report['machine']['cpu']}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in report['load_average'])}. {len(examples)} examples "
        f"(every progressive stage's datasets, {args.limit} per dataset), batch "
        f"{args.batch_size}, LoRA r=16 on q/k/v/o, {args.steps} timed steps per row.",
        "",
        "| setting | threads | tokens/s | x unsorted | padding share | median step s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['threads']} | {r['tokens_per_s']} | "
            f"{r['x_unsorted_same_threads']} | {r['padding_share']} | {r['median_step_s']} |"
        )
    write_report(args.out, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
