"""Inference backends behind one interface; :func:`open_engine` picks one for a model."""

from __future__ import annotations

from affedge.engines.base import Engine, LabelResult, ScoreResult
from affedge.errors import ModelError
from affedge.models import ModelRef, resolve_model


def open_engine(model: str | ModelRef | None = None, threads: int | None = None) -> Engine:
    """Load ``model`` (a built-in name, a path, or None for the default) on its backend."""
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    if ref.format == "gguf":
        from affedge.engines.gguf import GGUFEngine

        return GGUFEngine(ref, threads=threads)
    if ref.format == "onnx":
        from affedge.engines.onnx_decoder import DECODER_KIND, read_manifest

        folder = ref.path if ref.path.is_dir() else ref.path.parent
        if read_manifest(folder).get("kind") == DECODER_KIND:
            from affedge.engines.onnx_decoder import ONNXDecoderEngine

            return ONNXDecoderEngine(ref, threads=threads)
        from affedge.engines.onnx import ONNXEncoderEngine

        return ONNXEncoderEngine(ref, threads=threads)
    raise ModelError(f"{ref.path}: {ref.format} models are not supported by this version yet")


__all__ = ["Engine", "LabelResult", "ScoreResult", "open_engine"]
