"""Metrics: hand-computed confusion matrices and scores, empty-foreground edge cases, adapted
Rand error, and the accumulator."""
import numpy as np
import pytest

from unet.inference.metrics import (SegmentationMetric, adapted_rand_error, adapted_rand_error_thinned,
                          pixel_error_fscore,
                          confusion_matrix, foreground_dice, iou_per_class, mean_iou, pixel_accuracy, pixel_error,
                          score_segmentation)

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


def test_score_segmentation_and_accumulator():
    target, merged = two_cells()
    scores = score_segmentation(merged, target, 2)
    assert set(scores) == {"pixel_error", "accuracy", "dice", "iou", "rand_error",
                           "rand_error_thinned", "pixel_error_fscore"}
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
