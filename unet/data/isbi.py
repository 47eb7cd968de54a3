"""Convert the ISBI 2012 challenge download into the project's dataset layout.

The challenge ships multi-page TIFFs: ``train-volume.tif`` (30 slices, 512x512, 8-bit),
``train-labels.tif`` (the same slices, 255 = cell, 0 = membrane) and ``test-volume.tif`` (30 slices,
no labels published). Slices become PNGs named by their index in the stack::

    out/train/{image,mask}/0.png ... (first slices)
    out/validate/{image,mask}/25.png ... (the last ``n_validate`` slices, 25-29 by default)
    out/test/image/0.png ...

The shared copy in ``shared/data/isbi2012`` holds 25 training slices with 20-24 as validate; this
converter reproduces its pixels exactly from a 25-slice stack with the default ``n_validate=5``.

Command line: ``python -m unet.isbi --train-volume ... --train-labels ... --out DIR``.
"""
import logging
import os
import sys

import numpy as np
import tifffile

from .demo import prepare_split
from ..core.cli import OneLineParser, add_dataset_writer_flags, run_dataset_writer
from ..core.errors import InputError
from .imageio import write_png

log = logging.getLogger(__name__)


def read_stack(path):
    """Read a TIFF as a ``(N, H, W)`` stack of grayscale slices (a single page gives N = 1).

    Raises InputError, naming the file, when it is missing, unreadable or not grayscale slices.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            stack, axes = np.asarray(series.asarray()), series.axes
    except Exception as err:  # tifffile raises many types for a damaged or non-TIFF file
        raise InputError(f"{path}: cannot read as TIFF ({type(err).__name__}: {err})") from err
    if "S" in axes:  # colour samples: a 3-page stack and one RGB page have the same shape
        raise InputError(f"{path}: expected grayscale slices, got colour (axes {axes}, shape {stack.shape})")
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3 or 0 in stack.shape:
        raise InputError(f"{path}: expected grayscale slices (N, H, W), got shape {stack.shape}")
    if not (stack.dtype == np.bool_ or np.issubdtype(stack.dtype, np.integer)
            or np.issubdtype(stack.dtype, np.floating)):
        raise InputError(f"{path}: unsupported pixel type {stack.dtype}")
    return stack


def to_uint8(stack):
    """8-bit copy of an image stack: uint8 as it is, anything else rescaled from its min-max range."""
    if stack.dtype == np.uint8:
        return stack
    lo, hi = float(stack.min()), float(stack.max())
    scaled = (stack.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def binarize_labels(labels):
    """Masks in {0, 255}: 255 where the label is above 127 (or above 0.5 for labels in [0, 1])."""
    threshold = 0.5 if float(labels.max()) <= 1.0 else 127
    return np.where(labels > threshold, 255, 0).astype(np.uint8)


def convert_isbi(train_volume, train_labels, out_dir, test_volume=None, n_validate=5, overwrite=False):
    """Write the ISBI 2012 stacks as PNGs in ``out_dir/{train,validate,test}/{image,mask}``.

    Parameters
    ----------
    train_volume : str or os.PathLike
        Multi-page TIFF of training slices ``(N, H, W)``; non-uint8 data is rescaled to 8 bits.
    train_labels : str or os.PathLike
        Multi-page TIFF of the matching labels, same shape; binarized to 0 = membrane, 255 = cell.
    out_dir : str or os.PathLike
        Dataset root; created if missing.
    test_volume : str or os.PathLike, optional
        Multi-page TIFF of unlabelled test slices, written to ``test/image`` only.
    n_validate : int, default 5
        The *last* ``n_validate`` training slices go to ``validate/`` (slices 25-29 of the
        30-slice download by default); at least one slice must stay in ``train/``. 0 writes no
        validation split.
    overwrite : bool, default False
        Replace the PNGs of splits that already hold files instead of raising InputError.

    Returns
    -------
    dict
        ``{'root': str, 'counts': {split: int}, 'membrane_fraction': float}``; the fraction is
        over all labelled slices.
    """
    volume = to_uint8(read_stack(train_volume))
    labels = read_stack(train_labels)
    if len(volume) != len(labels):
        raise InputError(f"{os.fspath(train_labels)}: {len(labels)} slices but {os.fspath(train_volume)} "
                         f"has {len(volume)}")
    if volume.shape[1:] != labels.shape[1:]:
        raise InputError(f"{os.fspath(train_labels)}: slices are {labels.shape[2]}x{labels.shape[1]} "
                         f"but {os.fspath(train_volume)} has {volume.shape[2]}x{volume.shape[1]}")
    if isinstance(n_validate, bool) or not isinstance(n_validate, (int, np.integer)):
        raise ValueError(f"n_validate must be an int, got {n_validate!r}")
    if not 0 <= n_validate < len(volume):
        raise InputError(f"{os.fspath(train_volume)}: cannot hold out {n_validate!r} validation slices "
                         f"of {len(volume)} (need 0 <= n_validate <= {len(volume) - 1})")
    masks = binarize_labels(labels)
    test = to_uint8(read_stack(test_volume)) if test_volume is not None else None
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir}: exists and is not a folder")

    n_train = len(volume) - n_validate
    plan = [("train", range(0, n_train)), ("validate", range(n_train, len(volume)))]
    counts = {}
    for split, indices in plan:
        if len(indices) == 0:
            continue
        folders = prepare_split(out_dir, split, overwrite=overwrite)
        for i in indices:
            write_png(os.path.join(folders["image"], f"{i}.png"), volume[i])
            write_png(os.path.join(folders["mask"], f"{i}.png"), masks[i])
        counts[split] = len(indices)
    if test is not None:
        folders = prepare_split(out_dir, "test", kinds=("image",), overwrite=overwrite)
        for i, image in enumerate(test):
            write_png(os.path.join(folders["image"], f"{i}.png"), image)
        counts["test"] = len(test)
    fraction = float(np.mean(masks == 0))
    log.info("ISBI 2012 in %s: %s, membrane fraction %.3f", out_dir, counts, fraction)
    return {"root": out_dir, "counts": counts, "membrane_fraction": fraction}


def build_parser():
    parser = OneLineParser(
        prog="python -m unet.isbi",
        description="Convert the ISBI 2012 multi-page TIFFs into OUT/{train,validate,test}/{image,mask}/N.png "
                    "(masks: 255 = cell, 0 = membrane; files named by slice index).")
    parser.add_argument("--train-volume", required=True, help="train-volume.tif: the training EM slices")
    parser.add_argument("--train-labels", required=True,
                        help="train-labels.tif: the matching labels (255 = cell, 0 = membrane), "
                             "binarized at 127")
    parser.add_argument("--test-volume", help="test-volume.tif: unlabelled test slices, written to "
                                              "test/image (default: none)")
    parser.add_argument("--out", required=True, help="dataset root folder to write (created if missing)")
    parser.add_argument("--validate", type=int, default=5, metavar="N",
                        help="hold out the last N training slices as validate/, 0 for none "
                             "(default: 5, i.e. slices 25-29 of 30)")
    add_dataset_writer_flags(parser)
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit code (0 ok, 2 bad input)."""
    return run_dataset_writer(build_parser().parse_args(argv), lambda a: convert_isbi(
        a.train_volume, a.train_labels, a.out, test_volume=a.test_volume, n_validate=a.validate,
        overwrite=a.overwrite))


if __name__ == "__main__":
    sys.exit(main())
