"""What every decoder-LLM backend shares: label scoring rules on the one prompt builder.

A backend (llama.cpp in gguf.py, onnxruntime in onnx_decoder.py) supplies a
:class:`~affedge.prompts.PromptTokenizer` (its tokenizer, special tokens and chat template)
and next-token logits. Prompts become token ids in :class:`~affedge.prompts.PromptBuilder`,
the same code training and the torch scorer use, so the same record reaches every backend
(and every trained model) as the same ids. On top of those ids, for every backend:

* a label is scored as its full token continuation, ``log p(t1) + log p(t2 | t1) + ...``,
  and label probabilities are the softmax over the label set (:func:`label_result`);
* scores are the expected value of the 0-9 answer-token distribution of one forward pass
  (:func:`score_result`);
* an item too long for the window is cut in the middle and flagged ``truncated``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, ClassVar

import numpy as np

from affedge.calibration import tempered_softmax
from affedge.engines.base import Capability, Engine, LabelResult, ScoreResult
from affedge.prompts import (
    ItemPrompt,
    PromptBuilder,
    PromptSpec,
    PromptTokenizer,
    PromptTokens,
)
from affedge.records import Record
from affedge.tasks import Task


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def label_result(
    answers: Sequence[str], logp: np.ndarray, truncated: bool, temperature: float = 1.0
) -> LabelResult:
    """Label probabilities: the softmax of the answers' continuation log-probabilities,
    divided by the model's fitted ``temperature`` (:mod:`affedge.calibration`)."""
    probs = tempered_softmax(logp, temperature)
    return LabelResult(
        probs={a: float(p) for a, p in zip(answers, probs, strict=True)}, truncated=truncated
    )


def score_result(logp: np.ndarray, truncated: bool) -> ScoreResult:
    """A [0, 1] score: the expected value of the distribution over the 0-9 answer digits."""
    dist = np.exp(logp - logp.max())
    dist /= dist.sum()
    values = np.arange(len(dist), dtype=np.float64) / (len(dist) - 1)
    return ScoreResult(
        score=float(dist @ values),
        distribution=tuple(float(p) for p in dist),
        truncated=truncated,
    )


class DecoderEngine(Engine):
    """Label and score prediction by a causal LM; subclasses provide tokens and logits.

    Subclasses set ``name``, ``path``, ``n_ctx``, ``context_turns`` (None: the prompts'
    default) and ``tokenizer`` (a :class:`~affedge.prompts.PromptTokenizer`), then call
    :meth:`_init_prompt_cache`; they implement :meth:`next_token_logits`, :meth:`generate`
    and :meth:`_answer_logprobs`.
    """

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.LABELS, Capability.SCORES, Capability.CUSTOM_LABELS}
    )
    path: Any
    n_ctx: int
    context_turns: int | None
    tokenizer: PromptTokenizer
    prompts: PromptBuilder

    def _init_prompt_cache(self) -> None:
        self.prompts = PromptBuilder(self.tokenizer, name=str(self.path))

    @property
    def _eot(self) -> int:
        """The end-of-turn token id."""
        return self.tokenizer.eot_id

    def _tokens(self, text: str, special: bool) -> list[int]:
        return self.tokenizer.tokens(text, special)

    # ----------------------------------------------------------------- backend hooks

    @abstractmethod
    def next_token_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Raw next-token logits after the token sequence ``ids`` (export verification)."""

    @abstractmethod
    def generate(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 32, stop: Sequence[str] = ()
    ) -> str:
        """Greedy chat completion (baselines and negotiation, not classify)."""

    @abstractmethod
    def _answer_logprobs(self, prompt: ItemPrompt) -> np.ndarray:
        """log p(answer | prompt) for every answer of ``prompt``, in answer order."""

    #: Items that :meth:`classify` and :meth:`score` hand to :meth:`_answer_logprobs_many`
    #: at once (1: one at a time).
    batch_size: int = 1

    @property
    def block_size(self) -> int:
        """Batched scoring may round differently with other sequences in the batch, so a
        resumed run re-reads whole batches (:attr:`Engine.block_size`)."""
        return max(1, self.batch_size)

    def _answer_logprobs_many(self, prompts: Sequence[ItemPrompt]) -> list[np.ndarray]:
        """:meth:`_answer_logprobs` of each prompt; a backend overrides it to batch them."""
        return [self._answer_logprobs(p) for p in prompts]

    def _scored(
        self, spec: PromptSpec, prompt: PromptTokens, records: Iterable[Record]
    ) -> Iterator[tuple[ItemPrompt, np.ndarray]]:
        """Each record's prompt and answer log-probabilities, ``batch_size`` records at once,
        in input order."""
        it = iter(records)
        while chunk := list(islice(it, max(1, self.batch_size))):
            items = [self._item(spec, prompt, r) for r in chunk]
            yield from zip(items, self._answer_logprobs_many(items), strict=True)

    # ----------------------------------------------------------------- prompt plumbing

    def _task_prompt(
        self, task: Task, labels: Sequence[str] | None
    ) -> tuple[PromptSpec, PromptTokens]:
        return self.prompts.task_prompt(task, labels)

    def _item(self, spec: PromptSpec, prompt: PromptTokens, record: Record) -> ItemPrompt:
        return self.prompts.item(prompt, spec.body(record, self.context_turns), self.n_ctx)

    # ------------------------------------------------------------------ interface

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        spec, prompt = self._task_prompt(task, labels)
        temperature = self.temperature(task, labels)
        for item, logp in self._scored(spec, prompt, records):
            yield label_result(spec.answers, logp, item.truncated, temperature)

    def choose(
        self, messages: Sequence[dict[str, str]], body: str, answers: Sequence[str]
    ) -> LabelResult:
        """Score ``answers`` as continuations of ``messages`` with ``body`` in the item slot."""
        item = self.prompts.item(self.prompts.prepare(messages, answers), body, self.n_ctx)
        return label_result(answers, self._answer_logprobs(item), item.truncated)

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        spec, prompt = self._task_prompt(task, None)
        for item, logp in self._scored(spec, prompt, records):
            yield score_result(logp, item.truncated)

    def prompt_tokens(
        self, task: Task, record: Record, labels: Sequence[str] | None = None
    ) -> list[int]:
        """The full prompt of ``record`` as the model sees it (head + item), for baselines and
        for verifying an exported model against its source on identical ids."""
        return self._item(*self._task_prompt(task, labels), record).ids

    def answer_tokens(self, task: Task, labels: Sequence[str] | None = None) -> PromptTokens:
        """The tokenized prompt parts and answers of ``task`` (see :meth:`prompt_tokens`)."""
        return self._task_prompt(task, labels)[1]
