"""Decoder LLMs exported to ONNX (tokenizers + onnxruntime; no torch).

The exported graph is the single forward pass classification needs (input ids -> logits, no
KV cache; export/onnx_decoder.py). Prompts and label scoring are shared with the GGUF backend
(engines/decoder.py); each item costs one forward pass over its whole prompt, plus one per
multi-token answer. The artifact folder holds ``affedge.json`` (kind ``affedge-llm-onnx``:
model file, chat template, special tokens, window), the ``.onnx`` file and
``tokenizer.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affedge.engines.decoder import DecoderEngine, Prepared, compile_chat_template, log_softmax
from affedge.engines.onnx import cpu_session
from affedge.errors import ModelError
from affedge.models import ModelRef

MANIFEST = "affedge.json"
DECODER_KIND = "affedge-llm-onnx"
DEFAULT_N_CTX = 2048


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelError(f"{folder}: no {MANIFEST}: not an affedge ONNX model folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from None


class ONNXDecoderEngine(DecoderEngine):
    """Label and score prediction with an exported decoder on onnxruntime."""

    def __init__(
        self, ref: ModelRef, threads: int | None = None, context_turns: int | None = None
    ) -> None:
        from tokenizers import Tokenizer

        folder = ref.path if ref.path.is_dir() else ref.path.parent
        self.manifest = read_manifest(folder)
        if self.manifest.get("kind") != DECODER_KIND:
            raise ModelError(f"{folder}: not an ONNX decoder ({self.manifest.get('kind')})")
        model_file = ref.path if ref.path.suffix == ".onnx" else folder / self.manifest["file"]
        if not model_file.is_file():
            raise ModelError(f"{folder}: the manifest names {model_file.name}, which is missing")
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelError(f"{folder}: no tokenizer.json")
        self.name = ref.name
        self.path = model_file
        self.context_turns = context_turns
        self.n_ctx = int(self.manifest.get("n_ctx", DEFAULT_N_CTX))
        self._tokenizer = Tokenizer.from_file(str(tok_file))
        special = self.manifest["special_tokens"]
        self._bos_id = int(special.get("bos_id", -1))
        self._eot = int(special["eot_id"])
        self._bos_text = special.get("bos", "")
        self._eos_text = special.get("eos", "")
        self._add_bos = bool(special.get("add_bos", False))
        template = self.manifest.get("chat_template")
        self._template = compile_chat_template(template) if template else None
        self._init_prompt_cache()
        self._session = cpu_session(model_file, threads)
        self._inputs = {i.name for i in self._session.get_inputs()}

    def _tokens(self, text: str, special: bool) -> list[int]:
        # encode_special_tokens=True reads "<|im_end|>" in analysed text as plain characters,
        # as llama.cpp's tokenize(special=False) does.
        self._tokenizer.encode_special_tokens = not special
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        """Logits at every position of ``ids`` (one sequence)."""
        arr = np.asarray([ids], dtype=np.int64)
        feeds = {"input_ids": arr}
        if "attention_mask" in self._inputs:
            feeds["attention_mask"] = np.ones_like(arr)
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.arange(arr.shape[1], dtype=np.int64)[None, :]
        return self._session.run(["logits"], feeds)[0][0]

    def next_token_logits(self, ids: Sequence[int]) -> np.ndarray:
        return self._forward(ids)[-1].astype(np.float32)

    def _answer_logprobs(self, prep: Prepared, body_text: str) -> tuple[np.ndarray, bool]:
        item, truncated = self._item_tokens(prep.head, prep.suffix, prep.max_answer + 1, body_text)
        ids = prep.head + item
        if prep.first_only:
            last = log_softmax(self._forward(ids)[-1])
            return np.array([last[a[0]] for a in prep.answers]), truncated
        scores = np.empty(len(prep.answers))
        for i, answer in enumerate(prep.answers):
            rows = log_softmax(self._forward(ids + answer[:-1])[len(ids) - 1 :])
            scores[i] = sum(rows[j][tok] for j, tok in enumerate(answer))
        return scores, truncated

    def generate(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 32, stop: Sequence[str] = ()
    ) -> str:
        """Greedy decoding; without a KV cache each new token re-runs the prompt, so this is
        for short answers (baselines), not bulk generation."""
        ids = self._tokens(self._render(messages), special=True)
        if self._add_bos and self._bos_id >= 0 and (not ids or ids[0] != self._bos_id):
            ids = [self._bos_id, *ids]
        out: list[int] = []
        for _ in range(max_tokens):
            tok = int(np.argmax(self._forward(ids + out)[-1]))
            if tok == self._eot:
                break
            out.append(tok)
            text = self._tokenizer.decode(out)
            if any(s in text for s in stop):
                return text.split(next(s for s in stop if s in text))[0]
        return self._tokenizer.decode(out)
