"""Segmentation metrics as pure numpy functions, and a small accumulator for them.

Class 0 is the background (membrane, in EM data) and the other classes are foreground; for a
binary model "foreground" is class 1 (cell). The cell scores (Rand errors, V_Rand, V_Info) compare
the cells, the 4-connected components of the foreground, on the pixels of the true cells only.
"""
import numpy as np
from scipy import ndimage, sparse
from skimage.metrics import adapted_rand_error as _skimage_adapted_rand_error
from skimage.metrics import contingency_table

from .postprocess import thin_membranes


def confusion_matrix(pred, target, num_classes):
    """``(num_classes, num_classes)`` int64 counts; rows are the target, columns the prediction."""
    pred = np.asarray(pred, dtype=np.int64).ravel()
    target = np.asarray(target, dtype=np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels, target {target.size}")
    for name, values in (("prediction", pred), ("target", target)):
        outside = values[(values < 0) | (values >= num_classes)]
        if outside.size:
            raise ValueError(f"{name} has class {outside[0]}, outside 0..{num_classes - 1}")
    index = target * num_classes + pred
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def pixel_accuracy(cm):
    """Fraction of pixels whose class is right."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


def pixel_error(cm):
    """``1 - pixel_accuracy``: the ISBI 2012 challenge's pixel error for a binary map."""
    return 1.0 - pixel_accuracy(cm)


def iou_per_class(cm):
    """Intersection over union of every class; NaN for a class absent from both maps."""
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def mean_iou(cm):
    """Mean IoU over the classes present in the prediction or the target."""
    ious = iou_per_class(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else 0.0


def foreground_dice(cm):
    """Dice of all foreground classes (1..K-1) together against the background class 0.

    1.0 when both maps have no foreground at all.
    """
    fg_both = cm[1:, 1:].sum()
    fg_pred = cm[:, 1:].sum()
    fg_target = cm[1:, :].sum()
    denom = fg_pred + fg_target
    return float(2.0 * fg_both / denom) if denom else 1.0


def adapted_rand_error(pred, target):
    """Adapted Rand error of the cells: connected components of the foreground in each map.

    Parameters
    ----------
    pred, target : np.ndarray
        ``(H, W)`` class maps; class 0 is the membrane/background.

    Returns the scikit-image ``adapted_rand_error`` (0 is perfect). Background pixels of the
    target are ignored, as in the ISBI 2012 challenge (scikit-image's ``ignore_labels=(0,)``).
    """
    pred_cells, _ = ndimage.label(np.asarray(pred) > 0)
    return _rand_error(cells_table(pred_cells, target))


def adapted_rand_error_thinned(pred, target):
    """Adapted Rand error after border thinning, as the ISBI 2012 challenge scored it.

    The predicted cells (as in :func:`adapted_rand_error`) are first grown over the predicted
    membrane until they meet along one-pixel lines at the membrane's middle
    (:func:`unet.inference.postprocess.thin_membranes`), so that a membrane drawn wider than the true one is
    not counted as one large segment spanning many true cells. Merges and splits of cells count
    as in :func:`adapted_rand_error`; pixel error is not affected (it scores ``pred`` itself).
    ``1 -`` this is the challenge's V_Rand.
    """
    return _rand_error(thinned_cells_table(pred, target))


def information_fscore_thinned(pred, target):
    """V_Info, the ISBI 2012 challenge's information-theoretic score, after border thinning.

    :func:`information_fscore` of the same table as :func:`adapted_rand_error_thinned`:
    ``pred``, ``target``: ``(H, W)`` class maps, class 0 the membrane. 1 is perfect.
    """
    return information_fscore(thinned_cells_table(pred, target))


def cell_fscores(pred, target):
    """``(V_Rand, V_Info)`` of the class maps ``pred`` against ``target`` (class 0 the
    membrane), after border thinning: ``1 -`` :func:`adapted_rand_error_thinned` and
    :func:`information_fscore_thinned` from one table; NaN without true cells."""
    table = thinned_cells_table(pred, target)
    return 1.0 - _rand_error(table), information_fscore(table)


def cells_table(pred_cells, target):
    """Contingency table of the true cells against ``pred_cells``, over the true cells' pixels.

    Parameters
    ----------
    pred_cells : np.ndarray
        ``(H, W)`` int labels of the predicted segments (0 is a label like any other here).
    target : np.ndarray
        ``(H, W)`` class map; its cells are the 4-connected components of class > 0.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(true cells + 1, predicted labels + 1)`` pixel counts; row 0 (the true membrane) is
        all zero: the ISBI 2012 challenge scores only the pixels of true cells.
    """
    true_cells, _ = ndimage.label(np.asarray(target) > 0)
    return contingency_table(true_cells, np.asarray(pred_cells), ignore_labels=(0,))


def thinned_cells_table(pred, target):
    """:func:`cells_table` of ``pred``'s cells after border thinning: the table that both
    V_Rand and V_Info of the ISBI 2012 challenge are computed from."""
    return cells_table(thin_membranes(np.asarray(pred) > 0), target)


def _rand_error(table):
    """scikit-image's adapted Rand error of a contingency table (rows true, columns predicted);
    NaN without any true-cell pixel."""
    if table.sum() == 0:                # scikit-image would divide by zero, with warnings
        return float("nan")
    error, _, _ = _skimage_adapted_rand_error(table=table)
    return float(error)


def information_fscore(table):
    """The information-theoretic F-score V_Info = 2 I(S;T) / (H(S) + H(T)) of a contingency table.

    The ISBI 2012 challenge's score (Arganda-Carreras et al. 2015): the F-score of the
    information-theoretic split score I/H(S) and merge score I/H(T), with T the true segments
    (rows), S the predicted ones (columns), H the entropies and I the mutual information of the
    table's joint distribution. 1 is perfect; 0 when the prediction tells nothing about the
    truth (all in one segment, or a single true segment split). Symmetric in S and T.

    Parameters
    ----------
    table : scipy.sparse matrix or array-like
        ``(T, S)`` pixel counts, e.g. :func:`cells_table`.

    Returns
    -------
    float
        1.0 when both sides are a single segment (H(S) = H(T) = 0), NaN for an empty table.
    """
    table = sparse.csr_matrix(table, dtype=np.float64)
    total = table.sum()
    if total == 0:
        return float("nan")
    h_true = _entropy(np.asarray(table.sum(axis=1)).ravel(), total)
    h_pred = _entropy(np.asarray(table.sum(axis=0)).ravel(), total)
    if h_true + h_pred == 0:
        return 1.0
    mutual = h_true + h_pred - _entropy(table.data, total)
    # Within rounding of [0, 1]; identical labelings give exactly 1 (see _entropy).
    return float(np.clip(2.0 * mutual / (h_true + h_pred), 0.0, 1.0))


def _entropy(counts, total):
    """Entropy (nats) of the distribution ``counts / total``. Sorted before the sum, so that the
    same counts in another order (rows, columns and cells of a permutation table) give the same
    float, bit for bit."""
    p = np.sort(counts[counts > 0]) / total
    return float(-(p * np.log(p)).sum())


def _fiji_thresholds(start=0.0, stop=1.0, step=0.1):
    """The thresholds of Fiji's ``for (th = start; th <= stop; th += step)``: 11 for the
    challenge's 0.0-1.0 in steps of 0.1, the last 0.9999999999999999 (the sum rounds below 1.0),
    where a saturated probability of exactly 1.0 still counts as foreground."""
    thresholds, th = [], start
    while th <= stop:
        thresholds.append(th)
        th += step
    return tuple(thresholds)


#: Thresholds on the foreground probability of the ISBI 2012 challenge's Fiji scoring script
#: (``PixelError.getPixelErrorMaximalFScore(0.0, 1.0, 0.1)``).
CHALLENGE_THRESHOLDS = _fiji_thresholds()


def pixel_error_fscore(foreground_prob, target):
    """The ISBI 2012 challenge's "pixel error": 1 - the best F-score of the foreground.

    The challenge (and the U-Net paper's 0.0611) defined it as "1 - the maximal F-score of pixel
    similarity": a pixel is predicted foreground (cell) where ``foreground_prob`` is *above* a
    threshold, the F-score (Dice) of the foreground is taken at each of
    :data:`CHALLENGE_THRESHOLDS` (0.0, 0.1, ..., 0.9 and just under 1.0) and the best one
    counts. It is not :func:`pixel_error` (1 - accuracy, the fraction of wrong pixels): with cells
    ~80% of an EM slice it is the smaller of the two. ``foreground_prob``: ``(H, W)`` probabilities in [0, 1] (or a 0/1
    mask, scored at its one threshold); ``target``: ``(H, W)`` classes, foreground > 0.
    """
    prob = np.asarray(foreground_prob, dtype=np.float64)
    truth = np.asarray(target) > 0
    best = 0.0
    for threshold in CHALLENGE_THRESHOLDS:
        proposed = prob > threshold
        tp = np.count_nonzero(proposed & truth)
        wrong = np.count_nonzero(proposed != truth)
        if tp:
            best = max(best, 2.0 * tp / (2.0 * tp + wrong))
    return 1.0 - best


def score_segmentation(pred, target, num_classes, foreground_prob=None):
    """All the per-image scores, the ISBI 2012 challenge's two first: ``v_rand`` and ``v_info``
    (after border thinning, higher is better), then ``pixel_error``, ``accuracy``, ``dice``,
    ``iou``, ``rand_error``, ``rand_error_thinned`` (``1 - v_rand``) and ``pixel_error_fscore``.

    ``foreground_prob``: the ``(H, W)`` foreground probability that ``pred`` was made from, for
    :func:`pixel_error_fscore`; without it that score uses ``pred`` itself (1 - Dice).
    """
    cm = confusion_matrix(pred, target, num_classes)
    if foreground_prob is None:
        foreground_prob = (np.asarray(pred) > 0).astype(np.float64)
    thinned = thinned_cells_table(pred, target)        # thinned once for the three scores
    rand_error_thinned = _rand_error(thinned)
    return {
        "v_rand": 1.0 - rand_error_thinned,
        "v_info": information_fscore(thinned),
        "pixel_error": pixel_error(cm),
        "accuracy": pixel_accuracy(cm),
        "dice": foreground_dice(cm),
        "iou": mean_iou(cm),
        "rand_error": adapted_rand_error(pred, target),
        "rand_error_thinned": rand_error_thinned,
        "pixel_error_fscore": pixel_error_fscore(foreground_prob, target),
    }


class SegmentationMetric:
    """Accumulates a confusion matrix over batches (update / get / reset).

    ``get()`` returns ``{'accuracy', 'pixel_error', 'mean_iou', 'dice'}`` over all pixels seen.
    """

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.reset()

    def reset(self):
        self.cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred, target):
        """``pred`` and ``target``: integer class maps of the same shape."""
        self.cm += confusion_matrix(pred, target, self.num_classes)

    def get(self):
        return {
            "accuracy": pixel_accuracy(self.cm),
            "pixel_error": pixel_error(self.cm),
            "mean_iou": mean_iou(self.cm),
            "dice": foreground_dice(self.cm),
        }
