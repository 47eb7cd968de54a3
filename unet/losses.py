"""Losses for dense classification: weighted softmax cross-entropy, soft Dice, and their sum.

All take class scores ``(N, K, H, W)``, integer labels ``(N, H, W)`` stored as floats and a
per-pixel weight map ``(N, H, W)`` (ones when unused), and return a per-sample loss ``(N,)``.
"""
from mxnet.gluon.loss import Loss

LOSSES = ("ce", "dice", "ce+dice")


class SegmentationLoss(Loss):
    """``kind``: 'ce' (softmax cross-entropy, default), 'dice' (soft Dice of the foreground
    classes) or 'ce+dice'.

    Parameters
    ----------
    kind : str, default 'ce'
    num_classes : int, default 2
    class_weights : sequence of float or None, default None
        Multiplies the cross-entropy of each pixel by the weight of its target class. Combined
        with the per-pixel weight map (the paper's border weights) by multiplication.
    smooth : float, default 1.0
        Added to numerator and denominator of the Dice ratio.
    """

    def __init__(self, kind="ce", num_classes=2, class_weights=None, smooth=1.0, **kwargs):
        super().__init__(weight=None, batch_axis=0, **kwargs)
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights needs {num_classes} values, got {list(class_weights)}")
        self.kind = kind
        self.num_classes = num_classes
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.smooth = smooth

    def hybrid_forward(self, F, scores, label, pixel_weight):
        loss = 0
        if self.kind in ("ce", "ce+dice"):
            loss = loss + self._cross_entropy(F, scores, label, pixel_weight)
        if self.kind in ("dice", "ce+dice"):
            loss = loss + self._dice(F, scores, label)
        return loss

    def _cross_entropy(self, F, scores, label, pixel_weight):
        logp = F.log_softmax(scores, axis=1)                            # (N, K, H, W)
        picked = F.pick(logp, label, axis=1)                            # (N, H, W)
        weight = pixel_weight
        if self.class_weights is not None:
            weight = weight * self._class_weight_map(label)
        return F.mean(-picked * weight, axis=0, exclude=True)           # (N,)

    def _class_weight_map(self, label):
        # A sum of indicator maps keeps the op symbolic (no constant arrays in the graph).
        result = 0
        for k, w in enumerate(self.class_weights):
            result = result + (label == k) * float(w)
        return result

    def _dice(self, F, scores, label):
        prob = F.softmax(scores, axis=1)                                # (N, K, H, W)
        onehot = F.one_hot(label, self.num_classes)                     # (N, H, W, K)
        onehot = F.transpose(onehot, axes=(0, 3, 1, 2))                 # (N, K, H, W)
        fg_prob = F.slice_axis(prob, axis=1, begin=1, end=None)
        fg_true = F.slice_axis(onehot, axis=1, begin=1, end=None)
        inter = F.sum(fg_prob * fg_true, axis=0, exclude=True)          # (N,)
        total = F.sum(fg_prob + fg_true, axis=0, exclude=True)
        return 1.0 - (2.0 * inter + self.smooth) / (total + self.smooth)
