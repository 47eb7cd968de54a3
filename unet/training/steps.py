"""One training epoch: batches from the loader -> forward, loss, backward, optimizer update.

:func:`train_epoch` is the inner loop of :func:`unet.training.loop.train`; it logs the loss of every step
to TensorBoard and stops with :class:`~unet.core.errors.TrainingDiverged` on a NaN or infinite loss.
"""
import math
import os
import time

import mxnet as mx
from mxnet import autograd
from tqdm import tqdm

from ..checkpoints import files
from ..core import faults
from ..cluster.distributed import split_batch
from ..core.errors import TrainingDiverged
from ..model.precision import uses_loss_scaling
from .recompute import forward_backward


def train_epoch(net, trainer, loss_fn, loader, ctx, cfg, state, tb, epoch, num_workers,
                mirrored=None):
    """One pass over ``loader``; returns (mean loss, seconds). ``mirrored``: the
    :class:`~unet.training.mirror.MirroredSteps` of ``net`` with ``cfg.mirror``."""
    total, count, start = 0.0, 0, time.time()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.num_epochs}", unit="batch", leave=False,
               disable=None)
    for image, label, weight in bar:
        n = image.shape[0]
        parts = [split_batch(a, ctx) for a in (image, label, weight)] if len(ctx) > 1 else \
            [[mx.nd.array(a, ctx=ctx[0])] for a in (image, label, weight)]
        losses = batch_gradients(net, trainer, loss_fn, parts, cfg, mirrored)
        trainer.step(n * num_workers)
        value = sum(float(l.sum().asscalar()) for l in losses) / n
        if not math.isfinite(value):
            last = files.last_path(cfg.checkpoint_file)
            kept = f"the last good checkpoint {last} is kept" if os.path.isfile(last) \
                else "no checkpoint had been written yet"
            raise TrainingDiverged(
                f"loss became {value} at epoch {epoch + 1}, step {state.global_step + 1}; "
                f"training stopped, {kept} (try a lower --learning-rate)")
        state.global_step += 1
        faults.point("train.step")
        total, count = total + value * n, count + n
        tb.scalar("train/loss", value, state.global_step)
        tb.scalar("lr", trainer.learning_rate, state.global_step)
        bar.set_postfix(loss=f"{value:.4f}", img_s=f"{count / (time.time() - start):.1f}")
    bar.close()
    return total / max(count, 1), time.time() - start


def batch_gradients(net, trainer, loss_fn, parts, cfg, mirrored=None):
    """Loss and gradients of one batch, ``parts`` = (images, labels, weights) per context;
    returns the per-context losses. With ``mirrored`` (``cfg.mirror``) the step runs on its
    executors."""
    if mirrored is not None:
        return mirrored(*parts)
    if cfg.recompute:       # fp32 only (TrainConfig checks it)
        return [forward_backward(net, loss_fn, x, y, w) for x, y, w in zip(*parts)]
    with autograd.record():
        losses = [loss_fn(net(x), y, w) for x, y, w in zip(*parts)]
        if uses_loss_scaling(cfg.amp):
            from mxnet.contrib import amp
            # The loss scaling is a recorded multiplication: it must happen in record().
            with amp.scale_loss(losses, trainer) as scaled:
                autograd.backward(scaled)
        else:
            autograd.backward(losses)
    return losses
