"""Prompts for decoder models, built from the task registry.

A prompt is split in two so engines can reuse work across items: a *head* that is the same
for every item of a task and label set (system message, progressive instruction, options),
whose KV cache an engine evaluates once, and a per-item *body* (context, aspect, text, answer
cue). Engines put the body where :data:`ITEM_SLOT` stands in the rendered chat template.

The analysed text is data, never instructions: engines tokenize the body without parsing
special tokens, so a text containing ``<|im_end|>`` cannot close the user turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from affedge.records import Record
from affedge.tasks import SCORE_TOKENS, Task

SYSTEM = (
    "You are a careful annotator of sentiment and emotion in text. "
    "Answer with exactly one of the options you are given and nothing else."
)

#: Placeholder for the per-item body inside the rendered chat template.
ITEM_SLOT = "\x00AFFEDGE_ITEM\x00"

#: Dialogue turns shown before the target utterance (the most recent ones).
DEFAULT_CONTEXT_TURNS = 8


@dataclass(frozen=True)
class PromptSpec:
    """Everything an engine needs to prompt one task: messages with a slot, and answers."""

    task: Task
    answers: tuple[str, ...]
    messages: tuple[dict[str, str], ...]

    def body(self, record: Record, context_turns: int = DEFAULT_CONTEXT_TURNS) -> str:
        """The per-item part of the prompt for ``record``."""
        return item_body(self.task, record, context_turns)


def _options(task: Task, labels: Sequence[str]) -> str:
    if task.kind == "score":
        return (
            f"Answer with a single digit from 0 to 9, where {task.scale}. "
            "Answer with the digit only."
        )
    return "Options: " + ", ".join(labels) + ". Answer with one option only."


def prompt_spec(task: Task, labels: Sequence[str] | None = None) -> PromptSpec:
    """The prompt of ``task`` (with ``labels`` replacing the task's label set if given)."""
    answers = tuple(SCORE_TOKENS) if task.kind == "score" else tuple(labels or task.labels)
    user = f"{task.instruction}\n{_options(task, answers)}\n\n{ITEM_SLOT}"
    messages = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": user})
    return PromptSpec(task=task, answers=answers, messages=messages)


def _turn(text: str, speaker: str | None) -> str:
    return f"{speaker}: {text}" if speaker else text


def item_body(task: Task, record: Record, context_turns: int = DEFAULT_CONTEXT_TURNS) -> str:
    """Render one record for ``task``: dialogue context (conversation tasks), aspect, text."""
    parts: list[str] = []
    turns = record.context[-context_turns:] if context_turns > 0 else ()
    if task.uses_context and turns:
        parts.append("Dialogue:")
        parts.extend(_turn(t.text, t.speaker) for t in turns)
        parts.append(f"Target utterance: {_turn(record.text, record.speaker)}")
    elif task.uses_context:
        parts.append(f"Target utterance: {_turn(record.text, record.speaker)}")
    else:
        parts.append(f"Sentence: {record.text}")
    if task.uses_aspect:
        parts.append(f"Aspect: {record.aspect or '(none given)'}")
    return "\n".join(parts)
