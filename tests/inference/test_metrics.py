"""Metrics: hand-computed confusion matrices and scores, empty-foreground edge cases, adapted
Rand error, the challenge's V_Rand and V_Info, and the accumulator."""
from math import log

import numpy as np
import pytest

from unet.inference.metrics import (SegmentationMetric, adapted_rand_error, adapted_rand_error_thinned,
                          information_fscore, information_fscore_thinned, pixel_error_fscore,
                          confusion_matrix, foreground_dice, iou_per_class, mean_iou, pixel_accuracy, pixel_error,
                          score_segmentation, thinned_cells_table)

# Three classes; pairs (target, pred): (0,0) (1,1) (0,1) (2,2) (2,0) (1,1).
PRED = np.array([[0, 1, 1], [2, 0, 1]])
TARGET = np.array([[0, 1, 0], [2, 2, 1]])
CM = np.array([[1, 1, 0],
               [0, 2, 0],
               [1, 0, 1]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)
    np.testing.assert_array_equal(confusion_matrix(TARGET, PRED, 3), CM.T)


def test_scores_by_hand():
    assert pixel_accuracy(CM) == pytest.approx(4 / 6)
    assert pixel_error(CM) == pytest.approx(2 / 6)
    np.testing.assert_allclose(iou_per_class(CM), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(CM) == pytest.approx(0.5)
    # Foreground = classes 1 and 2 together: 3 pixels in both, 4 predicted, 4 true.
    assert foreground_dice(CM) == pytest.approx(0.75)


def test_confusion_matrix_shape_mismatch():
    with pytest.raises(ValueError, match="6.*4"):
        confusion_matrix(PRED, np.zeros((2, 2)), 3)


@pytest.mark.parametrize("pred,target,num_classes", [
    ([0, 7], [0, 1], 2), ([0, 1], [5, 1], 2), ([-3, 1], [1, 1], 2),
    ([0, 3], [0, 0], 3),       # would be counted silently as (target 1, pred 0)
])
def test_confusion_matrix_refuses_labels_out_of_range(pred, target, num_classes):
    bad = [v for v in pred + target if not 0 <= v < num_classes][0]
    with pytest.raises(ValueError, match=str(bad)):
        confusion_matrix(np.array(pred), np.array(target), num_classes)


def test_empty_foreground_in_both_maps():
    zeros = np.zeros((8, 8), np.int64)
    cm = confusion_matrix(zeros, zeros, 2)
    assert foreground_dice(cm) == 1.0
    assert pixel_error(cm) == 0.0
    ious = iou_per_class(cm)
    assert ious[0] == 1.0 and np.isnan(ious[1])
    assert mean_iou(cm) == 1.0


def test_foreground_only_on_one_side():
    zeros, ones = np.zeros((4, 4), np.int64), np.ones((4, 4), np.int64)
    for pred, target in ((ones, zeros), (zeros, ones)):
        cm = confusion_matrix(pred, target, 2)
        assert foreground_dice(cm) == 0.0
        assert pixel_error(cm) == 1.0
        assert mean_iou(cm) == 0.0


def test_no_pixels_at_all():
    cm = np.zeros((2, 2), np.int64)
    assert pixel_accuracy(cm) == 0.0
    assert mean_iou(cm) == 0.0
    assert foreground_dice(cm) == 1.0


def two_cells(n=6):
    """Two n x n cells separated by a one-pixel membrane column, and the same with it erased."""
    target = np.zeros((n + 2, 2 * n + 3), np.int64)
    target[1:-1, 1:n + 1] = 1
    target[1:-1, n + 2:-1] = 1
    merged = target.copy()
    merged[1:-1, n + 1] = 1
    return target, merged


def test_adapted_rand_error():
    target, merged = two_cells()
    assert adapted_rand_error(target, target) == 0.0
    relabelled = target * 2                      # class ids do not matter, only the cells
    assert adapted_rand_error(relabelled, target) == 0.0
    # Merged, counting pixel pairs (m = n^2 pixels per cell; the target's membrane is ignored):
    # recall 1, precision 2 m(m-1) / (2m (2m-1)) = (m-1)/(2m-1), F = 2(m-1)/(3m-2), error m/(3m-2).
    m = 36
    assert adapted_rand_error(merged, target) == pytest.approx(m / (3 * m - 2))
    assert adapted_rand_error(target, merged) > 0


def test_thinned_rand_error_forgives_a_wide_membrane_but_not_a_merge():
    # Two 20x20 true cells with a 2-pixel membrane; the prediction draws it 8 pixels wide.
    target = np.ones((20, 42), np.int64)
    target[:, 20:22] = 0
    wide = np.ones_like(target)
    wide[:, 17:25] = 0
    # Unthinned, the wide membrane is one segment that takes 3 columns of each true cell.
    assert adapted_rand_error(wide, target) > 0.1
    assert adapted_rand_error_thinned(wide, target) == 0.0
    # A gap in the membrane is a merge whether thinned or not: thinning makes one cell of all.
    leaky = wide.copy()
    leaky[10, 17:25] = 1
    merged_error = adapted_rand_error(np.ones_like(target), target)
    assert merged_error > 0.3
    assert adapted_rand_error_thinned(leaky, target) == pytest.approx(merged_error)
    # V_Info scores the same thinned cells: perfect, then one segment that tells nothing.
    assert information_fscore_thinned(wide, target) == 1.0
    assert information_fscore_thinned(leaky, target) == 0.0


def test_score_segmentation_and_accumulator():
    target, merged = two_cells()
    scores = score_segmentation(merged, target, 2)
    assert list(scores)[:2] == ["v_rand", "v_info"]
    assert set(scores) == {"v_rand", "v_info", "pixel_error", "accuracy", "dice", "iou",
                           "rand_error", "rand_error_thinned", "pixel_error_fscore"}
    # Without probabilities the challenge's pixel error scores the mask: 1 - Dice.
    assert scores["pixel_error_fscore"] == pytest.approx(1.0 - scores["dice"])
    assert scores["pixel_error"] == pytest.approx(6 / target.size)
    assert scores["rand_error"] == pytest.approx(36 / 106)

    metric = SegmentationMetric(3)
    metric.update(PRED[:1], TARGET[:1])
    metric.update(PRED[1:], TARGET[1:])
    np.testing.assert_array_equal(metric.cm, CM)
    got = metric.get()
    assert got["pixel_error"] == pytest.approx(2 / 6)
    assert got["mean_iou"] == pytest.approx(0.5)
    assert got["dice"] == pytest.approx(0.75)
    metric.reset()
    assert metric.cm.sum() == 0


def test_challenge_pixel_error_is_one_minus_the_best_f_score_over_thresholds():
    # 100 pixels: 80 cell, 20 membrane. The probabilities put every cell at 0.35 and every
    # membrane pixel at 0.15: at the usual 0.5 everything is membrane (pixel error 0.8), but the
    # challenge's thresholds include 0.2 and 0.3, where the map is perfect.
    target = np.ones((10, 10), np.int64)
    target[:2] = 0
    prob = np.where(target > 0, 0.35, 0.15)
    assert pixel_error_fscore(prob, target) == 0.0
    # A proposal is foreground strictly above a threshold: a float64 0.3 is not above 0.3.
    assert pixel_error_fscore(np.where(target > 0, 0.3, 0.3), target) == pytest.approx(
        1 - 2 * 80 / (2 * 80 + 20))            # best at 0.0-0.2: all cell, F = 160/180
    # One threshold, F of the cells: 10 cells missed, 5 membrane pixels called cell.
    pred = target.copy()
    pred[9, :] = 0
    pred[0, :5] = 1
    f = 2 * 70 / (2 * 70 + 5 + 10)
    assert pixel_error_fscore(pred, target) == pytest.approx(1 - f)
    assert pixel_error_fscore(np.zeros_like(prob), target) == 1.0
    # Fiji's loop th += 0.1 ends at 0.9999999999999999: saturated cells at exactly 1.0 against
    # membrane at 0.95 are perfect there.
    assert pixel_error_fscore(np.where(target > 0, 1.0, 0.95), target) == 0.0


def cells_in_a_row(widths, height=4):
    """Cells ``height`` rows high and ``widths`` columns wide, left to right, each separated from
    the next by a one-pixel membrane column; no membrane around them."""
    row = []
    for width in widths:
        row += [1] * width + [0]
    return np.tile(np.array(row[:-1], np.int64), (height, 1))


@pytest.mark.parametrize("target", [
    cells_in_a_row([4, 4]), cells_in_a_row([3, 5, 2], height=7), cells_in_a_row([6]),
    np.array([[2, 0, 1], [2, 0, 1], [0, 0, 2]]),       # 3 classes: cells are foreground regions
])
def test_identical_segmentations_score_one(target):
    for pred in (target, (target > 0) * 2):            # class ids do not matter, only cells
        scores = score_segmentation(pred, target, 3)
        assert scores["v_info"] == 1.0 and scores["v_rand"] == 1.0
        assert scores["rand_error_thinned"] == 0.0


def test_v_info_and_v_rand_of_a_split_by_hand():
    # True cells A (4 x 9 = 36 pixels) and B (4 x 9 = 36), N = 72. The prediction draws one more
    # membrane column through the middle of A; thinning keeps it as a one-pixel line (label 0,
    # 4 pixels, a segment of its own as in the Rand error) between the halves (16 + 16 pixels).
    target = cells_in_a_row([9, 9])
    pred = target.copy()
    pred[:, 4] = 0
    table = thinned_cells_table(pred, target).toarray()[1:]         # the true cells' rows
    np.testing.assert_array_equal(np.sort(table, axis=1), [[0, 4, 16, 16], [0, 0, 0, 36]])
    # H(T) = ln 2 (two halves of N). Every predicted segment lies in one true cell, so
    # H(S,T) = H(S) and I = H(T) = ln 2, with
    # H(S) = 2 (16/72) ln(72/16) + (4/72) ln(72/4) + (36/72) ln(72/36)
    #      = (4/9) ln 4.5 + (1/18) ln 18 + (1/2) ln 2 = 1.17563 nats;
    # V_Info = 2 I / (H(S) + H(T)) = 2 ln 2 / (1.17563 + 0.69315) = 0.74182.
    h_pred = 4 / 9 * log(4.5) + log(18) / 18 + log(2) / 2
    assert information_fscore_thinned(pred, target) == pytest.approx(2 * log(2) / (h_pred + log(2)))
    assert information_fscore_thinned(pred, target) == pytest.approx(0.74182, abs=1e-5)
    # V_Rand from ordered pairs c(c - 1): both in one true and one predicted segment
    # 2*16*15 + 4*3 + 36*35 = 1752; in one true cell 2*36*35 = 2520; in one predicted segment
    # 1752 too. V_Rand = 2 * 1752 / (2520 + 1752) = 73/89.
    scores = score_segmentation(pred, target, 2)
    assert scores["v_rand"] == pytest.approx(73 / 89)
    assert scores["v_info"] == pytest.approx(0.74182, abs=1e-5)


def test_v_info_and_v_rand_of_a_merge_by_hand():
    # Three true cells of m = 4 x 4 = 16 pixels; the prediction misses the membrane between the
    # first two. Restricted to the true cells: a segment of 2m pixels (cells 1 and 2) and one of
    # m (cell 3). H(T) = ln 3; H(S) = (2/3) ln(3/2) + (1/3) ln 3 = ln 3 - (2/3) ln 2; each true
    # cell lies in one predicted segment, so H(S,T) = H(T) and I = H(S) = 0.63651 nats.
    # V_Info = 2 H(S) / (H(S) + H(T)) = 2 (ln 3 - (2/3) ln 2) / (2 ln 3 - (2/3) ln 2) = 0.73368,
    # whatever m.
    target = cells_in_a_row([4, 4, 4])
    pred = target.copy()
    pred[:, 4] = 1
    expected = 2 * (log(3) - 2 / 3 * log(2)) / (2 * log(3) - 2 / 3 * log(2))
    assert expected == pytest.approx(0.73368, abs=1e-5)
    scores = score_segmentation(pred, target, 2)
    assert scores["v_info"] == pytest.approx(expected)
    # V_Rand: pairs in one true and one predicted segment 3 m(m-1); in one true cell 3 m(m-1);
    # in one predicted segment 2m(2m-1) + m(m-1). F = 6(m-1) / (8m - 6) = 3(m-1)/(4m-3) = 45/61.
    assert scores["v_rand"] == pytest.approx(45 / 61)
    # Merging everything into one segment: the prediction tells nothing, V_Info 0.
    assert information_fscore_thinned(np.ones_like(target), target) == 0.0


def test_v_rand_is_one_minus_the_thinned_rand_error():
    rng = np.random.RandomState(0)
    target = cells_in_a_row([5, 7, 3, 6], height=9)
    for _ in range(5):
        pred = (rng.rand(*target.shape) > 0.2).astype(np.int64)
        scores = score_segmentation(pred, target, 2)
        assert scores["v_rand"] == 1.0 - scores["rand_error_thinned"]
        assert scores["rand_error_thinned"] == adapted_rand_error_thinned(pred, target)
        assert scores["v_info"] == information_fscore_thinned(pred, target)
        assert 0.0 <= scores["v_info"] <= 1.0


def test_information_fscore_is_the_mutual_information_over_the_mean_entropy():
    rng = np.random.RandomState(1)
    table = rng.randint(0, 4, size=(5, 7)) * (rng.rand(5, 7) > 0.4)
    p = table / table.sum()
    a, b = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mutual = (p[nz] * np.log(p[nz] / (a @ b)[nz])).sum()
    h_true, h_pred = -(a[a > 0] * np.log(a[a > 0])).sum(), -(b[b > 0] * np.log(b[b > 0])).sum()
    assert information_fscore(table) == pytest.approx(2 * mutual / (h_true + h_pred))
    assert information_fscore(table.T) == pytest.approx(information_fscore(table))
    assert information_fscore(np.eye(4) * [3, 1, 4, 1]) == 1.0          # a permutation
    assert information_fscore([[5, 2, 7]]) == 0.0                        # one true cell, split
    assert information_fscore([[9]]) == 1.0
    assert np.isnan(information_fscore([[0, 0]]))                        # no true cell
