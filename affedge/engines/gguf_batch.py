"""Batched label scoring on llama.cpp: many items per ``llama_decode``, one sequence each.

One item's ~25 tokens per decode leave the CPU's matrix kernels mostly idle (and the weights
are streamed from memory once per decode), so :class:`BatchScorer` evaluates many items in
one decode, on a second llama.cpp context that shares the engine's weights:

* the context has one KV *stream* per sequence (``n_seq_max`` streams, ``kv_unified`` off);
  the task's head is decoded once into sequence 0 and copied into each item's sequence
  with ``llama_memory_seq_cp`` (a copy of the stream's cells), where it stays across batches;
* each item is decoded on its own sequence at the positions right after the head, so its KV
  cells sit exactly where the one-at-a-time engine puts them;
* every sequence of a decode gets the same number of tokens: a shorter item is followed by
  filler tokens, *after* its last token, which its logits cannot see (causal mask). llama.cpp
  cuts a multi-stream batch into micro-batches holding the same number of tokens of every
  sequence, so without fillers a short item would decide where a longer one is cut;
* label continuations (answers longer than one token) follow in one decode per answer, that
  answer's tokens but the last on every item's sequence, after the fillers are removed;
* logits are requested only where they are read: the item's last token and the
  continuation tokens.

Why not one unified KV cache with the head's cells shared by all sequences (llama.cpp's
``batched`` example)? With the default (non-flash) attention, llama.cpp sums an item's
attention over every cell of the cache, masked ones included; another item's cells between
the head and this item change the summation order, and SmolLM2 Q4_1 (whose activations are
re-quantized to 8 bits before every matrix product) turns that last-bit difference into
label log-probability changes of up to 0.2 (measured). Per-item streams keep each item's
arithmetic that of the one-at-a-time engine: the results are the same numbers (tests compare
within 1e-4), whichever items share a batch.

Scores follow engines/decoder.py's rules: a label is its whole continuation,
``log p(t1) + log p(t2 | t1) + ...``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from affedge.engines.decoder import log_softmax
from affedge.engines.gguf_adapter import share_adapter
from affedge.errors import ModelError
from affedge.prompts import ItemPrompt

#: Most items (sequences) per decode; measured in bench/results/classify_speed.md.
DEFAULT_BATCH_ITEMS = 16
#: Most tokens per decode (items and fillers): CPU throughput is flat beyond a few hundred.
DEFAULT_BATCH_TOKENS = 512
#: KV cells per item sequence: head + item + the longest label continuation must fit, or the
#: item is scored one at a time (same numbers, slower).
DEFAULT_SEQ_CELLS = 256


@dataclass(frozen=True)
class _Row:
    token: int
    pos: int
    seq: int
    logits: bool


def fits(prompt: ItemPrompt, seq_cells: int) -> bool:
    """Whether ``prompt`` fits one item sequence of ``seq_cells`` KV cells."""
    return len(prompt.head) + len(prompt.item) + prompt.prompt.max_answer <= seq_cells


class BatchScorer:
    """Answer log-probabilities of many :class:`~affedge.prompts.ItemPrompt` per decode.

    ``llm`` is the engine's ``llama_cpp.Llama``: its weights are shared, its context untouched.
    Prompts must :func:`fit` ``seq_cells``; the caller scores the others one at a time.
    """

    def __init__(
        self,
        llm: Any,
        max_items: int = DEFAULT_BATCH_ITEMS,
        seq_cells: int = DEFAULT_SEQ_CELLS,
        max_tokens: int = DEFAULT_BATCH_TOKENS,
        name: str = "",
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._lib = llama_cpp
        self.name = name
        self.max_items = max(1, min(max_items, llama_cpp.llama_max_parallel_sequences() - 1))
        self.seq_cells = seq_cells
        self.n_vocab: int = llm.n_vocab()
        n_seqs = self.max_items + 1  # sequence 0 holds the head copied into the others
        tokens = self.max_tokens = max(max_tokens, seq_cells)  # one item always fits
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_seqs * seq_cells
        params.n_batch = tokens
        # One micro-batch per decode: an item's rows are never split between micro-batches.
        params.n_ubatch = tokens
        params.n_seq_max = n_seqs
        params.kv_unified = False
        params.embeddings = False
        try:
            # Registers its own release on the model, so it is freed before the model is.
            self._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        except ValueError as exc:
            raise ModelError(f"{name}: llama.cpp cannot create a batched context: {exc}") from None
        share_adapter(llm, self._ctx.ctx)  # a LoRA adapter is per context
        if llama_cpp.llama_n_ctx_seq(self._ctx.ctx) < seq_cells:
            raise ModelError(f"{name}: llama.cpp gave the batched context too few cells")
        self._mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(tokens, 0, 1)
        self._head: list[int] | None = None
        self._seqs_with_head = 0  # sequences 1..this hold a copy of the head

    # ------------------------------------------------------------------ llama.cpp calls

    def _decode(self, rows: Sequence[_Row]) -> None:
        b = self._batch
        b.n_tokens = len(rows)
        for i, row in enumerate(rows):
            b.token[i] = row.token
            b.pos[i] = row.pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = row.seq
            b.logits[i] = row.logits
        rc = self._lib.llama_decode(self._ctx.ctx, b)
        if rc != 0:
            self._reset()  # the cache may hold part of the batch
            raise ModelError(f"{self.name}: llama.cpp decode failed (code {rc})")

    def _logits(self, row: int) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self._ctx.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _forget_after(self, seq: int, pos: int) -> None:
        self._lib.llama_memory_seq_rm(self._mem, seq, pos, -1)

    def _reset(self) -> None:
        self._lib.llama_memory_clear(self._mem, True)
        self._head = None
        self._seqs_with_head = 0

    # ------------------------------------------------------------------ batches

    def _ensure_head(self, head: list[int], n_items: int) -> None:
        """Sequences 0..n_items hold exactly ``head``."""
        if self._head != head:
            self._reset()
            step = self.max_tokens
            for start in range(0, len(head), step):
                chunk = head[start : start + step]
                self._decode([_Row(t, start + i, 0, False) for i, t in enumerate(chunk)])
            self._head = head
        for seq in range(self._seqs_with_head + 1, n_items + 1):
            self._lib.llama_memory_seq_cp(self._mem, 0, seq, -1, -1)
        self._seqs_with_head = max(self._seqs_with_head, n_items)

    def _score_batch(self, batch: Sequence[ItemPrompt]) -> list[np.ndarray]:
        head = batch[0].head
        start = len(head)
        self._ensure_head(head, len(batch))
        width = max(len(p.item) for p in batch)
        rows: list[_Row] = []
        last: list[int] = []
        for seq, p in enumerate(batch, 1):
            fill = [p.item[-1]] * (width - len(p.item))
            for k, tok in enumerate(p.item + fill):
                rows.append(_Row(tok, start + k, seq, k == len(p.item) - 1))
            last.append(seq * width - width + len(p.item) - 1)
        self._decode(rows)
        scores = []
        for p, row in zip(batch, last, strict=True):
            first = log_softmax(self._logits(row))
            scores.append(np.array([first[a[0]] for a in p.answers]))
        prompt = batch[0]
        if not prompt.first_only:
            for seq, p in enumerate(batch, 1):
                self._forget_after(seq, start + len(p.item))  # the fillers
            for a_idx, answer in enumerate(prompt.answers):
                if len(answer) > 1:
                    self._continue(batch, a_idx, answer, scores)
        for seq in range(1, len(batch) + 1):
            self._forget_after(seq, start)
        return scores

    def _continue(
        self, batch: Sequence[ItemPrompt], a_idx: int, answer: list[int], scores: list[np.ndarray]
    ) -> None:
        """Add log p(answer[1:] | item, answer[0]) to every item's score of ``answer``."""
        n = len(answer) - 1
        rows = []
        for seq, p in enumerate(batch, 1):
            end = len(p.head) + len(p.item)
            rows.extend(_Row(tok, end + k, seq, True) for k, tok in enumerate(answer[:-1]))
        self._decode(rows)
        for i, (seq, p) in enumerate(enumerate(batch, 1)):
            for j, tok in enumerate(answer[1:]):
                scores[i][a_idx] += log_softmax(self._logits(i * n + j))[tok]
            self._forget_after(seq, len(p.head) + len(p.item))

    def _pack(self, prompts: Sequence[ItemPrompt]) -> Iterator[list[int]]:
        """Indices of ``prompts`` in batches: items of one prompt (head and answers), sorted
        by length so that few fillers are needed, at most ``max_items`` per batch and
        ``max_tokens`` once padded to the batch's longest item."""
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            key = next((k for k in groups if prompts[k].prompt == p.prompt), i)
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            batch: list[int] = []
            for i in sorted(members, key=lambda i: len(prompts[i].item)):
                width = len(prompts[i].item)  # the longest so far: sorted
                if batch and (
                    len(batch) >= self.max_items or (len(batch) + 1) * width > self.max_tokens
                ):
                    yield batch
                    batch = []
                batch.append(i)
            if batch:
                yield batch

    # ------------------------------------------------------------------ interface

    def answer_logprobs(self, prompts: Sequence[ItemPrompt]) -> list[np.ndarray]:
        """log p(answer | prompt) for every answer of every prompt (each must :func:`fit`)."""
        for p in prompts:
            if not fits(p, self.seq_cells):
                raise ModelError(f"{self.name}: a prompt is too long for the batched context")
        out: dict[int, np.ndarray] = {}
        for batch in self._pack(prompts):
            out.update(zip(batch, self._score_batch([prompts[i] for i in batch]), strict=True))
        return [out[i] for i in range(len(prompts))]

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            ctx.close()
            self._ctx = None

    def __del__(self) -> None:
        self.close()
