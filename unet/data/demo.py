"""A built-in, EM-like membrane dataset, so that the toolkit can be tried without downloading data.

Each image is a Voronoi tessellation of cells (seeds on a jittered grid, coordinates warped by smooth
noise so that the boundaries curve), separated by dark membranes whose thickness varies smoothly
between about 2 and 6 pixels. Cell interiors are textured, some cells hold dark organelle-like blobs
(which are *not* membrane in the mask), and the whole image is blurred and noised. Masks follow
ISBI 2012: 255 = cell, 0 = membrane; about 20% of the pixels are membrane, as in ISBI.

The output is the project's dataset layout, ``ROOT/{train,validate,test}/{image,mask}/NAME.png``
(test gets masks too, so that evaluation can score it), written atomically. The same seed gives
byte-identical files; each image draws from its own random stream keyed by (seed, split, index),
so changing ``n_train`` does not change the validate or test images.

Command line: ``python -m unet.demo_data --out DIR [--seed N] [--size S] [--n-train N] ...``.
"""
import argparse
import logging
import os
import sys

import cv2
import numpy as np
from scipy.spatial import cKDTree

from ..core.cli import OneLineParser, add_dataset_writer_flags, run_dataset_writer
from ..core.errors import InputError
from .imageio import write_png

log = logging.getLogger(__name__)

SPLITS = ("train", "validate", "test")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MIN_SIZE = 32
CELL_SPACING = 34.0  # px between seeds; with 2-6 px membranes this gives ISBI's ~20% membrane


def _smooth_noise(rng, size, scale):
    """Smooth random field in [0, 1] of shape ``(size, size)`` with features about ``scale`` px wide."""
    cells = max(2, int(round(size / scale)) + 1)
    coarse = rng.random((cells, cells), dtype=np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _jittered_seeds(rng, size):
    """Cell seeds on a jittered grid that overhangs the image by one spacing, ``(K, 2)`` as (x, y)."""
    spacing = CELL_SPACING * rng.uniform(0.85, 1.15)
    ticks = np.arange(-spacing, size + spacing, spacing, dtype=np.float32)
    grid = np.stack(np.meshgrid(ticks, ticks), axis=-1).reshape(-1, 2)
    # A few seeds dropped and a few added make neighbouring cells differ in size.
    grid = grid[rng.random(len(grid)) > 0.12]
    extra = rng.uniform(-spacing, size + spacing, size=(len(grid) // 8, 2)).astype(np.float32)
    seeds = np.concatenate([grid, extra])
    return seeds + rng.normal(0.0, 0.3 * spacing, size=seeds.shape).astype(np.float32)


def _cell_geometry(rng, size):
    """Label map and distance to the nearest cell boundary, both ``(size, size)``.

    The distance is to the bisector between the two nearest seeds, measured in warped coordinates;
    the warp is smooth and gentle, so it stays close to a distance in pixels.
    """
    seeds = _jittered_seeds(rng, size)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    amplitude = 0.2 * CELL_SPACING
    xs = xs + amplitude * (2.0 * _smooth_noise(rng, size, 1.5 * CELL_SPACING) - 1.0)
    ys = ys + amplitude * (2.0 * _smooth_noise(rng, size, 1.5 * CELL_SPACING) - 1.0)
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    dist, index = cKDTree(seeds).query(points, k=2)  # (P, 2) each
    gap = np.linalg.norm(seeds[index[:, 0]] - seeds[index[:, 1]], axis=1)
    to_edge = (dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2.0 * np.maximum(gap, 1e-6))
    return index[:, 0].reshape(size, size), to_edge.reshape(size, size).astype(np.float32)


def _organelles(rng, labels, to_edge, half_width):
    """Float image in [0, 1] of dark blobs that lie wholly inside cells, away from membranes."""
    size = labels.shape[0]
    blobs = np.zeros((size, size), np.float32)
    room = to_edge - half_width
    for _ in range(rng.poisson(size * size / 2500.0)):
        y, x = rng.integers(0, size, size=2)
        radius = rng.uniform(2.5, 7.0)
        if room[y, x] < radius + 3.0:
            continue
        axes = (int(round(radius * rng.uniform(1.0, 2.0))), int(round(radius)))
        cv2.ellipse(blobs, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360,
                    float(rng.uniform(0.7, 1.1)), -1, cv2.LINE_AA)
    # Clip to the blob's own cell's interior so that no blob ever touches a membrane.
    return np.where(room > 1.5, blobs, 0.0)


def render_sample(rng, size):
    """Draw one image and its mask.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    size : int
        Height and width in pixels.

    Returns
    -------
    image : numpy.ndarray
        ``(size, size)`` uint8 grayscale EM-like image.
    mask : numpy.ndarray
        ``(size, size)`` uint8, 255 = cell, 0 = membrane.
    """
    labels, to_edge = _cell_geometry(rng, size)
    half_width = 1.0 + 2.0 * _smooth_noise(rng, size, 20.0)  # membranes 2-6 px across
    membrane = to_edge < half_width

    shade = rng.normal(0.0, 12.0, size=int(labels.max()) + 1).astype(np.float32)
    interior = 165.0 + shade[labels]
    interior += 30.0 * (_smooth_noise(rng, size, 6.0) - 0.5) + 14.0 * (_smooth_noise(rng, size, 3.0) - 0.5)
    interior -= 90.0 * _organelles(rng, labels, to_edge, half_width)

    # Soft membrane profile: full darkness on the boundary, fading one pixel past the mask edge.
    darkness = np.clip(1.0 - (to_edge - half_width) / 1.5, 0.0, 1.0)
    darkness = np.where(membrane, 1.0, darkness * 0.6)
    depth = 95.0 + 25.0 * _smooth_noise(rng, size, 30.0)
    image = interior - depth * darkness
    image += 40.0 * (_smooth_noise(rng, size, size / 2.0) - 0.5)  # uneven illumination
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.9)
    image += rng.normal(0.0, 9.0, size=image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    mask = np.where(membrane, 0, 255).astype(np.uint8)
    return image, mask


def _visible_files(folder):
    """Names of the non-hidden files directly in ``folder`` (none when it does not exist)."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder)
                  if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))


def prepare_split(root, split, kinds=("image", "mask"), overwrite=False):
    """Create ``root/split/<kind>`` folders, ready to receive a fresh set of PNGs.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset root.
    split : str
        Split name, e.g. ``'train'``.
    kinds : tuple of str, default ('image', 'mask')
        Sub-folders to create.
    overwrite : bool, default False
        When False, a sub-folder that already holds files (hidden files such as ``.gitkeep``
        aside) raises InputError. When True, its ``.png`` files are removed first, so that no
        stale sample from an earlier, larger dataset survives.

    Returns
    -------
    dict
        ``{kind: folder path}``.
    """
    folders = {kind: os.path.join(os.fspath(root), split, kind) for kind in kinds}
    for folder in folders.values():
        existing = _visible_files(folder)
        if existing and not overwrite:
            raise InputError(f"{folder}: already holds {len(existing)} files; "
                             "pass overwrite (--overwrite) to replace them")
        try:
            os.makedirs(folder, exist_ok=True)
            for name in existing:
                if name.lower().endswith(".png"):
                    os.remove(os.path.join(folder, name))
        except OSError as err:
            raise InputError(f"{folder}: cannot prepare folder ({err.strerror or err})") from err
    return folders


def dataset_is_empty(root):
    """True when ``root`` is missing or holds no image files anywhere below it (a ``.gitkeep`` is fine)."""
    for _, dirs, files in os.walk(os.fspath(root)):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".") for f in files):
            return False
    return True


def generate_demo_dataset(root, seed=0, size=256, n_train=16, n_validate=4, n_test=4, overwrite=False):
    """Write the demo dataset to ``root/{train,validate,test}/{image,mask}/<i>.png``.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset root; created if missing.
    seed : int, default 0
        Random seed; the same seed gives byte-identical files.
    size : int, default 256
        Height and width of every image, at least 32. The default U-Net needs a multiple of 16.
    n_train, n_validate, n_test : int, default 16, 4, 4
        Samples per split; a split with 0 samples is not created.
    overwrite : bool, default False
        Replace the PNGs of splits that already hold files instead of raising InputError.

    Returns
    -------
    dict
        ``{'root': str, 'counts': {split: int}, 'paths': {split: [(image_path, mask_path), ...]},
        'membrane_fraction': float}`` where the fraction is over all masks written.
    """
    counts = {"train": n_train, "validate": n_validate, "test": n_test}
    for name, value in [("seed", seed), ("size", size)] + list(counts.items()):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, got {size}")
    root = os.fspath(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise InputError(f"{root}: exists and is not a folder")

    active = [split for split in SPLITS if counts[split] > 0]
    folders = {split: prepare_split(root, split, overwrite=overwrite) for split in active}
    paths, membrane = {split: [] for split in SPLITS}, []
    for split in active:
        for i in range(counts[split]):
            rng = np.random.default_rng([seed, SPLITS.index(split), i])
            image, mask = render_sample(rng, size)
            pair = (os.path.join(folders[split]["image"], f"{i}.png"),
                    os.path.join(folders[split]["mask"], f"{i}.png"))
            write_png(pair[0], image)
            write_png(pair[1], mask)
            paths[split].append(pair)
            membrane.append(float(np.mean(mask == 0)))
    fraction = float(np.mean(membrane)) if membrane else 0.0
    log.info("demo dataset in %s: %s, membrane fraction %.3f", root, counts, fraction)
    return {"root": root, "counts": counts, "paths": paths, "membrane_fraction": fraction}


def _count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _size(text):
    value = _count(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_SIZE}, got {value}")
    return value


def build_parser():
    parser = OneLineParser(
        prog="python -m unet.demo_data",
        description="Generate a synthetic EM-like membrane dataset (masks: 255 = cell, 0 = membrane) "
                    "in the layout OUT/{train,validate,test}/{image,mask}/N.png.")
    parser.add_argument("--out", required=True, help="dataset root folder to write (created if missing)")
    parser.add_argument("--seed", type=_count, default=0,
                        help="random seed; the same seed gives byte-identical files (default: 0)")
    parser.add_argument("--size", type=_size, default=256,
                        help=f"image height and width in pixels, >= {MIN_SIZE}; the default U-Net "
                             "needs a multiple of 16 (default: 256)")
    parser.add_argument("--n-train", type=_count, default=16, help="training samples (default: 16)")
    parser.add_argument("--n-validate", type=_count, default=4, help="validation samples (default: 4)")
    parser.add_argument("--n-test", type=_count, default=4,
                        help="test samples, written with masks so they can be scored (default: 4)")
    add_dataset_writer_flags(parser)
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit code (0 ok, 2 bad input)."""
    return run_dataset_writer(build_parser().parse_args(argv), lambda a: generate_demo_dataset(
        a.out, seed=a.seed, size=a.size, n_train=a.n_train, n_validate=a.n_validate,
        n_test=a.n_test, overwrite=a.overwrite))


if __name__ == "__main__":
    sys.exit(main())
