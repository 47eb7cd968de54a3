"""Multi-page TIFF stacks (serial sections): reading them as slices, writing them page by page.

A stack is a TIFF of more than one page: plain multi-page, an ImageJ hyperstack or an OME-TIFF.
tifffile's first series and its axes (``ZYX``, ``TZYX``, ``ZCYX``, ``IYX``, ``ZYXS``, ...) say how
the pages form slices: one axis other than ``Y``, ``X`` and the channels ``C``/``S`` may be
longer than 1 (the slices, ``Z``), and one channel axis (1 or 3 channels). Pixels scale as in
:func:`unet.data.imageio.read_image`. A single-page TIFF is an image, for ``read_image``.

Slices are ``(Z, H, W, C)`` float32 images or ``(Z, H, W)`` / ``(Z, H, W, 3)`` integer masks;
stacks are written as ImageJ TIFFs (Fiji opens them as Z stacks), one page per slice.
"""
import contextlib
import logging
import math

import numpy as np
import tifffile
from PIL import Image

from ..core.errors import InputError
from .imageio import (_check_size, _open_file, _pil_decode, display_path, image_from_array,
                      image_size, mask_from_array, read_mask, write_file)

_TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF
_CHANNEL_AXES = "CS"


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs its complaints about a damaged file; the InputError line says it alone."""
    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        tiff_log.setLevel(level)


def is_stack(path):
    """Whether ``path`` is a TIFF of more than one page. False for anything else, including a
    file tifffile cannot open: :func:`unet.data.imageio.read_image` then says what is wrong."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) not in _TIFF_SIGNATURES:
                return False
            handle.seek(0)
            with _quiet_tifffile(), tifffile.TiffFile(handle) as tif:
                return len(tif.pages) > 1
    except Exception:  # tifffile raises many types for a damaged file; read_image names it
        return False


def _layout(name, axes, shape):
    """``(order, (Z, H, W, C), alpha)``: the transpose of tifffile's ``axes`` into slices, rows,
    columns and channels, the shape it is then reshaped to, and whether the last channel is an
    alpha to drop (``S`` of 2 or 4). InputError for axes that are not gray or RGB slices."""
    size = dict(zip(axes, shape))
    if "Y" not in size or "X" not in size:
        raise InputError(f"{name}: TIFF axes {axes} have no image plane (Y and X)")
    slices = [a for a in axes if a not in "YX" + _CHANNEL_AXES]
    channels = [a for a in axes if a in _CHANNEL_AXES]
    long_slices = [a for a in slices if size[a] > 1]
    long_channels = [a for a in channels if size[a] > 1]
    if len(long_slices) > 1 or len(long_channels) > 1:
        sizes = ", ".join(f"{a}={size[a]}" for a in long_slices + long_channels)
        raise InputError(f"{name}: TIFF axes {axes} ({sizes}) do not form one stack of slices; "
                         "save one Z stack per file")
    count = math.prod(size[a] for a in channels)
    alpha = long_channels == ["S"] and count in (2, 4)
    if count - alpha not in (1, 3):
        raise InputError(f"{name}: {count} channels (TIFF axes {axes}); a stack's slices must "
                         "be gray or RGB")
    order = [axes.index(a) for a in slices + ["Y", "X"] + channels]
    depth = math.prod(size[a] for a in slices)
    return order, (depth, size["Y"], size["X"], count), alpha


def _check_pages(name, tif):
    """InputError unless every page has the first page's size and they form one series."""
    tif.pages.useframes = False  # real pages: an OME-TIFF's frames would take the first's size
    first = tif.pages.first
    for number, page in enumerate(tif.pages, 1):
        if (page.imagelength, page.imagewidth) != (first.imagelength, first.imagewidth):
            raise InputError(f"{name}: page {number} is {page.imagewidth}x{page.imagelength}, "
                             f"page 1 {first.imagewidth}x{first.imagelength}; a stack's pages "
                             "must all be one size")
    if len(tif.series) > 1:
        kinds = ", ".join(f"{s.axes} {s.dtype}" for s in tif.series[:3])
        raise InputError(f"{name}: its pages form {len(tif.series)} different series ({kinds}); "
                         "a stack's pages must all be alike")


def _with_stack(path, read):
    """``read(name, tif, handle)`` on the checked TIFF stack ``path``; InputError (one line,
    naming the file) for whatever goes wrong."""
    name = display_path(path)
    with _open_file(path) as handle:
        try:
            with _quiet_tifffile(), tifffile.TiffFile(handle) as tif:
                _check_pages(name, tif)
                return read(name, tif, handle)
        except InputError:
            raise
        except Exception as err:  # tifffile raises many types for a damaged or odd file
            raise InputError(f"{name}: cannot read as a TIFF stack ({type(err).__name__}: "
                             f"{err})") from None


def _pil_pages(name, handle, count, as_mask):
    """The ``count`` pages decoded by PIL as :func:`unet.data.imageio.read_image` does: for
    compressions tifffile has no codec for (LZW without imagecodecs) and palette images."""
    handle.seek(0)
    with Image.open(handle) as image:
        pages = []
        for index in range(count):
            image.seek(index)
            pages.append(_pil_decode(f"{name} page {index + 1}", image, as_mask))
    return np.stack(pages)


def _read_slices(path, as_mask):
    """``(name, array)``: the TIFF stack ``path`` as ``(Z, H, W, C)`` pixels as stored (alpha
    dropped)."""
    def read(name, tif, handle):
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        _check_size(name, *_layout(name, axes, shape)[1][1:3])
        try:
            if tif.pages.first.photometric == tifffile.PHOTOMETRIC.PALETTE and not as_mask:
                raise ValueError("palette colours: PIL decodes them as read_image does")
            array = series.asarray()
        except Exception:  # a codec tifffile lacks: PIL decodes page by page
            pages = _pil_pages(name, handle, len(tif.pages), as_mask)  # (P, H, W[, 3])
            page_axes = [a for a in axes if a not in "YXS"]
            array = pages.reshape([shape[axes.index(a)] for a in page_axes] + list(pages.shape[1:]))
            axes = "".join(page_axes) + "YX" + "S" * (pages.ndim == 4)
        order, slices, alpha = _layout(name, axes, array.shape)
        array = array.transpose(order).reshape(slices)
        return name, array[..., :-1] if alpha else array

    name, array = _with_stack(path, read)
    if array.dtype == bool:  # 1-bit: 0/1 as a mask, black/white as an image
        array = array.astype(np.uint8) * (1 if as_mask else 255)
    return name, array


def read_stack(path):
    """Read a multi-page TIFF as float32 ``(Z, H, W, C)`` slices in ``[0, 1]``, ``C`` in {1, 3}.

    Scaled as :func:`unet.data.imageio.read_image` (8-bit / 255, 16-bit / 65535, float clipped);
    an alpha channel (``S`` of 2 or 4) is dropped.

    Raises
    ------
    InputError
        Missing, empty or unreadable file; pages of different sizes or kinds; axes that are not
        one stack of gray or RGB slices; a slice of more than ``MAX_PIXELS`` pixels.
    """
    name, array = _read_slices(path, as_mask=False)
    depth, height, width, channels = array.shape
    flat = image_from_array(name, array.reshape(depth * height, width, channels))  # (Z*H, W, C)
    return flat.reshape(depth, height, width, channels)


def read_mask_stack(path):
    """Read a multi-page TIFF of masks: integer ``(Z, H, W)``, or ``(Z, H, W, 3)`` for colour.

    As :func:`unet.data.imageio.read_mask` on every slice (a colour stack whose channels are
    all equal is gray). Raises InputError as :func:`read_stack`, and for non-integer or
    negative masks.
    """
    name, array = _read_slices(path, as_mask=True)
    depth, height, width, channels = array.shape
    flat = array.reshape(depth * height, width, channels)
    flat = mask_from_array(name, flat[:, :, 0] if channels == 1 else flat)
    return flat.reshape((depth, height, width) + flat.shape[2:])


def stack_shape(path):
    """``(Z, H, W)`` of an image file: ``Z`` slices of a TIFF stack, else ``(1, H, W)`` from the
    header (:func:`unet.data.imageio.image_size`). InputError as the readers."""
    if not is_stack(path):
        return (1,) + image_size(path)

    def read(name, tif, handle):
        series = tif.series[0]
        _, slices, _ = _layout(name, series.axes, series.shape)
        _check_size(name, slices[1], slices[2])
        return slices[:3]

    return _with_stack(path, read)


def read_mask_slices(path, shape, encoding):
    """Ground-truth classes ``(Z, H, W)`` int of the mask image or mask stack ``path`` for the
    ``(Z, H, W)`` slices ``shape``, decoded with ``encoding``
    (:class:`unet.data.masks.MaskEncoding`). InputError for another slice count or size, or a
    value the encoding does not know."""
    raw = read_mask_stack(path) if is_stack(path) else read_mask(path)[None]
    name = display_path(path)
    if len(raw) != shape[0]:
        raise InputError(f"{name}: {len(raw)} mask slice(s) for an image of {shape[0]}")
    if tuple(raw.shape[1:3]) != tuple(shape[1:]):
        raise InputError(f"{name}: mask is {raw.shape[2]}x{raw.shape[1]}, its image "
                         f"{shape[2]}x{shape[1]}")
    return np.stack([encoding.decode(mask, name=f"{name} slice {z}" if len(raw) > 1 else name)
                     for z, mask in enumerate(raw)])


def write_stack(path, array):
    """Atomically write ``array`` as an ImageJ multi-page TIFF, one page per slice.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; TIFF is written whatever the suffix.
    array : numpy.ndarray
        uint8 or uint16 ``(Z, H, W)`` gray, or uint8 ``(Z, H, W, 3)`` RGB.

    Raises
    ------
    ValueError
        Wrong dtype or shape.
    InputError
        The folder does not exist or is not writable.
    """
    array = np.asarray(array)
    rgb = array.ndim == 4 and array.shape[3] == 3
    if array.dtype not in (np.uint8, np.uint16) or (rgb and array.dtype != np.uint8):
        raise ValueError(f"write_stack needs uint8 or uint16 gray, uint8 RGB; got {array.dtype}")
    if not (array.ndim == 3 or rgb) or 0 in array.shape:
        raise ValueError(f"write_stack needs (Z, H, W) or (Z, H, W, 3), got shape {array.shape}")
    write_file(path, lambda tmp: tifffile.imwrite(
        tmp, array, imagej=True, photometric="rgb" if rgb else "minisblack",
        metadata={"axes": "ZYXS" if rgb else "ZYX"}))
