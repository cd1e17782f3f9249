"""GGUF quantization with llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``)."""

from __future__ import annotations

import os
from pathlib import Path

from affedge.errors import ModelError

#: Quant names users pass (`--quant`) -> llama.cpp file types. f16/f32 are written directly.
QUANT_TYPES: dict[str, str] = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
UNQUANTIZED = ("f32", "f16")
ALL_TYPES = (*UNQUANTIZED, *QUANT_TYPES)


def check_types(quants: list[str]) -> list[str]:
    """Normalised quant names, or ModelError naming the supported ones."""
    out = []
    for q in quants:
        name = q.strip().lower()
        if name not in ALL_TYPES:
            raise ModelError(f"unknown GGUF quant type {q!r}; supported: {', '.join(ALL_TYPES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ModelError("no GGUF quant type given")
    return out


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> Path:
    """Quantize the F16/F32 GGUF ``src`` to ``quant`` at ``dst`` (via ``dst.partial``).

    Tensors whose rows do not fit a k-quant's 256-wide blocks fall back to a legacy type
    inside llama.cpp (tiny models hit this; real ones do not).
    """
    from affedge.gguf_base import llama_quantize

    return llama_quantize(src, dst, QUANT_TYPES[quant], threads or os.cpu_count() or 1)
