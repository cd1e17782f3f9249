"""Evaluate a model on a registry benchmark with the literature's metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from affedge.datasets import load_dataset
from affedge.engines import Engine
from affedge.metrics import SCORE_METRICS, ece, label_metric
from affedge.records import Record
from affedge.tasks import TASKS, Benchmark


@dataclass
class EvalReport:
    """Metrics of one model on one benchmark split (``metric`` names the headline one)."""

    task: str
    dataset: str
    split: str
    model: str
    n: int
    dropped: int
    metric: str
    metrics: dict[str, float]
    seconds: float
    items_per_s: float
    limit: int | None = None
    note: str = ""
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Expected calibration error of the label probabilities (classification only).
    ece: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_records(bench: Benchmark, records: list[Record]) -> tuple[list[Record], int]:
    """Records the benchmark scores, and how many it drops (gold outside the label set)."""
    task = TASKS[bench.task]
    kept, dropped = [], 0
    for rec in records:
        if any(rec.labels.get(k) != v for k, v in bench.where.items()):
            continue
        if task.kind == "score":
            ok = bench.layer in rec.scores
        else:
            ok = rec.labels.get(bench.layer) in bench.label_set()
        if ok:
            kept.append(rec)
        else:
            dropped += 1
    return kept, dropped


def evaluate(
    engine: Engine,
    bench: Benchmark,
    split: str = "test",
    limit: int | None = None,
    data_dir: str | Path | None = None,
    on_item: Callable[[], None] | None = None,
) -> EvalReport:
    """Run ``engine`` over ``bench``'s ``split`` (first ``limit`` kept records)."""
    records, dropped = select_records(bench, load_dataset(bench.dataset, split, root=data_dir))
    if limit is not None:
        records = records[:limit]
    return evaluate_records(
        engine, bench, records, split=split, dropped=dropped, limit=limit, on_item=on_item
    )


def evaluate_records(
    engine: Engine,
    bench: Benchmark,
    records: list[Record],
    *,
    split: str,
    dropped: int = 0,
    limit: int | None = None,
    on_item: Callable[[], None] | None = None,
) -> EvalReport:
    """Run ``engine`` over ``records`` the benchmark scores (:func:`select_records`'s): the
    metrics of `affedge eval` and of training validation (train/llm_eval.py) alike."""
    task = TASKS[bench.task]
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    confusion: dict[str, dict[str, int]] = {}
    calibration: float | None = None
    names = (bench.metric, *bench.extra_metrics)
    if task.kind == "score":
        preds: list[float] = []
        for result in engine.score(records, task):
            preds.append(result.score)
            if on_item:
                on_item()
        gold_s = [rec.scores[bench.layer] for rec in records]
        metrics = {m: SCORE_METRICS[m](gold_s, preds) for m in names}
    else:
        labels = bench.label_set()
        pred_l: list[str] = []
        confidence: list[float] = []
        for result in engine.classify(records, task, labels):
            pred_l.append(result.label)
            confidence.append(max(result.probs.values()))
            if on_item:
                on_item()
        gold_l = [str(rec.labels[bench.layer]) for rec in records]
        metrics = {m: label_metric(m, bench.positive)(gold_l, pred_l, labels) for m in names}
        confusion = {g: {p: 0 for p in labels} for g in labels}
        for g, p in zip(gold_l, pred_l, strict=True):
            confusion[g][p] += 1
        calibration = ece(confidence, [g == p for g, p in zip(gold_l, pred_l, strict=True)])
    seconds = time.perf_counter() - start
    return EvalReport(
        task=bench.task,
        dataset=bench.dataset,
        split=split,
        model=getattr(engine, "name", "?"),
        n=len(records),
        dropped=dropped,
        metric=bench.metric,
        metrics=metrics,
        seconds=round(seconds, 3),
        items_per_s=round(len(records) / seconds, 3) if seconds > 0 else 0.0,
        limit=limit,
        note=bench.note,
        confusion=confusion,
        ece=calibration,
    )
