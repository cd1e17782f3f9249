"""Evaluate a model on a registry benchmark with the literature's metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from affedge.calibration import recalibrate, reliability
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
    #: Expected calibration error of the label probabilities as the model answers (with its
    #: fitted temperature, if any), of the raw softmax, and that temperature (classification).
    ece: float | None = None
    ece_raw: float | None = None
    temperature: float | None = None
    #: Reliability diagram rows (mean confidence, accuracy, items) per bin: calibrated, raw.
    reliability: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)

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
    ece_raw: float | None = None
    temperature = 1.0
    diagrams: dict[str, list[tuple[float, float, int]]] = {}
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
        raw: list[list[float]] = []
        calibrate, engine.calibrate = engine.calibrate, False  # raw probabilities, then both
        try:
            for result in engine.classify(records, task, labels):
                pred_l.append(result.label)
                raw.append([result.probs[label] for label in labels])
                if on_item:
                    on_item()
        finally:
            engine.calibrate = calibrate
        gold_l = [str(rec.labels[bench.layer]) for rec in records]
        metrics = {m: label_metric(m, bench.positive)(gold_l, pred_l, labels) for m in names}
        confusion = {g: {p: 0 for p in labels} for g in labels}
        for g, p in zip(gold_l, pred_l, strict=True):
            confusion[g][p] += 1
        hits = [g == p for g, p in zip(gold_l, pred_l, strict=True)]
        temperature = engine.temperature(task, labels)
        raw_conf = np.asarray(raw).max(axis=1) if raw else np.zeros(0)
        conf = recalibrate(np.asarray(raw), temperature).max(axis=1) if raw else raw_conf
        calibration, ece_raw = ece(conf, hits), ece(raw_conf, hits)
        diagrams = {"calibrated": reliability(conf, hits), "raw": reliability(raw_conf, hits)}
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
        ece_raw=ece_raw if task.kind != "score" else None,
        temperature=temperature if task.kind != "score" else None,
        reliability=diagrams if task.kind != "score" else {},
    )
