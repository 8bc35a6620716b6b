"""Every official metric against values computed by hand."""

import math

import pytest

from retrikt import metrics


def test_accuracy():
    assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75


def test_binary_f1_counts_positive_class():
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, F1 2/3
    assert metrics.f1([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(2 / 3)


def test_macro_f1_averages_three_classes():
    golds = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp1 fp0 fn1 -> 2/3
    assert metrics.macro_f1(preds, golds) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_mcc_by_formula():
    golds = [1, 1, 1, 0, 0, 0]
    preds = [1, 1, 0, 0, 0, 1]
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert metrics.mcc(preds, golds) == pytest.approx(expected)  # = 1/3


def test_pearson_and_spearman():
    golds = [1.0, 2.0, 3.0, 4.0]
    assert metrics.pearson([2.0, 4.0, 6.0, 8.0], golds) == pytest.approx(1.0)
    # ranks of preds: 1,2,4,3 vs 1,2,3,4 -> rho = 1 - 6*2/(4*15) = 0.8
    assert metrics.spearman([1.0, 2.0, 9.0, 5.0], golds) == pytest.approx(0.8)
    assert metrics.pearson([3.0, 3.0, 3.0, 3.0], golds) == 0.0


def test_multirc_exact_match_needs_every_answer_of_a_question():
    golds = [1, 0, 1, 1, 0]
    preds = [1, 0, 0, 1, 0]
    groups = [(0, 0), (0, 0), (0, 0), (0, 1), (0, 1)]
    assert metrics.exact_match(preds, golds, groups) == 0.5
    # F1a over the five options: tp2 fp0 fn1 -> 0.8
    assert metrics.f1a(preds, golds) == pytest.approx(0.8)


def test_compute_validates_lengths_and_groups():
    with pytest.raises(ValueError, match="2 predictions for 3"):
        metrics.compute(["accuracy"], [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="groups"):
        metrics.compute(["exact_match"], [0], [0])
    assert metrics.compute(["accuracy", "f1"], [1, 0], [1, 1]) == {"accuracy": 0.5, "f1": 2 / 3}
