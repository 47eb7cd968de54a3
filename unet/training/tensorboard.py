"""TensorBoard logging through mxboard: one subfolder of the log dir per run.

Tags: ``train/loss`` and ``lr`` per step, ``train/images_per_sec`` and ``val/<metric>`` per epoch,
``val/panels`` (image | mask | prediction), ``weights/<param>`` and ``grads/<param>`` histograms.
The global step keeps counting after a resume; never log a smaller step after a larger one in the
same folder, or TensorBoard purges the later events (see the MXNet notes, section 9).
"""
import logging
import os
import secrets
import time

import mxnet as mx
import numpy as np

log = logging.getLogger(__name__)

HISTOGRAM_SAMPLES = 2 ** 16


def new_run_name():
    """A run folder name that two runs never share: time, pid, and a random token (two runs of
    one process can start within the same second)."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{secrets.token_hex(2)}"


class TrainingLog:
    """A thin wrapper over ``mxboard.SummaryWriter``; does nothing when ``enabled`` is False."""

    def __init__(self, log_dir, run_name, enabled=True):
        self.folder = os.path.join(log_dir, run_name)
        self.writer = None
        if enabled:
            from mxboard import SummaryWriter
            os.makedirs(self.folder, exist_ok=True)
            self.writer = SummaryWriter(logdir=self.folder, flush_secs=10)
            # mxboard forces its writer's logger to INFO ("wrote 1 event to disk" per flush).
            logging.getLogger("mxboard.event_file_writer").setLevel(logging.WARNING)

    def scalar(self, tag, value, step):
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), global_step=step)

    def panels(self, tag, rows, step):
        """``rows``: ``(image (H, W, C) in [0, 1], mask (H, W) int, prediction (H, W) int, K)``."""
        if self.writer is None or not rows:
            return
        strips = []
        for image, mask, pred, num_classes in rows:
            scale = 1.0 / max(num_classes - 1, 1)
            gray = image.mean(axis=2) if image.shape[2] != 1 else image[..., 0]
            strip = np.concatenate([gray, mask * scale, pred * scale], axis=1)   # (H, 3W)
            strips.append(np.clip(strip, 0, 1))
        width = max(s.shape[1] for s in strips)
        strips = [np.pad(s, ((0, 2), (0, width - s.shape[1]))) for s in strips]
        panel = (np.concatenate(strips, axis=0) * 255).astype(np.uint8)[None]  # (1, H', W')
        self.writer.add_image(tag, panel, global_step=step)

    def histograms(self, net, step):
        """Weights, and gradients of the parameters that have one (``grad_req != 'null'``).

        A tensor of more than ``HISTOGRAM_SAMPLES`` values is histogrammed over that many evenly
        strided values: the same distribution for a fraction of the cost (all 36M values of the
        default model took about 1 s an epoch on 2 cores; 2**18 values a tensor 0.50 s, 2**16
        0.36 s, most of what is left being mxboard's pure-Python protobuf).
        """
        if self.writer is None:
            return
        for name, param in net.collect_params().items():
            self._histogram(f"weights/{name}", param.list_data()[0], step)
            if param.grad_req != "null":
                self._histogram(f"grads/{name}", param.list_grad()[0], step)

    def _histogram(self, tag, array, step):
        flat = array.reshape(-1)
        stride = -(-flat.size // HISTOGRAM_SAMPLES)
        if stride > 1:
            flat = mx.nd.slice(flat, begin=(0,), end=(None,), step=(stride,))
        values = flat.asnumpy().astype(np.float32)
        if np.isfinite(values).all():
            self.writer.add_histogram(tag, values, bins=64, global_step=step)

    def text(self, tag, text, step):
        if self.writer is not None:
            self.writer.add_text(tag, text, global_step=step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
