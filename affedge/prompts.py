"""Prompts for decoder models, built from the task registry, and the one way they become ids.

A prompt is split in two so engines can reuse work across items: a *head* that is the same
for every item of a task and label set (system message, progressive instruction, options),
whose KV cache an engine evaluates once, and a per-item *body* (context, aspect, text, answer
cue). Engines put the body where :data:`ITEM_SLOT` stands in the rendered chat template.

Every prompt, auxiliary training prompts included, is spelled out in this module, and
:class:`PromptBuilder` is the only code that turns one into token ids: the runtime engines
(engines/decoder.py), training data (train/sft_data.py) and the torch scorer
(train/llm_eval.py) all call it, each through a small :class:`PromptTokenizer` of its own
(llama.cpp's vocabulary, a ``tokenizers`` file, a HF tokenizer). The rules:

* the chat template is rendered (:class:`ChatTemplate`) with :data:`ITEM_SLOT` in the user
  message; the text before the slot (the *head*) and after it (the *suffix*) are template
  glue, tokenized with special tokens parsed; BOS goes in front only when the model asks for
  it and the template did not render one;
* the item body is tokenized *without* parsing special tokens: the analysed text is data,
  never instructions, so a text holding ``<|im_end|>`` cannot close the user turn; a body too
  long for the window is cut in the middle and flagged ``truncated``;
* answers are scored as their token continuations; when one answer's tokens are a prefix of
  another's, every answer ends in the end-of-turn token so the shorter one is complete;
  training targets are the answer's tokens and the end-of-turn token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from affedge.chat_template import ChatTemplate as ChatTemplate
from affedge.chat_template import Messages
from affedge.chat_template import compile_chat_template as compile_chat_template
from affedge.errors import ModelError
from affedge.records import Record
from affedge.tasks import SCORE_TOKENS, TASKS, Task

PERSONA = "You are a careful annotator of sentiment and emotion in text."
SYSTEM = PERSONA + " Answer with exactly one of the options you are given and nothing else."

#: Placeholder for the per-item body inside the rendered chat template.
ITEM_SLOT = "\x00AFFEDGE_ITEM\x00"

#: Dialogue turns a decoder prompt shows before the target utterance (the most recent ones).
#: Encoders have their own, shorter window: :data:`affedge.encoding.ENCODER_CONTEXT_TURNS`.
DECODER_CONTEXT_TURNS = 8


@dataclass(frozen=True)
class PromptSpec:
    """Everything an engine needs to prompt one task: messages with a slot, and answers."""

    task: Task
    answers: tuple[str, ...]
    messages: tuple[dict[str, str], ...]

    def body(self, record: Record, context_turns: int | None = None) -> str:
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


def item_body(task: Task, record: Record, context_turns: int | None = None) -> str:
    """Render one record for ``task``: dialogue context (conversation tasks), aspect, text.
    ``context_turns`` defaults to :data:`DECODER_CONTEXT_TURNS`."""
    if context_turns is None:
        context_turns = DECODER_CONTEXT_TURNS
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


def fill_slot(messages: Messages, body: str) -> list[dict[str, str]]:
    """``messages`` with ``body`` in place of :data:`ITEM_SLOT`, as plain text (generation)."""
    return [{k: v.replace(ITEM_SLOT, body) for k, v in m.items()} for m in messages]


# ------------------------------------------------------------------ auxiliary (MT-ISA) prompts
# papers/mt-isa-multitask-implicit-sentiment.md: for implicit aspect sentiment, a teacher LLM
# names the aspect a sentence evaluates and the opinion it expresses; the trained model
# learns to generate both next to the main task (train/multitask.py).


@dataclass(frozen=True)
class AuxPrompt:
    """An auxiliary generation task: its instruction and the registry task whose item body
    it shows (``aspect`` sees the sentence only, ``opinion`` the sentence and its aspect)."""

    instruction: str
    body_task: str

    def messages(self) -> tuple[dict[str, str], ...]:
        """The annotator persona (without "pick an option") and the instruction."""
        return (
            {"role": "system", "content": PERSONA},
            {"role": "user", "content": f"{self.instruction}\n\n{ITEM_SLOT}"},
        )

    def body(self, record: Record) -> str:
        return item_body(TASKS[self.body_task], record)


AUX_PROMPTS: dict[str, AuxPrompt] = {
    "aspect": AuxPrompt(
        "Name the aspect (the thing or feature being evaluated) that the sentence is about, "
        "in at most five words.",
        "sentiment",
    ),
    "opinion": AuxPrompt(
        "Say in at most eight words what opinion the sentence expresses about the given "
        "aspect, including an opinion that is only implied.",
        "implicit",
    ),
}


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

#: The valence an emotion label carries, for the deduction SANM's roles are trained to write
#: (train/sanm_data.py) when the data has no sentiment annotation of its own (MELD has one).
#: Surprise carries none on its own (MELD annotates it both ways).
LABEL_VALENCE: dict[str, str] = {
    **dict.fromkeys(("joy", "joyful", "peaceful", "powerful", "happiness"), "positive"),
    **dict.fromkeys(("anger", "sadness", "disgust", "fear", "scared", "mad", "sad"), "negative"),
    "neutral": "neutral",
    "surprise": "mixed",
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


# ------------------------------------------------------------------ prompts as token ids

#: Fewest body tokens a window must leave after the prompt and the reserved answer.
MIN_ITEM_TOKENS = 16


class PromptTokenizer(Protocol):
    """What :class:`PromptBuilder` needs of a model's tokenizer.

    Implemented by the runtime (llama.cpp's vocabulary in engines/gguf.py, a ``tokenizers``
    file in engines/onnx_decoder.py) and by training (a HF tokenizer, train/sft_data.py).
    """

    @property
    def bos_id(self) -> int:
        """The BOS token id, -1 when the model has none."""
        ...

    @property
    def eot_id(self) -> int:
        """The token that ends an assistant turn."""
        ...

    @property
    def add_bos(self) -> bool:
        """Whether the model expects BOS in front of a prompt."""
        ...

    def tokens(self, text: str, special: bool) -> list[int]:
        """Ids of ``text``, no BOS; ``special`` parses special-token strings such as
        ``<|im_end|>``, else they are plain characters."""
        ...

    def render(self, messages: Messages) -> str:
        """The chat template applied to ``messages``, ending at the assistant's turn
        (:meth:`ChatTemplate.render`)."""
        ...


class WindowTooSmall(ModelError):
    """The prompt and the reserved answer leave fewer than :data:`MIN_ITEM_TOKENS` tokens."""


@dataclass(frozen=True)
class PromptTokens:
    """A prompt (messages with the item slot) and its answers, tokenized for one model."""

    head: list[int]
    suffix: list[int]
    answers: list[list[int]]
    first_only: bool  # every answer is decided by its first token

    @property
    def max_answer(self) -> int:
        return max(len(a) for a in self.answers)


@dataclass(frozen=True)
class ItemPrompt:
    """One record's prompt as ids: the shared head, the item's own tokens, the answers."""

    prompt: PromptTokens
    item: list[int]  # the body (cut in the middle when too long) and the suffix
    truncated: bool

    @property
    def head(self) -> list[int]:
        return self.prompt.head

    @property
    def answers(self) -> list[list[int]]:
        return self.prompt.answers

    @property
    def first_only(self) -> bool:
        return self.prompt.first_only

    @property
    def ids(self) -> list[int]:
        """The whole prompt, up to the answer position."""
        return self.prompt.head + self.item


def has_prefix_pair(answers: Sequence[Sequence[int]]) -> bool:
    """Whether one answer's tokens are a prefix of (or equal to) another's."""
    for i, a in enumerate(answers):
        for j, b in enumerate(answers):
            if i != j and len(a) <= len(b) and list(b[: len(a)]) == list(a):
                return True
    return False


def _key(messages: Messages) -> tuple:
    return tuple(tuple(sorted(m.items())) for m in messages)


class PromptBuilder:
    """Prompts as token ids for one model (see the module docstring for the rules).

    Heads, suffixes and answers are cached per prompt; ``name`` (a model path) prefixes
    errors.
    """

    def __init__(self, tokenizer: PromptTokenizer, name: str = "") -> None:
        self.tokenizer = tokenizer
        self._where = f"{name}: " if name else ""
        self._split: dict[tuple, tuple[list[int], list[int]]] = {}
        self._prepared: dict[tuple, PromptTokens] = {}
        self._glue: tuple[list[int], list[int]] | None = None

    def _with_bos(self, ids: list[int]) -> list[int]:
        bos = self.tokenizer.bos_id
        if self.tokenizer.add_bos and bos >= 0 and (not ids or ids[0] != bos):
            return [bos, *ids]
        return ids

    def split(self, messages: Messages) -> tuple[list[int], list[int]]:
        """The head (BOS included) and suffix: tokens before and after :data:`ITEM_SLOT`."""
        key = _key(messages)
        if key not in self._split:
            before, sep, after = self.tokenizer.render(messages).partition(ITEM_SLOT)
            if not sep:
                raise ModelError(f"{self._where}the chat template dropped the user message")
            head = self._with_bos(self.tokenizer.tokens(before, special=True))
            self._split[key] = (head, self.tokenizer.tokens(after, special=True))
        return self._split[key]

    def answer_tokens(self, answers: Sequence[str]) -> tuple[list[list[int]], bool]:
        """Answers as scored continuations, and whether their first tokens decide them."""
        tokens = [self.tokenizer.tokens(a, special=False) for a in answers]
        if any(not a for a in tokens):
            raise ModelError(f"{self._where}an answer tokenizes to nothing: {list(answers)}")
        if has_prefix_pair(tokens):
            tokens = [[*a, self.tokenizer.eot_id] for a in tokens]
        first_only = all(len(a) == 1 for a in tokens) and len({a[0] for a in tokens}) == len(tokens)
        return tokens, first_only

    def target(self, answer: str, max_tokens: int) -> list[int]:
        """The answer a model is trained to give: its first ``max_tokens`` tokens, then the
        end-of-turn token."""
        return [*self.tokenizer.tokens(answer, special=False)[:max_tokens], self.tokenizer.eot_id]

    def prepare(
        self, messages: Messages, answers: Sequence[str], digits: bool = False
    ) -> PromptTokens:
        """Tokenize a prompt whose user message holds :data:`ITEM_SLOT`, and its answers;
        ``digits`` requires single-token answers (score tasks read one distribution)."""
        key = (_key(messages), tuple(answers))
        if key not in self._prepared:
            head, suffix = self.split(messages)
            tokens, first_only = self.answer_tokens(answers)
            if digits and any(len(a) != 1 for a in tokens):
                raise ModelError(f"{self._where}digits 0-9 are not single tokens in this model")
            self._prepared[key] = PromptTokens(head, suffix, tokens, first_only)
        return self._prepared[key]

    def task_prompt(
        self, task: Task, labels: Sequence[str] | None = None
    ) -> tuple[PromptSpec, PromptTokens]:
        """The registry prompt of ``task`` (``labels`` replacing its label set), tokenized."""
        spec = prompt_spec(task, labels)
        return spec, self.prepare(spec.messages, spec.answers, digits=task.kind == "score")

    def fit(
        self, head: list[int], suffix: list[int], body: str, window: int, reserve: int
    ) -> tuple[list[int], bool]:
        """The item's tokens (body + suffix) and whether the body was cut: in the middle, so
        that head + item leaves ``reserve`` tokens of ``window`` free for the answer."""
        ids = self.tokenizer.tokens(body, special=False)
        room = window - len(head) - len(suffix) - reserve
        if room < MIN_ITEM_TOKENS:
            raise WindowTooSmall(
                f"{self._where}a window of {window} tokens is too small for this prompt "
                f"({len(head) + len(suffix)} prompt tokens, {reserve} kept for the answer)"
            )
        truncated = len(ids) > room
        if truncated:
            keep = room // 2
            ids = ids[:keep] + ids[len(ids) - (room - keep) :]
        return ids + suffix, truncated

    def item(
        self, prompt: PromptTokens, body: str, window: int, reserve: int | None = None
    ) -> ItemPrompt:
        """``body`` in ``prompt``'s slot; ``reserve`` defaults to the longest answer + 1."""
        if reserve is None:
            reserve = prompt.max_answer + 1
        ids, truncated = self.fit(prompt.head, prompt.suffix, body, window, reserve)
        return ItemPrompt(prompt, ids, truncated)

    def build(
        self,
        task: Task,
        record: Record,
        labels: Sequence[str] | None = None,
        *,
        window: int,
        reserve: int | None = None,
        context_turns: int | None = None,
    ) -> ItemPrompt:
        """The prompt of ``record`` for ``task``: head, item and answer ids, and whether the
        item was cut to fit ``window`` (the one function engines, training and the torch
        scorer build a record's prompt with)."""
        spec, prompt = self.task_prompt(task, labels)
        return self.item(prompt, spec.body(record, context_turns), window, reserve)

    def conversation(self, messages: Messages) -> list[int]:
        """A whole conversation ending at the assistant's turn, as ids (generation).

        Only the template's glue is parsed for special tokens: every message's content (which
        may hold an analysed text, as the teacher prompts of train/multitask.py do) is
        tokenized as plain characters, so a content holding ``<|im_end|>`` cannot end its
        turn. The template is rendered with a marker in place of each content (as
        :data:`ITEM_SLOT` stands for the item in :meth:`split`) and the rendered text is cut
        at the markers, wherever and however often the template puts them."""
        contents = [str(m.get("content", "")) for m in messages]
        tag = 0
        while any(f"\x00AFFEDGE_MSG{tag}_" in c for c in contents):  # no content holds it
            tag += 1
        marks = {f"\x00AFFEDGE_MSG{tag}_{i}\x00": c for i, c in enumerate(contents)}
        marked = [
            {**m, "content": mark} if "content" in m else dict(m)
            for m, mark in zip(messages, marks, strict=True)
        ]
        rendered = self.tokenizer.render(marked)
        pieces = re.split(f"({'|'.join(map(re.escape, marks))})", rendered) if marks else [rendered]
        ids: list[int] = []
        for piece in pieces:
            if piece in marks:
                ids += self.tokenizer.tokens(marks[piece], special=False)
            elif piece:
                ids += self.tokenizer.tokens(piece, special=True)
        return self._with_bos(ids)

    def turn_glue(self) -> tuple[list[int], list[int]]:
        """Tokens that end an assistant turn and open a user turn, and that end a user turn
        and open the assistant's, read off the chat template with sentinel contents."""
        if self._glue is None:
            a, u = "\x00A\x00", "\x00U\x00"
            msgs = [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": a},
                {"role": "user", "content": u},
            ]
            text = self.tokenizer.render(msgs)
            between = text.split(a, 1)[1].split(u, 1)[0]
            after = text.split(u, 1)[1]
            self._glue = (
                self.tokenizer.tokens(between, special=True),
                self.tokenizer.tokens(after, special=True),
            )
        return self._glue
