"""What every decoder-LLM backend shares: prompts as token ids and label scoring rules.

A backend (llama.cpp in gguf.py, onnxruntime in onnx_decoder.py) supplies a tokenizer, the
chat template and a way to get next-token logits; this base class turns the registry's
prompts into tokens the same way for all of them, so the same record reaches every backend
as the same ids:

* the chat template is rendered with :data:`ITEM_SLOT` in the user message; the text before
  the slot (the task's *head*) and after it are tokenized with special tokens parsed, the
  item body without (the analysed text is data, never instructions);
* a label is scored as its full token continuation, ``log p(t1) + log p(t2 | t1) + ...``;
  when one label's tokens are a prefix of another's, every label ends in the end-of-turn
  token so that the shorter one is a complete answer;
* scores are the expected value of the 0-9 answer-token distribution of one forward pass;
* an item too long for the window is cut in the middle and flagged ``truncated``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from affedge.engines.base import Engine, LabelResult, ScoreResult
from affedge.errors import ModelError
from affedge.prompts import ITEM_SLOT, PromptSpec, prompt_spec
from affedge.records import Record
from affedge.tasks import Task


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class Prepared:
    """A prompt (messages with the item slot, and the answers) tokenized for this model."""

    head: list[int]
    suffix: list[int]
    answers: list[list[int]]
    first_only: bool  # every answer is decided by its first token

    @property
    def max_answer(self) -> int:
        return max(len(a) for a in self.answers)


def compile_chat_template(source: str) -> Any:
    """Compile a chat template in a sandbox, as the HF chat-template convention does."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ModelError(f"chat template error: {message}")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def has_prefix_pair(answers: list[list[int]]) -> bool:
    for i, a in enumerate(answers):
        for j, b in enumerate(answers):
            if i != j and len(a) <= len(b) and b[: len(a)] == a:
                return True
    return False


class DecoderEngine(Engine):
    """Label and score prediction by a causal LM; subclasses provide tokens and logits.

    Subclasses set ``name``, ``path``, ``n_ctx``, ``context_turns``, ``_template`` (compiled
    chat template or None), ``_bos_text``/``_eos_text``, ``_bos_id``, ``_add_bos`` and
    ``_eot`` (the end-of-turn token id), and implement :meth:`_tokens` and
    :meth:`_answer_logprobs`.
    """

    path: Any
    n_ctx: int
    context_turns: int | None
    _template: Any
    _bos_text: str
    _eos_text: str
    _bos_id: int
    _add_bos: bool
    _eot: int

    def _init_prompt_cache(self) -> None:
        self._prepared: dict[tuple, Prepared] = {}
        self._split: dict[tuple, tuple[list[int], list[int]]] = {}

    # ----------------------------------------------------------------- backend hooks

    @abstractmethod
    def _tokens(self, text: str, special: bool) -> list[int]:
        """Token ids of ``text`` (no BOS); ``special`` parses special-token strings."""

    @abstractmethod
    def next_token_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Raw next-token logits after the token sequence ``ids`` (export verification)."""

    @abstractmethod
    def _answer_logprobs(self, prep: Prepared, body_text: str) -> tuple[np.ndarray, bool]:
        """log p(answer | prompt) for every answer of ``prep``, and whether the item was cut."""

    # ----------------------------------------------------------------- prompt plumbing

    def _render(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat template applied to ``messages``, ending at the assistant's turn."""
        if self._template is None:
            # No chat template in the model: plain "role: content" turns.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + "assistant: "
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=True,
            bos_token=self._bos_text,
            eos_token=self._eos_text,
        )

    def _split_prompt(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Tokens before and after :data:`ITEM_SLOT` in the rendered ``messages`` (cached)."""
        key = tuple(tuple(sorted(m.items())) for m in messages)
        if key not in self._split:
            before, sep, after = self._render(messages).partition(ITEM_SLOT)
            if not sep:
                raise ModelError(f"{self.path}: the chat template dropped the user message")
            head = self._tokens(before, special=True)
            bos = self._bos_id
            if self._add_bos and bos >= 0 and (not head or head[0] != bos):
                head = [bos, *head]
            self._split[key] = (head, self._tokens(after, special=True))
        return self._split[key]

    def _prepare(
        self, messages: Sequence[dict[str, str]], answers: Sequence[str], digits: bool = False
    ) -> Prepared:
        """Tokenize a prompt whose user message holds :data:`ITEM_SLOT`, and its answers."""
        key = (tuple(tuple(sorted(m.items())) for m in messages), tuple(answers))
        if key in self._prepared:
            return self._prepared[key]
        head, suffix = self._split_prompt(messages)
        tokens, first_only = self._answer_tokens(answers)
        if digits and any(len(a) != 1 for a in tokens):
            raise ModelError(f"{self.path}: digits 0-9 are not single tokens in this model")
        prepared = Prepared(head, suffix, tokens, first_only)
        self._prepared[key] = prepared
        return prepared

    def _answer_tokens(self, answers: Sequence[str]) -> tuple[list[list[int]], bool]:
        """Answers as token continuations, and whether their first tokens decide them."""
        tokens = [self._tokens(a, special=False) for a in answers]
        if any(not a for a in tokens):
            raise ModelError(f"an answer tokenizes to nothing: {list(answers)}")
        if has_prefix_pair(tokens):
            tokens = [[*a, self._eot] for a in tokens]
        first_only = all(len(a) == 1 for a in tokens) and len({a[0] for a in tokens}) == len(tokens)
        return tokens, first_only

    def _task_prompt(self, task: Task, labels: Sequence[str] | None) -> tuple[PromptSpec, Prepared]:
        spec = prompt_spec(task, labels)
        return spec, self._prepare(spec.messages, spec.answers, digits=task.kind == "score")

    def _body(self, spec: PromptSpec, record: Record) -> str:
        turns = self.context_turns
        return spec.body(record) if turns is None else spec.body(record, turns)

    def _item_tokens(
        self, head: list[int], suffix: list[int], reserve: int, body_text: str
    ) -> tuple[list[int], bool]:
        """The item's tokens (body + suffix), cut in the middle if they would leave fewer than
        ``reserve`` tokens of the window free after them."""
        body = self._tokens(body_text, special=False)
        room = self.n_ctx - len(head) - len(suffix) - reserve
        if room < 16:
            raise ModelError(f"{self.path}: context window of {self.n_ctx} tokens is too small")
        truncated = len(body) > room
        if truncated:
            keep_start = room // 2
            body = body[:keep_start] + body[len(body) - (room - keep_start) :]
        return body + suffix, truncated

    # ------------------------------------------------------------------ interface

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        spec, prep = self._task_prompt(task, labels)
        for record in records:
            yield self._label_result(prep, spec.answers, self._body(spec, record))

    def _label_result(self, prep: Prepared, answers: Sequence[str], body_text: str) -> LabelResult:
        logp, truncated = self._answer_logprobs(prep, body_text)
        probs = np.exp(logp - logp.max())
        probs /= probs.sum()
        return LabelResult(
            probs={a: float(p) for a, p in zip(answers, probs, strict=True)}, truncated=truncated
        )

    def choose(
        self, messages: Sequence[dict[str, str]], body: str, answers: Sequence[str]
    ) -> LabelResult:
        """Score ``answers`` as continuations of ``messages`` with ``body`` in the item slot."""
        return self._label_result(self._prepare(messages, answers), answers, body)

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        spec, prep = self._task_prompt(task, None)
        values = np.arange(len(prep.answers), dtype=np.float64) / (len(prep.answers) - 1)
        for record in records:
            logp, truncated = self._answer_logprobs(prep, self._body(spec, record))
            dist = np.exp(logp - logp.max())
            dist /= dist.sum()
            yield ScoreResult(
                score=float(dist @ values),
                distribution=tuple(float(p) for p in dist),
                truncated=truncated,
            )

    def prompt_tokens(
        self, task: Task, record: Record, labels: Sequence[str] | None = None
    ) -> list[int]:
        """The full prompt of ``record`` as the model sees it (head + item), for baselines and
        for verifying an exported model against its source on identical ids."""
        spec, prep = self._task_prompt(task, labels)
        item, _ = self._item_tokens(
            prep.head, prep.suffix, prep.max_answer + 1, self._body(spec, record)
        )
        return prep.head + item

    def answer_tokens(self, task: Task, labels: Sequence[str] | None = None) -> Prepared:
        """The tokenized prompt parts and answers of ``task`` (see :meth:`prompt_tokens`)."""
        return self._task_prompt(task, labels)[1]
