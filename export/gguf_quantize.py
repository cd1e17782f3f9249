"""GGUF quantization with llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``)."""

from __future__ import annotations

import os
from pathlib import Path

from affedge.atomic import atomic_path
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
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.nthread = threads or os.cpu_count() or 1
    with atomic_path(dst) as partial:
        partial.unlink()  # llama.cpp creates the file itself
        with suppress_stdout_stderr(disable=False):  # one warning line per fallback tensor
            rc = llama_cpp.llama_model_quantize(
                str(src).encode(), str(partial).encode(), llama_cpp.byref(params)
            )
        if rc != 0 or not partial.is_file():
            raise ModelError(f"{src}: llama.cpp failed to quantize to {quant} (code {rc})")
    return dst
