"""Validation during training: whole validation images, predicted by overlap-tiling."""
import warnings

import numpy as np
from tqdm import tqdm

from ..data.samples import PROGRESS_DELAY_S, match_channels
from ..data.imageio import read_image, read_mask
from ..inference.metrics import SegmentationMetric, cell_fscores
from ..inference.tiling import predict_probabilities


def validate(net, info, model_cfg, ctx, batch_size=4, num_panels=3):
    """Score ``net`` on ``info.validate``; returns ``(scores, panels)``.

    ``scores``: ``accuracy``, ``pixel_error``, ``mean_iou``, ``dice`` over all validation pixels;
    for a two-class model also ``v_rand`` and ``v_info`` (the ISBI 2012 challenge's cell scores
    after border thinning, :func:`unet.inference.metrics.cell_fscores`), the mean over the images
    that have cells (NaN when none has).
    ``panels``: up to ``num_panels`` tuples ``(image (H, W, C) in [0, 1], mask, prediction, K)``
    for TensorBoard. A progress bar shows on a terminal when validation takes over a second.
    """
    metric = SegmentationMetric(model_cfg.num_classes)
    panels, cells = [], []
    # As the epoch's bar: on a terminal only; closed (cleared) on an error too.
    with tqdm(info.validate, desc="validating", unit="image", leave=False,
              delay=PROGRESS_DELAY_S, disable=None) as samples:
        for sample in samples:
            raw = read_image(sample.image_path)
            image = info.normalization.apply(match_channels(raw, info.channels))   # (C, H, W)
            probs = predict_probabilities(net, image, model_cfg.image_size, ctx=ctx,
                                          batch_size=batch_size)
            pred = probs.argmax(axis=0)
            target = info.encoding.decode(read_mask(sample.mask_path))
            metric.update(pred, target)
            if model_cfg.num_classes == 2:
                cells.append(cell_fscores(pred, target))
            if len(panels) < num_panels:
                panels.append((raw, target, pred, model_cfg.num_classes))
    scores = metric.get()
    if cells:
        with warnings.catch_warnings():       # no image with cells: NaN, said in the docstring
            warnings.simplefilter("ignore", RuntimeWarning)
            scores.update(zip(("v_rand", "v_info"), np.nanmean(np.array(cells), axis=0).tolist()))
    return scores, panels

