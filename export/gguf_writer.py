"""HF-format decoder folder -> GGUF (F32 or F16), written with the ``gguf`` package.

No HF -> GGUF converter ships in any installable package (llama.cpp keeps its converter
script in its source tree), so this is ours, on gguf-py's writer, tensor-name map and
special-vocab reader. What it does that a plain tensor copy would not:

* llama-family q/k projections are permuted into llama.cpp's rotary layout
  (``w.reshape(n_head, 2, head_dim // 2, n_in).swapaxes(1, 2)``); Qwen2 uses NeoX rotary in
  llama.cpp and is written as is;
* 1-D tensors (norms, biases) stay F32 as llama.cpp expects; matrices are F16 or F32;
* tokenizer: byte-level BPE (SmolLM2, Llama 3, Qwen2; ``gpt2`` model with merges) or
  SentencePiece-style BPE with byte fallback (Llama 2, Mistral; ``llama`` model with scores),
  the pre-tokenizer type read off tokenizer.json, special tokens and the chat template;
* tensors stream from safetensors to the file one at a time (peak memory ~ the largest
  tensor, not the model), into ``OUT.partial``, renamed to ``OUT`` only when complete.

After writing, :func:`check_tokenizer` compares llama.cpp's tokenization of probe texts with
the HF tokenizer's, so a wrong pre-tokenizer guess fails the export instead of shipping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from affedge.atomic import atomic_path
from affedge.errors import ModelError
from affedge.train.hf_base import check_hf_folder

#: HF ``model_type`` -> GGUF architecture name.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
#: Architectures whose q/k weights need llama.cpp's rotary permutation.
PERMUTE_QK = {"llama", "mistral"}
OUT_TYPES = ("f32", "f16")

#: Probe texts for the tokenizer check: words, digits, punctuation, whitespace, non-Latin.
PROBES = (
    "Hello world! It's 2024 and I paid $1,234.56 for this.",
    "I  can't   believe\tit's not butter...\n\nReally?!",
    "Ünïcödé façade — naïve café, 東京タワー, Москва, 😂👍",
    "    leading spaces and trailing   ",
    "#sarcasm @user http://t.co/xyz don't you LOVE Mondays??",
)


@dataclass(frozen=True)
class PreTokenizer:
    """A llama.cpp pre-tokenizer name and how to recognise it in tokenizer.json."""

    name: str
    marker: str  # a substring of the pre-tokenizer regex or structure that identifies it


#: Regex fragments that tell the families apart (checked in order; verified afterwards).
PRE_TOKENIZERS = (
    PreTokenizer("llama-bpe", r"\\p{N}{1,3}"),
    PreTokenizer("qwen2", r"[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"),
    PreTokenizer("smollm", '"individual_digits": true'),
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read ({exc})") from None


def _safetensors(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder}: no *.safetensors weights (save with safe_serialization)")
    return files


def _tensors(folder: Path) -> Iterator[tuple[str, Any]]:
    """(name, lazy loader) for every tensor in the folder's safetensors files."""
    from safetensors import safe_open

    for file in _safetensors(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, (file, name)


def _load(ref: tuple[Path, str]) -> np.ndarray:
    import torch
    from safetensors import safe_open

    file, name = ref
    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(name).to(torch.float32).numpy()


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF q/k projection rows -> llama.cpp's interleaved rotary layout."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    pre = json.dumps(tokenizer_json.get("pre_tokenizer"))
    for candidate in PRE_TOKENIZERS:
        if candidate.marker in pre:
            return candidate.name
    return "gpt-2"  # ByteLevel's own regex (GPT-2's)


def _add_vocab(writer: Any, folder: Path, n_vocab: int) -> str:
    """Tokenizer metadata; returns the GGUF tokenizer model name."""
    import gguf

    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelError(f"{folder}: model folder has no tokenizer.json")
    tj = _read_json(tok_path)
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ModelError(
            f"{tok_path}: tokenizer model {model.get('type')!r} is not supported "
            "(supported: byte-level BPE, SentencePiece-style BPE)"
        )
    byte_level = "ByteLevel" in json.dumps(tj.get("pre_tokenizer"))
    if not byte_level and model.get("byte_fallback"):
        # SentencePiece-style (Llama 2, Mistral): gguf-py builds scores and types from the HF
        # tokenizer; llama.cpp's "llama" tokenizer model needs them.
        vocab = gguf.LlamaHfVocab(folder)
        tokens, scores, types = [], [], []
        for text, score, typ in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(typ)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        gguf_model, load_merges = "llama", False
    else:
        vocab_map: dict[str, int] = model["vocab"]
        added = {t["id"]: t for t in tj.get("added_tokens", [])}
        size = max(n_vocab, len(vocab_map), max(added, default=-1) + 1)
        by_id = {i: t for t, i in vocab_map.items()}
        tokens, types = [], []
        for i in range(size):
            if i in added:
                tokens.append(added[i]["content"])
                special = added[i].get("special", False)
                types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
            elif i in by_id:
                tokens.append(by_id[i])
                types.append(gguf.TokenType.NORMAL)
            else:  # padding rows of an embedding larger than the vocabulary
                tokens.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(tj))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        gguf_model, load_merges = "gpt2", True
    special = gguf.SpecialVocab(folder, load_merges=load_merges, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    return gguf_model


@dataclass
class _Tensor:
    name: str  # GGUF name
    ref: tuple[Path, str]
    shape: tuple[int, ...]
    dtype: Any
    permute_heads: int  # 0 = no rotary permutation


def _plan(folder: Path, config: dict[str, Any], arch: str, out_type: str) -> list[_Tensor]:
    """Which tensors go in, under which names and types (without loading any data)."""
    import gguf
    from safetensors import safe_open

    n_layers = config["num_hidden_layers"]
    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    name_map = gguf.get_tensor_name_map(arch_id, n_layers)
    tied = config.get("tie_word_embeddings", False)
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    permute = config["model_type"] in PERMUTE_QK
    plan = []
    for hf_name, ref in _tensors(folder):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if hf_name == "lm_head.weight" and tied:
            continue
        gg_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gg_name is None:
            raise ModelError(f"{folder}: tensor {hf_name!r} has no GGUF name for {arch}")
        with safe_open(str(ref[0]), framework="pt") as f:
            shape = tuple(f.get_slice(hf_name).get_shape())
        dtype = np.float32 if len(shape) == 1 or out_type == "f32" else np.float16
        heads = 0
        if permute and hf_name.endswith("self_attn.q_proj.weight"):
            heads = n_head
        elif permute and hf_name.endswith("self_attn.k_proj.weight"):
            heads = n_head_kv
        plan.append(_Tensor(gg_name, ref, shape, dtype, heads))
    return plan


def _add_hparams(writer: Any, config: dict[str, Any], file_type: int, name: str) -> None:
    import gguf

    n_head = config["num_attention_heads"]
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // n_head
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind not in (None, "default"):
        raise ModelError(f"rope scaling {kind!r} is not supported by this writer (none, linear)")


def write_gguf(folder: Path, out: Path, out_type: str = "f16", name: str | None = None) -> Path:
    """Write ``folder`` (a HF llama/mistral/qwen2 causal LM) as a GGUF file at ``out``."""
    import gguf

    if out_type not in OUT_TYPES:
        raise ModelError(f"GGUF output type {out_type!r}: choose one of {', '.join(OUT_TYPES)}")
    check_hf_folder(folder)
    config = _read_json(folder / "config.json")
    arch = ARCHITECTURES[config["model_type"]]
    file_type = gguf.LlamaFileType.MOSTLY_F16 if out_type == "f16" else gguf.LlamaFileType.ALL_F32
    plan = _plan(folder, config, arch, out_type)

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(None, arch)
    with atomic_path(out) as partial, closing(writer):
        _add_hparams(writer, config, int(file_type), name or folder.name)
        _add_vocab(writer, folder, config["vocab_size"])
        for t in plan:
            nbytes = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
            writer.add_tensor_info(t.name, t.shape, np.dtype(t.dtype), nbytes)
        writer.write_header_to_file(partial)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in plan:
            data = _load(t.ref)
            if t.permute_heads:
                data = permute_rotary(data, t.permute_heads)
            writer.write_tensor_data(np.ascontiguousarray(data.astype(t.dtype)))
    return out


def check_tokenizer(gguf_path: Path, folder: Path) -> None:
    """ModelError unless llama.cpp tokenizes the probe texts as the HF tokenizer does."""
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf.encode_special_tokens = True  # like llama.cpp's special=False
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        for text in PROBES:
            want = hf.encode(text, add_special_tokens=False).ids
            got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            if want != got:
                raise ModelError(
                    f"{gguf_path}: llama.cpp tokenizes {text[:30]!r} differently from the HF "
                    f"tokenizer ({got[:8]} vs {want[:8]}): unsupported pre-tokenizer"
                )
    finally:
        llm.close()
