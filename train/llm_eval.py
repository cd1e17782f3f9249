"""Label scoring with a HF causal LM, exactly as the decoder engines score labels.

The one torch scorer of the project: training validation and forgetting, ``bench/
train_report.py``, the transformers peer of ``affedge bench`` (bench/peers.py) and export
verification (export/verify.py) all score through :func:`score_batch`. Prompts come from
:class:`~affedge.prompts.PromptBuilder` on any :class:`~affedge.prompts.PromptTokenizer` (a
HF tokenizer in training, the runtime engine's own in the peer benchmark), so the ids are the
runtime's; a label's score is the log-probability of its whole token continuation at the
answer position, and label probabilities and 0-9 scores follow engines/decoder.py
(:func:`~affedge.engines.decoder.label_result`, :func:`~affedge.engines.decoder.score_result`).
Metrics come from :func:`affedge.evaluate.evaluate_records`, as in `affedge eval`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, ClassVar

import numpy as np
import torch

from affedge.engines.base import Capability, Engine, LabelResult, ScoreResult
from affedge.engines.decoder import label_result, score_result
from affedge.evaluate import evaluate_records, select_records
from affedge.prompts import ItemPrompt, PromptBuilder, PromptTokenizer, prompt_spec
from affedge.records import Record
from affedge.tasks import Task
from affedge.train.sft_data import ChatFormat, Source

#: Prompts longer than this are cut in the middle of the body (the runtime's window is 2048).
EVAL_MAX_LENGTH = 2048
#: Prompts per forward pass when many are scored (:func:`score_many`) on a CPU; sorted by
#: length first, a batch pads little. A batch also stays under :data:`BATCH_TOKENS` padded
#: tokens, so long prompts go fewer at a time (attention memory grows with the square).
CPU_BATCH_SIZE = 16
BATCH_TOKENS = 4096


@torch.no_grad()
def score_batch(
    model: Any,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_id: int = 0,
) -> np.ndarray:
    """log p(answer | prompt) of every token continuation in ``answers`` after every prompt
    (rows: prompts, columns: answers, float64).

    One forward pass over the left-padded prompts reads the first answer token; each
    multi-token answer then costs one short pass over its tokens on a copy of the prompts'
    KV cache, as the GGUF engine scores continuations.
    """
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1
    )
    first = torch.log_softmax(out.logits[:, -1].double(), dim=-1)
    scores = np.empty((len(prompts), len(answers)))
    for j, ans in enumerate(answers):
        total = first[:, ans[0]].clone()
        if len(ans) > 1:
            rest = torch.tensor([list(ans[:-1])] * len(prompts), dtype=torch.long, device=device)
            step = model(
                input_ids=rest,
                attention_mask=torch.cat([mask, torch.ones_like(rest)], dim=1),
                position_ids=position[:, -1:] + 1 + torch.arange(rest.shape[1], device=device),
                past_key_values=copy.deepcopy(out.past_key_values),
                use_cache=True,
            )
            logp = torch.log_softmax(step.logits.double(), dim=-1)
            for k, tok in enumerate(ans[1:]):
                total += logp[:, k, tok]
        scores[:, j] = total.cpu().numpy()
    return scores


def score_answers(model: Any, ids: Sequence[int], answers: Sequence[Sequence[int]]) -> np.ndarray:
    """log p(answer | ids) of every token continuation in ``answers`` (one prompt)."""
    return score_batch(model, [ids], answers)[0]


def length_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int = BATCH_TOKENS
) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length (stable), cut into batches of at most
    ``batch_size`` whose padded size (rows x longest) stays within ``max_tokens`` (a single
    longer prompt goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (len(last) + 1) * lengths[i] <= max_tokens:
            last.append(i)
        else:
            batches.append([i])
    return batches


def score_many(
    model: Any,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_id: int = 0,
    batch_size: int = CPU_BATCH_SIZE,
) -> np.ndarray:
    """:func:`score_batch` of many prompts: sorted by length, ``batch_size`` per forward pass
    (:func:`length_batches`); rows in the order of ``prompts``. The same numbers as scoring
    them one at a time, up to float rounding (tests/test_export.py compares them)."""
    scores = np.empty((len(prompts), len(answers)))
    for batch in length_batches([len(p) for p in prompts], max(1, batch_size)):
        scores[batch] = score_batch(model, [prompts[i] for i in batch], answers, pad_id)
    return scores


class TorchScorer(Engine):
    """A HF causal LM behind the engine interface, prompted and scored as the decoder
    engines are: ``classify`` and ``score`` on the runtime's prompt ids, ``batch_size``
    prompts per forward pass (sorted by length within a window of ``window_batches`` batches;
    results in input order)."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.LABELS, Capability.SCORES, Capability.CUSTOM_LABELS}
    )

    def __init__(
        self,
        model: Any,
        tokenizer: PromptTokenizer,
        *,
        name: str = "transformers",
        window: int = EVAL_MAX_LENGTH,
        context_turns: int | None = None,
        batch_size: int = 1,
        pad_id: int | None = None,
        window_batches: int = 8,
    ) -> None:
        self.model = model
        self.window_batches = max(1, window_batches)
        self.name = name
        self.prompts = PromptBuilder(tokenizer)
        self.window = window
        self.context_turns = context_turns
        self.batch_size = batch_size
        self.pad_id = tokenizer.eot_id if pad_id is None else pad_id

    def build(self, task: Task, record: Record, labels: Sequence[str] | None = None) -> ItemPrompt:
        """``record``'s prompt as an engine with this window builds it."""
        return self.prompts.build(
            task, record, labels, window=self.window, context_turns=self.context_turns
        )

    def _scored(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None
    ) -> Iterator[tuple[np.ndarray, ItemPrompt]]:
        it = iter(records)
        size = max(1, self.batch_size)
        while batch := list(islice(it, size * self.window_batches)):
            built = [self.build(task, r, labels) for r in batch]
            ids = [b.ids for b in built]
            logp = score_many(self.model, ids, built[0].answers, self.pad_id, size)
            yield from zip(logp, built, strict=True)

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        answers = prompt_spec(task, labels).answers
        for logp, item in self._scored(records, task, labels):
            yield label_result(answers, logp, item.truncated)

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        for logp, item in self._scored(records, task, None):
            yield score_result(logp, item.truncated)


def evaluate_source(
    model: Any, fmt: ChatFormat, source: Source, records: Sequence[Record]
) -> dict[str, Any]:
    """The benchmark's metrics (headline first) of ``model`` on ``records`` (validation)."""
    records, _ = select_records(source.bench, list(records))
    device = next(model.parameters()).device
    scorer = TorchScorer(model, fmt, batch_size=8 if device.type == "cuda" else CPU_BATCH_SIZE)
    was_training = model.training
    model.eval()
    try:
        report = evaluate_records(scorer, source.bench, records, split="validation")
    finally:
        model.train(was_training)
    return {
        "metric": report.metric,
        "value": round(float(report.metrics[report.metric]), 4),
        "metrics": {k: round(float(v), 4) for k, v in report.metrics.items()},
        "n": report.n,
        "seconds": round(report.seconds, 1),
    }
