"""Training examples for SANM's two roles (affedge/negotiate.py), token for token as the
runtime's negotiation builds its conversation in the KV cache.

A model fine-tuned only on the classification prompt does not carry its skill into the
negotiation turns: with the progressive adapter, SANM on MELD fell to w-F1 0.045 against 0.46
single pass (bench/results/negotiate_eval_progressive.md), the discriminator rejecting
almost every proposal. These examples teach the roles themselves:

* **agree** (half the records): round 1 proposes the gold label; the discriminator agrees.
* **disagree** (the other half): round 1 proposes a seeded random wrong label (context only,
  no loss on it); the discriminator disagrees and gives an empty reason (the end-of-turn
  token, so the runtime spends no tokens on one); round 2 proposes the gold label and the
  discriminator agrees.

The loss covers the deductions, the gold proposals and every verdict. The *deduction* the
generator is trained to write is the target turn's valence (``Joey sounds negative.``): the
gold sentiment where the data annotates one (MELD), else the valence the gold emotion carries
(:data:`~affedge.prompts.LABEL_VALENCE`). The paper's free-text emotional deduction comes from
a 7-8B model; SmolLM2-135M's own zero-shot deductions are copies of the utterance or of a
label statement (measured on MELD), and a first run trained on a restatement of the
utterance (20 generated tokens a round) cost 3.8x a single pass. Valence first, emotion second
is a short step a small model can learn (papers/valence-emotion-carrier-joint.md), a few
tokens long, and it gives the discriminator something to check a proposal against.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from affedge.errors import AffedgeError, DataError
from affedge.prompts import (
    DEDUCTION_CUE,
    LABEL_CUE,
    LABEL_VALENCE,
    REASON_CUE,
    VERDICTS,
    WindowTooSmall,
    discriminator_turn,
    generator_messages,
    item_body,
    regenerate_turn,
)
from affedge.records import Record
from affedge.train.sft_data import (
    IGNORE,
    ChatFormat,
    SFTExample,
    Source,
    fingerprint,
    gold,
    load_records,
)

if TYPE_CHECKING:
    from affedge.train.llm_common import SourceData


def deduction_target(record: Record, answer: str) -> str:
    """What the generator is trained to write after ``Deduction:`` (see the module
    docstring): who speaks and the valence of what they say."""
    valence = record.labels.get("sentiment")
    if not isinstance(valence, str):
        valence = LABEL_VALENCE.get(answer, "mixed")
    return f"{record.speaker or 'The speaker'} sounds {valence}."


class _Sequence:
    """Token ids with a loss mask, grown segment by segment as the runtime's ChatState grows."""

    def __init__(self, fmt: ChatFormat) -> None:
        self.fmt = fmt
        self.ids: list[int] = []
        self.labels: list[int] = []

    def add(self, ids: Sequence[int], loss: bool | int = False) -> None:
        """Append ``ids``; ``loss`` True trains all of them, an int the first that many."""
        n = len(ids) if loss is True else int(loss)
        self.ids += ids
        self.labels += [t if i < n else IGNORE for i, t in enumerate(ids)]

    def text(self, text: str, loss: bool | int = False) -> None:
        """``text`` as ChatState.add tokenizes it: never parsed for special tokens."""
        self.add(self.fmt.tokens(text, special=False), loss)


def role_example(
    fmt: ChatFormat,
    source: Source,
    record: Record,
    wrong: str | None,
    max_length: int,
    context_turns: int | None = None,
) -> SFTExample:
    """One negotiation of ``record``: round 1 proposes ``wrong`` (disagree, then round 2
    proposes the gold label) or, when ``wrong`` is None, the gold label (agree)."""
    answer = gold(source, record)
    if not isinstance(answer, str):
        raise DataError(f"{source.key}: record {record.id} has no gold label")
    labels = source.labels
    prompts = fmt.prompts
    close, open_ = prompts.turn_glue()
    deduction = deduction_target(record, answer)
    verdict_ids = dict(zip(VERDICTS, prompts.answer_tokens(VERDICTS)[0], strict=True))
    newline = fmt.tokens(LABEL_CUE + " ", special=False)
    if not newline or "\n" not in fmt.tokenizer.decode(newline[:1]):
        raise DataError("the label cue does not start with a newline token in this tokenizer")

    tail = _Sequence(fmt)

    def round_(proposal: str, train_label: bool) -> None:
        tail.text(DEDUCTION_CUE + " ")
        tail.text(deduction, loss=True)
        tail.add(newline, loss=1)  # the newline that ends the generated deduction
        tail.text(proposal, loss=train_label)
        tail.add(close)
        tail.text(discriminator_turn(proposal))
        tail.add(open_)

    def verdict(name: str, then: str = "") -> None:
        """The scored verdict; after a disagreement the runtime adds it with the reason cue
        as one text, which must start with the scored tokens."""
        want = [t for t in verdict_ids[name] if t != fmt.eot_id]
        ids = fmt.tokens(name + then, special=False)
        if ids[: len(want)] != want:
            raise DataError(f"{name!r} tokenizes differently inside {name + then!r}")
        tail.add(ids, loss=len(want))

    if wrong is None:
        round_(answer, True)
        verdict("agree")
    else:
        round_(wrong, False)
        verdict("disagree", REASON_CUE + " ")
        tail.add(close, loss=1)  # an empty reason: the turn ends at once
        tail.text(regenerate_turn(wrong, ""))
        tail.add(open_)
        round_(answer, True)
        verdict("agree")

    head, suffix = prompts.split(generator_messages(source.task, labels))
    body = item_body(source.task, record, context_turns)
    try:
        item, cut = prompts.fit(head, suffix, body, max_length, reserve=len(tail.ids))
    except WindowTooSmall as exc:
        raise DataError(f"--max-length: {exc} (negotiation roles); raise it") from None
    prompt = head + item
    return SFTExample(
        input_ids=prompt + tail.ids,
        labels=[IGNORE] * len(prompt) + tail.labels,
        task=f"{source.bench.task}:sanm",
        source=f"{source.bench.task}:sanm/{source.dataset}",
        record_id=record.id,
        truncated=cut,
        meta={"round1": wrong or answer},
    )


def role_examples(
    fmt: ChatFormat,
    source: Source,
    records: Sequence[Record],
    max_length: int,
    seed: int,
) -> list[SFTExample]:
    """Half agree, half disagree examples (a seeded choice per record, and a seeded wrong
    label drawn uniformly from the others)."""
    rng = random.Random(f"{seed}:{source.key}:sanm")
    out = []
    for rec in records:
        answer = gold(source, rec)
        if not isinstance(answer, str):
            continue
        wrong = None
        if rng.random() < 0.5:
            wrong = rng.choice([lab for lab in source.labels if lab != answer])
        out.append(role_example(fmt, source, rec, wrong, max_length))
    return out


def prepare_roles(fmt: ChatFormat, source: Source, cfg: Any) -> SourceData:
    """The roles stage's data for ``source``: ``cfg.sanm_limit`` seeded training records as
    role examples (``cfg`` is a :class:`~affedge.train.progressive.ProgressiveConfig`). No
    validation records: the stage is judged through the runtime (bench/negotiate_eval.py)."""
    from affedge.train.llm_common import SourceData  # it imports torch

    records = load_records(source, "train", cfg.sanm_limit, cfg.seed, cfg.data_dir)
    if not records:
        raise AffedgeError(f"{source.dataset}: no training records with a {source.key} answer")
    examples = role_examples(fmt, source, records, cfg.sanm_max_length, cfg.seed)
    kept = {e.record_id: e for e in examples}
    used = [r for r in records if r.id in kept]
    answers = [f"{gold(source, r)}|{kept[r.id].meta['round1']}" for r in used]
    return SourceData(
        source,
        examples,
        [],
        {
            "dataset": source.dataset,
            "task": f"{source.bench.task}:sanm",
            "split": "train",
            "n": len(examples),
            "truncated": sum(e.truncated for e in examples),
            "sha256": fingerprint(used, answers),
            "labels": list(source.labels),
        },
    )
