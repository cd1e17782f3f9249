"""Static-embedding multi-task encoders: numpy + tokenizers at run time, nothing else.

The model (``affedge-encoder-static``, written by train/static.py): a token embedding table
(distilled from the transformer with model2vec, then tuned on the affect data), mean pooled
over the text's tokens, and one small MLP per head; the outputs are the ONNX encoder's
(logits, or [0, 1] values for regression), so :class:`EncoderEngine` answers every task and
``--task all``. No attention: with ``context_turns`` > 0 the context turns (the second segment
of :mod:`affedge.encoding`'s text pair) are pooled into a second vector the heads also read
(zero without context); with 0 the context is ignored.

Speed: each head's first layer is folded into the table (:meth:`StaticEncoderEngine.fused`),
so a head costs a gather and a sum per token, and tokenization dominates. Single printable
ASCII texts therefore take :class:`_AsciiFastPath`, which gives the tokenizer's own ids
without its pipeline; other items go through :class:`~affedge.encoding.EncoderTokenizer`.
Both give the same vectors (tests/test_static.py). Artifacts are untrusted: every array's
name, dtype, shape and size is checked before it is read (``allow_pickle=False``); any problem
is one :class:`~affedge.errors.ModelError` line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from affedge.calibration import tempered_softmax
from affedge.encoding import text_pair
from affedge.engines.base import LabelResult
from affedge.engines.encoder import EncoderEngine
from affedge.errors import ModelError
from affedge.models import ModelRef
from affedge.records import Record
from affedge.tasks import Task

#: The version of the ``static`` section of the manifest this engine reads.
STATIC_FORMAT = 1
#: Records per batch unless the manifest says otherwise (no attention: large batches are cheap).
DEFAULT_BATCH_SIZE = 1024
#: Limits on what an artifact may declare (far above anything trained here).
MAX_VOCAB = 1 << 21
MAX_DIM = 4096
MAX_LAYERS = 4
MAX_ARRAY_BYTES = 1 << 30
#: Dtypes accepted on disk: the embedding table, and the head weights.
TABLE_DTYPES = (np.dtype("<f2"), np.dtype("<f4"), np.dtype("i1"))
HEAD_DTYPES = (np.dtype("<f2"), np.dtype("<f4"))
#: Items per padded gather when pooling (sorted by length, so padding stays small).
_POOL_CHUNK = 128
#: Word cache entries kept before the cache is cleared (bounds memory on endless input).
_CACHE_LIMIT = 500_000
#: BERT's ASCII word and punctuation split (punctuation: 33-47, 58-64, 91-96, 123-126; each
#: such character is a word of its own), plus the item separator used by the fast path.
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]|\x01")


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a ``.npy`` file, without reading its data; ModelError
    unless it is a C-ordered numeric array whose file holds exactly its bytes."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = fh.tell()
    except (OSError, ValueError, SyntaxError) as exc:
        raise ModelError(f"{path}: not a readable .npy array ({exc})") from None
    if fortran:
        raise ModelError(f"{path}: Fortran-ordered arrays are not accepted")
    if dtype.hasobject or dtype.kind not in "fiu":
        raise ModelError(f"{path}: dtype {dtype} is not a numeric array")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise ModelError(f"{path}: array of {nbytes:,} bytes is larger than allowed")
    if size != offset + nbytes:
        what = "truncated" if size < offset + nbytes else "longer than its array (oversized)"
        raise ModelError(f"{path}: file of {size:,} bytes is {what}: shape {shape} {dtype}")
    return tuple(int(n) for n in shape), dtype, offset


def load_npy(
    folder: Path, name: Any, what: str, dtypes: tuple[np.dtype, ...], ndim: int
) -> np.ndarray:
    """The array in ``folder/name`` after checking its name, header, dtype and rank."""
    if not isinstance(name, str) or not name.endswith(".npy"):
        raise ModelError(f"{folder}: {what} must name a .npy file, not {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or "\\" in name or len(pure.parts) != 1 or name.startswith("."):
        raise ModelError(f"{folder}: {what} must be a file inside the model folder, not {name!r}")
    path = folder / name
    if not path.is_file():
        raise ModelError(f"{folder}: {what} file {name} is missing")
    shape, dtype, _ = read_npy_header(path)
    if dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise ModelError(f"{path}: {what} has dtype {dtype}, expected one of {allowed}")
    if len(shape) != ndim:
        raise ModelError(f"{path}: {what} has shape {shape}, expected {ndim} dimensions")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read {what} ({exc})") from None


class StaticEncoderEngine(EncoderEngine):
    """A static-embedding multi-task encoder folder: ``affedge.json``, ``tokenizer.json``, the
    embedding table (the manifest's ``file``) and the head layers as ``.npy`` files (named in
    the manifest's ``static`` section)."""

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int = 0) -> None:
        # ``threads`` is accepted for the common backend signature; numpy's BLAS takes its
        # thread count from the environment (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS).
        super().__init__(ref, batch_size or DEFAULT_BATCH_SIZE)
        folder = ref.folder
        where = f"{folder}/affedge.json"
        spec = self.manifest.info.get("static")
        if not isinstance(spec, dict) or spec.get("format") != STATIC_FORMAT:
            raise ModelError(f"{where}: field 'static' must be an object with format 1")
        if not batch_size:
            size = spec.get("batch_size", DEFAULT_BATCH_SIZE)
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65536:
                raise ModelError(f"{where}: field 'static.batch_size' must be in [1, 65536]")
            self.batch_size = size
        tokenizer = self._tokenizer.tokenizer
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        table = load_npy(folder, self.manifest.file, "the embedding table", TABLE_DTYPES, 2)
        self.path = folder / str(self.manifest.file)
        if not 0 < table.shape[1] <= MAX_DIM or table.shape[0] > MAX_VOCAB:
            raise ModelError(f"{self.path}: embedding table of shape {table.shape} not allowed")
        if table.shape[0] != vocab:
            raise ModelError(f"{self.path}: {table.shape[0]} rows for a tokenizer of {vocab}")
        if table.dtype == np.int8:
            scales = load_npy(folder, spec.get("scales"), "the int8 row scales", HEAD_DTYPES, 1)
            if scales.shape != (vocab,):
                raise ModelError(f"{folder}: int8 row scales of shape {scales.shape}, need {vocab}")
            table = table.astype(np.float32) * scales.astype(np.float32)[:, None]
        self.vocab_size, self.dim = int(table.shape[0]), int(table.shape[1])
        if not np.isfinite(table).all():
            raise ModelError(f"{self.path}: the embedding table holds NaN or infinite values")
        #: The table as float32 plus one zero row (index ``vocab_size``) that padding,
        #: skipped tokens and the fast path's item separator point at.
        self.table = np.vstack([table.astype(np.float32), np.zeros((1, self.dim), np.float32)])
        self.zero = self.vocab_size

        skip = spec.get("skip_ids", [])
        if not isinstance(skip, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in skip
        ):
            raise ModelError(f"{where}: field 'static.skip_ids' must list token ids below {vocab}")
        #: Token ids left out of the mean ([CLS], [SEP], [PAD] ...); the zero row is skipped too.
        self.skip = np.zeros(vocab + 1, dtype=bool)
        self.skip[skip] = True
        self.skip[self.zero] = True
        if spec.get("normalize", False) is not False:
            raise ModelError(f"{where}: field 'static.normalize': only unnormalized mean pooling")
        self._fused: dict[tuple[str, int], np.ndarray] = {}
        self.segments = 2 if self.context_turns > 0 else 1
        self.layers = self._load_heads(folder, spec.get("heads"), where)
        self._fast = _AsciiFastPath.for_tokenizer(tokenizer, self.skip, self.zero)

    def _load_heads(
        self, folder: Path, heads: Any, where: str
    ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        if not isinstance(heads, dict) or set(heads) != set(self.heads):
            raise ModelError(f"{where}: field 'static.heads' must give layers for every head")
        out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for name, spec in self.heads.items():
            layers = heads[name].get("layers") if isinstance(heads[name], dict) else None
            if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
                raise ModelError(f"{where}: head {name!r} needs 1 to {MAX_LAYERS} layers")
            width = self.dim * self.segments
            loaded = []
            for i, pair in enumerate(layers):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ModelError(f"{where}: head {name!r} layer {i} must be [weight, bias]")
                w = load_npy(folder, pair[0], f"head {name} layer {i} weight", HEAD_DTYPES, 2)
                b = load_npy(folder, pair[1], f"head {name} layer {i} bias", HEAD_DTYPES, 1)
                last = i == len(layers) - 1
                out_dim = len(spec.labels) if last else w.shape[1]
                if w.shape != (width, out_dim) or b.shape != (out_dim,) or out_dim > MAX_DIM:
                    raise ModelError(
                        f"{folder / pair[0]}: head {name!r} layer {i} has shapes {w.shape} and "
                        f"{b.shape}, expected ({width}, {out_dim}) and ({out_dim},)"
                    )
                w, b = w.astype(np.float32), b.astype(np.float32)
                if not (np.isfinite(w).all() and np.isfinite(b).all()):
                    raise ModelError(f"{folder / pair[0]}: NaN or infinite weights")
                loaded.append((w, b))
                width = out_dim
            out[name] = loaded
        return out

    # ------------------------------------------------------------------ pooling

    def _mean(self, matrix: np.ndarray, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Mean of the ``matrix`` rows of each row of ``ids`` (padded with the zero row),
        summed in token order: padding adds exact zeros, so batching changes nothing."""
        return matrix[ids].sum(axis=1) / np.maximum(counts, 1).astype(np.float32)[:, None]

    def _pool_flat(
        self, flat: np.ndarray, starts: np.ndarray, lens: np.ndarray, matrix: Any = None
    ) -> np.ndarray:
        """Mean-pooled rows of ``matrix`` (default: the table) for items stored back to back
        in ``flat``, gathered in chunks of items of similar length."""
        matrix = self.table if matrix is None else matrix
        out = np.zeros((len(lens), matrix.shape[1]), dtype=np.float32)
        order = np.argsort(lens, kind="stable")
        last = max(len(flat) - 1, 0)
        for k in range(0, len(order), _POOL_CHUNK):
            idx = order[k : k + _POOL_CHUNK]
            width = int(lens[idx].max())
            if width == 0:
                continue
            steps = np.arange(width)
            pos = np.minimum(starts[idx, None] + steps, last)
            ids = np.where(steps < lens[idx, None], flat[pos], self.zero)
            out[idx] = self._mean(matrix, ids, lens[idx])
        return out

    def _segments(self, inputs: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per segment (text, context): ids (unpooled ones -> zero row) and pooled counts."""
        ids = np.clip(inputs["input_ids"], 0, self.zero)
        keep = inputs["attention_mask"].astype(bool) & ~self.skip[ids]
        out = []
        for segment in range(self.segments):
            mask = keep & (inputs["token_type_ids"] == segment)
            out.append((np.where(mask, ids, self.zero), mask.sum(axis=1)))
        return out

    def pool(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Text (and context) vectors of tokenized inputs (:class:`EncoderTokenizer` output)."""
        vectors = [self._mean(self.table, ids, n) for ids, n in self._segments(inputs)]
        return vectors[0], (vectors[1] if self.segments > 1 else None)

    # ------------------------------------------------------------------ heads

    def fused(self, name: str, segment: int) -> np.ndarray:
        """The table times head ``name``'s first layer (its ``segment`` rows), made on first
        use: mean(table[ids]) @ W == mean((table @ W)[ids]), so pooling these rows gives the
        first layer's output with no matrix product, gathering its width per token."""
        key = (name, segment)
        if key not in self._fused:
            w = self.layers[name][0][0][segment * self.dim : (segment + 1) * self.dim]
            self._fused[key] = np.ascontiguousarray(self.table @ w, dtype=np.float32)
        return self._fused[key]

    def head_output(self, name: str, tokens: _Batch) -> np.ndarray:
        """Logits (classification) or [0, 1] values (regression) of head ``name``."""
        layers = self.layers[name]
        x = tokens.pooled(self.fused(name, 0), 0)
        if tokens.has_context:
            x += tokens.pooled(self.fused(name, 1), 1)  # zero for items without context
        x += layers[0][1]
        for w, b in layers[1:]:
            x = np.maximum(x, 0.0) @ w + b
        if self.heads[name].kind == "regress":
            x = 1.0 / (1.0 + np.exp(-x))
        return x

    def _forward(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        tokens = _Batch(self, len(inputs["input_ids"]))
        tokens.add_padded(np.arange(tokens.n), self._segments(inputs))
        return tokens

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        """:meth:`EncoderEngine.classify`, with the probabilities turned into Python floats
        a batch at a time (per-item numpy scalar conversion costs as much as the model)."""
        head, idx = self._label_indices(task, labels)
        names = list(labels or task.labels)
        for truncated, outs in self._batches(records):
            probs = tempered_softmax(outs[head][:, idx], self.temperature(task, labels))
            for row, cut in zip(probs.tolist(), truncated, strict=True):
                yield LabelResult(dict(zip(names, row, strict=True)), truncated=cut)

    def analyze(self, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
        """:meth:`EncoderEngine.analyze` (the same records), with softmax and conversion to
        Python numbers done per batch rather than per item."""
        for truncated, outs in self._batches(records):
            columns = {name: self._head_values(name, outs).tolist() for name in self.heads}
            for i, cut in enumerate(truncated):
                result: dict[str, Any] = {}
                for name, spec in self.heads.items():
                    row = columns[name][i]
                    if spec.kind == "classify":
                        probs = dict(zip(spec.labels, row, strict=True))
                        label = spec.labels[row.index(max(row))]  # the first maximum, as argmax
                        result[name] = {"label": label, "probs": probs}
                    else:
                        result.update(zip(spec.labels, row, strict=True))
                if cut:
                    result["truncated"] = True
                yield result

    def _batches(self, records: Iterable[Record]) -> Iterator[tuple[list[bool], Mapping]]:
        """Like :meth:`EncoderEngine._batches`, with single ASCII texts on the fast path."""
        it = iter(records)
        while batch := list(islice(it, self.batch_size)):
            inputs = [text_pair(r, self.context_turns) for r in batch]
            fast = [] if self._fast is None else self._fast.eligible(inputs)
            tokens = _Batch(self, len(batch))
            truncated = [False] * len(batch)
            if fast:
                assert self._fast is not None
                limit = self._tokenizer.max_length - self._fast.added
                flat, starts, lens, cut = self._fast.encode([inputs[i] for i in fast], limit)
                tokens.flat = (np.array(fast), flat, starts, lens)
                for i in np.flatnonzero(cut):
                    truncated[fast[i]] = True
            slow = sorted(set(range(len(batch))) - set(fast))
            if slow:
                encoded, cuts = self._tokenizer.encode([batch[i] for i in slow], self.context_turns)
                tokens.add_padded(np.array(slow), self._segments(encoded))
                for i, c in zip(slow, cuts, strict=True):
                    truncated[i] = c
            yield truncated, tokens


class _Batch(Mapping[str, np.ndarray]):
    """A tokenized batch (fast-path items back to back, tokenizer items padded per segment)
    and its head outputs, computed on first access: ``classify`` pays for one head."""

    def __init__(self, engine: StaticEncoderEngine, n: int) -> None:
        self.engine, self.n = engine, n
        self.flat: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.padded: tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]] | None = None
        self.has_context = False
        self._done: dict[str, np.ndarray] = {}

    def add_padded(self, rows: np.ndarray, segments: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.padded = (rows, segments)
        self.has_context = len(segments) > 1 and bool(segments[1][1].any())

    def pooled(self, matrix: np.ndarray, segment: int) -> np.ndarray:
        """Mean of ``matrix`` rows over each item's tokens of ``segment`` (0 text, 1 context)."""
        out = np.zeros((self.n, matrix.shape[1]), dtype=np.float32)
        if self.flat is not None and segment == 0:
            rows, flat, starts, lens = self.flat
            out[rows] = self.engine._pool_flat(flat, starts, lens, matrix)
        if self.padded is not None:
            rows, segments = self.padded
            out[rows] = self.engine._mean(matrix, *segments[segment])
        return out

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._done:
            if name not in self.engine.layers:
                raise KeyError(name)
            self._done[name] = self.engine.head_output(name, self)
        return self._done[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.engine.layers)

    def __len__(self) -> int:
        return len(self.engine.layers)


class _AsciiFastPath:
    """BERT WordPiece token ids of printable-ASCII texts, without the tokenizers pipeline.

    For printable ASCII, BERT's normalizer only lower-cases, and its pre-tokenizer splits on
    whitespace (space, tab, CR, LF: exactly what ``str.split`` splits on in such text) and
    makes every ASCII punctuation character a word of its own. So the lower-cased batch is
    split on whitespace, and each distinct chunk (``"great,"``) is turned once into the
    tokenizer's own WordPiece ids (punctuation split by :data:`_ASCII_WORDS`, words by the
    tokenizer's model) and cached; chunk ids expand to token ids with numpy. Texts with control
    characters or an added token's string ([CLS], [MASK] ...) take the slow path.
    """

    def __init__(
        self, tokenizer: Any, added: list[str], n_special: int, skip: np.ndarray, separator: int
    ) -> None:
        self._model = tokenizer.model
        self.added = n_special
        self._skip = skip
        self._separator = separator
        control = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
        firsts = "".join(sorted({c for a in added for c in (a[0].lower(), a[0].upper())}))
        #: A cheap first test (control characters, or an added token's first character) ...
        self._suspect = re.compile(f"{control[:-1]}{re.escape(firsts)}]")
        #: ... and the exact one (any case: also catches added tokens matched after lowering).
        blocked = "|".join(re.escape(a) for a in sorted(added, key=len, reverse=True))
        self._blocked = re.compile(control + (f"|{blocked}" if blocked else ""), re.IGNORECASE)
        #: chunk -> its row in ``_start``/``_len``, which locate its ids in ``_pieces``.
        self._index: dict[str, int] = {}
        self._start = np.zeros(1024, dtype=np.int64)
        self._len = np.zeros(1024, dtype=np.int64)
        self._pieces = np.zeros(4096, dtype=np.int64)
        self._n_pieces = 0
        self._reset()

    def _reset(self) -> None:
        self._index.clear()
        self._n_pieces = 0
        self._add("\x01", [self._separator])

    def _add(self, chunk: str, ids: list[int]) -> None:
        row, end = len(self._index), self._n_pieces + len(ids)
        if row >= len(self._start):
            self._start = np.resize(self._start, 2 * len(self._start))
            self._len = np.resize(self._len, 2 * len(self._len))
        if end > len(self._pieces):
            self._pieces = np.resize(self._pieces, max(2 * len(self._pieces), end))
        self._start[row], self._len[row] = self._n_pieces, len(ids)
        self._pieces[self._n_pieces : end] = ids
        self._n_pieces = end
        self._index[chunk] = row

    @classmethod
    def for_tokenizer(
        cls, tokenizer: Any, skip: np.ndarray, separator: int
    ) -> _AsciiFastPath | None:
        """The fast path for a lower-casing BERT WordPiece tokenizer whose special tokens
        are all skipped by the pooling; None for any other tokenizer."""
        try:
            config = json.loads(tokenizer.to_str())
        except (ValueError, TypeError):
            return None
        parts = [config.get(k) or {} for k in ("normalizer", "pre_tokenizer", "model")]
        kinds = tuple(part.get("type") for part in parts)
        lowercase = parts[0].get("lowercase") and parts[0].get("clean_text")
        if kinds != ("BertNormalizer", "BertPreTokenizer", "WordPiece") or not lowercase:
            return None
        from tokenizers import Tokenizer

        bare = Tokenizer.from_str(tokenizer.to_str())
        bare.no_truncation()
        bare.no_padding()
        specials = bare.encode("").ids  # what the post-processor adds around a text
        if not all(skip[i] for i in specials):
            return None
        added = [t.get("content", "") for t in config.get("added_tokens", [])]
        return cls(tokenizer, [a for a in added if a], len(specials), skip, separator)

    def eligible(self, inputs: list[str | tuple[str, str]]) -> list[int]:
        """Indices of inputs the fast path encodes exactly (single printable-ASCII texts)."""
        single = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        texts: list[str] = [inputs[i] for i in single]  # type: ignore[misc]
        joined = "".join(texts)
        if joined.isascii() and self._suspect.search(joined) is None:  # the common case
            return single
        return [
            i
            for i, t in zip(single, texts, strict=True)
            if t.isascii() and (self._suspect.search(t) is None or not self._blocked.search(t))
        ]

    def _rows(self, chunks: list[str]) -> np.ndarray:
        index = self._index
        try:
            return np.fromiter(map(index.__getitem__, chunks), np.int64, count=len(chunks))
        except KeyError:
            if len(index) > _CACHE_LIMIT:
                self._reset()
            for chunk in dict.fromkeys(chunks):
                if chunk not in index:
                    words = _ASCII_WORDS.findall(chunk)
                    self._add(chunk, [t.id for w in words for t in self._model.tokenize(w)])
            return np.fromiter(map(index.__getitem__, chunks), np.int64, count=len(chunks))

    def encode(
        self, texts: list[str], max_tokens: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Token ids of ``texts`` back to back, truncated to ``max_tokens`` each (as the
        tokenizer truncates) with skipped ids left out; each item's start and length; and
        which items were truncated."""
        chunks = " \x01 ".join(texts).lower().split()
        chunks.append("\x01")
        rows = self._rows(chunks)
        lens = self._len[rows]
        ends = np.cumsum(lens)
        flat = self._pieces[
            np.repeat(self._start[rows] - (ends - lens), lens) + np.arange(ends[-1])
        ]
        is_sep = flat == self._separator
        item = np.cumsum(is_sep) - is_sep  # the item each token belongs to
        seps = np.flatnonzero(is_sep)
        first = np.concatenate(([0], seps[:-1] + 1))
        position = np.arange(len(flat)) - first[item]
        keep = ~self._skip[flat] & (position < max_tokens)
        lengths = np.bincount(item[keep], minlength=len(texts)).astype(np.int64)
        return flat[keep], np.cumsum(lengths) - lengths, lengths, (seps - first) > max_tokens
