"""LoRA adapters on llama.cpp: an adapter GGUF applied at load time on its base GGUF.

llama-cpp-python loads the adapter with the model (``Llama(lora_path=...)``: llama.cpp's
``llama_adapter_lora_init``, then ``llama_set_adapters_lora`` on the Llama's own context).
llama.cpp attaches adapters to a *context*, not to the model, so every further context on the
same model (engines/gguf_batch.py's batched context) must attach it too, or it would score
with the base model alone.
"""

from __future__ import annotations

import ctypes
from typing import Any

from affedge.errors import ModelError
from affedge.models import ModelRef

#: The adapter's strength: 1.0 applies the trained deltas exactly (llama.cpp multiplies
#: B·A by scale · alpha / rank, alpha being the file's ``adapter.lora.alpha``).
LORA_SCALE = 1.0


def llama_files(ref: ModelRef) -> dict[str, Any]:
    """``Llama`` arguments naming the files: the GGUF model, or an adapter and its base."""
    if ref.base is None:
        return {"model_path": str(ref.path)}
    return {"model_path": str(ref.base), "lora_path": str(ref.path), "lora_scale": LORA_SCALE}


def check_adapter(llm: Any) -> None:
    """ModelError (and ``llm`` closed) if llama.cpp refused the adapter ``llm`` was asked for.

    llama.cpp refuses an adapter that does not fit the model (another base, another
    architecture) by returning NULL; llama-cpp-python 0.3.x tests that pointer against None,
    takes it for a loaded adapter and goes on with the base model alone."""
    if getattr(llm, "lora_path", None) and not getattr(llm, "_lora_adapter", None):
        path = llm.lora_path
        llm.close()
        raise ModelError(
            f"{path}: llama.cpp refused this LoRA adapter on {llm.model_path} (an adapter "
            "for another base model, or not a LoRA adapter GGUF)"
        )


def share_adapter(llm: Any, ctx: Any) -> None:
    """Attach ``llm``'s LoRA adapter (if it has one) to ``ctx``, another llama.cpp context on
    the same model, with the same scale."""
    adapter = getattr(llm, "_lora_adapter", None)
    if adapter is None:
        return
    import llama_cpp

    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(llm.lora_scale)
    if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales):
        raise ModelError(f"{llm.lora_path}: llama.cpp cannot attach the LoRA adapter")
