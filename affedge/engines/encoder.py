"""Multi-task encoders, whatever runs them: the head logic every encoder backend shares.

One forward pass gives every head; ``classify``/``score`` read the head that answers the
task (a subset of a head's labels, such as polarity from the 3-way sentiment head, gets the
softmax over that subset) and ``analyze`` returns all heads at once (`--task all`). A backend
(onnxruntime today; OpenVINO, torch or a static-embedding model tomorrow) only implements
:meth:`EncoderEngine._forward`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from affedge.artifact import HeadSpec, Manifest
from affedge.encoding import EncoderTokenizer
from affedge.engines.base import Capability, Engine, LabelResult, ScoreResult
from affedge.errors import ModelError
from affedge.models import ModelRef
from affedge.records import Record
from affedge.tasks import LABEL_ALIASES, Task, head_for_task


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class EncoderEngine(Engine):
    """Heads read from the manifest, inputs from :class:`EncoderTokenizer`, batches of
    ``batch_size`` records; subclasses map tokenized inputs to every head's outputs."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.LABELS, Capability.SCORES, Capability.ALL_HEADS}
    )

    def __init__(self, ref: ModelRef, batch_size: int = 32) -> None:
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
        self.context_turns = manifest.context_turns
        self.heads: dict[str, HeadSpec] = manifest.heads
        self._tokenizer = EncoderTokenizer(tokenizer, manifest.max_length)

    @abstractmethod
    def _forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every head's raw outputs (logits or regression values) for a tokenized batch."""

    def _batches(self, records: Iterable[Record]) -> Iterator[tuple[list[bool], dict]]:
        """Per batch: which items were truncated, and every head's output."""
        it = iter(records)
        while batch := list(islice(it, self.batch_size)):
            inputs, truncated = self._tokenizer.encode(batch, self.context_turns)
            yield truncated, self._forward(inputs)

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
            probs = softmax(outs[head][:, idx].astype(np.float64))
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
            for i, cut in enumerate(truncated):
                result: dict[str, Any] = {}
                for name, spec in self.heads.items():
                    values = outs[name][i].astype(np.float64)
                    if spec.kind == "classify":
                        probs = softmax(values)
                        result[name] = {
                            "label": spec.labels[int(np.argmax(probs))],
                            "probs": {
                                lab: float(p) for lab, p in zip(spec.labels, probs, strict=True)
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
