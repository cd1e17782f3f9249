"""Texts longer than a model's context, read whole in windows (``--long chunk``).

**Splitting** (:func:`windows`): a text is cut into sentences (at ``. ! ? …`` followed by
white space, at CJK full stops, at line breaks) and the sentences are packed greedily, in
order, into windows of at most ``budget`` tokens. A sentence longer than a window is split at
word boundaries (white space between tokens), and a word longer than a window (a CJK run
without spaces, a long string of punctuation) at the token limit. Windows keep the text's own
characters (``text[start:end]``), so a window re-tokenizes to the tokens it was counted with.

**Encoders** (:class:`Chunker`, behind :meth:`EncoderEngine.chunks`): the budget is the
manifest's ``max_length`` less the special tokens, the aspect suffix and the conversation
context each window carries (the context may take at most half the window; past that the
tokenizer trims the context, never the window's text). A text that fits is the record itself,
so short texts give exactly what ``--long truncate`` gives.

**Aggregation** (:func:`read_long`, :class:`Merge`): every window is scored as a record of its
own (same context, speaker, aspect) and an item's result is the token-length-weighted mean of
its windows' results: label probabilities (the label is the argmax of the mean), scores, and
every head of ``--task all``. With calibrated probabilities, the length-weighted mean is the
expected label distribution of the window a random token of the text falls in: each part of
the text counts in proportion to its length, and a short window (the text's tail) cannot
outvote a long one. Max-pooling (the most confident window wins) would let one sentence
decide a whole review; a vote over windows throws the probabilities away.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from itertools import chain, islice
from typing import Any, TypeVar

from affedge.encoding import text_pair
from affedge.engines.base import Capability, Engine, LabelResult, ScoreResult
from affedge.errors import InputError
from affedge.records import Record

#: ``--long`` choices: read long texts in windows (default), or cut them to the context.
LONG_MODES = ("chunk", "truncate")
#: A sentence end: ``. ! ? …`` (and closing quotes or brackets) before white space, a CJK
#: full stop (no space needed), or a line break.
_SENTENCE_END = re.compile(r"[.!?…‼⁇⁈⁉]+[\"'”’»)\]]*(?=\s)|[。！？｡︒]+[\"'”’」』）)]*|\n")
_SPACE = re.compile(r"\s")
#: Longer "sentences" (a text without punctuation) are cut at white space into pieces of at
#: most this many characters before tokenizing, so no item is ever tokenized in one piece.
MAX_PIECE_CHARS = 20_000
#: Pieces tokenized per call.
_GROUP_PIECES = 64
#: Windows below this many tokens (a huge aspect or context) are not worth it: the record is
#: read whole and truncated, as with ``--long truncate``.
MIN_BUDGET = 8

#: Token offsets (start, end character of each token, no special tokens) of each text.
TokenSpans = Callable[[list[str]], list[list[tuple[int, int]]]]
Window = tuple[int, int, int]  # start, end character, tokens
R = TypeVar("R")


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def sentence_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each sentence of ``text`` in order, without surrounding white space."""
    start = 0
    for match in _SENTENCE_END.finditer(text):
        s, e = _strip(text, start, match.end())
        if e > s:
            yield s, e
        start = match.end()
    s, e = _strip(text, start, len(text))
    if e > s:
        yield s, e


def _pieces(text: str) -> Iterator[tuple[int, int]]:
    """Sentences, those over :data:`MAX_PIECE_CHARS` cut at their last white space before it
    (hard at the limit when there is none)."""
    for start, end in sentence_spans(text):
        while end - start > MAX_PIECE_CHARS:
            limit = start + MAX_PIECE_CHARS
            cut = max((m.start() for m in _SPACE.finditer(text, start + 1, limit)), default=limit)
            yield _strip(text, start, cut)
            start, _ = _strip(text, cut, end)
        yield start, end


def windows(text: str, budget: int, spans: TokenSpans) -> Iterator[Window]:
    """(start, end, tokens) of the windows ``text`` is read in (see the module docstring),
    computed lazily: a few dozen sentences are tokenized at a time."""
    start = end = count = 0
    pieces = _pieces(text)
    while group := list(islice(pieces, _GROUP_PIECES)):
        for (s, e), offsets in zip(group, spans([text[s:e] for s, e in group]), strict=True):
            n = len(offsets)
            if n == 0:
                continue
            if count + n <= budget:
                start, end, count = (start if count else s), e, count + n
                continue
            if count:
                yield start, end, count
            if n <= budget:
                start, end, count = s, e, n
                continue
            *full, (start, end, count) = _split_sentence(text, s, offsets, budget, spans)
            yield from full
    if count:
        yield start, end, count


def _split_sentence(
    text: str, base: int, offsets: list[tuple[int, int]], budget: int, spans: TokenSpans
) -> list[Window]:
    """A sentence longer than ``budget`` tokens as windows: whole words packed greedily, a
    word longer than a window cut at the token limit. The last window is left open for the
    sentences that follow."""
    tokens = len(offsets)
    starts = [i for i in range(1, tokens) if offsets[i][0] > offsets[i - 1][1]]
    out: list[Window] = []
    a = 0  # first token of the open window
    cut_inside = False  # the open window starts inside a word (re-tokenizes differently)
    for w0, w1 in zip([0, *starts], [*starts, tokens], strict=True):
        if w1 - a <= budget:
            continue
        if w0 > a:
            out.append(_window(text, base, offsets, a, w0, cut_inside, spans))
            a, cut_inside = w0, False
        while w1 - a > budget:  # one word longer than a window
            b = a + budget
            window = _window(text, base, offsets, a, b, True, spans)
            while window[2] > budget and b > a + 1:  # a word cut in two may gain tokens
                b -= 1
                window = _window(text, base, offsets, a, b, True, spans)
            out.append(window)
            a, cut_inside = b, True
    out.append(_window(text, base, offsets, a, tokens, cut_inside, spans))
    return out


def _window(
    text: str,
    base: int,
    offsets: list[tuple[int, int]],
    a: int,
    b: int,
    recount: bool,
    spans: TokenSpans,
) -> Window:
    """Tokens ``a:b`` of a sentence as a window; ``recount``: count its text's own tokens
    (a window cut inside a word is tokenized from that point on as a word of its own)."""
    start, end = base + offsets[a][0], base + offsets[b - 1][1]
    return start, end, len(spans([text[start:end]])[0]) if recount else b - a


class Chunker:
    """The windows of records for an encoder's tokenizer (a ``tokenizers.Tokenizer``), its
    ``max_length`` and the context turns it pairs with each text."""

    def __init__(self, tokenizer: Any, max_length: int, context_turns: int) -> None:
        self._source = tokenizer
        self._copy: Any = None  # made on first use: most short texts never need it
        self.max_length, self.context_turns = max_length, context_turns
        self._single = tokenizer.num_special_tokens_to_add(False)
        self._pair = tokenizer.num_special_tokens_to_add(True)
        # WordPiece gives every token at least one character of the text; for ASCII (no case
        # mapping that changes lengths) a text of n characters has at most n tokens.
        self._chars_bound = type(tokenizer.model).__name__ == "WordPiece"

    @property
    def _tokenizer(self) -> Any:
        """A copy of the encoder's tokenizer that neither truncates nor pads."""
        if self._copy is None:
            from tokenizers import Tokenizer

            self._copy = Tokenizer.from_str(self._source.to_str())
            self._copy.no_truncation()
            self._copy.no_padding()
        return self._copy

    def spans(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [e.offsets for e in encodings]

    def _count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def budget(self, record: Record) -> int:
        """Tokens a window of ``record``'s text may have, next to what every window carries."""
        if not record.aspect and (self.context_turns <= 0 or not record.context):
            return self.max_length - self._single
        probe = text_pair(replace(record, text=""), self.context_turns)
        if isinstance(probe, str):  # the aspect suffix only
            return self.max_length - self._single - self._count(probe)
        own, context = self._count(probe[0]), self._count(probe[1])
        whole = self.max_length - self._pair - own - context
        return max(whole, (self.max_length - self._pair) // 2 - own)

    def __call__(self, record: Record) -> Iterator[tuple[Record, int]]:
        """``record`` itself when its text fits one window, else a record per window (the
        window's text, everything else the record's), each with its token count."""
        budget = self.budget(record)
        text = record.text
        if budget < MIN_BUDGET or (self._chars_bound and text.isascii() and len(text) <= budget):
            yield record, 1
            return
        found = windows(text, budget, self.spans)
        first = next(found, None)
        second = next(found, None)
        if first is None or second is None:
            yield record, first[2] if first else 1
            return
        for start, end, count in chain((first, second), found):
            yield replace(record, text=text[start:end]), count


# ------------------------------------------------------------------------- aggregation


class Merge:
    """The token-length-weighted mean of one item's window results (a :class:`LabelResult`,
    a :class:`ScoreResult` or an ``analyze`` dict); one window's result is kept as it is."""

    def __init__(self) -> None:
        self.first: Any = None
        self.n = 0
        self.weight = 0.0
        self.truncated = False
        self.sums: dict[Any, Any] = {}

    def add(self, result: Any, weight: int) -> None:
        if self.n == 0:
            self.first = result
        self.n += 1
        self.weight += weight
        if isinstance(result, LabelResult):
            self.truncated |= result.truncated
            self._add(("probs",), result.probs, weight)
        elif isinstance(result, ScoreResult):
            self.truncated |= result.truncated
            self._add_value(("score",), result.score, weight)
            for i, p in enumerate(result.distribution):
                self._add_value(("distribution", i), p, weight)
        else:
            self.truncated |= bool(result.get("truncated"))
            for key, value in result.items():
                if isinstance(value, dict):
                    self._add((key,), value["probs"], weight)
                elif key not in ("truncated", "chunks"):
                    self._add_value((key,), value, weight)

    def _add(self, prefix: tuple[Any, ...], probs: dict[str, float], weight: int) -> None:
        for label, p in probs.items():
            self._add_value((*prefix, label), p, weight)

    def _add_value(self, key: tuple[Any, ...], value: float, weight: int) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + weight * value

    def _mean(self, *key: Any) -> float:
        return self.sums[key] / self.weight

    def _probs(self, prefix: Any, labels: Iterable[str]) -> dict[str, float]:
        return {label: self._mean(prefix, label) for label in labels}

    def result(self) -> Any:
        """The item's result, with ``chunks`` (the number of windows) when there were two or
        more; the label of averaged probabilities is their first maximum (as ``argmax``)."""
        first = self.first
        if self.n == 1:
            return first
        if isinstance(first, LabelResult):
            return LabelResult(self._probs("probs", first.probs), self.truncated, self.n)
        if isinstance(first, ScoreResult):
            dist = tuple(self._mean("distribution", i) for i in range(len(first.distribution)))
            return ScoreResult(self._mean("score"), dist, self.truncated, self.n)
        merged: dict[str, Any] = {}
        for key, value in first.items():
            if isinstance(value, dict):
                probs = self._probs(key, value["probs"])
                merged[key] = {"label": max(probs, key=probs.__getitem__), "probs": probs}
            elif key not in ("truncated", "chunks"):
                merged[key] = self._mean(key)
        merged["chunks"] = self.n
        if self.truncated:
            merged["truncated"] = True
        return merged


def check_long(long: str) -> None:
    """InputError unless ``long`` is a ``--long`` choice."""
    if long not in LONG_MODES:
        raise InputError(f"unknown --long {long!r}: choose {', '.join(LONG_MODES)}")


def reads_in_chunks(engine: Engine, long: str) -> bool:
    """Whether ``--long long`` reads long texts in windows on ``engine`` (else truncated)."""
    check_long(long)
    return long == "chunk" and engine.supports(Capability.CHUNKS)


def read_long(
    engine: Engine, records: Iterable[Record], run: Callable[[Iterable[Record]], Iterator[R]]
) -> Iterator[R]:
    """``run`` (an engine's classify, score or analyze for one task) over ``records``, each
    read in the windows of :meth:`Engine.chunks` and its windows' results merged
    (:class:`Merge`): one result per record, in input order, computed lazily.

    Windows go to the engine in order and are merged as their results come back, so memory
    holds the engine's look-ahead, never a whole input. Records go in blocks of
    :attr:`Engine.block_size` records, each block a fresh ``run``: the engine's batches then
    start with the block's first window, so a record's result depends only on the records of
    its block, wherever a run starts, as the runner's resume (which counts blocks in records,
    not windows) requires.
    """
    it = iter(records)
    size = max(1, engine.block_size)
    pending: deque[tuple[int, bool]] = deque()  # per window sent: its weight, last of its item

    def windows_of(block: Iterable[Record]) -> Iterator[Record]:
        for record in block:
            previous: tuple[Record, int] | None = None
            for chunk in engine.chunks(record):
                if previous is not None:
                    pending.append((previous[1], False))
                    yield previous[0]
                previous = chunk
            assert previous is not None, "chunks() yields at least one window"
            pending.append((previous[1], True))
            yield previous[0]

    while (first := next(it, None)) is not None:
        merge = Merge()
        for result in run(windows_of(chain((first,), islice(it, size - 1)))):
            weight, last = pending.popleft()
            merge.add(result, weight)
            if last:
                yield merge.result()
                merge = Merge()
