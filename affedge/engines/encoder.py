"""Multi-task encoders, whatever runs them: the head logic every encoder backend shares.

One forward pass gives every head; ``classify``/``score`` read the head that answers the
task (a subset of a head's labels, such as polarity from the 3-way sentiment head, gets the
softmax over that subset) and ``analyze`` returns all heads at once (`--task all`). A backend
(onnxruntime today; OpenVINO, torch or a static-embedding model tomorrow) only implements
:meth:`EncoderEngine._forward`.

Batches are length-bucketed: up to ``window`` records are read ahead and tokenized, sorted by
token length, run ``batch_size`` at a time (each padded to its longest item, so little
padding), and their outputs put back in input order before the next window is read; memory
stays flat for any input size. With int8 dynamic quantization an item's outputs can move
slightly with its batch's composition (as they always could).

Texts longer than ``max_length`` are read in windows with ``--long chunk``
(:meth:`EncoderEngine.chunks`, :mod:`affedge.chunking`), else truncated and flagged.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from affedge.artifact import HeadSpec, Manifest
from affedge.calibration import tempered_softmax
from affedge.chunking import Chunker
from affedge.encoding import EncoderTokenizer
from affedge.engines.base import Capability, Engine, LabelResult, ScoreResult
from affedge.errors import ModelError
from affedge.models import ModelRef
from affedge.records import Record
from affedge.tasks import LABEL_ALIASES, Task, head_for_task

#: Records read ahead and sorted by length, in batches (the window is this times batch_size).
WINDOW_BATCHES = 16


class EncoderEngine(Engine):
    """Heads read from the manifest, inputs from :class:`EncoderTokenizer`, batches of
    ``batch_size`` records of similar length from a look-ahead ``window`` (default
    :data:`WINDOW_BATCHES` batches; ``window = batch_size`` keeps input order); subclasses map
    tokenized inputs to every head's outputs."""

    #: Records read ahead per window; None: :data:`WINDOW_BATCHES` x ``batch_size``.
    window: int | None = None

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.LABELS, Capability.SCORES, Capability.ALL_HEADS, Capability.CHUNKS}
    )

    def __init__(self, ref: ModelRef, batch_size: int = 32, window: int | None = None) -> None:
        manifest = ref.manifest
        if manifest is None or not manifest.heads:
            raise ModelError(f"{ref.folder}: not a multi-task encoder (its manifest has no heads)")
        if manifest.max_length is None or manifest.context_turns is None:
            raise ModelError(f"{ref.folder}: the manifest lacks max_length or context_turns")
        tokenizer = ref.folder / "tokenizer.json"
        if not tokenizer.is_file():
            raise ModelError(f"{ref.folder}: no tokenizer.json")
        self.name = ref.name
        self.manifest: Manifest = manifest
        self.batch_size = batch_size
        if window is not None:
            self.window = window
        self.context_turns = manifest.context_turns
        self.heads: dict[str, HeadSpec] = manifest.heads
        self.temperatures = manifest.calibration
        self._tokenizer = EncoderTokenizer(tokenizer, manifest.max_length)
        self._chunker: Chunker | None = None

    @abstractmethod
    def _forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every head's raw outputs (logits or regression values) for a tokenized batch."""

    @property
    def block_size(self) -> int:
        return max(max(1, self.batch_size), self.window or WINDOW_BATCHES * self.batch_size)

    def chunks(self, record: Record) -> Iterator[tuple[Record, int]]:
        """Windows at sentence boundaries that fit ``max_length`` next to the record's
        special tokens, aspect and context (:class:`affedge.chunking.Chunker`)."""
        if self._chunker is None:
            self._chunker = Chunker(
                self._tokenizer.tokenizer, self._tokenizer.max_length, self.context_turns
            )
        return self._chunker(record)

    def _batches(self, records: Iterable[Record]) -> Iterator[tuple[list[bool], dict]]:
        """Per window of records, in input order: which items were truncated, and every
        head's output (rows in input order). The window's items run in batches sorted by
        token length; the next window is read only when this one's results are asked for."""
        size, window = max(1, self.batch_size), self.block_size
        it = iter(records)
        while chunk := list(islice(it, window)):
            encodings, truncated = self._tokenizer.encode_unpadded(chunk, self.context_turns)
            lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
            order = np.argsort(lengths, kind="stable")
            parts = [
                self._forward(self._tokenizer.pad([encodings[i] for i in order[k : k + size]]))
                for k in range(0, len(order), size)
            ]
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            outs = {
                name: np.concatenate([np.asarray(p[name]) for p in parts])[inverse]
                for name in parts[0]
            }
            yield truncated, outs

    def head_temperature(self, head: str) -> float:
        """The temperature of a classification head over all its labels (``--task all``)."""
        return self.temperatures.get(head, 1.0) if self.calibrate else 1.0

    def _head_values(self, head: str, outs: Mapping[str, np.ndarray]) -> np.ndarray:
        """A head's outputs for a batch: calibrated probabilities, or its scores."""
        x = np.asarray(outs[head], dtype=np.float64)
        if self.heads[head].kind != "classify":
            return x
        return tempered_softmax(x, self.head_temperature(head))

    def _label_indices(self, task: Task, labels: Sequence[str] | None) -> tuple[str, list[int]]:
        head = head_for_task(task.name)
        known = self.heads[head.name].labels
        indices = []
        for label in labels or task.labels:
            name = LABEL_ALIASES.get(label, label) if label not in known else label
            if name not in known:
                raise ModelError(
                    f"{self.name}: its {head.name} head has no label {label!r} "
                    f"(it knows: {', '.join(known)})"
                )
            indices.append(known.index(name))
        return head.name, indices

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        head, idx = self._label_indices(task, labels)
        names = list(labels or task.labels)
        for truncated, outs in self._batches(records):
            probs = tempered_softmax(outs[head][:, idx], self.temperature(task, labels))
            for row, cut in zip(probs, truncated, strict=True):
                yield LabelResult(
                    probs={n: float(p) for n, p in zip(names, row, strict=True)}, truncated=cut
                )

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        head = head_for_task(task.name)
        column = self.heads[head.name].labels.index(task.name)
        for truncated, outs in self._batches(records):
            for value, cut in zip(outs[head.name][:, column], truncated, strict=True):
                yield ScoreResult(score=float(value), truncated=cut)

    def analyze(self, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
        """Every head for every record: label + probs for classification, scores otherwise."""
        for truncated, outs in self._batches(records):
            columns = {name: self._head_values(name, outs) for name in self.heads}
            for i, cut in enumerate(truncated):
                result: dict[str, Any] = {}
                for name, spec in self.heads.items():
                    values = columns[name][i]
                    if spec.kind == "classify":
                        result[name] = {
                            "label": spec.labels[int(np.argmax(values))],
                            "probs": {
                                lab: float(p) for lab, p in zip(spec.labels, values, strict=True)
                            },
                        }
                    else:
                        for lab, v in zip(spec.labels, values, strict=True):
                            result[lab] = float(v)
                if cut:
                    result["truncated"] = True
                yield result


def model_path(ref: ModelRef) -> Path:
    """The model file of an encoder artifact (the one the manifest names, or the one given)."""
    if ref.path.is_file():
        return ref.path
    assert ref.manifest is not None
    return ref.manifest.model_file(ref.folder)
