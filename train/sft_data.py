"""Supervised fine-tuning examples for decoder LLMs, built exactly as the runtime prompts.

One source of truth: prompts come from :mod:`affedge.prompts` and become token ids in its
:class:`~affedge.prompts.PromptBuilder`, the code every runtime engine uses; this module only
adapts a HF tokenizer to the builder's :class:`~affedge.prompts.PromptTokenizer`
(:class:`ChatFormat`). So, as at run time: template glue is tokenized with special tokens
parsed and the item body without (a text holding ``<|im_end|>`` stays data), BOS is added
only when the model asks for it and the template did not render one, and a body too long for
``max_length`` is cut in the middle.

The answer is the label text followed by the end-of-turn token; the loss covers the answer
only (``labels`` are -100 everywhere else). Score tasks answer with the digit
``round(score * 9)`` of the value mapped to [0, 1]; their example also keeps the exact value
on the 0-9 scale (``meta["score"]``), for a loss that targets it rather than the rounded digit
(train/multitask.py).

A :class:`Source` ties a dataset to the registry task and label set it is trained and
evaluated with (the registry's :data:`~affedge.tasks.BENCHMARKS` entry).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affedge.datasets import DATASETS, load_dataset
from affedge.errors import DataError, ModelError
from affedge.prompts import (
    ChatTemplate,
    Messages,
    PromptBuilder,
    PromptSpec,
    WindowTooSmall,
    prompt_spec,
)
from affedge.records import Record
from affedge.tasks import BENCHMARKS, TASKS, Benchmark, Level, Task

IGNORE = -100

#: Score layers not on [0, 1] (EmoBank VAD is 1-5, as in train/encoder_data.py).
SCORE_RANGES: dict[str, tuple[float, float]] = {"emobank": (1.0, 5.0)}


# ------------------------------------------------------------------ chat format


class ChatFormat:
    """A HF tokenizer as a :class:`~affedge.prompts.PromptTokenizer`, with the
    :class:`~affedge.prompts.PromptBuilder` that turns prompts into ids for it (``prompts``).

    The chat template is rendered by the runtime's own renderer
    (:class:`~affedge.prompts.ChatTemplate`), not ``apply_chat_template``: a model trained here
    runs on that renderer, and HF's adds things the runtime does not (``strftime_now``, every
    special token), so the two could render a template differently.
    """

    def __init__(self, tokenizer: Any, eos_token_id: int | Sequence[int] | None = None) -> None:
        source = getattr(tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source:
            raise ModelError("the base model's tokenizer has no chat template")
        self.tokenizer = tokenizer
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        if not eos and tokenizer.eos_token_id is not None:
            eos = [tokenizer.eos_token_id]
        bos_text = tokenizer.bos_token or ""
        probe = ChatTemplate(
            source, bos_text, tokenizer.convert_ids_to_tokens(eos[0]) if eos else ""
        )
        self.eot_id = self._end_of_turn(probe, eos)
        self.eot_text = tokenizer.convert_ids_to_tokens(self.eot_id)
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else -1
        self.add_bos = bool(getattr(tokenizer, "add_bos_token", False))
        self.template = ChatTemplate(source, bos_text, self.eot_text)
        self.prompts = PromptBuilder(self)

    def _end_of_turn(self, probe: ChatTemplate, eos: list[int]) -> int:
        """The token that ends an assistant turn: the first token the template puts after an
        assistant message, when it is one of the model's EOS ids (Llama 3 lists several);
        else the model config's (first) EOS id. GGUF conversions can carry a wrong
        ``tokenizer.eos_token`` (SmolLM2's says ``<|im_start|>``), the config's id is right."""
        sentinel = "\x00A\x00"
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
        try:
            after = probe.render(msgs, add_generation_prompt=False).split(sentinel, 1)[1]
            first = self.tokens(after, special=True)[:1]
        except Exception:  # a template that refuses this conversation shape
            first = []
        if first and (not eos or first[0] in eos):
            return int(first[0])
        if not eos:
            raise ModelError("cannot tell the end-of-turn token: no EOS id in the model config")
        return int(eos[0])

    def tokens(self, text: str, special: bool) -> list[int]:
        """``text`` as ids; ``special=False`` keeps special-token strings as plain text."""
        return list(
            self.tokenizer(
                text, add_special_tokens=False, split_special_tokens=not special
            ).input_ids
        )

    def render(self, messages: Messages) -> str:
        """The chat template applied to ``messages``, ending at the assistant's turn."""
        return self.template.render(messages)


# ------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    """A dataset trained as a registry task (its benchmark: layer, label set, filter)."""

    dataset: str
    bench: Benchmark

    @property
    def task(self) -> Task:
        return TASKS[self.bench.task]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bench.label_set()

    @property
    def spec(self) -> PromptSpec:
        return prompt_spec(self.task, self.labels if self.task.kind == "classify" else None)

    @property
    def key(self) -> str:
        return f"{self.bench.task}/{self.dataset}"


def find_source(dataset: str, level: Level | None = None, task: str | None = None) -> Source:
    """The registry benchmark of ``dataset`` for a level (progressive) or task (multitask)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from: {', '.join(DATASETS)}")
    found = [
        b
        for b in BENCHMARKS
        if b.dataset == dataset
        and (level is None or TASKS[b.task].level == level)
        and (task is None or b.task == task)
    ]
    if not found:
        what = f"level {level}" if level else f"task {task!r}"
        known = sorted(
            {
                b.dataset
                for b in BENCHMARKS
                if (level is None or TASKS[b.task].level == level)
                and (task is None or b.task == task)
            }
        )
        raise DataError(f"dataset {dataset!r} has no {what} annotation; usable: {', '.join(known)}")
    return Source(dataset, found[0])


def gold(source: Source, record: Record) -> str | float | None:
    """The record's gold label (classification) or [0, 1] score, None when it has none
    (SemEval-2014 ``conflict`` terms, labels outside the benchmark's set)."""
    if source.task.kind == "score":
        if source.bench.layer not in record.scores:
            return None
        low, high = SCORE_RANGES.get(source.dataset, (0.0, 1.0))
        return min(1.0, max(0.0, (record.scores[source.bench.layer] - low) / (high - low)))
    value = record.labels.get(source.bench.layer)
    return value if isinstance(value, str) and value in source.labels else None


def answer_text(source: Source, value: str | float) -> str:
    """The answer the model is trained to give: the label, or the digit of the score."""
    if isinstance(value, float):
        return str(round(value * 9))
    return value


def load_records(
    source: Source,
    split: str,
    limit: int | None,
    seed: int,
    root: str | Path | None = None,
    where: bool = False,
) -> list[Record]:
    """Records of ``split`` that have a gold answer; a seeded random sample of ``limit`` of
    them (the whole split is read so the sample is not the first rows of the file).
    ``where`` applies the benchmark's record filter (implicit-only for SemEval-2014)."""
    records = [
        r for r in load_dataset(source.dataset, split, root=root) if gold(source, r) is not None
    ]
    if where:
        records = [
            r for r in records if all(r.labels.get(k) == v for k, v in source.bench.where.items())
        ]
    if limit is not None and limit < len(records):
        rng = random.Random(f"{seed}:{source.key}:{split}")
        picked = sorted(rng.sample(range(len(records)), limit))
        records = [records[i] for i in picked]
    return records


def fingerprint(records: Sequence[Record], answers: Sequence[str]) -> str:
    """sha256 of the ids, texts and answers used (so a manifest pins its training data)."""
    digest = hashlib.sha256()
    for rec, ans in zip(records, answers, strict=True):
        digest.update(f"{rec.id}\t{rec.text}\t{ans}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------ examples


@dataclass
class SFTExample:
    """One tokenized example: loss only where ``labels`` is not -100 (the answer)."""

    input_ids: list[int]
    labels: list[int]
    task: str
    source: str
    record_id: str = ""
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def answer_start(self) -> int:
        """Index of the first answer token (the logits one position earlier predict it)."""
        return next(i for i, lab in enumerate(self.labels) if lab != IGNORE)


def _example(
    head: list[int],
    item: list[int],
    target: list[int],
    truncated: bool,
    task: str,
    source: str,
    record_id: str,
) -> SFTExample:
    prompt = head + item
    return SFTExample(
        input_ids=prompt + target,
        labels=[IGNORE] * len(prompt) + target,
        task=task,
        source=source,
        record_id=record_id,
        truncated=truncated,
    )


def encode(
    fmt: ChatFormat,
    messages: Messages,
    body: str,
    answer: str,
    max_length: int,
    task: str,
    source: str,
    record_id: str = "",
    max_answer: int = 48,
) -> SFTExample:
    """``messages`` with ``body`` in the item slot as the runtime builds them, then ``answer``
    + end-of-turn as the target (auxiliary tasks; registry tasks: :func:`build_examples`)."""
    target = fmt.prompts.target(answer, max_answer)
    head, suffix = fmt.prompts.split(messages)
    try:
        item, cut = fmt.prompts.fit(head, suffix, body, max_length, reserve=len(target))
    except WindowTooSmall as exc:
        raise DataError(f"--max-length: {exc}; raise it") from None
    return _example(head, item, target, cut, task, source, record_id)


def build_examples(
    fmt: ChatFormat,
    source: Source,
    records: Sequence[Record],
    max_length: int,
    max_answer: int = 48,
) -> tuple[list[SFTExample], list[str]]:
    """Examples of ``records`` for ``source``, and the answers (for the data fingerprint):
    each record's prompt exactly as an engine builds it (:meth:`PromptBuilder.build`)."""
    labels = source.labels if source.task.kind == "classify" else None
    out, answers = [], []
    for rec in records:
        value = gold(source, rec)
        if value is None:
            continue
        ans = answer_text(source, value)
        answers.append(ans)
        target = fmt.prompts.target(ans, max_answer)
        try:
            built = fmt.prompts.build(
                source.task, rec, labels, window=max_length, reserve=len(target)
            )
        except WindowTooSmall as exc:
            raise DataError(f"--max-length: {exc}; raise it") from None
        example = _example(
            built.head,
            built.item,
            target,
            built.truncated,
            source.bench.task,
            source.key,
            rec.id,
        )
        if isinstance(value, float):
            example.meta["score"] = value * 9
        out.append(example)
    return out, answers


def collate(examples: Sequence[SFTExample], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` tensors."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[i, :n] = torch.tensor(ex.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(ex.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
