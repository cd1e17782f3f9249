"""Exported artifacts of one model against transformers fp32 of the same weights.

For every artifact folder written by `affedge export gguf|onnx` (F16/Q8_0/Q4_K_M GGUF, ONNX
fp32/int8 ...): file size, label agreement with transformers fp32, accuracy on the SST-2 test
split (polarity, label-logit scoring) and items/s on this CPU, all in one process on the same
records. transformers gets the very token ids the GGUF engine builds, so agreement measures
the artifacts, not tokenization.

    python -m affedge.bench.export_report --source SMOLLM2.gguf \
        runs/export/smollm2-gguf/{f16,q8_0,q4_k_m} runs/export/smollm2-onnx/{fp32,int8}
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from affedge.artifact import ArtifactKind
from affedge.bench.reporting import stamp, write_report
from affedge.engines import open_engine
from affedge.export.artifact import load_source_model, open_source
from affedge.export.verify import TorchSource, sample_records
from affedge.models import resolve_model
from affedge.tasks import TASKS, get_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def _size(path: Path) -> int:
    folder = path if path.is_dir() else path.parent
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    bench = get_benchmark("polarity", "sst2")
    labels = list(bench.label_set())
    task = TASKS["polarity"]
    records = sample_records("polarity", "sst2", args.limit, args.data_dir, split="test")
    gold = [r.labels[bench.layer] for r in records]
    rows: list[dict[str, Any]] = []

    # Reference: transformers fp32 on the token ids of the first GGUF artifact's engine.
    gguf_artifact = next(
        a for a in args.artifacts if resolve_model(a).kind == ArtifactKind.LLM_GGUF.value
    )
    source = open_source(args.source)
    with open_engine(str(gguf_artifact), threads=args.threads) as eng:
        prep = eng.answer_tokens(task, labels)
        prompts = [eng.prompt_tokens(task, r, labels) for r in records]
    reference = TorchSource(load_source_model(source, args.threads))
    t0 = time.perf_counter()
    ref_labels = [labels[int(np.argmax(reference.answer_logprobs(ids, prep)))] for ids in prompts]
    seconds = time.perf_counter() - t0
    st_size = sum(p.stat().st_size for p in source.folder.glob("*.safetensors"))
    rows.append(_row("transformers fp32", "safetensors", st_size, ref_labels, ref_labels, gold,
                     seconds))  # fmt: skip

    for artifact in args.artifacts:
        ref = resolve_model(artifact)
        with open_engine(ref, threads=args.threads) as eng:
            next(iter(eng.classify(records[:1], task, labels)))  # warm-up (head KV, pages)
            t0 = time.perf_counter()
            got = [res.label for res in eng.classify(records, task, labels)]
            seconds = time.perf_counter() - t0
        assert ref.manifest is not None, f"{artifact}: not an exported artifact"
        name = f"{ref.format.upper()} {ref.manifest.quant}"
        rows.append(_row(name, ref.format, _size(ref.path), got, ref_labels, gold, seconds))
    base = rows[0]["items_per_s"]
    for row in rows:
        row["speedup_vs_transformers"] = row["items_per_s"] / base
    return {
        **stamp("export_report", None, "llama-cpp-python", "onnxruntime", "torch", "transformers"),
        "source": str(args.source),
        "task": "polarity",
        "dataset": "sst2",
        "split": "test",
        "n": len(records),
        "threads": args.threads,
        "rows": rows,
    }


def _row(name, fmt, size, labels, ref, gold, seconds) -> dict[str, Any]:
    n = len(labels)
    return {
        "artifact": name,
        "format": fmt,
        "size_mb": size / 2**20,
        "agreement": sum(a == b for a, b in zip(labels, ref, strict=True)) / n,
        "accuracy": sum(a == b for a, b in zip(labels, gold, strict=True)) / n,
        "items_per_s": n / seconds,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Exported artifacts vs transformers fp32 ({report['source']})",
        "",
        f"`{report['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores_usable']} usable cores, {report['threads']} threads, "
        f"Python {m['python']}; {report['date']}.",
        f"Records: the first {report['n']} of the SST-2 test split (polarity, label-logit "
        "scoring); agreement is with transformers fp32 of the same weights on the same token "
        "ids. Speeds are from one run in one process (other jobs may have shared the CPU: "
        "compare ratios, not absolute values).",
        "",
        "| artifact | size MiB | agreement | accuracy | items/s | vs transformers |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['artifact']} | {r['size_mb']:.1f} | {r['agreement']:.1%} | "
            f"{r['accuracy']:.1%} | {r['items_per_s']:.2f} | {r['speedup_vs_transformers']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+", type=Path, help="artifact folders")
    parser.add_argument("--source", required=True, type=Path, help="HF folder or GGUF exported")
    parser.add_argument("--limit", type=int, default=400, help="SST-2 test items")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "export_smollm2")
    args = parser.parse_args(argv)
    report = run(args)
    write_report(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
