"""Metrics against values computed by hand."""

import pytest

from affedge import metrics as m

LABELS = ["a", "b", "c"]
GOLD = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", "c", "c"]
# per class: a: tp2 pred2 gold3 -> P1 R2/3 F1 0.8; b: tp1 pred2 gold2 -> F1 0.5;
# c: tp1 pred2 gold1 -> F1 2/3


def test_accuracy():
    assert m.accuracy(GOLD, PRED, LABELS) == pytest.approx(4 / 6)


def test_macro_f1():
    assert m.macro_f1(GOLD, PRED, LABELS) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_macro_f1_counts_absent_class_as_zero():
    assert m.macro_f1(["a", "a"], ["a", "a"], ["a", "b"]) == pytest.approx(0.5)


def test_macro_recall_ignores_classes_absent_from_gold():
    assert m.macro_recall(GOLD, PRED, LABELS) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m.macro_recall(["a", "a"], ["a", "b"], ["a", "b"]) == pytest.approx(0.5)


def test_weighted_f1():
    assert m.weighted_f1(GOLD, PRED, LABELS) == pytest.approx((0.8 * 3 + 0.5 * 2 + 2 / 3) / 6)


def test_micro_f1_without_neutral():
    gold = ["neutral", "joy", "joy", "anger"]
    pred = ["joy", "joy", "neutral", "anger"]
    # non-neutral: tp = 2 (joy, anger); predicted non-neutral 3; gold non-neutral 3
    assert m.micro_f1_no_neutral(gold, pred, ["neutral", "joy", "anger"]) == pytest.approx(
        2 * 2 / 6
    )


def test_f1_positive():
    f1 = m.label_metric("f1_positive", positive="b")
    assert f1(GOLD, PRED, LABELS) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        m.label_metric("f1_positive")


def test_pearson_and_spearman():
    assert m.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert m.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = [1,2,3,4], y = [1,3,2,4]: cov = 4/4... r = 0.8 exactly
    assert m.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert m.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    # monotone but non-linear: Spearman 1, Pearson below 1
    assert m.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert m.pearson([1, 2, 3, 4], [1, 10, 100, 1000]) < 0.9
    # ties share their average rank: ranks of [1, 2, 2, 3] are [0, 1.5, 1.5, 3]
    assert m.spearman([1, 2, 2, 3], [0, 1.5, 1.5, 3]) == pytest.approx(1.0)


def test_empty_inputs_do_not_crash():
    assert m.accuracy([], [], LABELS) == 0.0
    assert m.weighted_f1([], [], LABELS) == 0.0
