"""GGUF models on llama.cpp (llama-cpp-python).

Classification reads label log-probabilities at the answer position instead of generating
(prompts are built by affedge/prompts.py on :class:`LlamaCppTokenizer`, scoring rules are
shared with every decoder backend: engines/decoder.py):

* the task's *head* (system message, instruction, options: everything before the item) is
  evaluated once and its KV cache kept; each item then evaluates only its own tokens;
* labels whose first token is enough are read from the one forward pass of the item, longer
  ones cost one short extra decode each;
* ``classify`` and ``score`` evaluate ``batch_size`` items per decode, each on its own
  sequence (engines/gguf_batch.py: same numbers as one at a time, several times faster);
  ``batch_size=1`` keeps the one-sequence path, which negotiation (:class:`ChatState`) uses.

Decoding goes through llama-cpp-python's ``_ctx``/``_batch`` (its own thin wrappers over
``llama_decode`` and the KV memory API) because the high-level ``Llama.eval`` neither keeps
a reusable prefix nor returns logits without ``logits_all`` (which costs n_ctx x n_vocab
floats). The tested range of llama-cpp-python is pinned in pyproject.toml.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from affedge.artifact import GGUF_MAGIC
from affedge.device import llama_gpu_layers
from affedge.engines.base import Capability, LabelResult
from affedge.engines.decoder import DecoderEngine, label_result, log_softmax
from affedge.engines.gguf_adapter import check_adapter, llama_files
from affedge.engines.gguf_batch import DEFAULT_SEQ_CELLS, BatchScorer, fits
from affedge.errors import ModelError
from affedge.models import ModelRef
from affedge.prompts import ChatTemplate, ItemPrompt, Messages

DEFAULT_N_CTX = 2048
#: Tokens a negotiation keeps free after the item for its deductions, verdicts and turns.
CHAT_RESERVE = 512
#: Records ``classify``/``score`` take at once: sorted by length inside this window, they
#: fill the batched decodes with few fillers (results come back in input order).
DEFAULT_BATCH_SIZE = 64


class GGUFEngine(DecoderEngine):
    """Label and score prediction with a GGUF model on llama.cpp."""

    capabilities = DecoderEngine.capabilities | {Capability.CHAT}

    def __init__(
        self,
        ref: ModelRef,
        threads: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        context_turns: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        seq_cells: int = DEFAULT_SEQ_CELLS,
        device: str = "cpu",
        gpu_layers: int | None = None,
    ) -> None:
        from jinja2 import TemplateError
        from llama_cpp import Llama

        _check_gguf_file(ref)
        #: llama.cpp layers on the GPU (affedge/device.py: 0 on the CPU, -1 every layer)
        self.gpu_layers = llama_gpu_layers(device, gpu_layers)
        self.device = "cuda" if self.gpu_layers else "cpu"
        self.name = ref.name
        if ref.manifest is not None:  # an exported or adapter artifact: its temperatures
            self.temperatures = ref.manifest.calibration
        self.path = ref.path
        self.threads = threads or os.cpu_count() or 1
        self.context_turns = context_turns
        self.batch_size = max(1, batch_size)
        self.seq_cells = seq_cells
        self._batcher: BatchScorer | None = None  # created on the first batch
        try:
            self._llm = Llama(
                **llama_files(ref),  # the GGUF, or an adapter's base + the adapter
                n_ctx=n_ctx,
                n_batch=512,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                n_gpu_layers=self.gpu_layers,
                logits_all=False,
                verbose=False,
                seed=0,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"{ref.path}: llama.cpp cannot load this GGUF model (truncated or corrupt "
                f"file, or an unsupported architecture): {exc}"
            ) from None
        except TemplateError as exc:  # llama-cpp-python compiles the file's chat templates
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"{ref.path}: its chat template does not compile: {first}") from None
        check_adapter(self._llm)
        self.n_ctx = self._llm.n_ctx()
        self.n_vocab = self._llm.n_vocab()
        self.tokenizer = LlamaCppTokenizer(self._llm)
        self._init_prompt_cache()
        self._cached_head: list[int] | None = None

    # ------------------------------------------------------------------ decoding

    def _decode(self, tokens: Sequence[int], n_past: int, all_logits: bool) -> np.ndarray:
        """Evaluate ``tokens`` at position ``n_past``; logits of the last or of every token."""
        ctx, batch = self._llm._ctx, self._llm._batch
        rows: list[np.ndarray] = []
        step = self._llm.n_batch
        for start in range(0, len(tokens), step):
            chunk = list(tokens[start : start + step])
            last_chunk = start + step >= len(tokens)
            batch.set_batch(chunk, n_past=n_past + start, logits_all=all_logits)
            try:
                ctx.decode(batch)
            except RuntimeError as exc:
                raise ModelError(f"{self.path}: llama.cpp decode failed: {exc}") from None
            if all_logits:
                out = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk), self.n_vocab))
                rows.append(out.copy())
            elif last_chunk:
                out = np.ctypeslib.as_array(ctx.get_logits_ith(-1), shape=(self.n_vocab,))
                rows.append(out.copy()[None, :])
        return np.concatenate(rows, axis=0)

    def _forget_after(self, n_keep: int) -> None:
        self._llm._ctx.kv_cache_seq_rm(-1, n_keep, -1)

    def _ensure_head(self, head: list[int]) -> None:
        """Make the KV cache hold exactly ``head`` (re-using it when it already does)."""
        if self._cached_head == head:
            self._forget_after(len(head))
            return
        self._llm._ctx.kv_cache_clear()
        self._cached_head = None
        self._decode(head, 0, all_logits=False)
        self._cached_head = head

    def next_token_logits(self, ids: Sequence[int]) -> np.ndarray:
        self._llm._ctx.kv_cache_clear()
        self._cached_head = None
        return self._decode(list(ids), 0, all_logits=False)[-1]

    def _answer_logprobs(self, prompt: ItemPrompt) -> np.ndarray:
        """log p(answer | prompt) for every answer of ``prompt`` (the head's KV cache kept)."""
        self._ensure_head(prompt.head)
        start = len(prompt.head)
        first = log_softmax(self._decode(prompt.item, start, all_logits=False)[-1])
        end = start + len(prompt.item)
        return self._continuations(first, prompt.answers, prompt.first_only, end)

    def _answer_logprobs_many(self, prompts: Sequence[ItemPrompt]) -> list[np.ndarray]:
        """Prompts that fit a batch sequence go through :class:`BatchScorer` (same numbers as
        :meth:`_answer_logprobs`), longer ones one at a time."""
        batched = [i for i, p in enumerate(prompts) if fits(p, self.seq_cells)]
        if self.batch_size <= 1 or not batched:
            return [self._answer_logprobs(p) for p in prompts]
        if self._batcher is None:
            self._batcher = BatchScorer(self._llm, seq_cells=self.seq_cells, name=str(self.path))
        scored = self._batcher.answer_logprobs([prompts[i] for i in batched])
        out = dict(zip(batched, scored, strict=True))
        return [out[i] if i in out else self._answer_logprobs(p) for i, p in enumerate(prompts)]

    def _continuations(
        self, first: np.ndarray, answers: list[list[int]], first_only: bool, pos: int
    ) -> np.ndarray:
        """Total log-probability of each answer continuing the sequence at ``pos``, given the
        log-probabilities ``first`` of the token there; the KV cache is left ending at ``pos``."""
        if first_only:
            return np.array([first[a[0]] for a in answers])
        scores = np.empty(len(answers))
        for i, answer in enumerate(answers):
            total = first[answer[0]]
            if len(answer) > 1:
                logits = self._decode(answer[:-1], pos, all_logits=True)
                for j, tok in enumerate(answer[1:]):
                    total += log_softmax(logits[j])[tok]
                self._forget_after(pos)
            scores[i] = total
        return scores

    # ------------------------------------------------------------------ interface

    def generate(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 32, stop: Sequence[str] = ()
    ) -> str:
        prompt = self.prompts.conversation(messages)
        self._cached_head = None  # create_completion rewrites the KV cache
        self._llm.n_tokens = 0
        out = self._llm.create_completion(
            prompt, max_tokens=max_tokens, temperature=0.0, stop=list(stop) or None
        )
        self._llm._ctx.kv_cache_clear()
        self._llm.n_tokens = 0
        return out["choices"][0]["text"]  # type: ignore[index]

    def chat(self, messages: Sequence[dict[str, str]], body: str) -> ChatState:
        """Start a conversation: ``messages`` (with :data:`ITEM_SLOT` in the last user message,
        whose head is cached across items) with ``body`` in the slot, at the assistant's turn."""
        head, suffix = self.prompts.split(messages)
        self._ensure_head(head)
        item, truncated = self.prompts.fit(head, suffix, body, self.n_ctx, CHAT_RESERVE)
        logits = self._decode(item, len(head), all_logits=False)[-1]
        return ChatState(self, [*head, *item], logits, truncated)

    def close(self) -> None:
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            batcher.close()
            self._batcher = None
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None  # type: ignore[assignment]


class ChatState:
    """A conversation growing in the KV cache: generate, score answers, add turns.

    Used by SANM negotiation: the generator and discriminator roles alternate as turns of one
    sequence, so each turn costs only its own tokens. Text that comes from the analysed item or
    from the model is tokenized without special tokens; only template glue is parsed.
    """

    def __init__(
        self, engine: GGUFEngine, ids: list[int], logits: np.ndarray, truncated: bool
    ) -> None:
        self.engine = engine
        #: Every token of the conversation so far (what the KV cache holds); training builds
        #: the same sequence (train/sanm_data.py).
        self.ids = ids
        self.logits = logits
        self.truncated = truncated

    @property
    def pos(self) -> int:
        return len(self.ids)

    def _append(self, tokens: Sequence[int]) -> None:
        if not tokens:
            return
        if self.pos + len(tokens) >= self.engine.n_ctx:
            raise ModelError(f"{self.engine.path}: the conversation outgrew the context window")
        self.logits = self.engine._decode(tokens, self.pos, all_logits=False)[-1]
        self.ids.extend(tokens)

    def add(self, text: str) -> None:
        """Append ``text`` to the current turn (never parsed for special tokens)."""
        self._append(self.engine.tokenizer.tokens(text, special=False))

    def choose(self, answers: Sequence[str], allowed: Sequence[str] | None = None) -> LabelResult:
        """Probabilities of ``answers`` (restricted to ``allowed``) continuing here."""
        options = [a for a in answers if allowed is None or a in allowed]
        tokens, first_only = self.engine.prompts.answer_tokens(options)
        logp = self.engine._continuations(log_softmax(self.logits), tokens, first_only, self.pos)
        return label_result(options, logp, truncated=False)

    def generate(self, max_tokens: int) -> str:
        """Greedy continuation of the current turn, up to a newline or the end of the turn."""
        llm = self.engine._llm
        stop = {self.engine.tokenizer.eot_id, llm.token_eos()}
        out: list[int] = []
        for _ in range(max_tokens):
            tok = int(np.argmax(self.logits))
            if tok in stop:
                break
            piece = llm.detokenize([tok]).decode("utf-8", errors="ignore")
            if "\n" in piece and out:
                break
            out.append(tok)
            self._append([tok])
        return llm.detokenize(out).decode("utf-8", errors="replace").strip()

    def user_turn(self, text: str) -> None:
        """Close the assistant's turn, add a user turn with ``text``, open the assistant's."""
        close, open_ = self.engine.prompts.turn_glue()
        self._append(close)
        self.add(text)
        self._append(open_)


class LlamaCppTokenizer:
    """The vocabulary, special tokens and chat template of a loaded GGUF model, as a
    :class:`~affedge.prompts.PromptTokenizer`."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self.eot_id: int = llm.token_eos()
        self.bos_id: int = llm.token_bos()
        self.add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        self.template = ChatTemplate(
            llm.metadata.get("tokenizer.chat_template"),
            self.piece(self.bos_id),
            self.piece(self.eot_id),
        )

    def tokens(self, text: str, special: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def piece(self, token: int) -> str:
        """The text of one token, special tokens spelled out ('' for none)."""
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def render(self, messages: Messages) -> str:
        return self.template.render(messages)


def _check_gguf_file(ref: ModelRef) -> None:
    """Cheap checks before llama.cpp sees the file: it exists, is GGUF, is not truncated."""
    path = ref.path
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF model (no GGUF magic bytes)")
    if size < 1024:
        raise ModelError(f"{path}: GGUF file is truncated ({size} bytes)")
