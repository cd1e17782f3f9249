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


# ------------------------------------------------------------------ SANM negotiation
# SentiXRL (papers/sentixrl-sanm.md): one model alternates a generator role (emotional
# deduction E, then a label) and a discriminator role (agree / disagree, with a reason) over
# an input built from the instruction, the history window H and the label statements L.

#: Label statements (L): what each label means, shown to both roles.
LABEL_STATEMENTS: dict[str, str] = {
    "neutral": "no clear emotion",
    "joy": "happiness, delight, amusement",
    "surprise": "astonishment at something unexpected",
    "anger": "annoyance, irritation, rage",
    "sadness": "sorrow, disappointment, grief",
    "disgust": "revulsion, contempt",
    "fear": "worry, anxiety, fright",
    "joyful": "happiness, excitement, delight",
    "peaceful": "calm, content, relaxed",
    "powerful": "confident, proud, in control",
    "scared": "afraid, anxious, worried",
    "mad": "angry, annoyed, hostile",
    "sad": "sorrowful, disappointed, hurt",
    "positive": "a favourable attitude",
    "negative": "an unfavourable attitude",
    "sarcastic": "says the opposite of what is meant, to mock or to show irritation",
    "not sarcastic": "means what it says",
    "optimism": "hope and confidence about the future",
    "ironic": "says the opposite of what is meant",
    "not ironic": "means what it says",
}

VERDICTS: tuple[str, ...] = ("agree", "disagree")
DEDUCTION_CUE = "Deduction:"
LABEL_CUE = "\nLabel:"
REASON_CUE = "\nReason:"


def generator_messages(task: Task, labels: Sequence[str]) -> tuple[dict[str, str], ...]:
    """The generator's opening messages, the item (H + target) going in :data:`ITEM_SLOT`."""
    statements = "\n".join(f"- {lab}: {LABEL_STATEMENTS.get(lab, lab)}" for lab in labels)
    user = (
        f"You are the generator. {task.instruction}\n"
        f"Label statements:\n{statements}\n"
        f"First write '{DEDUCTION_CUE}' and one sentence of emotional deduction, then "
        f"'Label:' and one label from: {', '.join(labels)}.\n\n{ITEM_SLOT}"
    )
    return ({"role": "system", "content": SYSTEM}, {"role": "user", "content": user})


def discriminator_turn(label: str) -> str:
    """The user turn that switches the model into the discriminator role."""
    return (
        f"You are now the discriminator. Judge the proposed label '{label}' for the target "
        "utterance against the dialogue, the label statements and the deduction. "
        "Answer 'agree' or 'disagree'."
    )


def regenerate_turn(rejected: str, reason: str) -> str:
    """The user turn that hands the floor back to the generator after a rejection."""
    because = f" Reason: {reason}" if reason else ""
    return (
        f"You are the generator again. The label '{rejected}' was rejected.{because} "
        f"Reconsider: write '{DEDUCTION_CUE}' and one sentence, then 'Label:' and a label."
    )
