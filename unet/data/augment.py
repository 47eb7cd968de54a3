"""Training augmentation: one geometry for image, mask and weight map; intensity for the image.

The pipeline (:func:`build_augmenter`) is an imgaug ``Sequential``::

    MirrorPadToSize(S) -> CropToFixedSize(S) -> flips, Rot90 -> Affine -> ElasticGrid -> Intensity

(``geometry='affine'`` leaves out ElasticGrid, ``'lossless'`` also Affine.)

It crops first so that the cost does not grow with the image size; the later warps fill the crop's
borders by reflection. Masks ride along as ``SegmentationMapsOnImage`` (nearest neighbour, never
interpolated labels), weight maps as ``HeatmapsOnImage`` (linear); see :func:`augment`.

imgaug's ``Affine`` fills segmentation maps and heatmaps with a constant 0 whatever the image's
mode, which would put background labels under reflected image content. We set its per-type modes
to ``'reflect'`` (private attributes of imgaug 0.4.0, pinned).
"""
import cv2
import imgaug.augmenters as iaa
import numpy as np
from imgaug.augmentables.batches import UnnormalizedBatch
from imgaug.augmentables.heatmaps import HeatmapsOnImage
from imgaug.augmentables.segmaps import SegmentationMapsOnImage

cv2.setNumThreads(0)  # the loader's worker processes are the parallelism


def mirror_pad(array, size):
    """Pad ``(H, W, ...)`` by mirroring, centred, to at least ``size x size``."""
    pad_h, pad_w = max(size - array.shape[0], 0), max(size - array.shape[1], 0)
    if not pad_h and not pad_w:
        return array
    widths = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)]
    widths += [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="symmetric")


def center_crop(array, size):
    """Mirror-pad ``(H, W, ...)`` to at least ``size`` then take the central ``size x size``."""
    array = mirror_pad(array, size)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return array[top:top + size, left:left + size]


def _map_rows(batch, image_fn, segmap_fn, heatmap_fn):
    """Apply per-row functions to a batch's images, segmaps and heatmaps; others are refused."""
    for name in ("keypoints", "bounding_boxes", "polygons", "line_strings"):
        if getattr(batch, name, None) is not None:
            raise ValueError(f"{name} are not supported by this augmenter")
    if batch.images is not None:
        batch.images = [image_fn(i, image) for i, image in enumerate(batch.images)]
    if batch.segmentation_maps is not None:
        for i, segmap in enumerate(batch.segmentation_maps):
            segmap.arr = segmap_fn(i, segmap.arr)
            segmap.shape = segmap.arr.shape[:2] + segmap.shape[2:]
    if batch.heatmaps is not None:
        for i, heatmap in enumerate(batch.heatmaps):
            heatmap.arr_0to1 = heatmap_fn(i, heatmap.arr_0to1)
            heatmap.shape = heatmap.arr_0to1.shape[:2] + heatmap.shape[2:]
    return batch


class MirrorPadToSize(iaa.meta.Augmenter):
    """Mirror-pad images, segmentation maps and heatmaps, centred, to at least ``size x size``."""

    def __init__(self, size, seed=None, name=None, **kwargs):
        super().__init__(seed=seed, name=name, **kwargs)
        self.size = int(size)

    def _augment_batch_(self, batch, random_state, parents, hooks):
        pad = lambda i, array: mirror_pad(array, self.size)  # noqa: E731
        return _map_rows(batch, pad, pad, pad)

    def get_parameters(self):
        return [self.size]


class ElasticGrid(iaa.meta.Augmenter):
    """The U-Net paper's elastic deformation.

    Random displacement vectors on a coarse ``grid x grid`` lattice, drawn from a normal
    distribution with ``sigma`` pixels standard deviation, are bicubically interpolated to a
    per-pixel displacement field. Images are resampled linearly, segmentation maps by nearest
    neighbour, heatmaps linearly; borders are filled by reflection.

    Parameters
    ----------
    grid : int, default 3
        Lattice points per side.
    sigma : float, default 10
        Standard deviation of the displacements, in pixels.
    """

    def __init__(self, grid=3, sigma=10.0, seed=None, name=None, **kwargs):
        super().__init__(seed=seed, name=name, **kwargs)
        if int(grid) < 2 or sigma < 0:
            raise ValueError(f"ElasticGrid needs grid >= 2 and sigma >= 0, got grid={grid}, "
                             f"sigma={sigma}")
        self.grid, self.sigma = int(grid), float(sigma)

    def displacement(self, height, width, random_state):
        """Per-pixel ``(dy, dx)`` field, each float32 ``(height, width)``."""
        coarse = random_state.normal(0.0, self.sigma, (2, self.grid, self.grid))
        return [cv2.resize(c.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
                for c in coarse]

    def _augment_batch_(self, batch, random_state, parents, hooks):
        rows = batch.nb_rows
        states = random_state.duplicate(rows)
        shapes = [None] * rows
        if batch.images is not None:
            shapes = [image.shape[:2] for image in batch.images]
        maps = {}

        def field(i, shape):
            if i not in maps:
                height, width = shapes[i] if shapes[i] is not None else shape
                dy, dx = self.displacement(height, width, states[i])
                ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
                maps[i] = (xs + dx, ys + dy)
            map_x, map_y = maps[i]
            if map_x.shape != tuple(shape):
                raise ValueError(f"ElasticGrid needs maps the size of the image, got {shape}")
            return map_x, map_y

        def warp(array, i, interpolation):
            map_x, map_y = field(i, array.shape[:2])
            channels = array.shape[2] if array.ndim == 3 else 0
            planes = [array] if channels <= 4 else [array[:, :, c] for c in range(channels)]
            out = [cv2.remap(p, map_x, map_y, interpolation, borderMode=cv2.BORDER_REFLECT_101)
                   for p in planes]
            out = out[0] if len(out) == 1 else np.stack(out, axis=2)
            return out.reshape(array.shape)

        def warp_labels(i, arr):
            return warp(arr.astype(np.int32).astype(np.float32), i, cv2.INTER_NEAREST) \
                .astype(arr.dtype)

        return _map_rows(batch, lambda i, a: warp(a, i, cv2.INTER_LINEAR), warp_labels,
                         lambda i, a: warp(a, i, cv2.INTER_LINEAR))

    def get_parameters(self):
        return [self.grid, self.sigma]


class Intensity(iaa.meta.Augmenter):
    """Image-only brightness, contrast and gamma for float images in ``[0, 1]``, clipped.

    ``out = clip((x - m) * c + m + b, 0, 1) ** g`` with ``m`` the image mean,
    ``b ~ U(-brightness, brightness)``, ``c ~ U(1 - contrast, 1 + contrast)`` and
    ``log g ~ U(-log(1 + gamma), log(1 + gamma))``.
    """

    def __init__(self, brightness=0.1, contrast=0.2, gamma=0.25, seed=None, name=None, **kwargs):
        super().__init__(seed=seed, name=name, **kwargs)
        self.brightness, self.contrast, self.gamma = brightness, contrast, gamma

    def _augment_batch_(self, batch, random_state, parents, hooks):
        if batch.images is None:
            return batch
        rows = len(batch.images)
        shift = random_state.uniform(-self.brightness, self.brightness, rows)
        scale = random_state.uniform(1 - self.contrast, 1 + self.contrast, rows)
        log_gamma = np.log1p(self.gamma)
        power = np.exp(random_state.uniform(-log_gamma, log_gamma, rows))
        images = []
        for i, image in enumerate(batch.images):
            mean = float(image.mean())
            out = np.clip((image - mean) * scale[i] + mean + shift[i], 0.0, 1.0) ** power[i]
            images.append(out.astype(image.dtype))
        batch.images = images
        return batch

    def get_parameters(self):
        return [self.brightness, self.contrast, self.gamma]


GEOMETRIES = ("elastic", "affine", "lossless")


def build_augmenter(crop_size, geometry="elastic"):
    """The training augmenter: same geometry for image, mask and weight map.

    Parameters
    ----------
    crop_size : int
        Side ``S`` of the square output; smaller images are mirror-padded first.
    geometry : {'elastic', 'affine', 'lossless'}, default 'elastic'
        ``'lossless'``: random crop, flips and 90-degree turns only, which move pixels without
        resampling them, so a mask's boundaries stay exactly where the image's are.
        ``'affine'`` adds a rotation by up to 10 degrees and a scale of 0.9-1.1 on half the
        samples; ``'elastic'`` also the paper's :class:`ElasticGrid` (grid 3, sigma 10 px) on half
        the samples. Both resample: the image linearly, the mask by nearest neighbour.

    Returns
    -------
    imgaug.augmenters.Sequential
        Takes float32 ``(H, W, C)`` images in ``[0, 1]``; use :func:`augment` to run it.
    """
    if int(crop_size) < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    affine = iaa.Affine(rotate=(-10, 10), scale=(0.9, 1.1), order=1, mode="reflect")
    affine._mode_segmentation_maps = "reflect"  # see the module docstring
    affine._mode_heatmaps = "reflect"
    affine._order_heatmaps = 1  # cubic would overshoot the weights
    steps = [MirrorPadToSize(crop_size), iaa.CropToFixedSize(crop_size, crop_size),
             iaa.Fliplr(0.5), iaa.Flipud(0.5), iaa.Rot90((0, 3))]
    if geometry in ("affine", "elastic"):
        steps.append(iaa.Sometimes(0.5, affine))
    if geometry == "elastic":
        steps.append(iaa.Sometimes(0.5, ElasticGrid(grid=3, sigma=10.0)))
    steps.append(Intensity())
    return iaa.Sequential(steps)


def augment(augmenter, image, classes, weight=None, seed=0):
    """Run ``augmenter`` on one sample, reproducibly.

    A copy of the augmenter is seeded with ``seed``, so the result depends only on the inputs and
    the seed: not on earlier calls, threads or forked workers.

    Parameters
    ----------
    augmenter : imgaug.augmenters.Augmenter
        Typically :func:`build_augmenter`'s.
    image : numpy.ndarray
        float32 ``(H, W, C)`` in ``[0, 1]``.
    classes : numpy.ndarray
        Integer ``(H, W)`` class indices.
    weight : numpy.ndarray, optional
        Non-negative float ``(H, W)`` weight map, carried through the same geometry.
    seed : int, default 0

    Returns
    -------
    tuple
        ``(image float32 (S, S, C), classes int32 (S, S), weight float32 (S, S) or None)``.
    """
    if image.ndim != 3 or classes.shape != image.shape[:2]:
        raise ValueError(f"need image (H, W, C) and classes (H, W) of the same size, got "
                         f"{image.shape} and {classes.shape}")
    aug = augmenter.deepcopy()
    aug.seed_(int(seed))
    segmap = SegmentationMapsOnImage(classes.astype(np.int32), shape=image.shape)
    heatmap = None
    if weight is not None:
        if weight.shape != classes.shape:
            raise ValueError(f"weight shape {weight.shape} differs from classes {classes.shape}")
        top = max(float(weight.max()), 1e-6)
        heatmap = HeatmapsOnImage(weight.astype(np.float32), shape=image.shape, min_value=0.0,
                                  max_value=top)
    batch = aug.augment_batch_(UnnormalizedBatch(
        images=[image.astype(np.float32)], segmentation_maps=[segmap],
        heatmaps=None if heatmap is None else [heatmap]))
    out_image = np.ascontiguousarray(batch.images_aug[0], dtype=np.float32)
    out_classes = batch.segmentation_maps_aug[0].get_arr().astype(np.int32)
    out_weight = None
    if heatmap is not None:
        out_weight = batch.heatmaps_aug[0].get_arr().astype(np.float32).reshape(out_classes.shape)
    return out_image, out_classes, out_weight
