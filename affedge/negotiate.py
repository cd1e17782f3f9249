"""SANM: self-circulating analysis negotiation (SentiXRL, papers/sentixrl-sanm.md).

One model plays two roles in one conversation:

1. generator: given the instruction, the history window H (the preceding utterances), the
   label statements L and the target utterance, it writes a one-sentence emotional deduction
   E and then proposes a label; the label is chosen by label scoring among the task's labels
   (never free text), excluding labels already rejected;
2. discriminator: a distinct turn asks the same model to judge the proposal; ``agree`` /
   ``disagree`` is scored, not generated (it agrees when P(agree) >= ``agree_threshold``);
   a disagreement also yields a one-sentence reason, which is handed back to the generator.

The loop stops at the first agreement (consensus) or after ``max_rounds``. Without consensus
the paper outputs the outlier directly: here, the last proposal, flagged ``consensus: false``
with ``fallback: "last_proposal"``. Roles are turns of one sequence in the KV cache, so a round
costs only its own tokens (engines/gguf.py :class:`ChatState`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from affedge.errors import ModelError
from affedge.prompts import (
    DECODER_CONTEXT_TURNS,
    DEDUCTION_CUE,
    LABEL_CUE,
    REASON_CUE,
    VERDICTS,
    discriminator_turn,
    generator_messages,
    item_body,
    regenerate_turn,
)
from affedge.records import Record
from affedge.tasks import Task

DEFAULT_MAX_ROUNDS = 3
DEDUCTION_TOKENS = 40
REASON_TOKENS = 32


@dataclass
class Round:
    """One generator proposal and the discriminator's verdict on it."""

    round: int
    deduction: str
    proposal: str
    proposal_probs: dict[str, float]
    verdict: str
    agree_prob: float
    reason: str = ""


@dataclass
class Negotiation:
    """The outcome for one item."""

    label: str
    probs: dict[str, float]
    consensus: bool
    rounds: list[Round] = field(default_factory=list)
    truncated: bool = False

    @property
    def fallback(self) -> str | None:
        return None if self.consensus else "last_proposal"

    def trace(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rounds]


class Negotiator:
    """Runs SANM for one task with a generative engine (one that offers ``chat``)."""

    def __init__(
        self,
        engine: Any,
        task: Task,
        labels: Sequence[str] | None = None,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        context_turns: int = DECODER_CONTEXT_TURNS,
        agree_threshold: float = 0.5,
    ) -> None:
        from affedge.engines.base import Capability

        if not engine.supports(Capability.CHAT):
            raise ModelError(
                f"{getattr(engine, 'name', 'this model')}: negotiation needs a generative "
                "(GGUF) model; encoder models only classify"
            )
        if max_rounds < 1:
            raise ModelError("--max-rounds must be at least 1")
        self.engine = engine
        self.task = task
        self.labels = tuple(labels or task.labels)
        self.max_rounds = max_rounds
        self.agree_threshold = agree_threshold
        self.context_turns = context_turns
        self.messages = generator_messages(task, self.labels)

    def negotiate(self, record: Record) -> Negotiation:
        body = item_body(self.task, record, self.context_turns)
        chat = self.engine.chat(self.messages, body)
        rounds: list[Round] = []
        rejected: list[str] = []
        for index in range(1, self.max_rounds + 1):
            if index > 1:
                chat.user_turn(regenerate_turn(rounds[-1].proposal, rounds[-1].reason))
            chat.add(DEDUCTION_CUE + " ")
            deduction = chat.generate(DEDUCTION_TOKENS)
            chat.add(LABEL_CUE + " ")
            allowed = [lab for lab in self.labels if lab not in rejected] or list(self.labels)
            proposal = chat.choose(self.labels, allowed)
            chat.add(proposal.label)
            chat.user_turn(discriminator_turn(proposal.label))
            agree = chat.choose(VERDICTS).probs["agree"]
            verdict = "agree" if agree >= self.agree_threshold else "disagree"
            current = Round(
                round=index,
                deduction=deduction,
                proposal=proposal.label,
                proposal_probs=proposal.probs,
                verdict=verdict,
                agree_prob=agree,
            )
            rounds.append(current)
            if verdict == "agree":
                return Negotiation(proposal.label, proposal.probs, True, rounds, chat.truncated)
            chat.add("disagree" + REASON_CUE + " ")
            if index < self.max_rounds:
                current.reason = chat.generate(REASON_TOKENS)
            rejected.append(proposal.label)
        last = rounds[-1]
        return Negotiation(last.proposal, last.proposal_probs, False, rounds, chat.truncated)

    def run(self, records: Iterable[Record]) -> Iterator[Negotiation]:
        for record in records:
            yield self.negotiate(record)


def negotiation_row(record: Record, task: str, result: Negotiation, model: str, trace: bool):
    """The output record of `affedge negotiate`: classify's fields plus the protocol's."""
    from affedge.runner import output_row

    fields: dict[str, Any] = {
        "label": result.label,
        "probs": result.probs,
        "rounds": len(result.rounds),
        "consensus": result.consensus,
    }
    if result.fallback:
        fields["fallback"] = result.fallback
    if trace:
        fields["trace"] = result.trace()
    return output_row(record, task, model, fields, result.truncated)
