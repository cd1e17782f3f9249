"""The metrics the affect literature reports, on plain label lists.

Written on numpy rather than scikit-learn so that `affedge eval` runs on the light edge
install; tests check them against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _per_class(
    gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, predicted counts and gold counts per label, in ``labels`` order."""
    g = np.asarray(gold, dtype=object)
    p = np.asarray(pred, dtype=object)
    tp = np.array([np.sum((g == lab) & (p == lab)) for lab in labels], dtype=float)
    n_pred = np.array([np.sum(p == lab) for lab in labels], dtype=float)
    n_gold = np.array([np.sum(g == lab) for lab in labels], dtype=float)
    return tp, n_pred, n_gold


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def _f1(tp: np.ndarray, n_pred: np.ndarray, n_gold: np.ndarray) -> np.ndarray:
    return _safe_div(2 * tp, n_pred + n_gold)


def accuracy(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    if not gold:
        return 0.0
    return float(np.mean(np.asarray(gold, dtype=object) == np.asarray(pred, dtype=object)))


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (classes absent from gold included)."""
    return float(np.mean(_f1(*_per_class(gold, pred, labels))))


def macro_recall(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Mean per-class recall over the classes present in gold (TweetEval sentiment)."""
    tp, _, n_gold = _per_class(gold, pred, labels)
    present = n_gold > 0
    return float(np.mean(tp[present] / n_gold[present])) if present.any() else 0.0


def weighted_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Per-class F1 weighted by gold support (MELD, EmoryNLP, MUStARD)."""
    tp, n_pred, n_gold = _per_class(gold, pred, labels)
    total = n_gold.sum()
    return float((_f1(tp, n_pred, n_gold) * n_gold).sum() / total) if total else 0.0


def micro_f1_no_neutral(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Micro-F1 over every class but ``neutral`` (DailyDialog convention)."""
    keep = [lab for lab in labels if lab != "neutral"]
    tp, n_pred, n_gold = _per_class(gold, pred, keep)
    denom = n_pred.sum() + n_gold.sum()
    return float(2 * tp.sum() / denom) if denom else 0.0


def f1_of(positive: str) -> Callable[[Sequence[str], Sequence[str], Sequence[str]], float]:
    """Binary F1 of the ``positive`` class (TweetEval irony reports F1 of "ironic")."""

    def f1_positive(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
        tp, n_pred, n_gold = _per_class(gold, pred, [positive])
        return float(_f1(tp, n_pred, n_gold)[0])

    return f1_positive


def pearson(gold: Sequence[float], pred: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant (undefined correlation)."""
    g = np.asarray(gold, dtype=float)
    p = np.asarray(pred, dtype=float)
    if len(g) < 2 or g.std() == 0 or p.std() == 0:
        return 0.0
    return float(np.corrcoef(g, p)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks with ties shared, as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(gold: Sequence[float], pred: Sequence[float]) -> float:
    return pearson(_ranks(np.asarray(gold, float)), _ranks(np.asarray(pred, float)))


def ece(confidences: Sequence[float], correct: Sequence[bool], bins: int = 15) -> float:
    """Expected calibration error of a classifier's top-label confidence.

    Items fall into ``bins`` equal-width bins of ``[0, 1]`` by the probability of their
    predicted label (bin ``i`` holds ``(i/bins, (i+1)/bins]``; a confidence of exactly 0 goes
    to the first bin); ECE is the item-weighted mean over bins of ``|accuracy - mean
    confidence|`` (Guo et al. 2017, 15 bins). 0 is perfectly calibrated; a model that is always
    certain and right half of the time has ECE 0.5.
    """
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if conf.shape != hit.shape:
        raise ValueError("confidences and correct differ in length")
    if conf.size == 0:
        return 0.0
    index = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            total += in_bin.sum() * abs(hit[in_bin].mean() - conf[in_bin].mean())
    return float(total / conf.size)


LABEL_METRICS: dict[str, Callable[[Sequence[str], Sequence[str], Sequence[str]], float]] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "macro_recall": macro_recall,
    "weighted_f1": weighted_f1,
    "micro_f1_no_neutral": micro_f1_no_neutral,
}
SCORE_METRICS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "pearson": pearson,
    "spearman": spearman,
}


def label_metric(
    name: str, positive: str | None = None
) -> Callable[[Sequence[str], Sequence[str], Sequence[str]], float]:
    """The classification metric called ``name`` (``f1_positive`` needs ``positive``)."""
    if name == "f1_positive":
        if positive is None:
            raise ValueError("f1_positive needs the positive label")
        return f1_of(positive)
    return LABEL_METRICS[name]
