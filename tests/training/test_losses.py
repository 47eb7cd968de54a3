"""Losses: weighted softmax cross-entropy against numpy, class weights, soft Dice, hybridization."""
import mxnet as mx
import numpy as np
import pytest

from unet.training.losses import SegmentationLoss, signed_boundary_distance


def batch(num_classes=3, n=2, h=8, w=12, seed=0):
    rng = np.random.RandomState(seed)
    scores = rng.normal(0, 2, (n, num_classes, h, w)).astype(np.float32)
    label = rng.randint(0, num_classes, (n, h, w)).astype(np.float32)
    weight = rng.uniform(0.5, 3.0, (n, h, w)).astype(np.float32)
    return scores, label, weight


def numpy_ce(scores, label, weight, class_weights=None):
    shifted = scores - scores.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    idx = label.astype(int)
    picked = np.take_along_axis(logp, idx[:, None], axis=1)[:, 0]            # (N, H, W)
    if class_weights is not None:
        weight = weight * np.asarray(class_weights)[idx]
    return (-picked * weight).reshape(len(scores), -1).mean(axis=1)


def numpy_dice(scores, label, smooth=1.0):
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    onehot = np.eye(scores.shape[1])[label.astype(int)].transpose(0, 3, 1, 2)
    inter = (prob[:, 1:] * onehot[:, 1:]).reshape(len(scores), -1).sum(1)
    total = (prob[:, 1:] + onehot[:, 1:]).reshape(len(scores), -1).sum(1)
    return 1 - (2 * inter + smooth) / (total + smooth)


def loss_of(loss, scores, label, weight):
    return loss(mx.nd.array(scores), mx.nd.array(label), mx.nd.array(weight)).asnumpy()


@pytest.mark.parametrize("class_weights", [None, (0.2, 1.0, 4.0)])
def test_cross_entropy_equals_numpy(class_weights):
    scores, label, weight = batch()
    got = loss_of(SegmentationLoss("ce", 3, class_weights), scores, label, weight)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, numpy_ce(scores, label, weight, class_weights), rtol=1e-5)


def test_class_weights_scale_their_pixels_only():
    scores, label, _ = batch(num_classes=2)
    ones = np.ones_like(label)
    plain = loss_of(SegmentationLoss("ce", 2), scores, label, ones)
    doubled = loss_of(SegmentationLoss("ce", 2, (2.0, 2.0)), scores, label, ones)
    np.testing.assert_allclose(doubled, 2 * plain, rtol=1e-6)
    # Weight 0 on class 1 equals a pixel weight map that zeroes class-1 pixels.
    no_fg = loss_of(SegmentationLoss("ce", 2, (1.0, 0.0)), scores, label, ones)
    masked = loss_of(SegmentationLoss("ce", 2), scores, label, (label == 0).astype(np.float32))
    np.testing.assert_allclose(no_fg, masked, rtol=1e-6)
    assert (no_fg < plain).all()


def test_dice_equals_numpy_and_stays_in_unit_interval():
    for seed in range(3):
        scores, label, weight = batch(seed=seed)
        got = loss_of(SegmentationLoss("dice", 3), scores, label, weight)
        np.testing.assert_allclose(got, numpy_dice(scores, label), rtol=1e-5)
        assert ((got >= 0) & (got <= 1)).all()


def test_dice_extremes():
    _, label, weight = batch(num_classes=2)
    onehot = np.eye(2)[label.astype(int)].transpose(0, 3, 1, 2).astype(np.float32)
    dice = SegmentationLoss("dice", 2, smooth=1e-3)
    right = loss_of(dice, 30 * onehot, label, weight)
    wrong = loss_of(dice, 30 * (1 - onehot), label, weight)
    assert (right < 1e-3).all() and (wrong > 1 - 1e-3).all()
    # No foreground anywhere and none predicted: the smoothing term makes the loss 0, not NaN.
    empty = np.zeros_like(label)
    background = np.stack([30 * np.ones_like(label), np.zeros_like(label)], axis=1)
    assert (loss_of(SegmentationLoss("dice", 2), background, empty, weight) < 1e-6).all()


def test_ce_plus_dice_is_the_sum():
    scores, label, weight = batch()
    args = (scores, label, weight)
    total = loss_of(SegmentationLoss("ce+dice", 3), *args)
    parts = loss_of(SegmentationLoss("ce", 3), *args) + loss_of(SegmentationLoss("dice", 3), *args)
    np.testing.assert_allclose(total, parts, rtol=1e-5)


@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice"])
def test_hybridized_equals_imperative(kind):
    scores, label, weight = batch()
    loss = SegmentationLoss(kind, 3, class_weights=(0.5, 1.0, 2.0))
    imperative = loss_of(loss, scores, label, weight)
    loss.hybridize()
    np.testing.assert_allclose(loss_of(loss, scores, label, weight), imperative, rtol=1e-6)


def test_gradient_flows_to_scores():
    scores, label, weight = batch()
    x = mx.nd.array(scores)
    x.attach_grad()
    with mx.autograd.record():
        value = SegmentationLoss("ce+dice", 3)(x, mx.nd.array(label), mx.nd.array(weight))
    value.backward()
    grad = x.grad.asnumpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


@pytest.mark.parametrize("kwargs,name", [
    ({"kind": "focal"}, "focal"),
    ({"kind": "ce", "num_classes": 3, "class_weights": (1.0, 2.0)}, "[1.0, 2.0]"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError) as info:
        SegmentationLoss(**kwargs)
    assert name in str(info.value)


def blobs(n=2, h=40, w=37, seed=0):
    """Binary labels ``(n, h, w)`` of smooth random blobs, touching the borders."""
    from scipy import ndimage
    rng = np.random.RandomState(seed)
    return (ndimage.gaussian_filter(rng.random_sample((n, h, w)), 3) > 0.5).astype(np.float32)


def numpy_signed_distance(label, clip):
    from scipy import ndimage
    result = np.zeros_like(label)
    for i, image in enumerate(label):
        for cls in (0, 1):
            inside = image == cls
            distance = ndimage.distance_transform_cdt(inside, metric="chessboard")
            result[i][inside] = (2 * cls - 1) * np.minimum(distance, clip)[inside]
    return result


@pytest.mark.parametrize("clip", [1, 3, 8])
def test_signed_boundary_distance_equals_scipy(clip):
    label = blobs()
    got = signed_boundary_distance(mx.nd, mx.nd.array(label), clip).asnumpy()
    assert got.shape == (2, 1, 40, 37)
    expected = numpy_signed_distance(label, clip)
    assert np.abs(expected).max() == clip
    np.testing.assert_array_equal(got[:, 0], expected)


def test_signed_boundary_distance_of_one_class_is_the_clip():
    for value, sign in ((1.0, 1), (0.0, -1)):
        label = mx.nd.full((1, 6, 5), value)
        got = signed_boundary_distance(mx.nd, label, 4).asnumpy()
        np.testing.assert_array_equal(got, np.full((1, 1, 6, 5), 4.0 * sign))


def numpy_huber(x):
    return np.where(np.abs(x) < 1, 0.5 * x ** 2, np.abs(x) - 0.5)


@pytest.mark.parametrize("hybridize", [False, True])
def test_distance_term_is_the_weighted_huber_loss_of_the_margin(hybridize):
    label = blobs()
    rng = np.random.RandomState(1)
    scores = rng.normal(0, 3, (2, 2, 40, 37)).astype(np.float32)
    weight = np.ones_like(label)
    loss = SegmentationLoss("ce", 2, distance_weight=0.5, distance_clip=5)
    if hybridize:
        loss.hybridize()
    got = loss_of(loss, scores, label, weight)
    margin = scores[:, 1] - scores[:, 0]
    huber = numpy_huber(margin - numpy_signed_distance(label, 5)).reshape(2, -1).mean(axis=1)
    np.testing.assert_allclose(got, numpy_ce(scores, label, weight) + 0.5 * huber, rtol=1e-5)


def test_distance_term_vanishes_where_the_margin_is_the_distance():
    label = blobs()
    target = numpy_signed_distance(label, 8)
    scores = np.stack([np.zeros_like(target), target], axis=1)
    weight = np.ones_like(label)
    with_term = loss_of(SegmentationLoss("ce", 2, distance_weight=2.0), scores, label, weight)
    np.testing.assert_allclose(with_term, numpy_ce(scores, label, weight), rtol=1e-6)


@pytest.mark.parametrize("kwargs,name", [
    ({"num_classes": 3, "distance_weight": 1.0}, "two classes"),
    ({"distance_weight": -1.0}, "-1.0"),
    ({"distance_weight": 1.0, "distance_clip": 0}, "positive integer"),
    ({"distance_weight": 1.0, "distance_clip": 2.5}, "2.5"),
])
def test_bad_distance_arguments(kwargs, name):
    with pytest.raises(ValueError) as info:
        SegmentationLoss("ce", **kwargs)
    assert name in str(info.value)
