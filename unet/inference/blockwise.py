"""Blockwise overlap-tiling: the prediction of one window of an image that is read by regions.

The whole image's tiling is kept (:func:`unet.inference.tiling.tile_layout` on its full height
and width): a window is predicted from the tiles of that layout that overlap it, run on the
window's region plus a halo of up to one tile, mirror-padded where it meets the image border
exactly as ``np.pad(mode='reflect')`` pads the whole image. Every pixel then gets the same tiles,
windows and blend weights as in :func:`unet.inference.tiling.predict_probabilities`, so windows
put side by side equal the in-memory prediction up to float rounding: no seams at their borders.
A tile that overlaps two windows is run for each.
"""
import numpy as np

from ..data.samples import match_channels
from .segmenter import CALIBRATION_TILES, Prediction, classes_from_probabilities, output_arrays
from .tiling import _contexts, blend_tiles, tile_layout

#: Output array of each ``--probabilities`` kind in a chunked output.
PROBABILITY_ARRAYS = {"png16": ("uint16", ()), "npy": ("float32", ())}


def _axis_plan(size, window, tile_size, overlap):
    """Along one axis of ``size`` pixels: the offsets (in the padded image) of the whole image's
    tiles that overlap the pixels ``window`` (a slice), the first padded pixel they cover, the
    image pixel behind each padded pixel they cover, and the padding before pixel 0."""
    pad_before, pad_after, offsets = tile_layout(size, tile_size, overlap)
    start, stop = window.start + pad_before, window.stop + pad_before
    chosen = [o for o in offsets if o < stop and o + tile_size > start]
    first, last = chosen[0], chosen[-1] + tile_size
    source = np.pad(np.arange(size), (pad_before, pad_after), mode="reflect")[first:last]
    return chosen, first, source, pad_before


def _network_window(segmenter, image, z, rows, cols):
    """``(K, h, w)`` float32: one network's probabilities of the window ``rows x cols`` of slice
    ``z`` of ``image`` (a :class:`unet.data.chunked_io.ChunkedImage`)."""
    tile = segmenter.tile_size
    overlap = tile // 4 if segmenter.overlap is None else segmenter.overlap
    ys, y_first, y_source, pad_y = _axis_plan(image.shape[1], rows, tile, overlap)
    xs, x_first, x_source, pad_x = _axis_plan(image.shape[2], cols, tile, overlap)
    y_low, x_low = int(y_source.min()), int(x_source.min())
    pixels = image.region(z, slice(y_low, int(y_source.max()) + 1),
                          slice(x_low, int(x_source.max()) + 1))          # (h', w', C) [0, 1]
    region = segmenter.normalization.apply(match_channels(pixels, segmenter.channels,
                                                          image.name))    # (C, h', w')
    padded = region[:, y_source - y_low][:, :, x_source - x_low]          # (C, Hp, Wp)

    places = [(y - y_first, x - x_first) for y in ys for x in xs]
    total = blend_tiles(segmenter.forward_net, padded, places, tile, overlap,
                        _contexts(segmenter.ctx), segmenter.batch_size,
                        segmenter.tta)                                    # (K, Hp, Wp)
    top, left = rows.start + pad_y - y_first, cols.start + pad_x - x_first
    return total[:, top:top + rows.stop - rows.start, left:left + cols.stop - cols.start].copy()


def predict_window(segmenter, image, z, rows, cols):
    """A :class:`unet.inference.segmenter.Prediction` of the window ``rows x cols`` (slices) of
    slice ``z`` of ``image``, as :meth:`Segmenter.predict` on the whole slice would give it
    there: an ensemble's members averaged, then thresholded. Cell splitting, which needs the
    whole image, is not done."""
    probabilities = _network_window(segmenter, image, z, rows, cols)
    if segmenter.members:
        for member in segmenter.members:
            probabilities += _network_window(member, image, z, rows, cols)
        probabilities /= 1 + len(segmenter.members)
    classes = classes_from_probabilities(probabilities, segmenter.threshold)
    return Prediction(probabilities, classes, segmenter.encoding.encode(classes))


def window_arrays(segmenter, image, z, rows, cols, probabilities=None, overlay=False):
    """The arrays of one output chunk by array name: ``mask``; with ``probabilities``
    ('png16' or 'npy'), ``probabilities`` (uint16 or float32 foreground probability); with
    ``overlay``, ``overlay`` (uint8 RGB, the mask drawn over the input)."""
    pixels = image.region(z, rows, cols) if overlay else None
    arrays = output_arrays(predict_window(segmenter, image, z, rows, cols), pixels, overlay,
                           probabilities)
    if probabilities:
        arrays["probabilities"] = arrays.pop(probabilities)
    return arrays


def output_layout(segmenter, probabilities=None, overlay=False):
    """``{name: (dtype, trailing shape)}`` of the arrays :func:`window_arrays` gives."""
    mask = segmenter.encoding.encode(np.zeros((1, 1), np.int32))
    layout = {"mask": (mask.dtype.name, mask.shape[2:])}
    if overlay:
        layout["overlay"] = ("uint8", (3,))
    if probabilities:
        layout["probabilities"] = PROBABILITY_ARRAYS[probabilities]
    return layout


def calibrate(segmenter, image, chunk):
    """Calibrate an int8 segmenter (``amp='int8'``) on up to :data:`CALIBRATION_TILES` regions
    of ``chunk`` pixels spread over ``image`` (a no-op otherwise)."""
    if not segmenter.needs_calibration and not any(m.needs_calibration
                                                   for m in segmenter.members):
        return
    depth, height, width = image.shape
    places = np.linspace(0, depth * height * width - 1, CALIBRATION_TILES).astype(np.int64)
    regions = []
    for place in places:
        z, y, x = np.unravel_index(place, image.shape)
        y0, x0 = min(y, max(height - chunk, 0)), min(x, max(width - chunk, 0))
        regions.append(image.region(int(z), slice(y0, min(y0 + chunk, height)),
                                    slice(x0, min(x0 + chunk, width))))
    segmenter.calibrate(regions, [f"{image.name} region {i}" for i in range(len(regions))])
