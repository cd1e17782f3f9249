"""`affedge export onnx|gguf|gguf-lora|calibrate` (mounted through the ``affedge.commands``
entry points; needs the ``export`` extra). Nothing heavy is imported until a command runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from affedge.cli.options import DataDirOpt, require_extra, split_list, stderr

app = typer.Typer(
    name="export",
    help="Export trained models (needs the export extra).",
    no_args_is_help=True,
    add_completion=False,
)

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for the artifacts.")]
SampleOpt = Annotated[int, typer.Option(min=10, help="Validation items to verify on.")]
ExportThreadsOpt = Annotated[int, typer.Option(min=1, help="CPU threads.")]
MinAgreementOpt = Annotated[
    float | None,
    typer.Option(
        min=0.0, max=1.0, help="Agreement floor for every artifact (default: one per type)."
    ),
]


@app.command("onnx")
def onnx(
    model_dir: Annotated[
        Path, typer.Argument(help="Trained encoder folder, or a decoder HF folder / GGUF file.")
    ],
    out: OutOpt,
    quant: Annotated[str, typer.Option(help="Comma-separated: fp32, int8.")] = "int8",
    sample: SampleOpt = 500,
    data_dir: DataDirOpt = None,
    threads: ExportThreadsOpt = 2,
    min_agreement: MinAgreementOpt = None,
) -> None:
    """Export to ONNX, quantize, and verify against the source model.

    Multi-task encoders export with their heads; decoder LLMs export the single forward pass
    label scoring needs (no KV cache). Each artifact lands in OUT/<type>/ only if it passes."""
    require_extra("torch", "export")
    quants = split_list(quant)
    if _is_trained_encoder(model_dir):
        from affedge.export.onnx_encoder import export_onnx

        floors = None if min_agreement is None else dict.fromkeys(quants, min_agreement)
        reports = export_onnx(
            model_dir, out, quants, sample, data_dir, threads, min_agreement=floors
        )
    else:
        from affedge.export.onnx_decoder import export_onnx_decoder

        reports = export_onnx_decoder(
            model_dir, out, quants, sample, data_dir, threads, stderr, min_agreement
        )
    print(json.dumps(reports, indent=2))


def _is_trained_encoder(model_dir: Path) -> bool:
    """A folder written by `affedge train encoder` (an invalid manifest is one error line)."""
    from affedge.artifact import ArtifactKind, Manifest, has_manifest

    return (
        has_manifest(model_dir)
        and Manifest.read(model_dir).kind == ArtifactKind.ENCODER_TORCH.value
    )


@app.command("gguf")
def gguf(
    model_dir: Annotated[Path, typer.Argument(help="HF model folder (or a GGUF file).")],
    out: OutOpt,
    quant: Annotated[
        str, typer.Option(help="Comma-separated: f32, f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0...")
    ] = "q8_0,q4_k_m",
    sample: SampleOpt = 500,
    data_dir: DataDirOpt = None,
    threads: ExportThreadsOpt = 2,
    min_agreement: MinAgreementOpt = None,
) -> None:
    """Write GGUF (llama, mistral, qwen2), quantize with llama.cpp, verify each artifact.

    Each artifact lands in OUT/<quant>/ (model + affedge.json with the verification report)
    only if its label agreement with the source model reaches the floor for its type."""
    require_extra("torch", "export")
    require_extra("gguf", "export")
    require_extra("llama_cpp", "export")
    from affedge.export.gguf_export import export_gguf

    reports = export_gguf(
        model_dir, out, split_list(quant), sample, data_dir, threads, stderr, min_agreement
    )
    print(json.dumps(reports, indent=2))


@app.command("gguf-lora")
def gguf_lora(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="Run folder of `affedge train progressive|multitask`, or a peft "
            "LoRA adapter folder."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Artifact folder to write.")],
    base: Annotated[
        str | None,
        typer.Option(help="Base GGUF (built-in name or path; default: the run's base)."),
    ] = None,
    out_type: Annotated[str, typer.Option("--type", help="Adapter tensors: f16 or f32.")] = "f16",
    sample: SampleOpt = 500,
    data_dir: DataDirOpt = None,
    threads: ExportThreadsOpt = 2,
    min_agreement: MinAgreementOpt = None,
) -> None:
    """Write the trained LoRA as a llama.cpp adapter GGUF applied on the base at load time.

    OUT gets adapter.gguf + affedge.json (run it with `affedge classify -m OUT`), only if the
    adapter on the base agrees with the trained model on a validation sample."""
    require_extra("torch", "export")
    require_extra("gguf", "export")
    require_extra("llama_cpp", "export")
    from affedge.export.gguf_lora import export_gguf_lora

    manifest = export_gguf_lora(
        run_dir, out, base, out_type, sample, data_dir, threads, stderr, min_agreement
    )
    print(json.dumps(manifest, indent=2))


@app.command("calibrate")
def calibrate(
    artifact: Annotated[Path, typer.Argument(help="An exported artifact folder (ONNX or GGUF).")],
    limit: Annotated[int, typer.Option(min=50, help="Validation items per benchmark.")] = 2000,
    data_dir: DataDirOpt = None,
    threads: ExportThreadsOpt = 2,
) -> None:
    """Fit temperature scaling on validation data and store it in the artifact's manifest.

    One temperature per task and label set, fitted by validation NLL over every benchmark the
    model answers; labels never change, probabilities become readable as frequencies
    (`affedge classify --no-calibration` shows the raw ones)."""
    from affedge.export.calibrate import calibrate_artifact

    report = calibrate_artifact(
        artifact, limit=limit, data_dir=data_dir, threads=threads, log=stderr
    )
    print(json.dumps(report, indent=2))
