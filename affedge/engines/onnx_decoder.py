"""Decoder LLMs exported to ONNX (tokenizers + onnxruntime; no torch).

The exported graph is the single forward pass classification needs (input ids -> logits, no
KV cache; export/onnx_decoder.py). Prompts (affedge/prompts.py, on :class:`OnnxTokenizer`)
and label scoring (engines/decoder.py) are shared with the GGUF backend; each item costs one
forward pass over its whole prompt, plus one per multi-token answer. The artifact folder
holds ``affedge.json`` (kind ``affedge-llm-onnx``: model file, chat template, special tokens,
window), the ``.onnx`` file and ``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from affedge.artifact import ArtifactKind
from affedge.engines.decoder import DecoderEngine, log_softmax
from affedge.engines.ort import session, session_device
from affedge.errors import ModelError
from affedge.models import ModelRef
from affedge.prompts import ChatTemplate, ItemPrompt, Messages

DEFAULT_N_CTX = 2048


class ONNXDecoderEngine(DecoderEngine):
    """Label and score prediction with an exported decoder on onnxruntime."""

    def __init__(
        self,
        ref: ModelRef,
        threads: int | None = None,
        context_turns: int | None = None,
        device: str = "cpu",
    ) -> None:
        from tokenizers import Tokenizer

        folder = ref.folder
        manifest = ref.manifest
        if manifest is None or manifest.kind != ArtifactKind.LLM_ONNX.value:
            raise ModelError(f"{folder}: not an ONNX decoder ({ref.kind})")
        if manifest.special_tokens is None or "eot_id" not in manifest.special_tokens:
            raise ModelError(f"{folder}: the manifest lacks special_tokens.eot_id")
        self.manifest = manifest
        self.temperatures = manifest.calibration
        model_file = ref.path if ref.path.is_file() else manifest.model_file(folder)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelError(f"{folder}: no tokenizer.json")
        self.name = ref.name
        self.path = model_file
        self.context_turns = context_turns
        self.n_ctx = manifest.n_ctx or DEFAULT_N_CTX
        self.tokenizer = OnnxTokenizer(
            Tokenizer.from_file(str(tok_file)), manifest.special_tokens, manifest.chat_template
        )
        self._init_prompt_cache()
        self._session = session(model_file, threads, device)
        self.device = session_device(self._session)
        self._inputs = {i.name for i in self._session.get_inputs()}

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

    def _answer_logprobs(self, prompt: ItemPrompt) -> np.ndarray:
        ids = prompt.ids
        if prompt.first_only:
            last = log_softmax(self._forward(ids)[-1])
            return np.array([last[a[0]] for a in prompt.answers])
        scores = np.empty(len(prompt.answers))
        for i, answer in enumerate(prompt.answers):
            rows = log_softmax(self._forward(ids + answer[:-1])[len(ids) - 1 :])
            scores[i] = sum(rows[j][tok] for j, tok in enumerate(answer))
        return scores

    def generate(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 32, stop: Sequence[str] = ()
    ) -> str:
        """Greedy decoding; without a KV cache each new token re-runs the prompt, so this is
        for short answers (baselines), not bulk generation."""
        ids = self.prompts.conversation(messages)
        out: list[int] = []
        for _ in range(max_tokens):
            tok = int(np.argmax(self._forward(ids + out)[-1]))
            if tok == self.tokenizer.eot_id:
                break
            out.append(tok)
            text = self.tokenizer.decode(out)
            if any(s in text for s in stop):
                return text.split(next(s for s in stop if s in text))[0]
        return self.tokenizer.decode(out)


class OnnxTokenizer:
    """An exported decoder's ``tokenizer.json`` with the manifest's special tokens and chat
    template, as a :class:`~affedge.prompts.PromptTokenizer`."""

    def __init__(
        self, tokenizer: Any, special: Mapping[str, Any], chat_template: str | None
    ) -> None:
        self._tokenizer = tokenizer
        self.bos_id = int(special.get("bos_id", -1))
        self.eot_id = int(special["eot_id"])
        self.add_bos = bool(special.get("add_bos", False))
        self.template = ChatTemplate(chat_template, special.get("bos", ""), special.get("eos", ""))

    def tokens(self, text: str, special: bool) -> list[int]:
        # encode_special_tokens=True reads "<|im_end|>" in analysed text as plain characters,
        # as llama.cpp's tokenize(special=False) does.
        self._tokenizer.encode_special_tokens = not special
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def render(self, messages: Messages) -> str:
        return self.template.render(messages)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids))
