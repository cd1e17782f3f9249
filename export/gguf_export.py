"""`affedge export gguf`: HF folder -> F16/F32 GGUF -> llama.cpp quants, each verified."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from affedge.artifact import ArtifactKind
from affedge.atomic import staged_dir
from affedge.export.artifact import (
    check_floor,
    load_source_model,
    open_source,
    output_dir,
    write_manifest,
)
from affedge.export.gguf_quantize import UNQUANTIZED, check_types, quantize
from affedge.export.gguf_writer import check_tokenizer, write_gguf
from affedge.export.verify import TorchSource, sample_records, verification_task, verify
from affedge.models import ModelRef

#: Items whose full next-token logits are compared with the source (all vocabulary entries).
LOGIT_ITEMS = 20


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type the file holds (k-quants fall back to legacy types
    where a row is not a multiple of 256, so Q4_K_M of a small model is partly Q5_0)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return dict(Counter(t.tensor_type.name.lower() for t in reader.tensors))


def export_gguf(
    model: Path,
    out: Path,
    quants: list[str],
    sample: int = 500,
    data_dir: Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    min_agreement: float | None = None,
) -> list[dict[str, Any]]:
    """Write, quantize and verify one GGUF artifact per quant type under ``out/<quant>/``."""
    from affedge.engines.gguf import GGUFEngine

    quants = check_types(quants)
    source = open_source(model)
    task, dataset = verification_task(source.tasks)
    records = sample_records(task, dataset, sample, data_dir)
    base_type = "f32" if quants == ["f32"] else "f16"
    manifests: list[dict[str, Any]] = []
    with output_dir(out) as work:
        log(f"writing {base_type.upper()} GGUF from {source.folder}")
        base = write_gguf(source.folder, work / f"{source.name}.{base_type}.gguf", base_type)
        check_tokenizer(base, source.folder)
        reference = TorchSource(load_source_model(source, threads))
        for quant in quants:
            with staged_dir(out / quant) as folder:
                target = folder / f"{source.name}.{quant}.gguf"
                if quant == base_type:
                    shutil.copyfile(base, target)
                elif quant in UNQUANTIZED:
                    write_gguf(source.folder, target, quant)
                else:
                    log(f"quantizing to {quant}")
                    quantize(base, target, quant, threads)
                log(f"verifying {quant} on {len(records)} {dataset} items ({task})")
                with GGUFEngine(
                    ModelRef(target.name, target, ArtifactKind.LLM_GGUF.value), threads=threads
                ) as eng:
                    report = verify(
                        reference,
                        eng,
                        quant,
                        target,
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
                        ArtifactKind.LLM_GGUF,
                        source,
                        quant,
                        report,
                        file=target.name,
                        tensor_types=tensor_types(target),
                    )
                )
                log(
                    f"{quant}: agreement {report.agreement:.1%}, accuracy "
                    f"{report.artifact_accuracy:.1%} (source {report.source_accuracy:.1%}), "
                    f"{report.size_bytes / 2**20:.1f} MiB"
                )
    return manifests
