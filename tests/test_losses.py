"""Focal loss and automatic weight learning on constructed examples (train extra)."""

import pytest

torch = pytest.importorskip("torch")

from affedge.train.losses import (  # noqa: E402
    TaskWeights,
    data_weighted,
    focal_cross_entropy,
)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ce = torch.nn.functional.cross_entropy(logits, target.argmax(1), reduction="none")
    assert torch.allclose(focal_cross_entropy(logits, target, 0.0), ce)


def test_focal_down_weights_easy_examples_more_than_hard_ones():
    target = torch.tensor([[1.0, 0.0]])
    easy, hard = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    ratio_easy = focal_cross_entropy(easy, target, 2.0) / focal_cross_entropy(easy, target, 0.0)
    ratio_hard = focal_cross_entropy(hard, target, 2.0) / focal_cross_entropy(hard, target, 0.0)
    assert ratio_easy < 0.01 < 0.5 < ratio_hard < 1.0


def test_soft_targets_are_supported():
    logits = torch.zeros(1, 4)
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert focal_cross_entropy(logits, target, 0.0).item() == pytest.approx(
        torch.log(torch.tensor(4.0)).item()
    )


def test_tawl_gives_the_noisier_task_the_smaller_weight():
    """Two tasks with constant losses 0.2 and 2.0: optimum s_t = log(L_t), weight 1/L_t."""
    weights = TaskWeights(["easy", "noisy"])
    opt = torch.optim.SGD(weights.parameters(), lr=0.1)
    for _ in range(400):
        opt.zero_grad()
        total = weights("easy", torch.tensor(0.2)) + weights("noisy", torch.tensor(2.0))
        total.backward()
        opt.step()
    w = weights.weights()
    assert w["easy"] == pytest.approx(1 / 0.2, rel=0.05)
    assert w["noisy"] == pytest.approx(1 / 2.0, rel=0.05)


def test_tawl_switched_off_keeps_unit_weights():
    weights = TaskWeights(["a", "b"], enabled=False)
    assert weights("a", torch.tensor(3.0)).item() == 3.0
    assert not weights.log_vars.requires_grad


def test_dawl_learns_to_down_weight_the_noisy_example():
    losses = torch.tensor([0.1, 0.1, 5.0])  # the third example is mislabelled noise
    log_var = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([log_var], lr=0.2)
    for _ in range(300):
        opt.zero_grad()
        data_weighted(losses, log_var).backward()
        opt.step()
    weight = torch.exp(-log_var.detach())
    assert weight[2] < 0.3 < 1.0 < weight[0]


def test_combine_without_tawl_is_the_mean_over_the_batch_examples():
    weights = TaskWeights(["a", "b"], enabled=False)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(4.0)}
    total = weights.combine(losses, {"a": 0.75, "b": 0.25})
    assert total.item() == pytest.approx(0.75 * 1.0 + 0.25 * 4.0)


def test_combine_keeps_the_tawl_optimum_for_any_batch_shares():
    weights = TaskWeights(["easy", "noisy"])
    opt = torch.optim.SGD(weights.parameters(), lr=0.2)
    for _ in range(600):
        opt.zero_grad()
        losses = {"easy": torch.tensor(0.2), "noisy": torch.tensor(2.0)}
        weights.combine(losses, {"easy": 0.8, "noisy": 0.2}).backward()
        opt.step()
    w = weights.weights()
    assert w["easy"] == pytest.approx(1 / 0.2, rel=0.05)
    assert w["noisy"] == pytest.approx(1 / 2.0, rel=0.05)


def _shared_gradient(weights: TaskWeights, tasks: list[str]) -> torch.Tensor:
    """Gradient on a parameter two tasks share, for a batch holding ``tasks``."""
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    task_loss = {"a": (theta[0] - 3.0) ** 2, "b": (theta[1] + 1.0) ** 2}
    weights.combine({t: task_loss[t] for t in tasks}).backward()
    assert theta.grad is not None
    return theta.grad


def test_tawl_changes_the_shared_update_direction_only_when_heads_share_a_batch():
    """Why heads are mixed within a step: with one task per step a task weight only scales the
    gradient (which Adam divides out); with both tasks in the batch it turns it."""
    even = TaskWeights(["a", "b"])
    skewed = TaskWeights(["a", "b"])
    with torch.no_grad():
        skewed.log_vars.copy_(torch.tensor([0.0, 1.5]))
    cos = torch.nn.functional.cosine_similarity
    one_even, one_skewed = _shared_gradient(even, ["b"]), _shared_gradient(skewed, ["b"])
    assert cos(one_even, one_skewed, dim=0).item() == pytest.approx(1.0)
    mixed_even, mixed_skewed = (
        _shared_gradient(even, ["a", "b"]),
        _shared_gradient(skewed, ["a", "b"]),
    )
    assert cos(mixed_even, mixed_skewed, dim=0).item() < 0.9
