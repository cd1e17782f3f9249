"""Multi-task encoder models on onnxruntime (tokenizers + onnxruntime; no torch).

One forward pass gives every head; ``classify``/``score`` read the head that answers the
task (a subset of a head's labels, such as polarity from the 3-way sentiment head, gets the
softmax over that subset) and ``analyze`` returns all heads at once (`--task all`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from affedge.encoding import EncoderTokenizer
from affedge.engines.base import Engine, LabelResult, ScoreResult
from affedge.errors import ModelError
from affedge.models import ModelRef
from affedge.records import Record
from affedge.tasks import LABEL_ALIASES, Task, head_for_task

MANIFEST = "affedge.json"
ENCODER_KIND = "affedge-encoder-multitask"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cpu_session(model_file: Path, threads: int | None) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads; ModelError if the file
    cannot be loaded (shared by the encoder and decoder backends)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"{model_file}: onnxruntime cannot load it ({exc})") from None


class ONNXEncoderEngine(Engine):
    """An exported multi-task encoder folder (``affedge.json`` + ``*.onnx`` + tokenizer)."""

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int = 32) -> None:

        folder = ref.path if ref.path.is_dir() else ref.path.parent
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise ModelError(f"{folder}: no {MANIFEST}: not an affedge ONNX model folder")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{manifest_path}: unreadable manifest ({exc})") from None
        if self.manifest.get("kind") != ENCODER_KIND:
            raise ModelError(f"{folder}: not a multi-task encoder ({self.manifest.get('kind')})")
        model_file = folder / self.manifest.get("onnx", {}).get("file", "")
        if ref.path.suffix == ".onnx":
            model_file = ref.path
        if not model_file.is_file():
            raise ModelError(f"{folder}: the manifest names {model_file.name}, which is missing")
        if not (folder / "tokenizer.json").is_file():
            raise ModelError(f"{folder}: no tokenizer.json")
        self.name = ref.name
        self.path = model_file
        self.batch_size = batch_size
        self.context_turns = int(self.manifest["context_turns"])
        self.heads: dict[str, dict[str, Any]] = self.manifest["heads"]
        self._tokenizer = EncoderTokenizer(folder / "tokenizer.json", self.manifest["max_length"])
        self._session = cpu_session(model_file, threads)
        self._outputs = list(self.heads)

    def _batches(self, records: Iterable[Record]) -> Iterator[tuple[list[bool], dict]]:
        """Per batch: which items were truncated, and every head's output."""
        it = iter(records)
        while batch := list(islice(it, self.batch_size)):
            inputs, truncated = self._tokenizer.encode(batch, self.context_turns)
            outs = self._session.run(self._outputs, inputs)
            yield truncated, dict(zip(self._outputs, outs, strict=True))

    def _label_indices(self, task: Task, labels: Sequence[str] | None) -> tuple[str, list[int]]:
        head = head_for_task(task.name)
        known = self.heads[head.name]["labels"]
        wanted = list(labels or task.labels)
        indices = []
        for label in wanted:
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
            probs = _softmax(outs[head][:, idx].astype(np.float64))
            for row, cut in zip(probs, truncated, strict=True):
                yield LabelResult(
                    probs={n: float(p) for n, p in zip(names, row, strict=True)}, truncated=cut
                )

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        head = head_for_task(task.name)
        column = self.heads[head.name]["labels"].index(task.name)
        for truncated, outs in self._batches(records):
            for value, cut in zip(outs[head.name][:, column], truncated, strict=True):
                yield ScoreResult(score=float(value), truncated=cut)

    def analyze(self, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
        """Every head for every record: label + probs for classification, scores otherwise."""
        for truncated, outs in self._batches(records):
            for i, _ in enumerate(truncated):
                result: dict[str, Any] = {}
                for name, spec in self.heads.items():
                    values = outs[name][i].astype(np.float64)
                    if spec["kind"] == "classify":
                        probs = _softmax(values)
                        labels = spec["labels"]
                        result[name] = {
                            "label": labels[int(np.argmax(probs))],
                            "probs": {lab: float(p) for lab, p in zip(labels, probs, strict=True)},
                        }
                    else:
                        for lab, v in zip(spec["labels"], values, strict=True):
                            result[lab] = float(v)
                if truncated[i]:
                    result["truncated"] = True
                yield result

    def generate(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 32, stop: Sequence[str] = ()
    ) -> str:
        raise ModelError(f"{self.name}: an encoder model cannot generate text")
