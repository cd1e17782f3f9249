"""Supervised fine-tuning examples for decoder LLMs, built exactly as the runtime prompts.

One source of truth: the prompt of every example is ``prompt_spec(task, labels).messages``
from :mod:`affedge.prompts`, rendered with the model's chat template and split at
:data:`~affedge.prompts.ITEM_SLOT` the way :class:`affedge.engines.gguf.GGUFEngine` does it:

* the text before the slot (system message, progressive instruction, options) is tokenized
  with special tokens parsed (it is template glue), and no BOS is added on top of what the
  template renders (llama.cpp adds one only when the file asks and the template did not);
* the item body (context, aspect, text) is tokenized *without* parsing special tokens, so a
  text holding ``<|im_end|>`` stays data, and is cut in the middle when it does not fit;
* the answer is the label text followed by the end-of-turn token; the loss covers the answer
  only (``labels`` are -100 everywhere else). Score tasks answer with the digit
  ``round(score * 9)`` of the value mapped to [0, 1].

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
from affedge.prompts import ITEM_SLOT, PromptSpec, item_body, prompt_spec
from affedge.records import Record
from affedge.tasks import BENCHMARKS, TASKS, Benchmark, Level, Task

IGNORE = -100

#: Score layers not on [0, 1] (EmoBank VAD is 1-5, as in train/encoder_data.py).
SCORE_RANGES: dict[str, tuple[float, float]] = {"emobank": (1.0, 5.0)}


# ------------------------------------------------------------------ chat format


class ChatFormat:
    """A HF tokenizer wrapped to produce the runtime's prompt tokens (see module docstring)."""

    def __init__(self, tokenizer: Any, eos_token_id: int | Sequence[int] | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError("the base model's tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.eot_id = self._end_of_turn(eos_token_id)
        self.eot_text = tokenizer.convert_ids_to_tokens(self.eot_id)
        self._split: dict[tuple, tuple[list[int], list[int]]] = {}

    def _end_of_turn(self, eos: int | Sequence[int] | None) -> int:
        """The token that ends an assistant turn: the first token the template puts after an
        assistant message, when it is one of the model's EOS ids (Llama 3 lists several);
        else the model config's (first) EOS id. GGUF conversions can carry a wrong
        ``tokenizer.eos_token`` (SmolLM2's says ``<|im_start|>``), the config's id is right."""
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not ids and self.tokenizer.eos_token_id is not None:
            ids = [self.tokenizer.eos_token_id]
        sentinel = "\x00A\x00"
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
        try:
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False)
            after = text.split(sentinel, 1)[1]
            first = self.tokenizer(after, add_special_tokens=False).input_ids[:1]
        except Exception:  # a template that refuses this conversation shape
            first = []
        if first and (not ids or first[0] in ids):
            return int(first[0])
        if not ids:
            raise ModelError("cannot tell the end-of-turn token: no EOS id in the model config")
        return int(ids[0])

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat template applied to ``messages``, ending at the assistant's turn."""
        return self.tokenizer.apply_chat_template(
            list(messages),
            tokenize=False,
            add_generation_prompt=True,
            eos_token=self.eot_text,
        )

    def tokens(self, text: str, special: bool) -> list[int]:
        """``text`` as ids; ``special=False`` keeps special-token strings as plain text."""
        return list(
            self.tokenizer(
                text, add_special_tokens=False, split_special_tokens=not special
            ).input_ids
        )

    def split_prompt(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Tokens before and after :data:`ITEM_SLOT` in the rendered ``messages`` (cached)."""
        key = tuple(tuple(sorted(m.items())) for m in messages)
        if key not in self._split:
            before, sep, after = self.render(messages).partition(ITEM_SLOT)
            if not sep:
                raise ModelError("the chat template dropped the user message")
            self._split[key] = (self.tokens(before, True), self.tokens(after, True))
        return self._split[key]

    def answer_tokens(self, answers: Sequence[str]) -> list[list[int]]:
        """The continuations the runtime scores: each answer's tokens, plus the end-of-turn
        token on all of them when one answer's tokens are a prefix of another's."""
        toks = [self.tokens(a, special=False) for a in answers]
        if any(not t for t in toks):
            raise ModelError(f"an answer tokenizes to nothing: {list(answers)}")
        if any(
            i != j and len(a) <= len(b) and b[: len(a)] == a
            for i, a in enumerate(toks)
            for j, b in enumerate(toks)
        ):
            toks = [[*t, self.eot_id] for t in toks]
        return toks

    def prompt(
        self, messages: Sequence[dict[str, str]], body: str, max_length: int, reserve: int
    ) -> tuple[list[int], bool]:
        """Head + body + suffix ids, the body cut in the middle to leave ``reserve`` tokens
        free within ``max_length`` (as the runtime cuts at its context window)."""
        head, suffix = self.split_prompt(messages)
        ids = self.tokens(body, special=False)
        room = max_length - len(head) - len(suffix) - reserve
        if room < 8:
            raise DataError(
                f"--max-length {max_length} leaves no room for the text after the prompt's "
                f"{len(head) + len(suffix)} instruction tokens; raise it"
            )
        cut = len(ids) > room
        if cut:
            keep = room // 2
            ids = ids[:keep] + ids[len(ids) - (room - keep) :]
        return head + ids + suffix, cut


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


def encode(
    fmt: ChatFormat,
    messages: Sequence[dict[str, str]],
    body: str,
    answer: str,
    max_length: int,
    task: str,
    source: str,
    record_id: str = "",
    max_answer: int = 48,
) -> SFTExample:
    """Prompt ids as the runtime builds them, then ``answer`` + end-of-turn as the target."""
    ans = [*fmt.tokens(answer, special=False)[:max_answer], fmt.eot_id]
    prompt, cut = fmt.prompt(messages, body, max_length, reserve=len(ans))
    return SFTExample(
        input_ids=prompt + ans,
        labels=[IGNORE] * len(prompt) + ans,
        task=task,
        source=source,
        record_id=record_id,
        truncated=cut,
    )


def build_examples(
    fmt: ChatFormat, source: Source, records: Sequence[Record], max_length: int
) -> tuple[list[SFTExample], list[str]]:
    """Examples of ``records`` for ``source``, and the answers (for the data fingerprint)."""
    spec = source.spec
    out, answers = [], []
    for rec in records:
        value = gold(source, rec)
        if value is None:
            continue
        ans = answer_text(source, value)
        answers.append(ans)
        out.append(
            encode(
                fmt,
                spec.messages,
                item_body(source.task, rec),
                ans,
                max_length,
                source.bench.task,
                source.key,
                rec.id,
            )
        )
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
