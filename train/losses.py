"""Losses and automatic weight learning for multi-task training.

* :func:`focal_cross_entropy`: cross-entropy scaled by ``(1 - p_t) ** gamma`` against class
  imbalance (Lin et al. 2017; used by SentiXRL, papers/sentixrl-sanm.md); gamma 0 is plain
  cross-entropy. Soft targets (SemEval E-c) use the expected ``p_t`` under the target.
* :class:`TaskWeights` (T-AWL): one learned log-variance ``s_t`` per task, loss
  ``exp(-s_t) * L_t + s_t`` (homoscedastic uncertainty weighting, Kendall et al. 2018), the
  task-level automatic weight learning of MT-ISA (papers/mt-isa-multitask-implicit-sentiment.md).
  A task whose loss stays high gets a larger ``s_t`` and so a smaller weight ``exp(-s_t)``.
  :meth:`TaskWeights.combine` sums the weighted losses of the tasks that share one batch: the
  weights only trade tasks off when several tasks feed one backward pass (one task per step
  gives Adam a single loss whose constant scale it divides out).
* :func:`data_weighted` (D-AWL): the same form per example, ``exp(-s_i) * l_i + s_i``, with
  ``s_i`` predicted from the example by a small confidence head, so noisy or ambiguous
  examples (high loss the model cannot reduce) are down-weighted as training goes on.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# Log-variances are clamped so that no task or example can be switched off entirely.
MAX_LOG_VAR = 3.0


def focal_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 0.0
) -> torch.Tensor:
    """Per-example focal loss for (soft) probability targets; ``gamma=0`` is cross-entropy."""
    log_p = torch.log_softmax(logits, dim=-1)
    ce = -(target * log_p).sum(dim=-1)
    if gamma == 0:
        return ce
    p_t = (target * log_p.exp()).sum(dim=-1)
    return (1.0 - p_t).clamp(min=0.0).pow(gamma) * ce


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example squared error over the outputs ``mask`` selects."""
    return ((pred - target) ** 2 * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def data_weighted(losses: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """D-AWL: mean of ``exp(-s_i) * l_i + s_i`` with per-example log-variances ``s_i``."""
    s = log_var.clamp(-MAX_LOG_VAR, MAX_LOG_VAR)
    return (torch.exp(-s) * losses + s).mean()


class TaskWeights(nn.Module):
    """T-AWL: learned per-task log-variances; ``enabled=False`` gives fixed unit weights."""

    def __init__(self, tasks: list[str], enabled: bool = True) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.enabled = enabled
        self.log_vars = nn.Parameter(torch.zeros(len(tasks)), requires_grad=enabled)

    def forward(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return loss
        s = self.log_vars[self.tasks.index(task)].clamp(-MAX_LOG_VAR, MAX_LOG_VAR)
        return torch.exp(-s) * loss + s

    def combine(
        self, losses: Mapping[str, torch.Tensor], shares: Mapping[str, float] | None = None
    ) -> torch.Tensor:
        """One loss for a batch mixing tasks: ``sum_t share_t * (exp(-s_t) * L_t + s_t)``.

        ``losses`` holds the mean loss of each task present in the batch; ``shares`` (default
        1 each) is each task's fraction of the batch. Scaling a task's whole T-AWL term by its
        share keeps the optimum ``s_t = log L_t`` and, with T-AWL off, makes the sum the plain
        mean over the batch's examples, so the sampling distribution keeps deciding how much
        each task is trained, as it did with one task per step.
        """
        if not losses:
            raise ValueError("no task losses to combine")
        terms = [(shares or {}).get(task, 1.0) * self(task, loss) for task, loss in losses.items()]
        return torch.stack(terms).sum()

    def weights(self) -> dict[str, float]:
        """The current weight ``exp(-s_t)`` of every task (logged during training)."""
        with torch.no_grad():
            w = torch.exp(-self.log_vars.clamp(-MAX_LOG_VAR, MAX_LOG_VAR))
        return {t: round(float(x), 4) for t, x in zip(self.tasks, w, strict=True)}
