"""Temperature scaling: probabilities a user can read as frequencies.

A classifier's softmax is usually over-confident. Temperature scaling (Guo et al. 2017, "On
Calibration of Modern Neural Networks") divides the label scores by one number ``T`` fitted on
validation data to minimise the negative log-likelihood; ``T > 1`` softens, ``T < 1``
sharpens. It never changes which label wins, so accuracy and every label metric are unchanged.

One temperature is kept per *calibration key*: the task, or the task and a label subset
(``emotion:anger,joy,optimism,sadness``), because the same head is more or less confident over
different label sets. Engines apply it to their label scores; since
``softmax(log p / T) = softmax(z / T)`` for any scores ``z`` with ``p = softmax(z)``, the
same rule serves encoders (logits) and decoders (label log-likelihoods), and temperatures
can be fitted from the probabilities any engine returns. Fitting: ``affedge export
calibrate`` (export/calibrate.py); the temperatures live in the manifest's ``calibration``
field. Numpy only: this module is on the runtime path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Bounds of a fitted temperature (the manifest accepts [0.01, 100]).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def calibration_key(task: str, labels: Sequence[str] | None = None) -> str:
    """``task`` for the task's own label set (``labels`` None), else ``task:l1,l2,...``."""
    return task if not labels else f"{task}:{','.join(labels)}"


def tempered_softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(scores / temperature)`` (float64, stable)."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def recalibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities as if their scores had been divided by ``temperature``."""
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))
    return tempered_softmax(logp, temperature)


def nll(scores: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the gold label indices at ``temperature``."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(gold)), gold]))


def fit_temperature(scores: np.ndarray, gold: Sequence[int], iterations: int = 80) -> float:
    """The temperature minimising validation NLL of ``scores`` (n x k) for ``gold`` indices.

    The NLL is convex in ``1 / T`` (a log-sum-exp of a linear function minus a linear
    function), so a golden-section search over ``1 / T`` finds the optimum; written by hand
    because it is ten lines and keeps scipy off the runtime and export paths.
    """
    scores = np.asarray(scores, dtype=np.float64)
    gold_idx = np.asarray(gold, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(gold_idx) or len(gold_idx) == 0:
        raise ValueError("fit_temperature needs n x k scores and n gold indices, n > 0")
    scores = np.where(np.isfinite(scores), scores, np.log(1e-300))
    lo, hi = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(scores, gold_idx, 1.0 / a), nll(scores, gold_idx, 1.0 / b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(scores, gold_idx, 1.0 / a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(scores, gold_idx, 1.0 / b)
    return float(1.0 / ((lo + hi) / 2.0))


def reliability(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 15
) -> list[tuple[float, float, int]]:
    """Per equal-width confidence bin (as :func:`affedge.metrics.ece` bins them): mean
    confidence, accuracy and item count; empty bins are left out. A reliability diagram
    plots accuracy against confidence."""
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    index = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            rows.append((float(conf[in_bin].mean()), float(hit[in_bin].mean()), int(in_bin.sum())))
    return rows
