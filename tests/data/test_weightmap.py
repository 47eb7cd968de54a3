import glob
import os
import time

import numpy as np
import pytest
from scipy import ndimage

from unet.data.weightmap import border_weight_map, boundary_band_weights, class_balance_weights
from project_paths import ISBI


def two_cells(gap=1):
    classes = np.zeros((64, 96), np.int32)
    classes[16:48, 10:40] = 1
    classes[16:48, 40 + gap:70 + gap] = 1
    return classes


def brute_force(classes, w0, sigma):
    cells, count = ndimage.label(classes != 0)
    dist = np.sort(np.stack([ndimage.distance_transform_edt(cells != i)
                             for i in range(1, count + 1)]), axis=0)
    border = w0 * np.exp(-(dist[0] + dist[1]) ** 2 / (2 * sigma ** 2))
    border[cells != 0] = 0
    return class_balance_weights(classes) + border


def test_gap_between_two_cells_gets_w0_far_pixels_get_class_weight():
    classes = two_cells(gap=1)
    wc = class_balance_weights(classes)
    weights = border_weight_map(classes, w0=10.0, sigma=5.0)
    assert weights.dtype == np.float32 and weights.shape == classes.shape
    gap = weights[20:44, 40] - wc[20:44, 40]
    np.testing.assert_allclose(gap, 10.0 * np.exp(-4 / 50), rtol=1e-5)  # d1 = d2 = 1
    assert gap.min() > 9.0
    np.testing.assert_allclose(weights[0:2, :], wc[0:2, :], atol=1e-3)  # 14+ px from both cells
    np.testing.assert_array_equal(weights[classes == 1], wc[classes == 1])


def test_class_balance_and_given_class_weights():
    classes = np.zeros((10, 10), np.int32)
    classes[:, :2] = 1  # 20 % foreground
    wc = class_balance_weights(classes)
    assert wc[0, 0] == pytest.approx(100 / (2 * 20)) and wc[0, 5] == pytest.approx(100 / (2 * 80))
    assert wc.mean() == pytest.approx(1.0)
    weights = border_weight_map(two_cells(), w0=0.0, class_weights=[0.5, 2.0])
    np.testing.assert_array_equal(weights, np.where(two_cells() == 1, 2.0, 0.5))


@pytest.mark.parametrize("sigma,w0", [(5.0, 10.0), (2.0, 3.0), (8.0, 10.0)])
def test_matches_brute_force_on_random_cells(sigma, w0):
    rng = np.random.default_rng(int(sigma))
    blobs = ndimage.gaussian_filter(rng.random((70, 90)), 2.0)
    classes = (blobs > np.median(blobs)).astype(np.int32)
    assert ndimage.label(classes)[1] > 3
    np.testing.assert_allclose(border_weight_map(classes, w0=w0, sigma=sigma),
                               brute_force(classes, w0, sigma), atol=2e-3)


def test_single_cell_or_empty_has_no_border_term():
    classes = np.zeros((20, 20), np.int32)
    np.testing.assert_array_equal(border_weight_map(classes), np.ones((20, 20), np.float32))
    classes[5:10, 5:10] = 1
    np.testing.assert_array_equal(border_weight_map(classes), class_balance_weights(classes))


@pytest.mark.parametrize("kwargs", [dict(classes=np.zeros((4, 4), np.float32)),
                                    dict(classes=np.zeros((4, 4, 3), np.int32)),
                                    dict(classes=np.zeros((4, 4), np.int32), sigma=0),
                                    dict(classes=np.ones((4, 4), np.int32), class_weights=[1.0])])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        border_weight_map(**kwargs)


def test_boundary_band_is_the_same_on_both_sides_of_a_boundary():
    classes = np.zeros((8, 12), np.int32)
    classes[:, 6:] = 1                                      # a vertical boundary between 5 and 6
    band = boundary_band_weights(classes, weight=4.0, sigma=2.0)
    assert band.dtype == np.float32 and band.shape == classes.shape
    expected = 4.0 * np.exp(-(np.array([5, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 5.0]) ** 2) / 8)
    np.testing.assert_allclose(band, np.broadcast_to(expected, band.shape), rtol=1e-6)
    np.testing.assert_array_equal(boundary_band_weights(np.ones((5, 5), np.int32)), 0.0)
    np.testing.assert_array_equal(boundary_band_weights(classes, weight=0.0), 0.0)


def test_boundary_band_matches_brute_force_with_three_classes():
    rng = np.random.default_rng(4)
    classes = (ndimage.gaussian_filter(rng.random((30, 40)), 2.0) * 3000).astype(np.int32) % 3
    assert len(np.unique(classes)) == 3
    rows, cols = np.indices(classes.shape)
    expected = np.empty(classes.shape)
    for r, c in np.ndindex(classes.shape):
        other = classes != classes[r, c]
        d = np.sqrt((rows[other] - r) ** 2 + (cols[other] - c) ** 2).min()
        expected[r, c] = 2.5 * np.exp(-(d - 1) ** 2 / (2 * 1.5 ** 2))
    np.testing.assert_allclose(boundary_band_weights(classes, 2.5, 1.5), expected, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(classes=np.zeros((4, 4), np.float32)),
                                    dict(classes=np.zeros((4, 4), np.int32), sigma=0),
                                    dict(classes=np.zeros((4, 4), np.int32), weight=-1)])
def test_boundary_band_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        boundary_band_weights(**kwargs)


def test_isbi_mask_speed():
    files = sorted(glob.glob(os.path.join(ISBI, "train", "mask", "*.png")))
    if not files:
        pytest.skip("ISBI 2012 data not present")
    from unet.data.imageio import read_mask
    classes = (read_mask(files[0]) == 255).astype(np.int32)
    assert ndimage.label(classes)[1] > 50
    start = time.perf_counter()
    weights = border_weight_map(classes)
    assert time.perf_counter() - start < 2.0  # about 0.05 s on one core
    assert weights.max() > 5.0
