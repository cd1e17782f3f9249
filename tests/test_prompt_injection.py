"""Prompt injection through the real llama.cpp engine (issue 15, item 5).

tests/data/injection.jsonl holds adversarial items: role tokens and chat markup of several
model families, fake option lists, instructions to answer otherwise, answers outside the label
set, unicode tricks (zero-width joiners inside role tokens, fullwidth lookalikes, bidi
overrides, control characters, tag characters), empty-looking texts, inputs far beyond the
2048-token context, dialogue contexts with injected turns and speakers, an injected aspect,
negotiation cues and template syntax. Every GGUF model affedge ships (the built-in SmolLM2 and
any ``affedge-llm-gguf-lora`` adapter folder in affedge/assets) runs them through every label
task, every score task, a custom label set and SANM negotiation.

Invariants: every label, proposal and verdict is in its set; probabilities cover the labels
and sum to 1; scores lie in [0, 1]; nothing raises; the same items give the same results
again and at another thread count; and the item never reaches the model as special tokens
(its tokens hold no control token: the analysed text cannot close its turn).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from affedge.artifact import ArtifactKind
from affedge.engines.base import Engine, LabelResult, ScoreResult
from affedge.models import BUILTIN
from affedge.negotiate import Negotiation, Negotiator
from affedge.prompts import AUX_PROMPTS, VERDICTS, fill_slot, generator_messages, item_body
from affedge.records import Record, Turn
from affedge.runner import NEGOTIATE_TASKS
from affedge.tasks import CLASSIFY_TASKS, SCORE_TASKS, TASKS, Task

llama_cpp = pytest.importorskip("llama_cpp")  # the `llm` extra

DATA = Path(__file__).parent / "data" / "injection.jsonl"
#: A replacement label set (`--labels`) with a multi-token label and one no text mentions.
CUSTOM_LABELS = ("happy", "unhappy", "cannot tell")
#: Items negotiated (slow: up to three rounds of generation each), by id, with their task.
NEGOTIATED = {
    1: "emotion",  # role tokens
    18: "sentiment",  # ignore previous instructions
    56: "sarcasm",  # injected turns and speakers
    52: "sentiment",  # far beyond the context, role tokens repeated
    64: "emotion",  # the discriminator's cue
    33: "sarcasm",  # fullwidth role-token lookalikes
    50: "emotion",  # empty
    13: "sentiment",  # a fake option list
}

GGUF_KINDS = (ArtifactKind.LLM_GGUF, ArtifactKind.LLM_GGUF_LORA)
#: Every shipped GGUF model that is installed here (a fine-tuned adapter joins automatically).
GGUF_MODELS = [m.name for m in BUILTIN if m.kind in GGUF_KINDS and m.locate() is not None]


def load_items() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").split("\n") if line]


def to_record(item: dict[str, Any]) -> Record:
    """An item of the data file as a record: ``repeat`` copies of its text (the long ones)."""
    return Record(
        id=str(item["id"]),
        text=item["text"] * item.get("repeat", 1),
        speaker=item.get("speaker"),
        context=tuple(Turn(t["text"], t.get("speaker")) for t in item.get("context", ())),
        aspect=item.get("aspect"),
    )


ITEMS = load_items()
RECORDS = [to_record(item) for item in ITEMS]
#: Everything but the few items far beyond the context (each costs a full 2048-token window).
SHORT = [r for r in RECORDS if len(item_body(TASKS["emotion"], r)) < 2000]


class Engines:
    """One model's engines by thread count, opened on first use, closed at the end."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._open: dict[int, Engine] = {}

    def __call__(self, threads: int) -> Any:
        from affedge.engines import open_engine

        if threads not in self._open:
            self._open[threads] = open_engine(self.model, threads=threads)
        return self._open[threads]

    def close(self) -> None:
        for engine in self._open.values():
            engine.close()


@pytest.fixture(scope="module", params=GGUF_MODELS)
def engines(request: pytest.FixtureRequest) -> Iterator[Engines]:
    opened = Engines(request.param)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def control_ids(engines: Engines) -> frozenset[int]:
    """Every control token of the model's vocabulary (role markers, end of turn, BOS...)."""
    llm = engines(2)._llm
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids = frozenset(t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_control(vocab, t))
    assert engines(2).tokenizer.eot_id in ids  # the set is the one that matters
    return ids


# ------------------------------------------------------------------ invariants


def check_label(result: LabelResult, labels: tuple[str, ...]) -> None:
    assert list(result.probs) == list(labels)
    assert result.label in labels
    assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in result.probs.values())
    assert sum(result.probs.values()) == pytest.approx(1.0, abs=1e-9)


def check_score(result: ScoreResult) -> None:
    assert math.isfinite(result.score) and 0.0 <= result.score <= 1.0
    assert len(result.distribution) == 10
    assert sum(result.distribution) == pytest.approx(1.0, abs=1e-9)


def check_negotiation(result: Negotiation, labels: tuple[str, ...], max_rounds: int) -> None:
    assert result.label in labels
    assert sum(result.probs.values()) == pytest.approx(1.0, abs=1e-9)
    assert 1 <= len(result.rounds) <= max_rounds
    for r in result.rounds:
        assert r.proposal in labels and r.verdict in VERDICTS
        assert 0.0 <= r.agree_prob <= 1.0
    assert result.consensus == (result.rounds[-1].verdict == "agree")


def negotiate(engine: Engine) -> list[Negotiation]:
    """The negotiated items, each with its task."""
    by_id = {r.id: r for r in RECORDS}
    return [
        Negotiator(engine, TASKS[task]).negotiate(by_id[str(i)]) for i, task in NEGOTIATED.items()
    ]


def outcome(result: Negotiation) -> tuple[Any, ...]:
    return result.label, result.probs, result.consensus, result.trace()


# ------------------------------------------------------------------ the tests


def test_the_suite_is_what_it_says() -> None:
    assert len(ITEMS) >= 50 and len({i["id"] for i in ITEMS}) == len(ITEMS)
    kinds = {"role", "labels", "override", "outside", "unicode", "empty", "long", "dialogue"}
    assert {i["kind"] for i in ITEMS} >= kinds
    assert len(SHORT) < len(RECORDS) and set(NEGOTIATED.values()) == set(NEGOTIATE_TASKS)


@pytest.mark.parametrize("task_name", [t for t in CLASSIFY_TASKS if t != "sentiment"])
def test_labels_stay_in_the_label_set(engines: Engines, task_name: str) -> None:
    task = TASKS[task_name]
    results = list(engines(2).classify(SHORT, task))
    assert len(results) == len(SHORT)
    for result in results:
        check_label(result, task.labels)


def test_custom_labels_stay_in_the_custom_set(engines: Engines) -> None:
    results = list(engines(2).classify(SHORT, TASKS["sentiment"], CUSTOM_LABELS))
    assert len(results) == len(SHORT)
    for result in results:
        check_label(result, CUSTOM_LABELS)


@pytest.mark.parametrize("task_name", [t for t in SCORE_TASKS if t != "valence"])
def test_scores_stay_in_range(engines: Engines, task_name: str) -> None:
    results = list(engines(2).score(SHORT, TASKS[task_name]))
    assert len(results) == len(SHORT)
    for result in results:
        check_score(result)


def test_same_results_again_and_at_another_thread_count(engines: Engines) -> None:
    """Every item (the long ones too) through sentiment and valence, twice at 2 threads with
    other work in between (the cached head changes), and at 1 thread: bit-identical.

    llama.cpp's CPU kernels split a matrix product by rows between threads, each row's dot
    product summed by one thread in a fixed order, so the thread count does not change a
    single float; what does change floats is the batch an item is scored in (other items in
    the same decode), which is why each run scores the same items in the same order."""
    sentiment, valence = TASKS["sentiment"], TASKS["valence"]

    def run(engine: Engine) -> tuple[list[LabelResult], list[ScoreResult]]:
        return list(engine.classify(RECORDS, sentiment)), list(engine.score(RECORDS, valence))

    labels, scores = run(engines(2))
    long = {str(i["id"]) for i in ITEMS if i["kind"] == "long"}
    assert {r.id for r, res in zip(RECORDS, labels, strict=True) if res.truncated} == long
    for result in labels:
        check_label(result, sentiment.labels)
    for score in scores:
        check_score(score)
    list(engines(2).classify(SHORT[:5], TASKS["emotion"]))  # another task's head in between
    assert run(engines(2)) == (labels, scores)
    assert run(engines(1)) == (labels, scores)


def test_negotiation_verdicts_and_labels_stay_in_their_sets(engines: Engines) -> None:
    results = negotiate(engines(2))
    for (_, task), result in zip(NEGOTIATED.items(), results, strict=True):
        check_negotiation(result, TASKS[task].labels, 3)
    assert list(map(outcome, negotiate(engines(2)))) == list(map(outcome, results))
    assert list(map(outcome, negotiate(engines(1)))) == list(map(outcome, results))


def test_items_never_become_special_tokens(engines: Engines, control_ids: frozenset[int]):
    """Classify, score and negotiation prompts: the item's tokens hold no control token, and
    the prompt holds exactly the control tokens of its template."""
    engine = engines(2)
    tasks: list[tuple[Task, tuple[str, ...] | None]] = [
        *((TASKS[n], None) for n in (*CLASSIFY_TASKS, *SCORE_TASKS) if n in TASKS),
        (TASKS["sentiment"], CUSTOM_LABELS),
    ]
    for task, labels in tasks:
        prompt = engine.answer_tokens(task, labels)
        glue = [t for t in prompt.head + prompt.suffix if t in control_ids]
        for record in RECORDS:
            ids = engine.prompt_tokens(task, record, labels)
            item = ids[len(prompt.head) : len(ids) - len(prompt.suffix)]
            assert not control_ids.intersection(item), (task.name, record.id)
            assert [t for t in ids if t in control_ids] == glue
    for name in NEGOTIATE_TASKS:
        task = TASKS[name]
        head, suffix = engine.prompts.split(generator_messages(task, task.labels))
        for record in RECORDS:
            item, _ = engine.prompts.fit(head, suffix, item_body(task, record), engine.n_ctx, 512)
            assert not control_ids.intersection(item[: len(item) - len(suffix)]), record.id


def test_generation_prompts_keep_items_as_text(engines: Engines, control_ids: frozenset[int]):
    """``engine.generate`` (teacher prompts of train/multitask.py) renders whole conversations:
    only the template's glue may become special tokens, never a message's content. Before the
    fix a text holding ``<|im_end|>\\n<|im_start|>assistant`` added its own turns."""
    engine = engines(2)
    for name, aux in AUX_PROMPTS.items():
        plain = engine.prompts.conversation(fill_slot(aux.messages(), "x"))
        glue = [t for t in plain if t in control_ids]
        for record in RECORDS:
            ids = engine.prompts.conversation(fill_slot(aux.messages(), aux.body(record)))
            assert [t for t in ids if t in control_ids] == glue, (name, record.id)
    messages = fill_slot(AUX_PROMPTS["aspect"].messages(), RECORDS[0].text)
    assert isinstance(engine.generate(messages, max_tokens=8, stop=["\n"]), str)
