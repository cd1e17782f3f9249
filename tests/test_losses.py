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
