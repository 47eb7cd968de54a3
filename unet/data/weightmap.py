"""Per-pixel loss weights: the U-Net paper's border weight map, which makes the thin gaps
between touching cells count, and a boundary band, which makes every class boundary count.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``w_c`` balances class frequencies, ``d1`` and ``d2`` are the distances to the nearest and the
second-nearest cell. Cells are the connected components (4-connected) of the foreground,
``class != 0``. As in the paper's figure, the border term is put on background pixels only: a
pixel inside a cell is not a border to be learned.

Speed: the border term is below ``tol`` once ``d1 + d2 > cutoff = sigma * sqrt(2 ln(w0 / tol))``,
and both cells must then lie within ``cutoff`` of the pixel. So each cell's distance transform is
computed only on its bounding box grown by ``cutoff``, and the two smallest distances are kept
per pixel.
"""
import math

import numpy as np
from scipy import ndimage

_TOL = 1e-3  # border-term values below this are dropped


def class_balance_weights(classes):
    """Per-pixel ``w_c``: class ``k`` gets ``N / (K * count_k)`` over the ``K`` classes present.

    The mean of the returned map is 1.

    Parameters
    ----------
    classes : numpy.ndarray
        Integer ``(H, W)`` class indices.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W)``.
    """
    values, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
    weights = classes.size / (len(values) * counts.astype(np.float64))
    return weights[inverse].reshape(classes.shape).astype(np.float32)


def _two_nearest_cell_distances(cells, cutoff):
    """(d1, d2): distances to the nearest and second-nearest cell, inf beyond ``cutoff``."""
    height, width = cells.shape
    d1 = np.full(cells.shape, np.inf, np.float32)
    d2 = np.full(cells.shape, np.inf, np.float32)
    margin = int(math.ceil(cutoff))
    for label, box in enumerate(ndimage.find_objects(cells), start=1):
        if box is None:
            continue
        rows = slice(max(box[0].start - margin, 0), min(box[0].stop + margin, height))
        cols = slice(max(box[1].start - margin, 0), min(box[1].stop + margin, width))
        # Every pixel of this cell is inside the grown box, so the cropped transform is exact.
        dist = ndimage.distance_transform_edt(cells[rows, cols] != label).astype(np.float32)
        near, second = d1[rows, cols], d2[rows, cols]
        d2[rows, cols] = np.minimum(second, np.maximum(near, dist))
        d1[rows, cols] = np.minimum(near, dist)
    return d1, d2


def _checked(classes, sigma, **height):
    """``classes`` as an integer ``(H, W)`` array; ValueError unless it is one, ``sigma > 0`` and
    the one named height (``w0`` or ``weight``) is ``>= 0``."""
    classes = np.asarray(classes)
    if classes.ndim != 2 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes must be an integer (H, W) array, got {classes.dtype} "
                         f"{classes.shape}")
    (name, value), = height.items()
    if value < 0 or sigma <= 0:
        raise ValueError(f"need {name} >= 0 and sigma > 0, got {name}={value}, sigma={sigma}")
    return classes


def border_weight_map(classes, w0=10.0, sigma=5.0, class_weights=None):
    """Weight map of the U-Net paper for one mask.

    Parameters
    ----------
    classes : numpy.ndarray
        Integer ``(H, W)`` class indices; class 0 is background, any other class is foreground.
    w0 : float, default 10.0
        Height of the border term; 0 gives the class weights alone.
    sigma : float, default 5.0
        Width of the border term in pixels.
    class_weights : sequence of float, optional
        ``w_c`` per class index; default: :func:`class_balance_weights` of this mask.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W)``: ``w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on background pixels
        between at least two cells, ``w_c`` elsewhere.
    """
    classes = _checked(classes, w0=w0, sigma=sigma)
    if class_weights is None:
        weights = class_balance_weights(classes)
    else:
        table = np.asarray(class_weights, np.float32)
        if table.ndim != 1 or (classes.size and (classes.min() < 0
                                                 or classes.max() >= len(table))):
            raise ValueError(f"class_weights {list(class_weights)} must give one weight per "
                             f"class 0..{classes.max()}")
        weights = table[classes]
    if w0 == 0:
        return weights.astype(np.float32)
    cells, count = ndimage.label(classes != 0)
    if count < 2:
        return weights.astype(np.float32)
    cutoff = sigma * math.sqrt(2.0 * math.log(max(w0 / _TOL, 1.0 + 1e-9)))
    d1, d2 = _two_nearest_cell_distances(cells, cutoff)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma ** 2))  # 0 where d2 is inf
    border[cells != 0] = 0.0
    return (weights + border).astype(np.float32)


def boundary_band_weights(classes, weight=5.0, sigma=2.0):
    """Extra loss weight on both sides of every class boundary (not the reference's; an option).

        b(x) = weight * exp(-(d(x) - 1)^2 / (2 sigma^2))

    ``d`` is the distance from a pixel to the nearest pixel of another class, so the pixels
    touching a boundary, on either side, get ``weight``. Unlike the paper's map the term depends
    on the distance alone, the same for both classes: it spends the loss on where a boundary lies.
    A thin class still gains weight overall, since all its pixels lie near a boundary (on an
    ISBI mask with ``weight=5, sigma=2``, membrane pixels average 1 + 3.9, cell pixels 1 + 1.1).

    Parameters
    ----------
    classes : numpy.ndarray
        Integer ``(H, W)`` class indices.
    weight : float, default 5.0
        The term at the boundary; 0 gives zeros.
    sigma : float, default 2.0
        Its width in pixels.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W)``, zeros where the mask has a single class. Add it to a base weight map
        (ones, or :func:`border_weight_map`).
    """
    classes = _checked(classes, weight=weight, sigma=sigma)
    values = np.unique(classes)
    if weight == 0 or len(values) < 2:
        return np.zeros(classes.shape, np.float32)
    distance = np.zeros(classes.shape, np.float64)
    for value in values:
        inside = classes == value
        # Inside this class, the distance to the nearest pixel of any other class.
        distance[inside] = ndimage.distance_transform_edt(inside)[inside]
    return (weight * np.exp(-((distance - 1.0) ** 2) / (2.0 * sigma ** 2))).astype(np.float32)
