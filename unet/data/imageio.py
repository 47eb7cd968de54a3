"""Reading images and masks from disk, writing PNGs: the one place that touches pixel files.

Images come back as float32 ``(H, W, C)`` in ``[0, 1]`` with ``C`` in {1, 3}; masks as integers
exactly as stored (palette PNGs give their indices). Every user-fixable problem (missing file,
empty, truncated, not an image, too large) is an :class:`unet.core.errors.InputError` whose one-line
message names the file.

The declared size is read from the header before any decoding (PIL opens lazily), so a file that
claims 20000 x 20000 pixels is refused without allocating. Files are read as bytes and decoded from
memory, which keeps paths with spaces or non-UTF-8 bytes working (``cv2.imread`` does not).
"""
import logging
import os
import warnings
import zlib

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.atomic import atomic_path
from ..core.errors import InputError

log = logging.getLogger(__name__)

MAX_PIXELS = 100_000_000

# PIL decodes these modes exactly; anything else (CMYK, 16-bit colour, ...) goes through cv2.
_PIL_EXACT = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L",
              "I;16N", "F"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A file cv2 cannot decode is our one-line InputError; its own warnings would come first.
cv2.setLogLevel(0)


def display_path(path):
    """Return ``path`` as printable one-line text (undecodable bytes shown as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _open_file(path):
    """Open ``path`` for binary reading; InputError when missing, a folder, empty or unreadable."""
    name = display_path(path)
    if not os.path.exists(path):
        raise InputError(f"{name}: file not found")
    if os.path.isdir(path):
        raise InputError(f"{name}: is a directory, not an image file")
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise InputError(f"{name}: cannot read: {err.strerror or err}") from None
    if os.fstat(handle.fileno()).st_size == 0:
        handle.close()
        raise InputError(f"{name}: file is empty (0 bytes)")
    return handle


def _check_size(name, height, width):
    if height < 1 or width < 1:
        raise InputError(f"{name}: image declares an empty size {width}x{height}")
    if height * width > MAX_PIXELS:
        raise InputError(f"{name}: image too large: {width}x{height} pixels, more than "
                         f"{MAX_PIXELS} (MAX_PIXELS)")


def _open_lazy(name, handle):
    """Open with PIL, reading only the header; ``None`` when PIL does not know the format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)
    except Image.DecompressionBombError:
        raise InputError(f"{name}: image too large: declared size over {MAX_PIXELS} "
                         "pixels (MAX_PIXELS)") from None
    except UnidentifiedImageError:
        return None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(f"{name}: corrupt image header: {err}") from None
    _check_size(name, image.height, image.width)
    return image


def _needs_cv2(image):
    """PIL reduces 16-bit colour and 16-bit gray+alpha to 8 bits; cv2 keeps them."""
    return any(";16" in str(tile.args) for tile in image.tile) and not image.mode.startswith("I")


def _cv2_decode(name, data, identified=True):
    """``identified``: whether PIL could read the header. A PNG whose header (IHDR) is damaged
    is refused without asking cv2: its libpng prints its complaints on stderr, past any log
    level. (PIL also gives up on a PNG with a damaged optional chunk, which cv2 decodes.)"""
    if not identified and data.startswith(_PNG_SIGNATURE) and not _sound_png_header(data):
        raise InputError(f"{name}: a corrupt PNG (cannot decode its header)")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise InputError(f"{name}: not an image, or truncated/corrupt (cannot decode)")
    _check_size(name, array.shape[0], array.shape[1])
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]  # BGR -> RGB
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, [2, 1, 0]]  # BGRA -> RGB, alpha dropped
    elif array.ndim == 3 and array.shape[2] == 2:
        array = array[:, :, 0]  # gray + alpha
    return np.ascontiguousarray(array)


def _sound_png_header(data):
    """Whether ``data`` (a PNG's bytes) starts with an intact IHDR chunk of a non-empty image."""
    ihdr = data[8:33]
    if len(ihdr) < 25 or ihdr[:8] != b"\0\0\0\rIHDR":
        return False
    width, height = int.from_bytes(ihdr[8:12], "big"), int.from_bytes(ihdr[12:16], "big")
    return width > 0 and height > 0 and zlib.crc32(ihdr[4:21]) == int.from_bytes(ihdr[21:25],
                                                                                   "big")


def _pil_decode(name, image, as_mask):
    """Decode a lazily opened PIL image to a numpy array (alpha dropped)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            mode = image.mode
            if mode in ("P", "PA"):
                indices = np.asarray(image)
                if indices.ndim == 3:
                    indices = indices[:, :, 0]  # PA: drop alpha
                if as_mask:
                    return indices
                palette = np.asarray(image.getpalette("RGB") or [0, 0, 0], np.uint8).reshape(-1, 3)
                colours = palette[np.clip(indices, 0, len(palette) - 1)]  # (H, W, 3)
                used = palette[np.unique(indices).clip(0, len(palette) - 1)]
                gray = bool(np.all(used == used[:, :1]))
                return colours[:, :, 0] if gray else colours
            if mode not in _PIL_EXACT:
                image = image.convert("RGB")
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise InputError(f"{name}: truncated or corrupt image: {err}") from None
    if array.dtype == bool:  # 1-bit: 0/1 as a mask, black/white as an image
        array = array.astype(np.uint8) * (1 if as_mask else 255)
    if array.ndim == 3 and array.shape[2] in (2, 4):
        array = array[:, :, : array.shape[2] - 1]  # drop alpha
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return np.ascontiguousarray(array)


def _decode(path, as_mask):
    name = display_path(path)
    with _open_file(path) as handle:
        image = _open_lazy(name, handle)
        if image is not None:
            try:
                with warnings.catch_warnings():   # a damaged page's warnings: the error says it
                    warnings.simplefilter("ignore")
                    frames = getattr(image, "n_frames", 1)   # PIL reads every page's header
            except (OSError, SyntaxError, ValueError, EOFError, TypeError) as err:
                raise InputError(f"{name}: truncated or corrupt image: {err}") from None
            if frames > 1:
                kind = "a TIFF stack: give it alone to --image" if image.format == "TIFF" \
                    else "a stack or animation"
                raise InputError(f"{name}: holds {frames} images ({kind}); save one image "
                                 "per file")
            if image.mode in _PIL_EXACT and not _needs_cv2(image):
                try:
                    return name, _pil_decode(name, image, as_mask)
                except InputError:
                    if image.format != "TIFF":  # PIL lacks some TIFF codecs that cv2 has
                        raise
        handle.seek(0)
        array = _cv2_decode(name, handle.read(), identified=image is not None)
    if image is not None:
        gray_png = any(str(tile.args).startswith("LA;") for tile in image.tile)  # PIL: RGBA
        if (image.mode in _GRAY_MODES or gray_png) and array.ndim == 3:
            array = array[:, :, 0]
    return name, array


def _to_unit_float(name, array):
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        # Float files are taken to be on the [0, 1] scale already.
        return np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0)
    if np.issubdtype(array.dtype, np.integer) and array.size and array.min() >= 0 \
            and array.max() <= 65535:
        return array.astype(np.float32) / 65535.0
    raise InputError(f"{name}: unsupported pixel type {array.dtype}")


def read_image(path):
    """Read an image file as float32 ``(H, W, C)`` in ``[0, 1]``, ``C`` in {1, 3}.

    8-bit values are divided by 255, 16-bit by 65535, float files are clipped to ``[0, 1]``.
    Alpha is dropped; palette images become RGB, or gray when every used palette entry is gray.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The file; any format PIL or cv2 decodes.

    Returns
    -------
    numpy.ndarray
        float32 ``(H, W, C)``.

    Raises
    ------
    InputError
        Missing file, directory, empty, truncated, not an image, or more than
        :data:`MAX_PIXELS` pixels declared.
    """
    return image_from_array(*_decode(path, as_mask=False))


def image_from_array(name, array):
    """:func:`read_image`'s scaling and checks on a decoded ``(H, W)`` or ``(H, W, C)`` array
    (``name`` for the messages)."""
    image = _to_unit_float(name, array)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise InputError(f"{name}: unsupported image shape {array.shape}")
    return image


def read_mask(path):
    """Read a mask file as stored: integer ``(H, W)``, or ``(H, W, 3)`` for RGB colour masks.

    Palette PNGs give their palette indices (class-index masks are often saved that way). Alpha
    is dropped. An RGB file whose three channels are equal everywhere is a gray mask saved as RGB
    and comes back as ``(H, W)``.

    Raises
    ------
    InputError
        The same cases as :func:`read_image`, and floating-point or negative masks.
    """
    return mask_from_array(*_decode(path, as_mask=True))


def mask_from_array(name, array):
    """:func:`read_mask`'s checks on a decoded ``(H, W)`` or ``(H, W, 3)`` integer array."""
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name}: mask has non-integer pixels ({array.dtype}); save masks as "
                         "8- or 16-bit PNG")
    if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
        raise InputError(f"{name}: mask has negative values")
    if array.ndim == 3 and np.array_equal(array[:, :, 0], array[:, :, 1]) \
            and np.array_equal(array[:, :, 0], array[:, :, 2]):
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise InputError(f"{name}: unsupported mask shape {array.shape}")
    return np.ascontiguousarray(array)


def image_size(path):
    """Return ``(height, width)`` from the file header, without decoding the pixels.

    Formats PIL cannot identify are decoded with cv2 to find their size.

    Raises
    ------
    InputError
        As :func:`read_image`.
    """
    name = display_path(path)
    with _open_file(path) as handle:
        image = _open_lazy(name, handle)
        if image is None:
            handle.seek(0)
            array = _cv2_decode(name, handle.read(), identified=False)
            return int(array.shape[0]), int(array.shape[1])
    return int(image.height), int(image.width)


def write_png(path, array):
    """Atomically write ``array`` as a PNG file.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        Destination; PNG is written whatever the suffix.
    array : numpy.ndarray
        uint8 or uint16, ``(H, W)`` gray or ``(H, W, 3)`` RGB.

    Raises
    ------
    ValueError
        Wrong dtype or shape.
    InputError
        The folder does not exist or is not writable.
    """
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png needs uint8 or uint16, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or 0 in array.shape:
        raise ValueError(f"write_png needs (H, W) or (H, W, 3), got shape {array.shape}")
    if array.ndim == 3:
        array = array[:, :, ::-1]  # RGB -> BGR for cv2
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"cv2 could not encode an array of shape {array.shape} as PNG")

    def write(tmp):
        with open(tmp, "wb") as handle:
            handle.write(encoded.tobytes())
    write_file(path, write)


def write_file(path, write):
    """Atomically write ``path``: ``write(tmp)`` fills a temporary file beside it (same suffix),
    which then replaces ``path``. InputError when the folder is missing or not writable."""
    path = os.fsdecode(path)  # unet.core.atomic builds str temp names; surrogateescape keeps bytes
    name = display_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"{name}: folder {display_path(folder)} does not exist")
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except OSError as err:
        raise InputError(f"{name}: cannot write: {err.strerror or err}") from None
