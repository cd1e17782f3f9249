"""Length-bucketed encoder batches: input order, truncation flags, bounded look-ahead."""

from __future__ import annotations

import random

import numpy as np
import pytest

from affedge.engines.encoder import WINDOW_BATCHES, EncoderEngine
from affedge.models import resolve_model
from affedge.records import Record
from affedge.tasks import get_task

NAME = "minilm-affect-int8"
WORDS = [
    "good",
    "bad",
    "film",
    "plot",
    "actor",
    "awful",
    "great",
    "boring",
    "lovely",
    "dull",
    "scene",
    "music",
]


class PaddingFreeEncoder(EncoderEngine):
    """The shipped encoder's manifest and tokenizer, with outputs that depend on each item's
    own tokens only (never on padding or batch neighbours), so results can be compared
    exactly; records every batch's padded shape."""

    def __init__(self, batch_size: int, window: int | None = None) -> None:
        super().__init__(resolve_model(NAME), batch_size, window)
        self.shapes: list[tuple[int, int]] = []

    def _forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        self.shapes.append(ids.shape)
        total = (ids * mask).sum(axis=1).astype(np.float64)
        length = mask.sum(axis=1).astype(np.float64)
        return {
            name: np.stack(
                [np.sin(total * (j + 1) / 997.0) + length / 50.0 for j in range(len(spec.labels))],
                axis=1,
            ).astype(np.float32)
            for name, spec in self.heads.items()
        }


def _mix(n: int, seed: int = 0) -> list[Record]:
    """Short and long texts (some beyond the 128-token limit), shuffled."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        size = rng.choice([1, 3, 8, 20, 60, 150, 300])
        records.append(Record(id=str(i), text=" ".join(rng.choices(WORDS, k=size))))
    rng.shuffle(records)
    return records


def _expected(engine: EncoderEngine, records: list[Record]) -> tuple[dict, list[bool]]:
    """Every head's outputs with one record per batch, and the tokenizer's truncation flags."""
    rows = [
        engine._forward(engine._tokenizer.encode([r], engine.context_turns)[0]) for r in records
    ]
    _, cuts = engine._tokenizer.encode(records, engine.context_turns)
    return {k: np.concatenate([row[k] for row in rows]) for k in rows[0]}, cuts


@pytest.mark.parametrize("window", [8, 20, 64, 1000, None])
def test_bucketed_results_come_back_in_input_order(window):
    records = _mix(90)
    engine = PaddingFreeEncoder(batch_size=8, window=window)
    expected, cuts = _expected(engine, records)
    assert any(cuts) and not all(cuts)
    engine.shapes.clear()
    truncated, outs = [], {name: [] for name in engine.heads}
    for cut, out in engine._batches(records):
        truncated += cut
        for name in outs:
            outs[name].append(out[name])
    assert truncated == cuts
    for name, rows in outs.items():
        np.testing.assert_array_equal(np.concatenate(rows), expected[name])
    assert all(n <= 8 for n, _ in engine.shapes)
    assert sum(n for n, _ in engine.shapes) == len(records)


def test_classify_and_analyze_match_an_input_order_run_with_truncation_flags():
    records = _mix(120, seed=1)
    task = get_task("polarity")
    bucketed = PaddingFreeEncoder(batch_size=16, window=64)
    plain = PaddingFreeEncoder(batch_size=16, window=16)  # window = batch: input order
    a, b = list(bucketed.classify(records, task)), list(plain.classify(records, task))
    for x, y in zip(a, b, strict=True):
        assert x.truncated == y.truncated
        assert x.probs.keys() == y.probs.keys()
        assert max(abs(x.probs[k] - y.probs[k]) for k in x.probs) < 1e-3
    _, cuts = bucketed._tokenizer.encode(records, bucketed.context_turns)
    assert [r.truncated for r in a] == cuts
    assert list(bucketed.analyze(records)) == list(plain.analyze(records))
    # sorting by length pads less than input order
    cells = [sum(n * w for n, w in e.shapes) for e in (bucketed, plain)]
    assert cells[0] < cells[1] * 0.8


def test_the_default_window_is_a_bounded_number_of_batches():
    engine = PaddingFreeEncoder(batch_size=32)
    assert engine.window is None
    list(engine._batches(_mix(600)))
    assert max(n for n, _ in engine.shapes) == 32
    assert WINDOW_BATCHES * 32 < 600


@pytest.mark.parametrize("window", [None, 100])
def test_an_iterator_is_read_at_most_one_window_ahead(window):
    engine = PaddingFreeEncoder(batch_size=32, window=window)
    limit = window or WINDOW_BATCHES * 32
    pool = _mix(200, seed=2)
    pulled = 0

    def endless():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield pool[i % len(pool)]

    consumed = 0
    for result in engine.classify(endless(), get_task("polarity")):
        consumed += 1
        assert pulled - consumed < limit
        assert result.truncated in (True, False)
    assert consumed == pulled == 10_000


def test_the_shipped_int8_encoder_keeps_input_order():
    """Int8 dynamic quantization scales activations per batch, so probabilities move a
    little with batch composition; labels of clear texts and the order must not."""
    from affedge.engines import open_engine

    positive = ["a wonderful, moving film", "great acting and a lovely story", "I loved it"]
    negative = ["a dull, boring mess", "awful acting and a terrible plot", "I hated it"]
    long = " ".join(["the film was really wonderful and the music was great"] * 20)
    records = [Record(id=str(i), text=t) for i, t in enumerate(positive * 6 + negative * 6)]
    records += [Record(id=f"long{i}", text=long) for i in range(4)]
    random.Random(3).shuffle(records)
    engine = open_engine(NAME, threads=1)
    try:
        task = get_task("polarity")
        engine.batch_size, engine.window = 4, 12
        bucketed = list(engine.classify(records, task))
        engine.window = 4
        plain = list(engine.classify(records, task))
    finally:
        engine.close()
    for rec, x, y in zip(records, bucketed, plain, strict=True):
        assert x.label == y.label
        assert max(abs(x.probs[k] - y.probs[k]) for k in x.probs) < 0.15
        assert x.truncated == y.truncated == rec.id.startswith("long")
        if rec.text in positive:
            assert x.label == "positive"
        elif rec.text in negative:
            assert x.label == "negative"


@pytest.mark.parametrize("stop_after", [100, 530])
def test_a_resumed_int8_run_writes_what_an_uninterrupted_run_writes(tmp_path, stop_after):
    """Int8 numerics depend on an item's batch, so a resume that started its windows at the
    first unfinished record would write other probabilities; the runner re-reads the window
    the interrupted run stopped in (engine.block_size), making the output byte-identical."""
    from affedge.runner import Job, RunInterrupted, annotate_file

    rng = random.Random(5)
    lines = [" ".join(rng.choices(WORDS, k=rng.choice([2, 5, 9, 17, 40]))) for _ in range(600)]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    job = Job("classify", "sentiment")
    whole, part = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    annotate_file(str(src), job, NAME, whole, threads=1)

    written = 0

    def stop() -> None:
        nonlocal written
        written += 1
        if written == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        annotate_file(str(src), job, NAME, part, threads=1, on_row=stop)
    assert not part.exists()
    summary = annotate_file(str(src), job, NAME, part, resume=True, threads=1)
    assert summary.processed == 600 - stop_after
    assert part.read_bytes() == whole.read_bytes()
