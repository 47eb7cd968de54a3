"""Datasets on disk: listing and checking the splits, channels, normalization.

Layout: ``DATA/train/image/*`` with masks in ``DATA/train/mask/*`` paired by file stem (``a.tif``
goes with ``a.png``), and the same under ``DATA/validate``. :func:`prepare_data` reads every pair
once before training, so that a bad file stops the run at the start with one line naming it,
not hours later in a worker process.

The training Dataset and its loader are in :mod:`unet.data.loader`.
"""
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..core.errors import InputError
from .imageio import display_path, read_image, read_mask
from .masks import MaskEncoding, infer_encoding, listing, unique_values

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm",
                  ".ppm", ".pbm", ".jp2")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # RGB -> gray, as cv2 and PIL do
_MIN_STD = 1e-3
#: Seconds of work before a progress bar appears (the data check, weight maps, validation, the
#: forward passes on one image): quick work that fails prints its error line alone.
PROGRESS_DELAY_S = 1.0


@dataclass
class Sample:
    """One image and its mask (``None`` when the split has no masks)."""

    name: str
    image_path: str
    mask_path: str = None


def _image_files(folder):
    """``{stem: path}`` of the image files in ``folder``; InputError on a repeated stem."""
    found, ignored = {}, []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        stem, suffix = os.path.splitext(entry)
        if entry.startswith("."):
            continue
        if os.path.isdir(path):
            if suffix.lower() in IMAGE_SUFFIXES:
                raise InputError(f"{display_path(path)}: a folder named like an image; "
                                 f"move it out of {display_path(folder)}")
            continue
        if suffix.lower() not in IMAGE_SUFFIXES:
            ignored.append(entry)
            continue
        if stem in found:
            raise InputError(f"{display_path(path)}: two files named {stem!r} in "
                             f"{display_path(folder)}; keep one")
        found[stem] = path
    if ignored:
        log.warning("%s: ignoring %d non-image file(s): %s", display_path(folder), len(ignored),
                    ", ".join(display_path(i) for i in ignored[:5]))
    return found


def _folder(data_dir, split, kind):
    """``data_dir/split/kind``, or ``.../kinds`` when only that plural folder exists."""
    path = os.path.join(data_dir, split, kind)
    plural = path + "s"
    return plural if not os.path.isdir(path) and os.path.isdir(plural) else path


def list_split(data_dir, split, require_masks=True):
    """The samples of ``data_dir/split``, sorted by name.

    Images are the files with an image suffix (:data:`IMAGE_SUFFIXES`) in ``split/image``
    (or ``split/images``), masks those in ``split/mask`` (or ``split/masks``), paired by stem.

    Parameters
    ----------
    data_dir : str
    split : str
        ``'train'``, ``'validate'`` or ``'test'``.
    require_masks : bool, default True
        When False, a missing ``mask`` folder or mask gives ``mask_path=None``.

    Raises
    ------
    InputError
        Missing folder, no images, an image without a mask (when required), a mask without an
        image.
    """
    image_dir = _folder(data_dir, split, "image")
    mask_dir = _folder(data_dir, split, "mask")
    if not os.path.isdir(image_dir):
        raise InputError(f"{display_path(image_dir)}: folder not found (expected images in "
                         f"DATA/{split}/image/)")
    images = _image_files(image_dir)
    if not images:
        raise InputError(f"{display_path(image_dir)}: no images in the {split} split")
    masks = {}
    if os.path.isdir(mask_dir):
        masks = _image_files(mask_dir)
    elif require_masks:
        raise InputError(f"{display_path(mask_dir)}: folder not found (expected masks in "
                         f"DATA/{split}/mask/)")
    for stem, path in masks.items():
        if stem not in images:
            raise InputError(f"{display_path(path)}: mask without an image of the same name in "
                             f"{display_path(image_dir)}")
    samples = []
    for stem in sorted(images):
        if require_masks and stem not in masks:
            raise InputError(f"{display_path(images[stem])}: image without a mask (expected "
                             f"{display_path(os.path.join(mask_dir, stem))}.png)")
        samples.append(Sample(stem, images[stem], masks.get(stem)))
    return samples


def match_channels(image, channels, name="image"):
    """``(H, W, channels)``: gray repeated to RGB, RGB to gray by luma (0.299, 0.587, 0.114)."""
    have = image.shape[2]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if have == 3 and channels == 1:
        return (image @ _LUMA)[:, :, None]
    raise InputError(f"{name}: has {have} channels, expected {channels}")


@dataclass
class Normalization:
    """Per-channel ``(x - mean) / std`` on the ``[0, 1]`` scale."""

    mean: list
    std: list

    def __post_init__(self):
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        if mean.ndim != 1 or mean.shape != std.shape or not len(mean) or not np.all(std > 0) \
                or not np.all(np.isfinite(mean)) or not np.all(np.isfinite(std)):
            raise ValueError(f"normalization needs equal-length mean and positive std lists, got "
                             f"mean={self.mean!r}, std={self.std!r}")
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def apply(self, image):
        """float32 ``(H, W, C)`` -> normalized float32 ``(C, H, W)``."""
        if image.ndim != 3 or image.shape[2] != len(self.mean):
            raise ValueError(f"image of shape {image.shape} does not have {len(self.mean)} "
                             "channels last")
        out = (image - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)

    def to_dict(self):
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`; ``ValueError`` on a malformed dict."""
        if not isinstance(d, dict) or set(d) != {"mean", "std"}:
            raise ValueError(f"normalization must be a dict with 'mean' and 'std', got {d!r}")
        try:
            return cls(list(d["mean"]), list(d["std"]))
        except TypeError as err:
            raise ValueError(f"bad normalization {d!r}: {err}") from None


class _Moments:
    """Streaming per-channel mean and std (float64 sums; pixels are in [0, 1])."""

    def __init__(self):
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, image):
        pixels = image.reshape(-1, image.shape[2]).astype(np.float64)
        self.count += len(pixels)
        self.total = self.total + pixels.sum(axis=0)
        self.squares = self.squares + (pixels ** 2).sum(axis=0)

    def result(self):
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean ** 2, 0.0))
        return Normalization(list(mean), list(np.maximum(std, _MIN_STD)))


def compute_normalization(samples, channels):
    """Per-channel mean and std over all pixels of ``samples``' images, one image at a time.

    A channel with std below 1e-3 (a constant image set) gets std 1e-3.
    """
    if not samples:
        raise ValueError("compute_normalization needs at least one sample")
    moments = _Moments()
    for sample in samples:
        moments.add(match_channels(read_image(sample.image_path), channels,
                                   display_path(sample.image_path)))
    return moments.result()


@dataclass
class DataInfo:
    """Checked splits and what was learned from them; stored in every checkpoint."""

    train: list
    validate: list
    channels: int
    normalization: Normalization
    encoding: MaskEncoding
    sizes: dict = field(default_factory=dict, repr=False)  # image path -> (H, W)


def _check_pair(sample, min_size):
    """Read one pair; return ``(image (H, W, C), mask values)``; InputError naming the file."""
    image = read_image(sample.image_path)
    raw = read_mask(sample.mask_path)
    height, width = image.shape[:2]
    if raw.shape[:2] != (height, width):
        raise InputError(f"{display_path(sample.mask_path)}: mask is {raw.shape[1]}x{raw.shape[0]}"
                         f" but its image {display_path(sample.image_path)} is {width}x{height}")
    if min(height, width) < min_size:
        raise InputError(f"{display_path(sample.image_path)}: image is {width}x{height}, smaller "
                         f"than the minimum side {min_size}")
    return image, unique_values(raw)


def _encoding_or_culprit(values_by_mask, num_classes, colormap):
    """infer_encoding over all masks; on failure, InputError naming a mask that does not fit."""
    union = set().union(*values_by_mask.values())
    try:
        return infer_encoding(union, num_classes, colormap)
    except InputError as err:
        if any(isinstance(v, tuple) for v in union) and colormap is None:
            coloured = {path: any(isinstance(v, tuple) for v in values)
                        for path, values in values_by_mask.items()}
            colour_count = sum(coloured.values())
            if 0 < colour_count < len(coloured):
                # The culprit is of the rarer kind (colour if as many as gray).
                rare = colour_count <= len(coloured) - colour_count
                odd = next(path for path, colour in coloured.items() if colour == rare)
                kinds = ("colour", "gray") if coloured[odd] else ("gray", "colour")
                raise InputError(f"{display_path(odd)}: a {kinds[0]} mask among {kinds[1]} "
                                 "ones; all masks must be saved alike") from None
            folder = os.path.dirname(next(iter(values_by_mask)))
            raise InputError(f"{display_path(folder)}: {err}") from None
        seen = set()
        for path, values in values_by_mask.items():  # first a mask wrong on its own
            try:
                infer_encoding(values, num_classes, colormap)
            except InputError as culprit:
                raise InputError(f"{display_path(path)}: {culprit}") from None
        for path, values in values_by_mask.items():  # then one that disagrees with those before
            try:
                infer_encoding(seen | values, num_classes, colormap)
            except InputError:
                raise InputError(
                    f"{display_path(path)}: mask values {listing(values)} do not fit one format "
                    f"with the masks before it (values {listing(seen)}); all masks must be "
                    "saved alike") from None
            seen |= values
        raise


def _check_fits(encoding, path, values):
    """InputError naming ``path`` when a validation mask's values do not fit ``encoding``."""
    values = sorted(values, key=lambda v: v if isinstance(v, tuple) else (v,))
    if encoding.kind == "color":
        raw = np.array([v if isinstance(v, tuple) else (v, v, v) for v in values])[None]
    elif any(isinstance(v, tuple) for v in values):
        raise InputError(f"{display_path(path)}: colour mask, but the training masks are "
                         f"{encoding.kind} masks")
    else:
        raw = np.array(values)[None]
    encoding.decode(raw, name=display_path(path))


def prepare_data(data_dir, num_classes, channels=None, colormap=None, min_size=1):
    """List and check the train and validate splits; infer channels, normalization, mask format.

    Every pair is read once: image and mask readable, same height and width, sides at least
    ``min_size``, mask values of one format, one channel count. Normalization is computed over
    the training images. On a terminal, a tqdm bar on stderr shows the progress of a check that
    takes longer than :data:`PROGRESS_DELAY_S`.

    Parameters
    ----------
    data_dir : str
        Holds ``train/{image,mask}`` and ``validate/{image,mask}``.
    num_classes : int
    channels : {None, 1, 3}, default None
        Input channels of the network. None: from the data, which must then agree. 3: gray
        images are repeated. 1: RGB images are converted to gray by luminance.
    colormap : list of [r, g, b], optional
        Class colours for RGB masks (see :func:`unet.data.masks.infer_encoding`).
    min_size : int, default 1
        Smallest allowed image side.

    Returns
    -------
    DataInfo

    Raises
    ------
    InputError
        One line naming the first file (or folder) with a problem.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    train = list_split(data_dir, "train")
    validate = list_split(data_dir, "validate")
    moments, train_values, validate_values, sizes = _Moments(), {}, {}, {}
    found, first = None, None  # channel count of the first image, and that image
    start = time.perf_counter()
    pairs = [(s, True) for s in train] + [(s, False) for s in validate]
    with tqdm(pairs, desc="checking data", unit="pair", leave=False, delay=PROGRESS_DELAY_S,
              disable=None) as progress:                                  # on a terminal
        for sample, is_train in progress:
            image, values = _check_pair(sample, min_size)
            sizes[sample.image_path] = image.shape[:2]
            if found is None:
                found, first = image.shape[2], sample.image_path
            if channels is None and image.shape[2] != found:
                raise InputError(f"{display_path(sample.image_path)}: has {image.shape[2]} "
                                 f"channel(s) but {display_path(first)} has {found}; convert "
                                 "them, or set the number of channels")
            if is_train:
                moments.add(match_channels(image, channels or found))
            (train_values if is_train else validate_values)[sample.mask_path] = values
    encoding = _encoding_or_culprit(train_values, num_classes, colormap)
    for path, values in validate_values.items():
        _check_fits(encoding, path, values)
    info = DataInfo(train, validate, channels or found, moments.result(), encoding, sizes)
    log.info("checked %d train and %d validate pairs in %.1f s: %d channel(s), %s masks %s, "
             "mean %s, std %s", len(train), len(validate), time.perf_counter() - start,
             info.channels, encoding.kind, encoding.colormap or encoding.values,
             _round(info.normalization.mean), _round(info.normalization.std))
    return info


def _round(values):
    return [round(v, 4) for v in values]
