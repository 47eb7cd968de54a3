import imgaug.augmenters as iaa
import imgaug.random
import numpy as np
import pytest
from scipy import ndimage

from unet.data.augment import ElasticGrid, augment, build_augmenter, center_crop, mirror_pad


def blobs(height, width, seed=0):
    """A smooth image saturated to ~0.1 / ~0.9 and its thresholded mask.

    Intensity jitter (brightness 0.1, contrast 0.2, gamma 1.25) cannot move 0.1 or 0.9 across 0.5,
    so thresholding the augmented image must give back the augmented mask.
    """
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((height, width)), 4)
    smooth = (smooth - smooth.mean()) / smooth.std()
    image = (0.5 + 0.4 * np.tanh(4 * smooth)).astype(np.float32)
    return image, (image > 0.5).astype(np.int32)


@pytest.mark.parametrize("height,width,crop", [(90, 70, 64), (40, 23, 48), (64, 64, 64)])
def test_augmentation_keeps_image_mask_and_weight_aligned(height, width, crop):
    image, classes = blobs(height, width)
    weight = np.where(classes == 1, 5.0, 1.0).astype(np.float32)
    augmenter = build_augmenter(crop)
    for seed in range(8):
        out, out_classes, out_weight = augment(augmenter, image[:, :, None], classes, weight, seed)
        assert out.shape == (crop, crop, 1) and out.dtype == np.float32
        assert out_classes.shape == (crop, crop) and out_classes.dtype == np.int32
        assert out_weight.shape == (crop, crop) and out_weight.dtype == np.float32
        assert set(np.unique(out_classes)) <= {0, 1}
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert ((out[:, :, 0] > 0.5) == out_classes).mean() > 0.95
        # weights are interpolated linearly: compare with the midpoint between 1 and 5
        assert ((out_weight > 3.0) == (out_classes == 1)).mean() > 0.95
        assert out_weight.min() >= 1.0 - 1e-4 and out_weight.max() <= 5.0 + 1e-4


def d4_images(array):
    """The 8 flips and 90-degree turns of a square ``array``."""
    turns = [np.rot90(array, k) for k in range(4)]
    return turns + [np.fliplr(t) for t in turns]


def moved_copy_of(image, classes, out, out_classes):
    """Whether ``out_classes`` is a crop of ``classes`` flipped or turned, and ``out`` the same
    crop of ``image`` under a monotone intensity map (what Intensity's jitter is)."""
    size = out_classes.shape[0]
    for y in range(image.shape[0] - size + 1):
        for x in range(image.shape[1] - size + 1):
            window = (slice(y, y + size), slice(x, x + size))
            for mask, pixels in zip(d4_images(classes[window]), d4_images(image[window])):
                if np.array_equal(mask, out_classes):
                    order = np.argsort(pixels, axis=None)
                    return bool((np.diff(out.ravel()[order]) >= -1e-6).all())
    return False


def test_lossless_geometry_only_moves_pixels():
    image, classes = blobs(64, 64, seed=2)
    lossless = build_augmenter(48, geometry="lossless")
    for seed in range(8):
        out, out_classes, _ = augment(lossless, image[:, :, None], classes, seed=seed)
        assert moved_copy_of(image, classes, out[:, :, 0], out_classes)
    # the resampling warps do not: they move boundaries by fractions of a pixel
    warped = build_augmenter(48, geometry="elastic")
    moved = [moved_copy_of(image, classes, out[:, :, 0], out_classes)
             for out, out_classes, _ in (augment(warped, image[:, :, None], classes, seed=seed)
                                         for seed in range(8))]
    assert not all(moved)


@pytest.mark.parametrize("geometry, warps", [("lossless", []), ("affine", ["Affine"]),
                                             ("elastic", ["Affine", "ElasticGrid"])])
def test_geometry_selects_the_warps(geometry, warps):
    steps = build_augmenter(32, geometry=geometry)
    found = [type(child).__name__ for step in steps if isinstance(step, iaa.Sometimes)
             for child in step.then_list]
    assert found == warps


def test_mask_values_stay_in_class_set_rgb_three_classes():
    rng = np.random.default_rng(1)
    classes = ndimage.zoom(rng.integers(0, 3, (6, 6)), 10, order=0).astype(np.int32)
    image = np.repeat((classes[:, :, None] / 2.0).astype(np.float32), 3, axis=2)
    augmenter = build_augmenter(48)
    seen = set()
    for seed in range(6):
        out, out_classes, weight = augment(augmenter, image, classes, seed=seed)
        assert out.shape == (48, 48, 3) and weight is None
        seen |= set(np.unique(out_classes).tolist())
    assert seen == {0, 1, 2}


def test_same_seed_same_output_different_seed_different():
    image, classes = blobs(64, 64)
    augmenter = build_augmenter(48)
    imgaug.random.seed(123)  # global imgaug state must not matter
    first = augment(augmenter, image[:, :, None], classes, seed=7)
    np.random.rand(5)
    again = augment(augmenter, image[:, :, None], classes, seed=7)
    other = augment(augmenter, image[:, :, None], classes, seed=8)
    for a, b in zip(first[:2], again[:2]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_elastic_grid_moves_pixels_by_a_plausible_amount():
    size = 96
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ramp = np.dstack([xs, ys]) / size  # each pixel knows where it came from
    rms = []
    for seed in range(6):
        elastic = ElasticGrid(grid=3, sigma=10.0, seed=seed)
        warped = elastic(image=ramp)
        dx, dy = warped[:, :, 0] * size - xs, warped[:, :, 1] * size - ys
        inner = (slice(20, -20), slice(20, -20))  # away from reflected borders
        shift = np.hypot(dx[inner], dy[inner])
        rms.append(np.sqrt((shift ** 2).mean()))
        assert np.abs(np.diff(dx[inner], axis=1)).max() < 2.0  # a smooth field, no tearing
    assert 3.0 < np.mean(rms) < 25.0
    unchanged = ElasticGrid(grid=3, sigma=0.0)(image=ramp)
    np.testing.assert_allclose(unchanged, ramp, atol=1e-6)


def test_elastic_grid_labels_are_nearest_neighbour():
    classes = np.zeros((40, 40), np.int32)
    classes[10:30, 10:30] = 7
    from imgaug.augmentables.segmaps import SegmentationMapsOnImage
    segmap = SegmentationMapsOnImage(classes, shape=(40, 40, 1))
    out = ElasticGrid(sigma=5.0, seed=3)(segmentation_maps=segmap).get_arr()
    assert set(np.unique(out)) == {0, 7} and 0 < (out == 7).sum() < 40 * 40


def test_mirror_pad_and_center_crop():
    array = np.arange(12).reshape(3, 4)
    padded = mirror_pad(array, 6)
    assert padded.shape == (6, 6)
    np.testing.assert_array_equal(padded[1:4, 1:5], array)
    assert mirror_pad(array, 2) is array
    np.testing.assert_array_equal(center_crop(np.arange(25).reshape(5, 5), 3),
                                  [[6, 7, 8], [11, 12, 13], [16, 17, 18]])
    assert center_crop(np.ones((1, 1, 3)), 8).shape == (8, 8, 3)


@pytest.mark.parametrize("call", [lambda: build_augmenter(0), lambda: ElasticGrid(grid=1),
                                  lambda: build_augmenter(32, geometry="warp"),
                                  lambda: augment(iaa.Noop(), np.zeros((4, 4, 1), np.float32),
                                                  np.zeros((4, 5), np.int32))])
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()
