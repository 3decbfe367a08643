"""Metrics on hand-computed matrices (exact expected values)."""

from __future__ import annotations

import pytest

from retain.eval import metrics as M

# T = 3. Row 0: untrained; row i: after task i.
R = [
    [0.10, 0.20, 0.30],
    [0.90, 0.25, 0.35],
    [0.60, 0.80, 0.40],
    [0.50, 0.70, 0.95],
]


def test_avg_accuracy_is_mean_of_last_row():
    assert M.avg_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.95) / 3)


def test_bwt_uses_t_minus_1():
    # (R[3,1]-R[1,1]) + (R[3,2]-R[2,2]) = (0.5-0.9) + (0.7-0.8) = -0.5, over T-1 = 2
    assert M.bwt(R) == pytest.approx(-0.25)


def test_fwt_against_untrained_row():
    # task 2: R[1,2]-R[0,2] = 0.25-0.20; task 3: R[2,3]-R[0,3] = 0.40-0.30; over 2
    assert M.fwt(R) == pytest.approx((0.05 + 0.10) / 2)


def test_forgetting_is_max_based():
    # task 1: max(R[1,1], R[2,1]) - R[3,1] = 0.9 - 0.5 = 0.4; task 2: R[2,2] - R[3,2] = 0.1
    assert M.per_task_forgetting(R) == pytest.approx([0.4, 0.1, 0.0])
    assert M.forgetting(R) == pytest.approx(0.25)


def test_forgetting_ignores_scores_before_a_task_was_trained():
    # Task 2 scored 0.99 before it was trained (row 0): not something learnt, so not forgotten.
    r = [[0.0, 0.99], [0.9, 0.5], [0.8, 0.6]]
    assert M.per_task_forgetting(r) == pytest.approx([0.1, 0.0])


def test_plasticity_is_the_diagonal():
    assert M.plasticity(R) == pytest.approx([0.90, 0.80, 0.95])
    assert M.summary(R)["plasticity"] == pytest.approx((0.90 + 0.80 + 0.95) / 3)


def test_lower_is_better_flips_the_sign():
    mse = [[2.0, 2.0], [0.5, 1.8], [0.9, 0.4]]
    # MSE on task 1 rose from 0.5 to 0.9: forgetting 0.4, BWT -0.4
    assert M.bwt(mse, higher_is_better=False) == pytest.approx(-0.4)
    assert M.forgetting(mse, higher_is_better=False) == pytest.approx(0.4)
    assert M.fwt(mse, higher_is_better=False) == pytest.approx(2.0 - 1.8)
    assert M.gap_to_joint(0.3, 0.65, higher_is_better=False) == pytest.approx(0.35)


def test_single_task_has_no_transfer_metrics():
    s = M.summary([[0.1], [0.9]])
    assert s["bwt"] is None and s["fwt"] is None and s["forgetting"] is None
    assert s["avg_accuracy"] == pytest.approx(0.9)


def test_shape_is_checked():
    with pytest.raises(ValueError, match="T\\+1 rows"):
        M.avg_accuracy([[0.1, 0.2], [0.3, 0.4]])


def test_joint_summary_and_gap():
    j = M.joint_summary([0.9, 0.95])
    assert j["avg_accuracy"] == pytest.approx(0.925) and j["bwt"] is None
    assert M.gap_to_joint(0.925, 0.5) == pytest.approx(0.425)
