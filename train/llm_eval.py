"""Label scoring with a HF causal LM, the same way the GGUF runtime scores labels.

For each item the prompt (head + body + suffix, :class:`~affedge.train.sft_data.ChatFormat`)
is evaluated once; a label's score is the log-probability of its whole token continuation at
the answer position (end-of-turn appended to every label when one is a prefix of another);
score tasks are the expected value of the 0-9 digit distribution. Used for validation and
forgetting during training and by ``bench/train_report.py`` for test metrics.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from affedge.metrics import SCORE_METRICS, label_metric
from affedge.prompts import item_body
from affedge.records import Record
from affedge.train.sft_data import ChatFormat, Source, gold

#: Prompts longer than this are cut in the middle of the body (the runtime's window is 2048).
EVAL_MAX_LENGTH = 2048


@torch.no_grad()
def score_answers(model: Any, ids: Sequence[int], answers: Sequence[Sequence[int]]) -> np.ndarray:
    """log p(answer | ids) of every token continuation in ``answers``: one forward pass over
    the prompt, then one short cached pass per multi-token answer (as the runtime scores)."""
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    scores = np.empty(len(answers))
    for i, ans in enumerate(answers):
        total = float(first[ans[0]])
        if len(ans) > 1:
            cache = copy.deepcopy(out.past_key_values)
            step = model(
                input_ids=torch.tensor([list(ans[:-1])], device=device),
                past_key_values=cache,
                use_cache=True,
            )
            logp = torch.log_softmax(step.logits[0].float(), dim=-1)
            total += float(sum(logp[j, tok] for j, tok in enumerate(ans[1:])))
        scores[i] = total
    return scores


def answer_logprobs(
    model: Any, fmt: ChatFormat, source: Source, record: Record, max_length: int = EVAL_MAX_LENGTH
) -> np.ndarray:
    """log p(answer | prompt) of every answer of ``source``'s prompt, in answer order."""
    spec = source.spec
    answers = fmt.answer_tokens(spec.answers)
    longest = max(len(a) for a in answers)
    ids, _ = fmt.prompt(spec.messages, item_body(source.task, record), max_length, longest + 1)
    return score_answers(model, ids, answers)


def predict(
    model: Any, fmt: ChatFormat, source: Source, records: Sequence[Record]
) -> list[str] | list[float]:
    """Predicted labels (classification) or [0, 1] scores (score tasks) for ``records``."""
    was_training = model.training
    model.eval()
    try:
        out: list[Any] = []
        for rec in records:
            logp = answer_logprobs(model, fmt, source, rec)
            if source.task.kind == "score":
                dist = np.exp(logp - logp.max())
                dist /= dist.sum()
                out.append(float(dist @ (np.arange(len(dist)) / (len(dist) - 1))))
            else:
                out.append(source.spec.answers[int(np.argmax(logp))])
        return out
    finally:
        model.train(was_training)


def evaluate_source(
    model: Any, fmt: ChatFormat, source: Source, records: Sequence[Record]
) -> dict[str, Any]:
    """The benchmark's metrics (headline first) of ``model`` on ``records``."""
    records = [r for r in records if gold(source, r) is not None]
    start = time.perf_counter()
    preds = predict(model, fmt, source, records)
    bench = source.bench
    names = (bench.metric, *bench.extra_metrics)
    if source.task.kind == "score":
        gold_s = [float(gold(source, r)) for r in records]  # type: ignore[arg-type]
        metrics = {m: SCORE_METRICS[m](gold_s, preds) for m in names}  # type: ignore[arg-type]
    else:
        gold_l = [str(gold(source, r)) for r in records]
        metrics = {
            m: label_metric(m, bench.positive)(gold_l, preds, source.labels)  # type: ignore[arg-type]
            for m in names
        }
    return {
        "metric": bench.metric,
        "value": round(float(metrics[bench.metric]), 4),
        "metrics": {k: round(float(v), 4) for k, v in metrics.items()},
        "n": len(records),
        "seconds": round(time.perf_counter() - start, 1),
    }
