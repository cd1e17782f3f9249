"""Check an exported decoder artifact against the transformers model it came from.

The artifact's engine builds each prompt (engines/decoder.py), and the *same token ids* go
through the source model in torch, so any disagreement is the export's doing (weights,
layout, quantization), never a tokenization difference. Reported per artifact:

* label agreement with the source on a validation sample, and both accuracies;
* for unquantized artifacts, max and mean absolute difference of the full next-token logits
  at the answer position (first ``logit_items`` items);
* file size, the artifact's items/s over the sample (the engine's batched path, as
  ``affedge classify`` runs it) and its median latency of one item alone (first
  :data:`LATENCY_ITEMS`).

Both sides are batched: the source scores length-sorted padded batches reading only the
answer position (train/llm_eval.py :func:`score_many`), the artifact runs its engine's
``classify`` (batched GGUF decoding). The source scores each prompt once per export, whatever
the number of quant types.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from affedge.datasets import load_dataset
from affedge.engines.decoder import DecoderEngine
from affedge.errors import AffedgeError
from affedge.evaluate import select_records
from affedge.prompts import PromptTokens
from affedge.records import Record
from affedge.tasks import BENCHMARKS, TASKS, get_benchmark

#: Agreement floors (fraction of the source's labels reproduced) per artifact type, set from
#: the worst case measured here: zero-shot SmolLM2-135M, whose SST-2 label margins are tiny
#: (bench/results/export_smollm2.md). There F16 kept 100% of the labels, Q8_0 97.2% and
#: onnxruntime's dynamic int8 88%; the items that flip sit on the decision boundary. A real
#: defect (a wrong rotary layout, swapped tensor rows) falls to chance or below (the swapped-
#: rows test measures < 20%). So: 99% for unquantized, 95% for 8-bit GGUF and Q6_K, 85% for
#: ONNX dynamic int8 and 4-5-bit k-quants. `--min-agreement` sets one floor for every type.
AGREEMENT_FLOORS: dict[str, float] = {
    "f32": 0.99,
    "f16": 0.99,
    "fp32": 0.99,
    "q8_0": 0.95,
    "q6_k": 0.95,
    "int8": 0.85,
}
DEFAULT_FLOOR = 0.85
#: Items whose one-at-a-time latency the report gives (median).
LATENCY_ITEMS = 16


def floor_for(artifact: str) -> float:
    return AGREEMENT_FLOORS.get(artifact, DEFAULT_FLOOR)


@dataclass
class VerifyReport:
    """How an artifact compares with its source model on a validation sample."""

    artifact: str
    task: str
    dataset: str
    split: str
    n: int
    agreement: float
    floor: float
    source_accuracy: float
    artifact_accuracy: float
    accuracy_delta: float
    max_abs_logit_diff: float | None
    mean_abs_logit_diff: float | None
    size_bytes: int
    latency_ms_p50: float
    items_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verification_task(tasks: list[str] | None) -> tuple[str, str]:
    """(task, dataset) to verify on: the model's first classification task that has a
    benchmark with a validation split, else polarity on SST-2."""
    for name in tasks or []:
        task = TASKS.get(name)
        if task is None or task.kind != "classify":
            continue
        for bench in BENCHMARKS:
            if bench.task == name:
                return name, bench.dataset
    return "polarity", "sst2"


def sample_records(
    task: str, dataset: str, n: int, data_dir: Path | None, split: str = "validation"
) -> list[Record]:
    bench = get_benchmark(task, dataset)
    records, _ = select_records(bench, load_dataset(dataset, split, root=data_dir))
    if not records:
        raise AffedgeError(f"{dataset} {split}: no records to verify {task} on")
    return records[:n]


class TorchSource:
    """The source model in torch, fed token ids an engine built.

    Label scores are memoised by token ids: every artifact of one export sees the same ids
    (same tokenizer), so the source pays its forward passes once, not once per quant type.
    """

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self._memo: dict[tuple, np.ndarray] = {}

    def logits(self, ids: list[int], keep: int = 0) -> np.ndarray:
        """Next-token logits at every position of ``ids`` (float32); the last ``keep``
        positions only when ``keep`` > 0."""
        import torch

        with torch.inference_mode():
            ids_t = torch.tensor([ids], dtype=torch.long)
            out = self.model(ids_t, logits_to_keep=keep).logits[0]
        return out.float().numpy()

    def last_logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits after ``ids`` (memoised like the label scores)."""
        key = ("logits", tuple(ids))
        if key not in self._memo:
            self._memo[key] = self.logits(ids, keep=1)[-1]
        return self._memo[key]

    def answer_logprobs(self, ids: list[int], prep: PromptTokens) -> np.ndarray:
        """log p(answer | ids) per answer, as the engines score labels (the project's one
        torch scorer, train/llm_eval.py)."""
        from affedge.train.llm_eval import score_answers

        key = (tuple(ids), tuple(map(tuple, prep.answers)))
        if key not in self._memo:
            self._memo[key] = score_answers(self.model, ids, prep.answers)
        return self._memo[key]

    def answer_logprobs_many(
        self, prompts: list[list[int]], prep: PromptTokens, batch_size: int | None = None
    ) -> list[np.ndarray]:
        """:meth:`answer_logprobs` of every prompt, the ones not memoised yet scored in
        length-sorted batches (train/llm_eval.py :func:`score_many`)."""
        from affedge.train.llm_eval import CPU_BATCH_SIZE, score_many

        answers = tuple(map(tuple, prep.answers))
        keys = [(tuple(ids), answers) for ids in prompts]
        todo = list({k: ids for k, ids in zip(keys, prompts, strict=True) if k not in self._memo})
        if todo:
            rows = score_many(
                self.model, [list(k[0]) for k in todo], prep.answers,
                batch_size=batch_size or CPU_BATCH_SIZE,
            )  # fmt: skip
            self._memo.update(zip(todo, rows, strict=True))
        return [self._memo[k] for k in keys]


def verify(
    source: TorchSource,
    engine: DecoderEngine,
    artifact: str,
    file: Path,
    task_name: str,
    dataset: str,
    records: list[Record],
    logit_items: int = 0,
    floor: float | None = None,
) -> VerifyReport:
    """Compare ``engine`` (the artifact) with ``source`` on ``records``; ``floor`` replaces
    the artifact type's default agreement floor."""
    task = TASKS[task_name]
    bench = get_benchmark(task_name, dataset)
    labels = list(bench.label_set())
    prep = engine.answer_tokens(task, labels)
    # Two phases, never interleaved: torch's and the engine's thread pools both spin-wait
    # after each call, and alternating them item by item on a small CPU made every call
    # wait for the other pool (seconds per item instead of milliseconds).
    prompts = [engine.prompt_tokens(task, record, labels) for record in records]
    src_rows = source.answer_logprobs_many(prompts, prep)
    src_labels = [labels[int(np.argmax(row))] for row in src_rows]
    src_logits = [source.last_logits(ids) for ids in prompts[:logit_items]]
    diffs = [
        np.abs(engine.next_token_logits(ids) - ref)
        for ids, ref in zip(prompts[:logit_items], src_logits, strict=True)
    ]
    start = time.perf_counter()
    art_labels = [result.label for result in engine.classify(records, task, labels)]
    seconds = time.perf_counter() - start
    times: list[float] = []
    for record in records[:LATENCY_ITEMS]:  # one item alone, as a single request runs
        t0 = time.perf_counter()
        list(engine.classify([record], task, labels))
        times.append(time.perf_counter() - t0)
    gold = [record.labels.get(bench.layer) for record in records]
    agree = sum(a == b for a, b in zip(art_labels, src_labels, strict=True))
    src_ok = sum(a == g for a, g in zip(src_labels, gold, strict=True))
    art_ok = sum(a == g for a, g in zip(art_labels, gold, strict=True))
    diffs_max = [float(d.max()) for d in diffs]
    diffs_mean = [float(d.mean()) for d in diffs]
    n = len(records)
    return VerifyReport(
        artifact=artifact,
        task=task_name,
        dataset=dataset,
        split=records[0].split or "validation",
        n=n,
        agreement=agree / n,
        floor=floor if floor is not None else floor_for(artifact),
        source_accuracy=src_ok / n,
        artifact_accuracy=art_ok / n,
        accuracy_delta=(art_ok - src_ok) / n,
        max_abs_logit_diff=max(diffs_max) if diffs_max else None,
        mean_abs_logit_diff=float(np.mean(diffs_mean)) if diffs_mean else None,
        size_bytes=_size(file),
        latency_ms_p50=float(np.median(times) * 1000),
        items_per_s=round(n / seconds, 2) if seconds > 0 else None,
    )


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
