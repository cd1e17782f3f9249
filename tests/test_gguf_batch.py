"""Batched GGUF label scoring gives the one-at-a-time engine's numbers, whatever the batch;
the built-in base's fast re-quantization is cached, checksummed and rebuilt when damaged.

Real llama.cpp on the real SmolLM2 file (no stand-ins), one thread, a few dozen short items.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from affedge.artifact import ArtifactKind
from affedge.engines.gguf import GGUFEngine
from affedge.models import ModelRef, resolve_model
from affedge.records import Record, Turn
from affedge.tasks import TASKS, get_task

TOL = 1e-4  # probabilities; in practice the batched numbers are bit-identical

TEXTS = [
    "What a wonderful, moving film.",
    "The service was slow and the food was cold.",
    "The meeting is at noon.",
    "Oh great, another Monday.",
    "I can't believe they cancelled the show, I'm furious!",
    "Best purchase I've made all year, totally worth it.",
    "meh",
    "The plot drags in the middle but the ending is superb and the cast is strong throughout.",
    "Terrible.",
    "My cat knocked the vase over again.",
    "Everyone at the party was so kind to me, I almost cried.",
    "The report is due on Friday and nobody has started it yet, which is worrying.",
]


def _records(n: int, seed: int = 0, sentences: int = 3) -> list[Record]:
    """``n`` short records of varied length, up to ``sentences`` of :data:`TEXTS` each
    (some with a dialogue turn)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.sample(TEXTS, k=1 + i % sentences))
        context = (Turn("How was your day?", "A"),) if i % 4 == 0 else ()
        out.append(Record(id=f"{seed}-{i}", text=words, speaker="B", context=context))
    return out


def _ref(path) -> ModelRef:
    return ModelRef("smollm2", path, ArtifactKind.LLM_GGUF.value)


@pytest.fixture(scope="module")
def fast_path(tmp_path_factory, smollm2_path):
    """The built-in base's fast type (other llama.cpp kernels than Q4_1's)."""
    from affedge.gguf_base import FAST_BASE_QUANT, requantize

    folder = tmp_path_factory.mktemp("fast")
    return requantize(smollm2_path, folder / "smol.fast.gguf", FAST_BASE_QUANT)


@pytest.fixture(scope="module")
def pair(smollm2_path):
    """The shipped Q4_1 file one item at a time, and batched (the default)."""
    one = GGUFEngine(_ref(smollm2_path), threads=1, batch_size=1)
    batched = GGUFEngine(_ref(smollm2_path), threads=1)
    yield one, batched
    one.close()
    batched.close()


def _probs(results) -> np.ndarray:
    return np.array([list(r.probs.values()) for r in results])


@pytest.mark.parametrize("task_name", ["polarity", "sarcasm", "emotion"])
def test_batched_labels_equal_one_at_a_time(pair, task_name):
    """Single-token labels (polarity) and multi-token ones (sarcasm, emotion: continuations
    decoded batched too) give the one-at-a-time probabilities."""
    one, batched = pair
    task = TASKS[task_name]
    recs = _records(10, seed=1)
    expected = _probs(one.classify(recs, task))
    got = _probs(batched.classify(recs, task))
    assert batched._batcher is not None and one._batcher is None  # both paths really ran
    assert not batched.answer_tokens(task).first_only or task_name == "polarity"
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_batched_scores_equal_one_at_a_time(pair):
    one, batched = pair
    task = get_task("valence", "score")
    recs = _records(6, seed=2)
    expected = [r.distribution for r in one.score(recs, task)]
    got = [r.distribution for r in batched.score(recs, task)]
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("quant", ["q4_1", "fast"])
def test_independent_of_batch_composition(quant, smollm2_path, fast_path):
    """The same 16 items alone, as one batch of 16, and shuffled among 24 others (other
    batches, other neighbours, other fillers) give the same probabilities, and those of the
    one-at-a-time engine."""
    path = smollm2_path if quant == "q4_1" else fast_path
    task = TASKS["sentiment"]
    items = _records(16, seed=3, sentences=1)  # short enough for one decode of 16
    others = _records(24, seed=4)
    with GGUFEngine(_ref(path), threads=1, batch_size=1) as one:
        expected = _probs(one.classify(items, task))
    with GGUFEngine(_ref(path), threads=1, batch_size=64) as engine:
        prompts = [engine._item(*engine._task_prompt(task, None), r) for r in items]
        engine._answer_logprobs_many(prompts[:1])  # creates the batcher
        assert engine._batcher is not None
        assert [len(b) for b in engine._batcher._pack(prompts)] == [16]  # one decode
        alone = np.vstack([_probs(engine.classify([r], task)) for r in items])
        together = _probs(engine.classify(items, task))
        mixed = [*items, *others]
        order = list(range(len(mixed)))
        random.Random(5).shuffle(order)
        shuffled = _probs(engine.classify([mixed[i] for i in order], task))
        among = shuffled[[order.index(i) for i in range(len(items))]]
    np.testing.assert_allclose(together, alone, atol=TOL, rtol=0)
    np.testing.assert_allclose(among, alone, atol=TOL, rtol=0)
    np.testing.assert_allclose(together, expected, atol=TOL, rtol=0)


def test_items_too_long_for_a_batch_sequence_are_scored_one_at_a_time(smollm2_path):
    """With 160 KV cells per batch sequence, the long items go through the one-sequence
    path, the others batched; all in input order, all equal to one at a time."""
    task = TASKS["sentiment"]
    long_text = " ".join(TEXTS)  # ~120 tokens + the head: over 160
    recs = _records(6, seed=6)
    recs[2] = Record(id="long-a", text=long_text)
    recs[4] = Record(id="long-b", text=long_text + " Really.")
    with GGUFEngine(_ref(smollm2_path), threads=1, batch_size=1) as one:
        expected = _probs(one.classify(recs, task))
    with GGUFEngine(_ref(smollm2_path), threads=1, seq_cells=160) as engine:
        from affedge.engines.gguf_batch import fits

        prompts = [engine._item(*engine._task_prompt(task, None), r) for r in recs]
        assert [fits(p, 160) for p in prompts] == [True, True, False, True, False, True]
        got = _probs(engine.classify(recs, task))
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


# ------------------------------------------------------------------ fast base quant


def test_fast_base_is_built_once_stamped_and_rebuilt_when_damaged(
    tmp_path, monkeypatch, smollm2_path
):
    import json

    from affedge import gguf_base

    monkeypatch.setenv(gguf_base.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(gguf_base.QUANT_ENV, raising=False)
    path = gguf_base.fast_base(smollm2_path)
    assert path.parent == tmp_path / "gguf-base" and path != smollm2_path
    assert gguf_base.FAST_BASE_QUANT.upper() in path.name
    stamp = json.loads(gguf_base.stamp_file(path).read_text())
    digest = gguf_base.sha256_file(path)
    assert stamp == {
        "file": path.name,
        "size": path.stat().st_size,
        "mtime_ns": path.stat().st_mtime_ns,
        "sha256": digest,
    }
    built = path.stat().st_mtime_ns
    hashed: list[Path] = []
    sha256_file = gguf_base.sha256_file
    monkeypatch.setattr(gguf_base, "sha256_file", lambda p: hashed.append(p) or sha256_file(p))
    assert gguf_base.fast_base(smollm2_path) == path and path.stat().st_mtime_ns == built
    assert hashed == []  # an intact stamp: a stat, no hashing

    os.utime(path, ns=(built + 10**9, built + 10**9))  # touched: same bytes, re-stamped
    assert gguf_base.fast_base(smollm2_path) == path and hashed == [path]
    assert json.loads(gguf_base.stamp_file(path).read_text())["mtime_ns"] == built + 10**9

    data = bytearray(path.read_bytes())  # corrupt one byte in the middle, same size
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert gguf_base.fast_base(smollm2_path) == path
    assert sha256_file(path) == digest  # rebuilt, identical bytes

    gguf_base.stamp_file(path).unlink()  # no stamp (nor a legacy .sha256): rebuilt
    before = path.stat().st_ino
    assert gguf_base.fast_base(smollm2_path) == path and path.stat().st_ino != before
    assert gguf_base.stamp_file(path).is_file()

    gguf_base.stamp_file(path).unlink()  # a cache from before stamps: hashed once, stamped
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    before = path.stat().st_ino
    assert gguf_base.fast_base(smollm2_path) == path and path.stat().st_ino == before
    assert json.loads(gguf_base.stamp_file(path).read_text())["sha256"] == digest

    path.unlink()
    assert gguf_base.fast_base(smollm2_path) == path and path.is_file()
    assert not list(path.parent.glob(".*.tmp"))  # no partial files left

    monkeypatch.setenv(gguf_base.QUANT_ENV, "q4_1")
    assert gguf_base.fast_base(smollm2_path) == smollm2_path


def test_the_built_in_name_resolves_to_the_fast_base_and_it_runs(tmp_path, monkeypatch):
    from affedge import gguf_base

    monkeypatch.setenv(gguf_base.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(gguf_base.QUANT_ENV, raising=False)
    ref = resolve_model("smollm2-135m-instruct")
    assert ref.name == "smollm2-135m-instruct" and ref.path.is_relative_to(tmp_path)
    assert ref.kind == ArtifactKind.LLM_GGUF.value
    with GGUFEngine(ref, threads=1) as engine:
        results = list(engine.classify(_records(3, seed=7), TASKS["polarity"]))
    assert all(sum(r.probs.values()) == pytest.approx(1.0) for r in results)
