"""Fit temperature scaling for an exported artifact on validation data (``affedge export
calibrate``), and store it in the artifact's manifest.

For every classification benchmark of the one benchmark table the model can answer, the
validation split's label probabilities are taken raw (``engine.calibrate = False``); the
benchmarks that share a calibration key (task and label set, :mod:`affedge.calibration`) are
pooled and one temperature is fitted per key by validation NLL. Test splits are never read.
The manifest gets ``calibration`` (key -> temperature) and ``calibration_report`` (per
benchmark: items, temperature, validation ECE before and after).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from affedge.artifact import Manifest
from affedge.benchmarks import BENCHMARKS, Benchmark
from affedge.calibration import calibration_key, fit_temperature, recalibrate
from affedge.datasets import load_dataset
from affedge.engines import Engine, open_engine
from affedge.errors import AffedgeError
from affedge.evaluate import select_records
from affedge.metrics import ece
from affedge.models import resolve_model
from affedge.tasks import TASKS


def _raw_probs(engine: Engine, bench: Benchmark, limit: int, data_dir: str | Path | None):
    """Validation (probabilities, gold indices) of one benchmark, or None if the engine
    cannot answer it (a label its heads lack)."""
    task, labels = TASKS[bench.task], bench.label_set()
    records, _ = select_records(bench, load_dataset(bench.dataset, "validation", root=data_dir))
    records = records[:limit]
    if not records:
        return None
    try:
        probs = np.array(
            [[r.probs[lab] for lab in labels] for r in engine.classify(records, task, labels)]
        )
    except AffedgeError:  # a task or label this model has no head for
        return None
    gold = np.array([labels.index(str(r.labels[bench.layer])) for r in records])
    return probs, gold


def fit_calibration(
    engine: Engine,
    *,
    limit: int = 2000,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Temperatures (key -> T) fitted on up to ``limit`` validation items per benchmark, and
    the per-benchmark report."""
    engine.calibrate = False
    pooled: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for bench in BENCHMARKS:
        task, name = TASKS[bench.task], bench.name
        if task.kind != "classify":
            continue
        got = _raw_probs(engine, bench, limit, data_dir)
        if got is None:
            log(f"calibration: {name} skipped (the model cannot answer it)")
            continue
        labels = bench.label_set()
        subset = None if tuple(labels) == tuple(task.labels) else labels
        pooled.setdefault(calibration_key(task.name, subset), []).append((name, *got))
    if not pooled:
        raise AffedgeError(f"{engine.name}: no classification benchmark to calibrate on")
    temperatures: dict[str, float] = {}
    report: dict[str, Any] = {}
    for key, parts in pooled.items():
        probs = np.concatenate([p for _, p, _ in parts])
        gold = np.concatenate([g for _, _, g in parts])
        logp = np.log(np.clip(probs, 1e-300, None))
        t = round(fit_temperature(logp, gold), 4)
        temperatures[key] = t
        for name, p, g in parts:
            hits = p.argmax(axis=1) == g
            before = ece(p.max(axis=1), hits)
            after = ece(recalibrate(p, t).max(axis=1), hits)
            report[name] = {
                "key": key,
                "n": len(g),
                "temperature": t,
                "ece_before": round(before, 4),
                "ece_after": round(after, 4),
            }
            log(f"calibration: {name} (n={len(g)}) T={t:.3f} ECE {before:.3f} -> {after:.3f}")
    engine.calibrate = True
    return temperatures, report


def calibrate_artifact(
    folder: Path,
    *,
    limit: int = 2000,
    data_dir: str | Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit and write the temperatures of the artifact in ``folder`` (its manifest is
    rewritten atomically; earlier temperatures are replaced). Returns the report."""
    ref = resolve_model(str(folder))
    if ref.manifest is None or not ref.path.exists():
        raise AffedgeError(f"{folder}: not an artifact folder with an affedge.json")
    engine = open_engine(ref, threads=threads)
    try:
        temperatures, report = fit_calibration(engine, limit=limit, data_dir=data_dir, log=log)
    finally:
        engine.close()
    manifest = Manifest.read(ref.folder)
    manifest.calibration = temperatures
    manifest.info["calibration_report"] = {"split": "validation", "limit": limit, **report}
    manifest.write(ref.folder)
    return {"temperatures": temperatures, "benchmarks": report}
