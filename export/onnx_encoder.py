"""Multi-task encoder -> ONNX (fp32) -> dynamic int8, each verified against the torch model.

``torch.onnx`` exports the model with all its heads in one graph (optimum's exporters know
the standard transformers heads, not ours); onnxruntime's own ``quantize_dynamic`` makes the
int8 variant (int8 weights of every MatMul, activations quantized on the fly).

Every artifact is checked on a validation sample against the torch model it came from:
label agreement of every classification head, max/mean absolute output difference, accuracy
delta against gold, file size and CPU latency. The torch model is loaded and run on the CPU in
fp32 whatever device trained it, so the reference is the computation the artifact is meant to
reproduce. The report goes into the artifact's manifest (affedge.artifact, kind
``affedge-encoder-onnx``); an artifact whose agreement falls below its floor is not written,
and the artifacts of one call land together or not at all.

Floors: fp32 must agree on 99.9% of labels (it is the same computation up to float rounding,
so anything lower is an export bug); int8 on 95%. Per-channel dynamic int8 of our 6-layer
MiniLM encoder measured 96.0% (worst head: the 8-way emotion head; the flips are items whose
top two labels were close, and the test-split metrics of int8 stay within a point of fp32,
bench/results/encoder_report.md). Keeping the first and last layers in fp32 only reached
96.6% for a 46% larger file. A broken quantization (a layer with a wrong scale) drops
agreement far lower, which is what the floor is there to catch.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from affedge.artifact import ArtifactKind, Manifest
from affedge.atomic import staged_dir
from affedge.encoding import EncoderTokenizer
from affedge.engines.ort import cpu_session
from affedge.errors import AffedgeError
from affedge.records import Record
from affedge.tasks import HEADS

MIN_AGREEMENT = {"fp32": 0.999, "int8": 0.95}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


def _export_fp32(model, path: Path) -> None:
    import torch

    dummy = {
        "input_ids": torch.ones(2, 8, dtype=torch.long),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 8, dtype=torch.long),
    }
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    axes.update({name: {0: "batch"} for name in HEADS})
    torch.onnx.export(
        model,
        (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"]),
        str(path),
        input_names=list(INPUTS),
        output_names=list(HEADS),
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )


def _quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def _sample(n: int, data_dir: str | Path | None) -> list[tuple[Record, str, Any]]:
    """``n`` validation items drawn round-robin over the training sources, with gold."""
    from affedge.train.encoder_data import build_examples

    sources = build_examples("validation", data_dir, limit=n)
    pools = [list(v) for v in sources.values()]
    out: list[tuple[Record, str, Any]] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                ex = pool.pop(0)
                out.append((ex.record, ex.head, ex))
    return out


def _ort_outputs(session, tokenizer, records, turns) -> list[np.ndarray]:
    """Every head's output for ``records`` from an onnxruntime session, batches of 32."""
    chunks = []
    for start in range(0, len(records), 32):
        chunks.append(session.run(list(HEADS), tokenizer(records[start : start + 32], turns)))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(HEADS))]


def _latency_ms(session, tokenizer, records, turns, reps: int = 3) -> float:
    """Median milliseconds per item of a warm session on one batch of 32."""
    batch = tokenizer(records[:32], turns)
    session.run(None, batch)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        session.run(None, batch)
        times.append((time.perf_counter() - start) / len(records[:32]) * 1000)
    return round(statistics.median(times), 3)


def compare(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], sample: list
) -> dict[str, Any]:
    """Agreement, output differences and gold-accuracy delta of ``candidate`` vs ``reference``."""
    report: dict[str, Any] = {"heads": {}}
    agreements = []
    for i, (name, head) in enumerate(HEADS.items()):
        ref, cand = reference[i], candidate[i]
        diff = np.abs(ref - cand)
        entry: dict[str, Any] = {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
        }
        if head.kind == "classify":
            agree = float(np.mean(ref.argmax(1) == cand.argmax(1)))
            entry["label_agreement"] = round(agree, 4)
            agreements.append(agree)
            rows = [j for j, (_, h, _) in enumerate(sample) if h == name]
            if rows:
                gold = np.array([int(np.argmax(sample[j][2].target)) for j in rows])
                acc_ref = float(np.mean(ref[rows].argmax(1) == gold))
                acc_cand = float(np.mean(cand[rows].argmax(1) == gold))
                entry["gold_items"] = len(rows)
                entry["accuracy_delta"] = round(acc_cand - acc_ref, 4)
        report["heads"][name] = entry
    report["label_agreement"] = round(min(agreements), 4)
    return report


def _artifact(source: Manifest, quant: str, file: str, model_dir: Path, report: dict) -> Manifest:
    """The exported artifact's manifest: the runtime fields of the trained model, its
    provenance record, the source folder, the ONNX settings and the verification report."""
    return Manifest(
        kind=ArtifactKind.ENCODER_ONNX.value,
        file=file,
        base=source.base,
        heads=dict(source.heads),
        max_length=source.max_length,
        context_turns=source.context_turns,
        pooling=source.pooling,
        quant=quant,
        info={
            **source.info,
            "source": str(model_dir.resolve()),
            "onnx": {"opset": OPSET},
            "export": report,
        },
    )


def export_onnx(
    model_dir: Path,
    out: Path,
    quants: Sequence[str] = ("int8",),
    sample_size: int = 500,
    data_dir: str | Path | None = None,
    threads: int = 2,
    min_agreement: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Export ``model_dir`` to ``out/<quant>/`` for each quant (fp32, int8); returns reports.

    ``min_agreement`` overrides the floors of :data:`MIN_AGREEMENT` per quant.
    """
    floors = {**MIN_AGREEMENT, **(min_agreement or {})}
    import torch

    from affedge.train.encoder_model import load_model, predict

    unknown = [q for q in quants if q not in MIN_AGREEMENT]
    if unknown:
        raise AffedgeError(f"unknown ONNX quantization {unknown[0]!r}: choose fp32, int8")
    if not model_dir.is_dir():
        raise AffedgeError(f"{model_dir}: no such model folder")
    if not (model_dir / "tokenizer.json").is_file():
        raise AffedgeError(f"{model_dir}: the model folder has no tokenizer.json")
    model, manifest = load_model(model_dir, device="cpu")
    if manifest.max_length is None or manifest.context_turns is None:
        raise AffedgeError(f"{model_dir}: the manifest lacks max_length or context_turns")
    turns = manifest.context_turns
    tokenizer = EncoderTokenizer(model_dir / "tokenizer.json", manifest.max_length)
    sample = _sample(sample_size, data_dir)
    records = [s[0] for s in sample]
    torch.set_num_threads(threads)
    reference = predict(model, tokenizer, records, turns)
    reports: dict[str, dict[str, Any]] = {}
    # Every quant is staged beside its final folder; the stack replaces them all when the
    # block succeeds and removes them all if any check fails.
    with tempfile.TemporaryDirectory(prefix="affedge-export-") as tmp_name, ExitStack() as stack:
        fp32 = Path(tmp_name) / "model.fp32.onnx"
        _export_fp32(model, fp32)
        for quant in quants:
            stage = stack.enter_context(staged_dir(out / quant))
            target = stage / f"model.{quant}.onnx"
            if quant == "fp32":
                shutil.copy(fp32, target)
            else:
                _quantize_int8(fp32, target)
            session = cpu_session(target, threads)
            report = compare(reference, _ort_outputs(session, tokenizer, records, turns), sample)
            report.update(
                quant=quant,
                sample=len(records),
                min_agreement=floors[quant],
                size_mb=round(target.stat().st_size / 2**20, 2),
                cpu_latency_ms_per_item=_latency_ms(session, tokenizer, records, turns),
                threads=threads,
            )
            reports[quant] = report
            if report["label_agreement"] < floors[quant]:
                raise AffedgeError(
                    f"{quant} export disagrees with the source model on "
                    f"{1 - report['label_agreement']:.1%} of validation labels (agreement "
                    f"{report['label_agreement']:.1%} < floor {floors[quant]:.1%}); "
                    "nothing written"
                )
            shutil.copy(model_dir / "tokenizer.json", stage / "tokenizer.json")
            _artifact(manifest, quant, target.name, model_dir, report).write(stage)
    return reports
