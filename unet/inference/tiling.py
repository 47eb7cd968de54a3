"""Overlap-tile prediction: class probabilities for an image of any size (the paper, section 2).

The image is mirror-padded, cut into square tiles of the model's training size that overlap, each
tile is run through the network (several per forward pass), and the tiles' softmax outputs are
blended with a smooth weight window that falls off towards the tile edges. A tile's border pixels
see less context than its centre, so down-weighting them hides the seams. An image that is
exactly one tile is predicted by one forward pass and equals the direct prediction.
"""
import logging

import mxnet as mx
import numpy as np

logger = logging.getLogger(__name__)

#: Weight of a tile's outermost pixels relative to its centre: small, never zero, so every pixel
#: has a positive total weight even where only one tile's edge covers it.
EDGE_WEIGHT = 1e-3


def dihedral(array, k):
    """Transform ``k`` in 0..7 of the square's symmetry group on the last two axes.

    ``k % 4`` quarter turns, then a left-right flip when ``k >= 4``.
    """
    out = np.rot90(array, k % 4, axes=(-2, -1))
    return out[..., ::-1] if k >= 4 else out


def undo_dihedral(array, k):
    """Inverse of :func:`dihedral`: ``undo_dihedral(dihedral(a, k), k) == a``."""
    if k >= 4:
        array = array[..., ::-1]
    return np.rot90(array, -(k % 4), axes=(-2, -1))


def blend_window(tile_size, ramp):
    """``(tile_size, tile_size)`` float32 weights: 1 in the centre, a cosine ramp of ``ramp``
    pixels down to :data:`EDGE_WEIGHT` at every edge; separable and symmetric under rotation."""
    distance = np.minimum(np.arange(tile_size), np.arange(tile_size)[::-1]) + 0.5  # to the edge
    ramp = max(int(ramp), 1)
    fraction = np.clip(distance / ramp, 0.0, 1.0)
    line = EDGE_WEIGHT + (1.0 - EDGE_WEIGHT) * (0.5 - 0.5 * np.cos(np.pi * fraction))
    return np.outer(line, line).astype(np.float32)


def tile_layout(size, tile_size, overlap):
    """Mirror padding and tile offsets along one axis of ``size`` pixels.

    Returns ``(pad_before, pad_after, offsets)``. An axis no longer than a tile is padded (centred)
    to exactly one tile, with no padding at all when it is exactly one tile. A longer axis gets a
    mirrored margin of ``overlap // 2`` on both sides, so that the image border sits inside a tile
    rather than on its edge, and the fewest tiles that overlap by at least ``overlap``, spread
    evenly from end to end.
    """
    if size <= tile_size:
        extra = tile_size - size
        return extra // 2, extra - extra // 2, [0]
    margin = overlap // 2
    length = size + 2 * margin
    stride = tile_size - overlap
    count = -(-(length - tile_size) // stride) + 1                       # ceil division
    offsets = np.linspace(0, length - tile_size, count).round().astype(int)
    return margin, margin, [int(o) for o in offsets]


def _contexts(ctx):
    if ctx is None:
        return [mx.cpu()]
    if isinstance(ctx, mx.Context):
        return [ctx]
    ctx = list(ctx)
    if not ctx or not all(isinstance(c, mx.Context) for c in ctx):
        raise ValueError(f"ctx must be an mx.Context or a non-empty list of them, got {ctx!r}")
    return ctx


def _forward(net, batch, contexts):
    """Softmax over classes of ``net`` on a ``(B, C, T, T)`` numpy batch, split across contexts."""
    parts = np.array_split(batch, min(len(contexts), len(batch)))
    outputs = []
    for part, ctx in zip(parts, contexts):
        scores = net(mx.nd.array(part, ctx=ctx, dtype=np.float32))    # (b, K, T, T)
        outputs.append(mx.nd.softmax(scores.astype("float32"), axis=1))
    return np.concatenate([out.asnumpy() for out in outputs], axis=0)


def _check_arguments(image, tile_size, batch_size, overlap):
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(f"image must be a (C, H, W) numpy array, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    if min(image.shape) < 1:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    for name, value in (("tile_size", tile_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if overlap is None:
        return tile_size // 4
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) \
            or not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be an integer in [0, tile_size={tile_size}), "
                         f"got {overlap!r}")
    return int(overlap)


def _padded_layout(image, tile_size, overlap):
    """The ``(C, H, W)`` image mirror-padded for tiling, the tile offsets along each axis
    (:func:`tile_layout`) and the top-left padding: ``(padded, rows, cols, (pad_y, pad_x))``."""
    _, height, width = image.shape
    pad_y0, pad_y1, rows = tile_layout(height, tile_size, overlap)
    pad_x0, pad_x1, cols = tile_layout(width, tile_size, overlap)
    padded = np.pad(image.astype(np.float32, copy=False),
                    ((0, 0), (pad_y0, pad_y1), (pad_x0, pad_x1)), mode="reflect")
    return padded, rows, cols, (pad_y0, pad_x0)


def evenly_spaced(length, count):
    """Up to ``count`` indices of ``range(length)`` spread evenly, first and last included."""
    return np.linspace(0, length - 1, min(count, length)).round().astype(int)


def sample_tiles(image, tile_size, count=4):
    """Up to ``count`` tiles of a normalized ``(C, H, W)`` image, as the tiling pads and places
    them (no overlap), spread evenly over the image: ``(N, C, T, T)`` float32."""
    padded, rows, cols, _ = _padded_layout(image, tile_size, 0)
    places = [(y, x) for y in rows for x in cols]
    return np.stack([padded[:, y:y + tile_size, x:x + tile_size]
                     for y, x in (places[i] for i in evenly_spaced(len(places), count))])


def blend_tiles(net, padded, places, tile_size, overlap, contexts, batch_size=4, tta=False,
                progress=None):
    """``(K, H', W')`` float32: the probabilities of ``net`` on the tiles of the padded
    ``(C, H', W')`` image at ``places`` (top-left ``(y, x)`` offsets), blended with
    :func:`blend_window` weights, ``batch_size`` tiles (each TTA variant counted) a forward pass;
    ``progress`` advances after each pass. Every pixel must be covered by a tile."""
    window = blend_window(tile_size, overlap)
    transforms = range(8) if tta else [0]
    share = window / len(transforms)
    jobs = [(y, x, k) for y, x in places for k in transforms]
    total = None                                                 # (K, H', W') weighted sum
    weight = np.zeros(padded.shape[1:], np.float32)              # (H', W')
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        batch = np.stack([dihedral(padded[:, y:y + tile_size, x:x + tile_size], k)
                          for y, x, k in chunk])                 # (B, C, T, T)
        probs = _forward(net, np.ascontiguousarray(batch), contexts)  # (B, K, T, T)
        if total is None:
            total = np.zeros((probs.shape[1],) + padded.shape[1:], np.float32)
        for (y, x, k), prob in zip(chunk, probs):
            total[:, y:y + tile_size, x:x + tile_size] += undo_dihedral(prob, k) * share
            weight[y:y + tile_size, x:x + tile_size] += share
        if progress is not None:
            progress.update(1)
    total /= weight
    return total


def predict_probabilities(net, image, tile_size, ctx=None, batch_size=4, overlap=None, tta=False,
                          progress=None):
    """Class probabilities of ``net`` for a normalized image of any size, by overlap-tiling.

    Parameters
    ----------
    net : mxnet.gluon.Block
        Initialized network mapping ``(N, C, T, T)`` to ``(N, K, T, T)`` class scores; it may be
        hybridized. It must live on every context in ``ctx``.
    image : numpy.ndarray
        ``(C, H, W)`` float32 normalized image; any ``H, W >= 1``.
    tile_size : int
        Side ``T`` of the square tiles: the model's ``image_size`` (a layer-norm model accepts no
        other width).
    ctx : mxnet.Context or list of mxnet.Context, default None
        Where the forward passes run; a batch is split across a list. None means ``mx.cpu()``.
    batch_size : int, default 4
        Tiles (counting each TTA variant) per forward pass.
    overlap : int, default None
        Minimum overlap of neighbouring tiles in pixels, in ``[0, T)``; None means ``T // 4``.
        The mirrored margin at the image border is ``overlap // 2``.
    tta : bool, default False
        Average every tile over the 8 flips and quarter turns, each mapped back before averaging.
        Tiles, not the image, are turned, so every forward pass is still ``T x T``.
    progress : tqdm.tqdm, default None
        A progress bar counting forward passes: its total grows by this image's, and it
        advances after each.

    Returns
    -------
    numpy.ndarray
        ``(K, H, W)`` float32 probabilities; they sum to 1 over the classes at every pixel.
    """
    overlap = _check_arguments(image, tile_size, batch_size, overlap)
    contexts = _contexts(ctx)
    _, height, width = image.shape
    padded, rows, cols, (pad_y0, pad_x0) = _padded_layout(image, tile_size, overlap)
    places = [(y, x) for y in rows for x in cols]
    passes = -(-len(places) * (8 if tta else 1) // batch_size)
    logger.debug("image %dx%d: %d tiles of %d, overlap %d, %d forward passes",
                 height, width, len(rows) * len(cols), tile_size, overlap, passes)
    if progress is not None:
        # No refresh(): tqdm's refresh draws a delayed bar at once, and then never clears it.
        progress.total = (progress.total or 0) + passes

    total = blend_tiles(net, padded, places, tile_size, overlap, contexts, batch_size, tta,
                        progress)                                # (K, H', W')
    return total[:, pad_y0:pad_y0 + height, pad_x0:pad_x0 + width].copy()
