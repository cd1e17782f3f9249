"""Base decoder models for training and export: local HF folders or GGUF files.

transformers reads a GGUF file (``gguf_file=``) by dequantizing it into a plain
``LlamaForCausalLM`` and converting its tokenizer, which takes ~25-45 s (mostly the
tokenizer). :func:`hf_folder` does that once per GGUF file and caches the result as an
ordinary HF folder (safetensors + tokenizer), so training, QLoRA loading and export all start
from the same folder. The cache key is the file's path, size and mtime; the cache lives under
``$AFFEDGE_CACHE`` (default ``~/.cache/affedge``). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from affedge.artifact import is_gguf_file
from affedge.atomic import staged_dir
from affedge.errors import ModelError

CACHE_ENV = "AFFEDGE_CACHE"

#: Architectures the training and export paths handle (HF ``model_type`` values).
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "affedge")


def is_gguf(path: Path) -> bool:
    """True for a file that starts with the GGUF magic bytes."""
    return Path(path).is_file() and is_gguf_file(path)


def check_hf_folder(path: Path, need_tokenizer: bool = True) -> None:
    """ModelError unless ``path`` is a HF causal-LM folder of a supported architecture."""
    import json

    if not path.exists():
        raise ModelError(f"{path}: no such model folder or file")
    if not path.is_dir():
        raise ModelError(f"{path}: not a HF model folder (no config.json) and not a GGUF file")
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"{path}: not a HF model folder (no config.json)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{config}: not valid JSON ({exc})") from None
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{path}: unsupported architecture {model_type!r}; supported: "
            + ", ".join(SUPPORTED_ARCHITECTURES)
        )
    if need_tokenizer and not any(
        (path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")
    ):
        raise ModelError(f"{path}: model folder has no tokenizer (tokenizer.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"{path}: model folder has no weights (*.safetensors)")


def _cache_key(path: Path) -> str:
    st = path.stat()
    # The version tag invalidates folders written by an older conversion.
    raw = f"v2|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return hashlib.sha1(raw).hexdigest()[:16]


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF model into a HF folder at ``out`` (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{gguf}: transformers cannot read this GGUF file: {exc}") from None
    _fix_special_tokens(tokenizer, gguf)
    # A GGUF-loaded model carries the gguf "quantizer" marker; plain weights save fine in
    # transformers 4.57 (5.x refuses), but drop the marker so the folder loads as float.
    model.config.__dict__.pop("quantization_config", None)
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


def _fix_special_tokens(tokenizer: Any, gguf_path: Path) -> None:
    """Set BOS/EOS/PAD and add-BOS from the GGUF metadata.

    transformers 4.57's GGUF tokenizer conversion gets these wrong for SmolLM2 (EOS becomes
    ``<|im_start|>`` and ``add_bos_token`` True, while the file says EOS ``<|im_end|>`` and no
    BOS), and everything downstream (training's end-of-turn, the GGUF writer's metadata,
    ONNX manifests) reads them from the saved tokenizer.
    """
    import gguf

    fields = gguf.GGUFReader(str(gguf_path)).fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return field.contents() if field is not None else None

    for role in ("bos", "eos"):
        token_id = value(f"tokenizer.ggml.{role}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    pad_id = value("tokenizer.ggml.padding_token_id")
    if pad_id is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(pad_id))
    for flag in ("add_bos_token", "add_eos_token"):
        if hasattr(tokenizer, flag):
            setattr(tokenizer, flag, bool(value(f"tokenizer.ggml.{flag}")))


def hf_folder(path: Path) -> Path:
    """A HF folder for ``path``: the folder itself, or the cached conversion of a GGUF file."""
    path = Path(path).expanduser()
    if is_gguf(path):
        out = cache_dir() / "hf-from-gguf" / f"{path.stem}-{_cache_key(path)}"
        if not (out / "config.json").is_file():
            gguf_to_hf(path, out)
        return out
    if path.is_file():
        raise ModelError(f"{path}: not a GGUF file (no GGUF magic bytes) and not a model folder")
    check_hf_folder(path)
    return path


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_folder(path))


def load_causal_lm(
    path: Path,
    *,
    quantize_4bit: bool = False,
    compute_dtype: Any = None,
    device_map: Any = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) from a HF folder or GGUF file.

    ``quantize_4bit`` loads the linear weights as bitsandbytes NF4 with double quantization
    (QLoRA); ``compute_dtype`` defaults to bf16 on CUDA and fp32 on the CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = hf_folder(path)
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    kwargs: dict[str, Any] = {}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        kwargs["dtype"] = compute_dtype
    else:
        kwargs["dtype"] = torch.float32
    if device_map is not None:
        kwargs["device_map"] = device_map
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    return model, tokenizer
