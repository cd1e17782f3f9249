"""Export verification's scoring, one item at a time against batched, in one process.

The source side of `affedge export` verification (export/verify.py) scores each validation
prompt with the torch source model: before, one forward pass per item
(train/llm_eval.py ``score_answers``); now length-sorted padded batches reading the answer
position only (``score_many``). The artifact side runs the GGUF engine one item per decode
(``batch_size=1``) against its batched decodes (the default). Same prompts, same process,
interleaved; CPU seconds (``time.process_time``, every thread) are the figure to compare on
a shared machine, wall seconds are given too, and the two paths' log-probabilities must
agree within rounding.

    python -m affedge.bench.export_verify_speed --n 100 --threads 2
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affedge.bench.reporting import stamp, write_report

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    from affedge.artifact import ArtifactKind
    from affedge.engines.gguf import GGUFEngine
    from affedge.export.verify import sample_records
    from affedge.models import BUILTIN, ModelRef, resolve_model
    from affedge.tasks import TASKS, get_benchmark
    from affedge.train.hf_base import hf_folder, load_causal_lm
    from affedge.train.llm_eval import CPU_BATCH_SIZE, score_answers, score_many

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=CPU_BATCH_SIZE)
    parser.add_argument("--out", type=Path, default=RESULTS / "export_verify_speed")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    wheel = next(m for m in BUILTIN if m.name == "smollm2-135m-instruct").locate()
    assert wheel is not None, "the SmolLM2 wheel is not installed"
    model, _ = load_causal_lm(hf_folder(wheel))
    model.eval()
    records = sample_records("polarity", "sst2", args.n, None)
    labels = list(get_benchmark("polarity", "sst2").label_set())
    task = TASKS["polarity"]
    ref = resolve_model("smollm2-135m-instruct")  # the cached Q8_0, as a q8_0 export's artifact
    with GGUFEngine(ref, threads=args.threads) as engine:
        prep = engine.answer_tokens(task, labels)
        prompts = [engine.prompt_tokens(task, r, labels) for r in records]
        one, one_cpu, one_wall = _timed(
            lambda: np.array([score_answers(model, p, prep.answers) for p in prompts])
        )
        many, many_cpu, many_wall = _timed(
            lambda: score_many(model, prompts, prep.answers, batch_size=args.batch_size)
        )
        batched, art_cpu, art_wall = _timed(lambda: list(engine.classify(records, task, labels)))
    single = GGUFEngine(
        ModelRef(ref.name, ref.path, ArtifactKind.LLM_GGUF.value), threads=args.threads,
        batch_size=1,
    )  # fmt: skip
    with single:
        alone, alone_cpu, alone_wall = _timed(lambda: list(single.classify(records, task, labels)))
    probs_a = np.array([[r.probs[lab] for lab in labels] for r in alone])
    probs_b = np.array([[r.probs[lab] for lab in labels] for r in batched])
    rows = [
        {"side": "source (torch fp32)", "path": "one at a time", "cpu_s": one_cpu,
         "wall_s": one_wall},
        {"side": "source (torch fp32)", "path": f"batched ({args.batch_size}, length-sorted)",
         "cpu_s": many_cpu, "wall_s": many_wall},
        {"side": "artifact (GGUF Q8_0)", "path": "one sequence per decode", "cpu_s": alone_cpu,
         "wall_s": alone_wall},
        {"side": "artifact (GGUF Q8_0)", "path": "batched decodes", "cpu_s": art_cpu,
         "wall_s": art_wall},
    ]  # fmt: skip
    for row in rows:
        row["cpu_s"], row["wall_s"] = round(row["cpu_s"], 2), round(row["wall_s"], 2)
        row["items_per_cpu_s"] = round(args.n / row["cpu_s"], 2) if row["cpu_s"] else None
    report: dict[str, Any] = {
        **stamp("export_verify_speed", argv, "torch", "transformers", "llama-cpp-python"),
        "n": args.n,
        "threads": args.threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "source_max_abs_logprob_diff": float(np.abs(one - many).max()),
        "source_label_agreement": float((one.argmax(1) == many.argmax(1)).mean()),
        "artifact_max_abs_prob_diff": float(np.abs(probs_a - probs_b).max()),
    }
    lines = [
        "# Export verification scoring: one item at a time vs batched",
        "",
        f"`{report['command']}` on {report['machine']['cpu']} "
        f"({report['machine']['cores_usable']} cores), {report['date']}; SST-2 validation, "
        f"first {args.n} items, SmolLM2-135M-Instruct, {args.threads} threads; load average "
        f"{report['load_average_before']} before, {report['load_average_after']} after "
        "(shared cores: compare CPU seconds).",
        "",
        "| side | path | CPU s | wall s | items per CPU-s |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {r['side']} | {r['path']} | {r['cpu_s']} | {r['wall_s']} | {r['items_per_cpu_s']} |"
            for r in rows
        ),
        "",
        f"- Source: batched vs one at a time, max |log p difference| "
        f"{report['source_max_abs_logprob_diff']:.2e}, same label on "
        f"{report['source_label_agreement']:.1%} of items.",
        f"- Artifact: batched vs one sequence, max |probability difference| "
        f"{report['artifact_max_abs_prob_diff']:.2e}.",
    ]
    write_report(args.out, report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
