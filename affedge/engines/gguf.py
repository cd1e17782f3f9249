"""GGUF models on llama.cpp (llama-cpp-python).

Classification reads label log-probabilities at the answer position instead of generating:

* the task's *head* (system message, instruction, options: everything before the item) is
  evaluated once and its KV cache kept; each item then evaluates only its own tokens;
* a label is scored as its full token continuation, ``log p(t1) + log p(t2 | t1) + ...``;
  labels whose first token is enough are read from the one forward pass of the item, longer
  ones cost one short extra decode each; when one label's tokens are a prefix of another's,
  every label ends in the end-of-turn token so that the shorter one is a complete answer;
* scores are the expected value of the 0-9 answer-token distribution of one forward pass.

Decoding goes through llama-cpp-python's ``_ctx``/``_batch`` (its own thin wrappers over
``llama_decode`` and the KV memory API) because the high-level ``Llama.eval`` neither keeps
a reusable prefix nor returns logits without ``logits_all`` (which costs n_ctx x n_vocab
floats). The tested range of llama-cpp-python is pinned in pyproject.toml.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from affedge.engines.base import Engine, LabelResult, ScoreResult
from affedge.errors import ModelError
from affedge.models import GGUF_MAGIC, ModelRef
from affedge.prompts import ITEM_SLOT, PromptSpec, prompt_spec
from affedge.records import Record
from affedge.tasks import Task

DEFAULT_N_CTX = 2048


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max()
    return x - np.log(np.exp(x).sum())


@dataclass
class _Prepared:
    """A prompt spec tokenized for this model."""

    spec: PromptSpec
    head: list[int]
    suffix: list[int]
    answers: list[list[int]]
    first_only: bool  # every answer is decided by its first token

    @property
    def max_answer(self) -> int:
        return max(len(a) for a in self.answers)


class GGUFEngine(Engine):
    """Label and score prediction with a GGUF model on llama.cpp."""

    def __init__(
        self,
        ref: ModelRef,
        threads: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        context_turns: int | None = None,
    ) -> None:
        from llama_cpp import Llama

        _check_gguf_file(ref)
        self.name = ref.name
        self.path = ref.path
        self.threads = threads or os.cpu_count() or 1
        self.context_turns = context_turns
        try:
            self._llm = Llama(
                model_path=str(ref.path),
                n_ctx=n_ctx,
                n_batch=512,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                logits_all=False,
                verbose=False,
                seed=0,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"{ref.path}: llama.cpp cannot load this GGUF model (truncated or corrupt "
                f"file, or an unsupported architecture): {exc}"
            ) from None
        self.n_ctx = self._llm.n_ctx()
        self.n_vocab = self._llm.n_vocab()
        self._eot = self._llm.token_eos()
        self._prepared: dict[tuple[str, tuple[str, ...]], _Prepared] = {}
        self._cached_head: list[int] | None = None
        template = self._llm.metadata.get("tokenizer.chat_template")
        self._template = _compile_template(template) if template else None

    # ----------------------------------------------------------------- prompt plumbing

    def _render(self, messages: Sequence[dict[str, str]]) -> str:
        if self._template is None:
            # No chat template in the file: plain "role: content" turns.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + "assistant: "
        bos = self._llm.detokenize([self._llm.token_bos()], special=True).decode(
            "utf-8", errors="ignore"
        )
        eos = self._llm.detokenize([self._eot], special=True).decode("utf-8", errors="ignore")
        return self._template.render(
            messages=list(messages), add_generation_prompt=True, bos_token=bos, eos_token=eos
        )

    def _tokens(self, text: str, special: bool) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def _prepare(self, task: Task, labels: Sequence[str] | None) -> _Prepared:
        spec = prompt_spec(task, labels)
        key = (task.name, spec.answers)
        if key in self._prepared:
            return self._prepared[key]
        rendered = self._render(spec.messages)
        before, sep, after = rendered.partition(ITEM_SLOT)
        if not sep:
            raise ModelError(f"{self.path}: the chat template dropped the user message")
        head = self._tokens(before, special=True)
        add_bos = self._llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        bos = self._llm.token_bos()
        if add_bos and bos >= 0 and (not head or head[0] != bos):
            head = [bos, *head]
        suffix = self._tokens(after, special=True)
        answers = [self._tokens(a, special=False) for a in spec.answers]
        if any(not a for a in answers):
            raise ModelError(f"a label tokenizes to nothing: {spec.answers}")
        if task.kind == "score" and any(len(a) != 1 for a in answers):
            raise ModelError(f"{self.path}: digits 0-9 are not single tokens in this model")
        if _has_prefix_pair(answers):
            answers = [[*a, self._eot] for a in answers]
        first_only = all(len(a) == 1 for a in answers) and len({a[0] for a in answers}) == len(
            answers
        )
        prepared = _Prepared(spec, head, suffix, answers, first_only)
        self._prepared[key] = prepared
        return prepared

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

    def _item_tokens(self, prep: _Prepared, record: Record) -> tuple[list[int], bool]:
        """The item's tokens (body + suffix), cut in the middle if they overflow the window."""
        turns = self.context_turns
        body_text = prep.spec.body(record) if turns is None else prep.spec.body(record, turns)
        body = self._tokens(body_text, special=False)
        room = self.n_ctx - len(prep.head) - len(prep.suffix) - prep.max_answer - 1
        if room < 16:
            raise ModelError(f"{self.path}: context window of {self.n_ctx} tokens is too small")
        truncated = len(body) > room
        if truncated:
            keep_start = room // 2
            body = body[:keep_start] + body[len(body) - (room - keep_start) :]
        return body + prep.suffix, truncated

    def _answer_logprobs(self, prep: _Prepared, record: Record) -> tuple[np.ndarray, bool]:
        """log p(answer | prompt) for every answer of ``prep`` (one row per answer)."""
        self._ensure_head(prep.head)
        item, truncated = self._item_tokens(prep, record)
        start = len(prep.head)
        first = _log_softmax(self._decode(item, start, all_logits=False)[-1])
        if prep.first_only:
            return np.array([first[a[0]] for a in prep.answers]), truncated
        pos = start + len(item)
        scores = np.empty(len(prep.answers))
        for i, answer in enumerate(prep.answers):
            total = first[answer[0]]
            if len(answer) > 1:
                logits = self._decode(answer[:-1], pos, all_logits=True)
                for j, tok in enumerate(answer[1:]):
                    total += _log_softmax(logits[j])[tok]
                self._forget_after(pos)
            scores[i] = total
        return scores, truncated

    # ------------------------------------------------------------------ interface

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        prep = self._prepare(task, labels)
        for record in records:
            logp, truncated = self._answer_logprobs(prep, record)
            probs = np.exp(logp - logp.max())
            probs /= probs.sum()
            yield LabelResult(
                probs={lab: float(p) for lab, p in zip(prep.spec.answers, probs, strict=True)},
                truncated=truncated,
            )

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        prep = self._prepare(task, None)
        values = np.arange(len(prep.answers), dtype=np.float64) / (len(prep.answers) - 1)
        for record in records:
            logp, truncated = self._answer_logprobs(prep, record)
            dist = np.exp(logp - logp.max())
            dist /= dist.sum()
            yield ScoreResult(
                score=float(dist @ values),
                distribution=tuple(float(p) for p in dist),
                truncated=truncated,
            )

    def generate(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 32, stop: Sequence[str] = ()
    ) -> str:
        prompt = self._tokens(self._render(messages), special=True)
        self._cached_head = None  # create_completion rewrites the KV cache
        self._llm.n_tokens = 0
        out = self._llm.create_completion(
            prompt, max_tokens=max_tokens, temperature=0.0, stop=list(stop) or None
        )
        self._llm._ctx.kv_cache_clear()
        self._llm.n_tokens = 0
        return out["choices"][0]["text"]  # type: ignore[index]

    def prompt_tokens(self, task: Task, record: Record, labels: Sequence[str] | None = None):
        """The full prompt of ``record`` as the model sees it (head + item), for baselines."""
        prep = self._prepare(task, labels)
        item, _ = self._item_tokens(prep, record)
        return prep.head + item

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None  # type: ignore[assignment]


def _has_prefix_pair(answers: list[list[int]]) -> bool:
    for i, a in enumerate(answers):
        for j, b in enumerate(answers):
            if i != j and len(a) <= len(b) and b[: len(a)] == a:
                return True
    return False


def _compile_template(source: str):
    """Compile a GGUF chat template in a sandbox, as the HF chat-template convention does."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ModelError(f"chat template error: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


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
