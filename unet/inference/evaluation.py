"""Segmenting a folder or a dataset split, and scoring the masks against ground truth.

Every image is segmented (with a progress bar); where a ground-truth mask exists it is decoded
with the checkpoint's own mask encoding and scored with :func:`unet.inference.metrics.score_segmentation`.
The per-image and mean scores come back as rows, as a text table, and as ``metrics.csv`` and
``metrics.json`` in the output folder.
"""
import csv
import io
import logging
import os
import sys

import numpy as np
from tqdm import tqdm

from ..core.atomic import write_json, write_text
from ..data.samples import IMAGE_SUFFIXES, Sample, list_split
from ..core.errors import InputError
from ..data.imageio import display_path, image_size, read_image, read_mask
from .segmenter import (CALIBRATION_TILES, default_mask_path, foreground_probability,
                        output_files, refuse_replacing_inputs, write_outputs)
from .metrics import score_segmentation
from .tiling import evenly_spaced

logger = logging.getLogger(__name__)

#: Scores in table order; the keys of :func:`unet.inference.metrics.score_segmentation` used here.
#: The ISBI 2012 challenge's two scores (after border thinning, higher is better) lead.
SCORES = ("v_rand", "v_info", "pixel_error", "dice", "iou", "rand_error", "rand_error_thinned",
          "pixel_error_fscore")


def list_folder(folder):
    """Images in ``folder`` (sorted by name) as :class:`unet.data.samples.Sample`.

    A folder ``.../SPLIT/image`` is read as a dataset split: its images are paired by file stem
    with masks in the sibling ``.../SPLIT/mask`` where those exist. Other folders give samples
    with ``mask_path=None``.
    """
    name = display_path(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{name}: not a folder")
    split_dir, base = os.path.split(os.path.abspath(folder))
    if base == "image":
        data_dir, split = os.path.split(split_dir)
        return list_split(data_dir, split, require_masks=False)
    files = sorted(f for f in os.listdir(folder) if not f.startswith(".")
                   and f.lower().endswith(IMAGE_SUFFIXES)
                   and os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise InputError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return [Sample(os.path.splitext(f)[0], os.path.join(folder, f)) for f in files]


def list_dataset(data_dir, split="test"):
    """The samples of ``data_dir/split`` (masks where present)."""
    return list_split(data_dir, split, require_masks=False)


def check_samples(samples, output_dir, overlay=False, probabilities=None, encoding=None):
    """Refuse, before any work, what :func:`segment_samples` would fail on or damage: an output
    that would replace an input; an image whose header cannot be read (only the header: an image
    damaged further in fails on its turn); a mask that cannot be decoded, is not the size of its
    image or, given the checkpoint's ``encoding`` (a :class:`unet.data.masks.MaskEncoding`), holds
    values it does not know. Raises :class:`InputError`."""
    refuse_replacing_inputs(
        [path for sample in samples for path in output_files(
            default_mask_path(sample.image_path, output_dir), overlay, probabilities)],
        [path for sample in samples for path in (sample.image_path, sample.mask_path) if path])
    for sample in samples:
        shape = image_size(sample.image_path)
        if sample.mask_path is not None:
            raw = read_mask(sample.mask_path)
            _check_mask_size(sample.mask_path, raw.shape, shape)
            if encoding is not None:
                encoding.decode(raw, name=display_path(sample.mask_path))


def _check_mask_size(mask_path, mask_shape, shape):
    if tuple(mask_shape[:2]) != tuple(shape):
        raise InputError(f"{display_path(mask_path)}: mask is {mask_shape[1]}x{mask_shape[0]}, "
                         f"its image {shape[1]}x{shape[0]}")


def read_target(segmenter, mask_path, shape):
    """Ground-truth classes ``(H, W)`` of ``mask_path``, decoded with the model's mask encoding."""
    raw = read_mask(mask_path)
    _check_mask_size(mask_path, raw.shape, shape)
    return segmenter.encoding.decode(raw, name=display_path(mask_path))


def segment_samples(segmenter, samples, output_dir, overlay=False, probabilities=None,
                    progress=True, checked=False):
    """Segment every sample into ``output_dir``; score those that have a mask.

    Parameters
    ----------
    segmenter : unet.inference.segmenter.Segmenter
    samples : list of unet.data.samples.Sample
    output_dir : str
        Created when missing; masks go there as ``NAME_mask.png``.
    overlay, probabilities :
        As in :func:`unet.inference.segmenter.write_outputs`.
    progress : bool, default True
        Show a tqdm progress bar on stderr.
    checked : bool, default False
        The caller has run :func:`check_samples` on these arguments; else it runs first.

    Returns
    -------
    list of dict
        One row per scored image: ``image`` (the name) and the :data:`SCORES`.
    """
    if not checked:
        check_samples(samples, output_dir, overlay, probabilities, segmenter.encoding)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as err:
        raise InputError(f"{display_path(output_dir)}: cannot create the output folder: "
                         f"{err.strerror or err}") from None
    calibrate_on_samples(segmenter, samples)
    rows = []
    for sample in tqdm(samples, desc="segmenting", unit="image", file=sys.stderr,
                       disable=None if progress else True):
        image = read_image(sample.image_path)
        prediction = segmenter.predict(image, display_path(sample.image_path))
        write_outputs(prediction, image, default_mask_path(sample.image_path, output_dir),
                      overlay, probabilities)
        if sample.mask_path is None:
            continue
        target = read_target(segmenter, sample.mask_path, image.shape[:2])
        rows.append(score_row(segmenter, sample.name, prediction, target))
    logger.info("segmented %d images into %s, %d scored", len(samples),
                display_path(output_dir), len(rows))
    return rows


def score_row(segmenter, name, prediction, target):
    """The row of ``name``: its :data:`SCORES` for ``prediction`` (a
    :class:`unet.inference.segmenter.Prediction`) against ``target`` classes ``(H, W)``."""
    scores = score_segmentation(prediction.classes, target, segmenter.num_classes,
                                foreground_probability(prediction.probabilities))
    return {"image": name, **{key: float(scores[key]) for key in SCORES}}


def calibrate_on_samples(segmenter, samples):
    """An int8 segmenter is calibrated on images spread evenly over ``samples`` (up to
    :data:`unet.inference.segmenter.CALIBRATION_TILES`, one or more tiles each), not on the first alone."""
    if not segmenter.needs_calibration or not samples:
        return
    chosen = [samples[i] for i in evenly_spaced(len(samples), CALIBRATION_TILES)]
    segmenter.calibrate([read_image(sample.image_path) for sample in chosen],
                        [display_path(sample.image_path) for sample in chosen])
    logger.info("int8 calibrated on %d image(s): %s", len(chosen),
                ", ".join(sample.name for sample in chosen))


def mean_scores(rows):
    """The mean of every score over ``rows`` (empty dict for no rows)."""
    if not rows:
        return {}
    return {key: float(np.mean([row[key] for row in rows])) for key in SCORES}


def format_table(rows):
    """A text table of the rows and their mean, one image per line."""
    width = max([len("image"), len("mean")] + [len(row["image"]) for row in rows])
    columns = [max(11, len(key)) for key in SCORES]
    lines = [f"{'image':<{width}}  " + "  ".join(f"{key:>{column}}"
                                                 for key, column in zip(SCORES, columns))]
    mean = mean_scores(rows)
    for row in rows + [dict(mean, image="mean")]:
        values = "  ".join(f"{row[key]:>{column}.4f}" for key, column in zip(SCORES, columns))
        lines.append(f"{row['image']:<{width}}  {values}")
    return "\n".join(lines)


def write_metrics(output_dir, rows, info=None):
    """Write ``metrics.csv`` (per image, then a ``mean`` row) and ``metrics.json``.

    Both keep the order of :data:`SCORES` (``v_rand`` and ``v_info`` first). ``info`` (e.g. the
    checkpoint and options) is stored in the JSON after ``images`` and ``mean``. Returns the two
    paths.
    """
    mean = mean_scores(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("image",) + SCORES, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    writer.writerow(dict(mean, image="mean"))
    csv_path, json_path = metrics_paths(output_dir)
    write_text(csv_path, buffer.getvalue())
    write_json(json_path, {"images": rows, "mean": mean, **(info or {})}, sort_keys=False)
    return [csv_path, json_path]


def metrics_paths(output_dir):
    """``[metrics.csv, metrics.json]`` in ``output_dir``: what :func:`write_metrics` writes."""
    return [os.path.join(output_dir, "metrics.csv"), os.path.join(output_dir, "metrics.json")]
