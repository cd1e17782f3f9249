"""`affedge export onnx` for decoder LLMs: optimum export, onnxruntime int8, verification.

The graph is optimum's ``text-generation`` export without past key values: input ids (+
attention mask and positions) -> logits at every position, which is all label scoring needs
(one forward pass per item; engines/onnx_decoder.py). int8 is onnxruntime's dynamic
quantization with per-channel weight scales. optimum writes the tied embedding twice (as the
Gather table and as the lm_head MatMul), so the fp32 file is larger than the safetensors.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from affedge.artifact import ArtifactKind, Manifest
from affedge.atomic import staged_dir
from affedge.errors import ModelError
from affedge.export.artifact import (
    check_floor,
    load_source_model,
    open_source,
    output_dir,
    special_tokens,
    write_manifest,
)
from affedge.export.verify import TorchSource, sample_records, verification_task, verify
from affedge.models import ModelRef

ONNX_TYPES = ("fp32", "int8")
LOGIT_ITEMS = 20
#: The window the engine uses (longer prompts are cut in the middle and flagged).
N_CTX = 2048


def _optimum_export(folder: Path, dest: Path) -> Path:
    from optimum.exporters.onnx import main_export

    try:
        main_export(
            str(folder),
            output=str(dest),
            task="text-generation",
            do_validation=False,
            no_post_process=False,
        )
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{folder}: optimum cannot export this model to ONNX: {exc}") from None
    return dest / "model.onnx"


def _int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=True,
        weight_type=QuantType.QInt8,
        use_external_data_format=src.stat().st_size > 1_800_000_000,
    )
    return dst


def export_onnx_decoder(
    model: Path,
    out: Path,
    quants: list[str],
    sample: int = 500,
    data_dir: Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    min_agreement: float | None = None,
) -> list[dict[str, Any]]:
    """Export, quantize and verify one ONNX artifact per type under ``out/<type>/``."""
    from affedge.engines.onnx_decoder import ONNXDecoderEngine

    unknown = [q for q in quants if q not in ONNX_TYPES]
    if unknown or not quants:
        raise ModelError(f"ONNX types {unknown or quants}: choose from {', '.join(ONNX_TYPES)}")
    source = open_source(model)
    task, dataset = verification_task(source.tasks)
    records = sample_records(task, dataset, sample, data_dir)
    special = special_tokens(source.folder)
    template = special.pop("chat_template")
    manifests: list[dict[str, Any]] = []
    with output_dir(out) as work:
        log(f"exporting {source.folder} to ONNX with optimum")
        fp32 = _optimum_export(source.folder, work / "fp32")
        reference = TorchSource(load_source_model(source, threads))
        for quant in quants:
            with staged_dir(out / quant) as folder:
                target = folder / "model.onnx"
                if quant == "fp32":
                    shutil.copyfile(fp32, target)
                    for extra in fp32.parent.glob("model.onnx_data*"):
                        shutil.copyfile(extra, folder / extra.name)
                else:
                    log("quantizing to int8 (onnxruntime dynamic, per-channel)")
                    _int8(fp32, target)
                shutil.copyfile(source.folder / "tokenizer.json", folder / "tokenizer.json")
                runtime: dict[str, Any] = {
                    "chat_template": template,
                    "special_tokens": special,
                    "n_ctx": N_CTX,
                }
                # The runtime fields first: verification opens the artifact as users will.
                Manifest(ArtifactKind.LLM_ONNX.value, file=target.name, **runtime).write(folder)
                log(f"verifying {quant} on {len(records)} {dataset} items ({task})")
                eng = ONNXDecoderEngine(ModelRef.from_path(folder), threads=threads)
                report = verify(
                    reference,
                    eng,
                    quant,
                    folder,
                    task,
                    dataset,
                    records,
                    LOGIT_ITEMS,
                    min_agreement,
                )
                check_floor(report)
                manifests.append(
                    write_manifest(
                        folder,
                        ArtifactKind.LLM_ONNX,
                        source,
                        quant,
                        report,
                        file=target.name,
                        runtime=runtime,
                    )
                )
                log(
                    f"{quant}: agreement {report.agreement:.1%}, accuracy "
                    f"{report.artifact_accuracy:.1%} (source {report.source_accuracy:.1%}), "
                    f"{report.size_bytes / 2**20:.1f} MiB"
                )
    return manifests
