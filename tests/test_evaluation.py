"""Tests of recsys.evaluation against numbers worked out by hand on tiny arrays.

Every expected value below is written out in the test, with the arithmetic in a comment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.errors import DataError
from recsys.evaluation import classification_report, prediction_summary, regression_report

# ---------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------
Y_TRAIN = [4, 2, 5, 3, 1]  # mean 15 / 5 = 3
ITEMS_TRAIN = [0, 0, 1, 1, 2]  # item means: 0 -> 3, 1 -> 4, 2 -> 1
Y_TRUE = [5, 3, 4, 1]
ITEMS_TEST = [0, 1, 3, 2]  # item 3 never rated in training -> global mean 3
Y_PRED = [4.5, 3, 3, 2]


def test_regression_report_by_hand():
    rep = regression_report(Y_TRUE, Y_PRED, Y_TRAIN, items_test=ITEMS_TEST, items_train=ITEMS_TRAIN)
    # model: p - y = [-0.5, 0, -1, 1]
    assert rep["test_mse"] == pytest.approx((0.25 + 0 + 1 + 1) / 4)  # 0.5625
    assert rep["test_rmse"] == pytest.approx(0.75)
    assert rep["test_mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)  # 0.625
    # naive = training mean 3: 3 - y = [-2, 0, -1, 2]
    assert rep["train_mean"] == pytest.approx(3.0)
    assert rep["naive_mse"] == pytest.approx(9 / 4)
    assert rep["naive_rmse"] == pytest.approx(1.5)
    assert rep["naive_mae"] == pytest.approx(5 / 4)
    # per-item mean: predictions [3, 4, 3 (unseen item), 1] - y = [-2, 1, -1, 0]
    assert rep["item_mean_mse"] == pytest.approx(6 / 4)
    assert rep["item_mean_rmse"] == pytest.approx(math.sqrt(1.5))
    assert rep["item_mean_mae"] == pytest.approx(4 / 4)
    assert rep["rmse_improvement_over_naive"] == pytest.approx(1 - 0.75 / 1.5)  # 0.5


def test_regression_report_without_items_has_no_item_baseline():
    rep = regression_report(Y_TRUE, Y_PRED, Y_TRAIN)
    assert not [k for k in rep if k.startswith("item_mean")]
    assert rep["test_rmse"] == pytest.approx(0.75)
    # both items arguments are needed
    assert "item_mean_rmse" not in regression_report(Y_TRUE, Y_PRED, Y_TRAIN, items_test=ITEMS_TEST)


def test_regression_report_perfect_naive_baseline():
    # every test rating equals the training mean: naive RMSE 0, improvement reported as 0
    rep = regression_report([3, 3], [2, 4], Y_TRAIN)
    assert rep["naive_rmse"] == 0.0
    assert rep["test_rmse"] == pytest.approx(1.0)
    assert rep["rmse_improvement_over_naive"] == 0.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"y_true": [1, 2, 3], "y_pred": [1, 2], "y_train": [1]}, "y_pred"),
        ({"y_true": [1, 2], "y_pred": [1, np.nan], "y_train": [1]}, "y_pred.*NaN"),
        ({"y_true": [1, np.inf], "y_pred": [1, 2], "y_train": [1]}, "y_true.*NaN"),
        ({"y_true": [1, 2], "y_pred": [1, 2], "y_train": [np.nan]}, "y_train.*NaN"),
        ({"y_true": [], "y_pred": [], "y_train": [1]}, "empty"),
        (
            {
                "y_true": [1, 2],
                "y_pred": [1, 2],
                "y_train": [1, 2],
                "items_test": [0],
                "items_train": [0, 1],
            },
            "align",
        ),
        (
            {
                "y_true": [1, 2],
                "y_pred": [1, 2],
                "y_train": [1, 2],
                "items_test": [0, 1],
                "items_train": [0],
            },
            "align",
        ),
    ],
)
def test_regression_report_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        regression_report(**kwargs)


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
C_TRAIN = [1, 0, 0, 1, 0]  # positive rate 0.4 -> majority class 0
C_TRUE = [1, 0, 1, 1, 0, 0, 1, 0, 1]  # 5 positives, 4 negatives (test majority would be 1)
C_PROBA = [0.9, 0.2, 0.4, 0.6, 0.7, 0.1, 0.8, 0.6, 0.3]
# labels at 0.5: [1, 0, 0, 1, 1, 0, 1, 1, 0]
# tp: 0, 3, 6 -> 3; fn: 2, 8 -> 2; tn: 1, 5 -> 2; fp: 4, 7 -> 2


def test_classification_report_by_hand():
    rep = classification_report(C_TRUE, C_PROBA, C_TRAIN)
    assert rep["confusion_matrix"] == [[2, 2], [2, 3]]
    assert rep["accuracy"] == pytest.approx(5 / 9)
    assert rep["precision"] == pytest.approx(3 / 5)
    assert rep["recall"] == pytest.approx(3 / 5)
    assert rep["f1"] == pytest.approx(2 * 0.6 * 0.6 / 1.2)  # 0.6
    # AUC by pair counting, positives [.9 .4 .6 .8 .3] vs negatives [.2 .7 .1 .6], ties 1/2:
    # .9 -> 4, .4 -> 2, .6 -> 2 + 0.5, .8 -> 4, .3 -> 2; 14.5 of 20 pairs
    assert rep["auc"] == pytest.approx(14.5 / 20)
    logloss = -(
        math.log(0.9) + math.log(0.4) + math.log(0.6) + math.log(0.8) + math.log(0.3)  # positives: log p
        + math.log(0.8) + math.log(0.3) + math.log(0.9) + math.log(0.4)  # negatives: log(1 - p)
    ) / 9  # fmt: skip
    assert rep["log_loss"] == pytest.approx(logloss)
    assert rep["positive_rate_test"] == pytest.approx(5 / 9)
    # majority class from the TRAINING labels (0), although 1 is the majority in test
    assert rep["majority_class"] == 0
    assert rep["baseline_accuracy"] == pytest.approx(4 / 9)
    assert (
        rep["baseline_precision"] == 0.0
        and rep["baseline_recall"] == 0.0
        and rep["baseline_f1"] == 0.0
    )
    assert rep["baseline_log_loss"] == pytest.approx(-(5 * math.log(0.4) + 4 * math.log(0.6)) / 9)
    assert rep["baseline_auc"] == 0.5
    # always 1: accuracy 5/9, precision 5/9, recall 1, F1 = 2 (5/9) / (5/9 + 1) = 5/7
    assert rep["always1_accuracy"] == pytest.approx(5 / 9)
    assert rep["always1_precision"] == pytest.approx(5 / 9)
    assert rep["always1_recall"] == 1.0
    assert rep["always1_f1"] == pytest.approx(5 / 7)


def test_classification_threshold():
    # at 0.65: labels [1, 0, 0, 0, 1, 0, 1, 0, 0] -> tp 0, 6; fn 2, 3, 8; fp 4; tn 1, 5, 7
    rep = classification_report(C_TRUE, C_PROBA, C_TRAIN, threshold=0.65)
    assert rep["confusion_matrix"] == [[3, 1], [3, 2]]
    assert rep["precision"] == pytest.approx(2 / 3)
    assert rep["recall"] == pytest.approx(2 / 5)
    assert rep["auc"] == pytest.approx(14.5 / 20)  # threshold-free


def test_classification_majority_from_training_positive():
    rep = classification_report(C_TRUE, C_PROBA, [1, 1, 0])  # training majority 1
    assert rep["majority_class"] == 1
    assert rep["baseline_accuracy"] == pytest.approx(5 / 9)
    assert rep["baseline_recall"] == 1.0
    assert rep["baseline_log_loss"] == pytest.approx(
        -(5 * math.log(2 / 3) + 4 * math.log(1 / 3)) / 9
    )


def test_classification_extreme_probabilities_and_single_class():
    # p exactly 0 for a positive and 1 for a negative: log loss is clipped at 1e-15, finite
    rep = classification_report([1, 0], [0.0, 1.0], [0, 1])
    hi = 1 - 1e-15  # the clip's upper end, as a float64
    assert rep["log_loss"] == pytest.approx(-(math.log(1e-15) + math.log(1 - hi)) / 2, rel=1e-9)
    assert rep["auc"] == 0.0
    assert rep["confusion_matrix"] == [[0, 1], [1, 0]]
    # one class only in the test labels: AUC undefined
    rep = classification_report([1, 1, 1], [0.2, 0.7, 0.9], [0, 1])
    assert math.isnan(rep["auc"])
    assert rep["accuracy"] == pytest.approx(2 / 3)
    assert rep["confusion_matrix"] == [[0, 0], [1, 2]]


@pytest.mark.parametrize(
    "y_true,proba,y_train,match",
    [
        ([1, 0, 1], [0.5, 0.5], [0, 1], "proba"),
        ([1, 0], [0.5, np.nan], [0, 1], "NaN"),
        ([1, 0], [0.5, 1.2], [0, 1], r"\[0, 1\]"),
        ([1, 0], [-0.1, 0.5], [0, 1], r"\[0, 1\]"),
        ([1, 2], [0.5, 0.5], [0, 1], "0 or 1"),
        ([1, 0], [0.5, 0.5], [0, 0.5], "0 or 1"),
        ([1, 0], [0.5, 0.5], [0, -1], "0 or 1"),
        ([], [], [0, 1], "empty"),
    ],
)
def test_classification_report_errors(y_true, proba, y_train, match):
    with pytest.raises(DataError, match=match):
        classification_report(y_true, proba, y_train)


# ---------------------------------------------------------------------------------------------
# prediction summary
# ---------------------------------------------------------------------------------------------
def test_prediction_summary_by_hand():
    out = prediction_summary([1, 2, 2, 3, 7], bins=3, valid_range=(1, 5))
    assert out["min"] == 1.0 and out["max"] == 7.0
    assert out["mean"] == pytest.approx(3.0)
    # deviations [-2, -1, -1, 0, 4], squares sum 22, population variance 22 / 5
    assert out["std"] == pytest.approx(math.sqrt(22 / 5))
    # 3 bins over [1, 7]: [1, 3) -> 1, 2, 2; [3, 5) -> 3; [5, 7] -> 7
    assert out["histogram"]["edges"] == pytest.approx([1, 3, 5, 7])
    assert out["histogram"]["counts"] == [3, 1, 1]
    assert out["valid_range"] == [1.0, 5.0]
    assert out["outside_valid_range"] == 1  # 7 (1 and 5 are inside)


def test_prediction_summary_below_range_and_no_range():
    out = prediction_summary([0.5, 1.0, 5.0, 5.5], bins=2, valid_range=(1, 5))
    assert out["outside_valid_range"] == 2
    plain = prediction_summary([0.5, 1.0, 5.0, 5.5])
    assert "outside_valid_range" not in plain and "valid_range" not in plain
    assert len(plain["histogram"]["counts"]) == 40 and sum(plain["histogram"]["counts"]) == 4


@pytest.mark.parametrize("bad,match", [([1.0, np.nan], "NaN"), ([np.inf], "NaN"), ([], "empty")])
def test_prediction_summary_errors(bad, match):
    with pytest.raises(DataError, match=match):
        prediction_summary(bad)
