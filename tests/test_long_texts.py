"""Long texts (``--long chunk|truncate``): windows at sentence boundaries within the model's
context, results averaged per item, memory bounded, resume byte-identical.

Long reviews are built from real SST-2 test sentences (gold polarity per sentence) and read by
the shipped encoders: ``minilm-affect-int8`` (80-token context) and, where a model must see
a several-hundred-token text whole, ``minilm-affect-static`` (512 tokens).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import affedge
from affedge.chunking import Chunker, read_long, sentence_spans, windows
from affedge.engines import Engine, open_engine
from affedge.errors import InputError
from affedge.models import resolve_model
from affedge.records import Record, Turn
from affedge.runner import Job, RunInterrupted, annotate_file, results
from affedge.tasks import get_task

NAME = "minilm-affect-int8"
STATIC = "minilm-affect-static"
POLARITY = get_task("polarity")
#: Text tokens of an int8 window: max_length 80 less [CLS] and [SEP].
BUDGET = 78


@pytest.fixture(scope="module")
def int8() -> Iterator[Engine]:
    with open_engine(NAME, threads=1) as engine:
        yield engine


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    """The int8 model's tokenizer as its engine chunks with (no model needed)."""
    from tokenizers import Tokenizer

    folder = resolve_model(NAME).folder
    return Chunker(Tokenizer.from_file(str(folder / "tokenizer.json")), 80, 3)


def count(chunker: Chunker, text: str) -> int:
    return len(chunker.spans([text])[0])


@pytest.fixture(scope="module")
def sst2(data_dir, chunker) -> dict[str, list[tuple[str, int]]]:
    """SST-2 test sentences by gold label, each one sentence ending in . ! or ?, with its
    token count."""
    from affedge.datasets import load_dataset

    by_label: dict[str, list[tuple[str, int]]] = {"positive": [], "negative": []}
    for record in load_dataset("sst2", "test", root=data_dir):
        text = record.text
        if re.fullmatch(r"[^.!?…\n]+[.!?]", text) and count(chunker, text) <= 60:
            by_label[str(record.labels["sentiment"])].append((text, count(chunker, text)))
    return by_label


def review(
    sst2: dict, rng: random.Random, label: str, tokens: int, share: float = 0.75
) -> tuple[str, list[int]]:
    """About ``tokens`` tokens of sentences, ``share`` of them of gold ``label``; the text
    and each sentence's token count."""
    other = "negative" if label == "positive" else "positive"
    texts, counts = [], []
    while sum(counts) < tokens:
        text, n = rng.choice(sst2[label if rng.random() < share else other])
        texts.append(text)
        counts.append(n)
    return " ".join(texts), counts


def greedy(counts: list[int], budget: int) -> int:
    """Windows of whole sentences packed in order up to ``budget`` tokens."""
    windows, used = 0, budget
    for n in counts:
        if used + n > budget:
            windows, used = windows + 1, 0
        used += n
    return windows


# ------------------------------------------------------------------------- splitting


def test_sentences_end_at_sentence_punctuation_and_line_breaks():
    text = 'Great film. Loved it!! Really?  "Yes." It cost 3.50 dollars\nNew line 好。很好！ok'
    got = [text[s:e] for s, e in sentence_spans(text)]
    assert got == [
        "Great film.",
        "Loved it!!",
        "Really?",
        '"Yes."',
        "It cost 3.50 dollars",
        "New line 好。",
        "很好！",
        "ok",
    ]
    assert list(sentence_spans("  \n ")) == []


def check_windows(chunker: Chunker, text: str, budget: int) -> list[tuple[int, int]]:
    """The windows of ``text``: in order, each within ``budget`` tokens (re-tokenized: what
    the engine sees) and counted right, and nothing but white space left between them."""
    found = list(windows(text, budget, chunker.spans))
    end = 0
    for start, stop, tokens in found:
        assert end <= start < stop and text[end:start].strip() == ""
        assert count(chunker, text[start:stop]) == tokens <= budget
        end = stop
    assert text[end:].strip() == ""
    return [(s, e) for s, e, _ in found]


def test_windows_of_sentences_end_at_sentence_ends(chunker, sst2):
    text, counts = review(sst2, random.Random(0), "positive", 3000)
    spans = check_windows(chunker, text, BUDGET)
    assert len(spans) == greedy(counts, BUDGET) > 30
    ends = {e for _, e in sentence_spans(text)}
    assert all(e in ends and text[e - 1] in ".!?" for _, e in spans)
    parts = [text[s:e] for s, e in spans]
    # the tokens are exactly the text's: none lost, none repeated
    assert sum(count(chunker, p) for p in parts) == count(chunker, text)


@pytest.mark.parametrize(
    ("text", "budget", "expected"),
    [
        ("the plot never quite works but the cast is lovely " * 120, BUDGET, 16),  # 1200/78
        ("今天天气很好我们去公园散步吧" * 300, BUDGET, 54),  # CJK without stops: 4200/78
        ("a" * 10_000, BUDGET, 1),  # one word: WordPiece reads it as one [UNK]
        ("!" * 10_000, BUDGET, 129),  # one "word" of 10,000 punctuation tokens
        ("so good 😀😀 " * 100 + "🎉" * 500 + " the end.", BUDGET, 4),  # 304 tokens
        ("xqzjvkwpxqzjvkwp" * 6, 7, 14),  # a word of 96 WordPieces, cut inside: 96/7
    ],
    ids=["no-punctuation", "cjk", "10k-word", "10k-punctuation", "emoji", "inside-a-word"],
)
def test_texts_without_sentences_are_cut_at_words_then_at_the_token_limit(
    chunker, text, budget, expected
):
    spans = check_windows(chunker, text, budget)
    assert len(spans) == expected
    if " " in text.strip():  # whole words: each window ends where a word ends
        assert all(text[e].isspace() for _, e in spans[:-1])
    else:  # one word, or CJK without spaces: cut at the token limit, nothing left out
        assert "".join(text[s:e] for s, e in spans) == text
        assert all(count(chunker, text[s:e]) >= budget - 1 for s, e in spans[:-1])


def test_every_window_carries_the_context_and_aspect(chunker, sst2):
    text, _ = review(sst2, random.Random(1), "negative", 600)
    context = tuple(Turn(f"turn {i} " + "more words " * 10, "A") for i in range(3))
    record = Record("7", text, context=context, speaker="B", aspect="acting")
    budget = chunker.budget(record)
    assert 10 < budget <= (80 - 3) // 2  # the long context takes at most half the window
    chunks = list(chunker(record))
    assert len(chunks) > 10
    for chunk, tokens in chunks:
        assert (chunk.id, chunk.context, chunk.speaker, chunk.aspect) == (
            "7",
            context,
            "B",
            "acting",
        )
        assert count(chunker, chunk.text) == tokens <= budget
    short = Record("8", "a fine film.", context=context)
    assert list(chunker(short)) == [(short, 1)]


# ------------------------------------------------------------------------- aggregation


def rows(engine: Engine, records: list[Record], job: Job) -> list[str]:
    return [json.dumps(row) for row in results(engine, records, job)]


def test_a_text_that_fits_is_read_exactly_as_with_truncate(int8, sst2):
    """Texts within the context: --long chunk gives today's rows byte for byte (and no
    ``chunks``), for classify, score and every head."""
    rng = random.Random(2)
    records = [Record(str(i), text) for i, (text, _) in enumerate(sst2["positive"][:150])]
    while len(records) < 210:
        text, counts = review(sst2, rng, "negative", 40)
        if sum(counts) <= BUDGET:
            records.append(Record(f"r{len(records)}", text))
    records.append(Record("ctx", "fine.", context=(Turn("so? " * 100, "A"),)))  # context cut
    for job in (Job("classify", "sentiment"), Job("score", "valence"), Job(task="all")):
        chunked = rows(int8, records, job)
        truncated = rows(int8, records, Job(job.command, job.task, long="truncate"))
        assert chunked == truncated
        assert not any('"chunks"' in row for row in chunked)
        assert sum('"truncated": true' in row for row in chunked) == 1  # the long context


@pytest.mark.parametrize(
    ("model", "whole", "window", "least"),
    [(NAME, 78, 40, 0.85), (STATIC, 510, 78, 0.92)],
)
def test_chunked_labels_agree_with_whole_text_labels(sst2, model, whole, window, least):
    """Reviews the model reads whole (up to its context) against the same reviews read in
    shorter windows and averaged: the labels agree (int8: 80-token context, windows of 40;
    static: 512, windows of 80). Max-pooling or a vote over windows agree less (0.87-0.89)."""
    rng = random.Random(3)
    reviews = []
    while len(reviews) < 300:
        text, counts = review(sst2, rng, rng.choice(["positive", "negative"]), whole * 0.7)
        if sum(counts) <= whole:
            reviews.append(Record(str(len(reviews)), text))
    with open_engine(model, threads=1) as engine:
        assert isinstance(engine._tokenizer.tokenizer, object)
        read_whole = list(engine.classify(reviews, POLARITY))
        assert not any(r.truncated for r in read_whole)
        engine._chunker = Chunker(engine._tokenizer.tokenizer, window + 2, engine.context_turns)
        chunked = list(read_long(engine, reviews, lambda rs: engine.classify(rs, POLARITY)))
    assert sum(r.chunks > 1 for r in chunked) > 250
    agree = sum(a.label == b.label for a, b in zip(read_whole, chunked, strict=True)) / 300
    print(f"{model}: agreement {agree:.3f}")
    assert agree >= least


def test_short_texts_next_to_long_ones(sst2):
    """Long items' windows share the engine's batches with short items: the static encoder's
    numerics do not depend on the batch, so short rows stay byte-identical; int8 dynamic
    quantization scales activations per batch, so short items move by batch noise only (as
    with any other batch composition: up to 0.05 here), keeping every clear label."""
    rng = random.Random(4)
    records = [Record(str(i), text) for i, (text, _) in enumerate(sst2["negative"][:120])]
    for i in range(0, 120, 12):
        records.insert(i, Record(f"long{i}", review(sst2, rng, "positive", 900)[0]))
    short = [not r.id.startswith("long") for r in records]
    for model in (STATIC, NAME):
        with open_engine(model, threads=1) as engine:
            chunked = list(results(engine, records, Job("classify", "sentiment")))
            cut = list(results(engine, records, Job("classify", "sentiment", long="truncate")))
        assert [("chunks" in r, "truncated" in r) for r in chunked] == [
            (not s, False) for s in short
        ]
        pairs = [(a, b) for a, b, s in zip(chunked, cut, short, strict=True) if s]
        if model == STATIC:
            assert [a for a, _ in pairs] == [b for _, b in pairs]
            continue
        for a, b in pairs:
            assert max(abs(a["probs"][k] - b["probs"][k]) for k in a["probs"]) < 0.1
            top, second = sorted(b["probs"].values())[:-3:-1]
            assert a["label"] == b["label"] or top - second < 0.1


def test_a_positive_then_negative_text_lies_between_its_parts(int8, sst2):
    """N positive sentences then M negative ones (several thousand tokens): the probability
    is the length-weighted mean of the two parts' (within the one window that straddles
    them), the scores too, and ``chunks`` is the number of windows of whole sentences."""
    rng = random.Random(5)
    good, good_counts = review(sst2, rng, "positive", 2000, share=1.0)
    bad, bad_counts = review(sst2, rng, "negative", 1200, share=1.0)
    items = [good, bad, good + " " + bad]
    labels = list(
        results(int8, [Record(str(i), t) for i, t in enumerate(items)], Job("classify", "polarity"))
    )
    scores = list(
        results(int8, [Record(str(i), t) for i, t in enumerate(items)], Job("score", "valence"))
    )
    heads = list(results(int8, [Record(str(i), t) for i, t in enumerate(items)], Job(task="all")))
    assert [r["chunks"] for r in labels] == [
        greedy(good_counts, BUDGET),
        greedy(bad_counts, BUDGET),
        greedy(good_counts + bad_counts, BUDGET),
    ]
    assert labels[2]["chunks"] > 40 and "truncated" not in labels[2]
    assert (
        [r["chunks"] for r in scores]
        == [r["chunks"] for r in heads]
        == [r["chunks"] for r in labels]
    )
    assert [r["label"] for r in labels] == ["positive", "negative", "positive"]
    share = sum(good_counts) / (sum(good_counts) + sum(bad_counts))
    p = [r["probs"]["positive"] for r in labels]
    assert p[1] < p[2] < p[0]
    assert p[2] == pytest.approx(share * p[0] + (1 - share) * p[1], abs=0.02)
    v = [r["score"] for r in scores]
    assert v[1] < v[2] < v[0]
    assert v[2] == pytest.approx(share * v[0] + (1 - share) * v[1], abs=0.02)
    for row in heads:  # every head averaged; its label is the argmax of its mean
        for head in ("sentiment", "emotion", "sarcasm"):
            probs = row[head]["probs"]
            assert sum(probs.values()) == pytest.approx(1.0)
            assert row[head]["label"] == max(probs, key=probs.__getitem__)
    assert [h["valence"] for h in heads] == v


def test_long_reviews_are_read_whole(int8, sst2):
    """Reviews of ~1500 tokens, nine in ten of their sentences of one polarity: read in
    windows, their label is the majority's more often than from their first 78 tokens."""
    rng = random.Random(6)
    gold = [rng.choice(["positive", "negative"]) for _ in range(20)]
    records = [Record(str(i), review(sst2, rng, g, 1500, 0.9)[0]) for i, g in enumerate(gold)]
    chunked = [r["label"] for r in results(int8, records, Job("classify", "polarity"))]
    cut = list(results(int8, records, Job("classify", "polarity", long="truncate")))
    assert all(r["truncated"] for r in cut)
    right = sum(a == g for a, g in zip(chunked, gold, strict=True))
    right_cut = sum(r["label"] == g for r, g in zip(cut, gold, strict=True))
    print(f"long reviews: {right}/20 right in windows, {right_cut}/20 truncated")
    assert right >= 19 and right > right_cut


# ------------------------------------------------------------------------- file runs


def test_truncate_keeps_todays_behaviour_and_the_header_records_it(tmp_path, int8, sst2, cli):
    text, _ = review(sst2, random.Random(7), "positive", 900)
    src = tmp_path / "in.txt"
    src.write_text(f"a lovely film.\n{text}\n")
    res = cli("classify", src, "--long", "truncate", "--threads", "1", "-q")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[1]["truncated"] is True and "chunks" not in rows[1]
    today = list(
        int8.classify([Record("1", "a lovely film."), Record("2", text)], get_task("sentiment"))
    )
    assert [r["probs"] for r in rows] == [r.probs for r in today]
    res = cli("classify", src, "--threads", "1")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[1]["chunks"] > 10 and "truncated" not in rows[1] and "chunks" not in rows[0]
    assert "1 long items read in windows" in res.stderr
    # resume headers: the default as before, truncate recorded, bad values refused
    assert Job().options() is None and Job("score", "valence").options() is None
    assert Job(long="truncate").options() == {"long": "truncate"}
    assert Job(calibrate=False, long="truncate").options() == {
        "calibration": False,
        "long": "truncate",
    }
    assert "long" not in Job("negotiate", "emotion", long="truncate").options()
    with pytest.raises(InputError, match="unknown --long 'split'"):
        Job(long="split").resolve_task()
    assert cli("classify", src, "--long", "split").returncode == 2


def test_the_api_reads_long_texts_in_windows(sst2):
    text, _ = review(sst2, random.Random(8), "negative", 600)
    with affedge.load(threads=1) as model:
        (result,) = model.classify([text], task="polarity")
        (cut,) = model.classify([text], task="polarity", long="truncate")
        (score,) = model.score([text], task="valence")
        (heads,) = model.classify([text], task="all")
        (row,) = model.annotate([text], task="polarity", long="truncate")
    assert result.chunks > 5 and not result.truncated and result.label == "negative"
    assert cut.chunks == 1 and cut.truncated and row["truncated"]
    assert score.chunks == heads["chunks"] == result.chunks
    with pytest.raises(InputError, match="unknown --long"):
        affedge.load().classify(["x"], long="whole")


MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
from affedge.engines import open_engine
from affedge.io import MAX_CHUNKED_ITEM_CHARS, InputReader
from affedge.runner import Job, results

model, folder = sys.argv[1], Path(sys.argv[2])
engine = open_engine(model, threads=1)
for _ in results(engine, InputReader(str(folder / "warm.txt")), Job()):  # a warm engine
    pass
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
reader = InputReader(str(folder / "big.txt"), max_chars=MAX_CHUNKED_ITEM_CHARS)
with (folder / "big.jsonl").open("w") as out:
    for row in results(engine, reader, Job()):
        out.write(json.dumps(row) + "\\n")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (after - before) / 1024, "clipped": reader.stats.clipped}))
"""


@pytest.mark.parametrize("model", [STATIC, pytest.param(NAME, marks=pytest.mark.slow)])
def test_a_one_megabyte_item_runs_in_bounded_memory(tmp_path, sst2, model):
    """A 1 MB item (about 230,000 tokens; over the 200,000-character cut of truncate mode)
    is read whole, its windows streamed through the engine: the process's peak RSS grows by
    far less than 300 MB over a warm engine that read a 30 kB item."""
    rng = random.Random(9)
    sentences = [t for t, _ in sst2["positive"] + sst2["negative"]]
    big = []
    while sum(map(len, big)) + len(big) < 1_000_000:
        big.append(rng.choice(sentences))
    (tmp_path / "warm.txt").write_text(" ".join(big[:300]) + "\n")
    (tmp_path / "big.txt").write_text("a short one.\n" + " ".join(big) + "\nanother one.\n")
    probe = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMORY_PROBE), model, str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    measured = json.loads(probe.stdout)
    print(f"{model}: 1 MB item, peak RSS +{measured['growth_mb']:.0f} MB")
    assert measured["clipped"] == 0 and measured["growth_mb"] < 300
    with (tmp_path / "big.jsonl").open() as fh:
        rows = [json.loads(line) for line in fh]
    assert [("chunks" in r, "truncated" in r) for r in rows] == [
        (False, False),
        (True, False),
        (False, False),
    ]
    assert len(rows[1]["text"]) >= 1_000_000 and rows[1]["chunks"] > 400


def test_a_resumed_chunked_run_writes_what_an_uninterrupted_run_writes(tmp_path, sst2):
    """Long items add windows to the engine's int8 batches; blocks are counted in items and
    each block starts a fresh engine stream, so a resume that re-reads the block it stopped
    in (the second one here) writes the same bytes."""
    rng = random.Random(10)
    lines = [rng.choice(sst2["positive"] + sst2["negative"])[0] for _ in range(560)]
    for i in range(5, 560, 37):
        lines[i] = review(sst2, rng, rng.choice(["positive", "negative"]), 400)[0]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    whole, part = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    summary = annotate_file(str(src), Job(), NAME, whole, threads=1)
    assert summary.chunked == 15
    written = 0

    def stop() -> None:
        nonlocal written
        written += 1
        if written == 530:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        annotate_file(str(src), Job(), NAME, part, threads=1, on_row=stop)
    summary = annotate_file(str(src), Job(), NAME, part, resume=True, threads=1)
    assert summary.processed == 560 - 530
    assert part.read_bytes() == whole.read_bytes()
