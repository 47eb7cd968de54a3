"""Checkpoint writing for the training loop: the last state every epoch, the best when improved."""
import mxnet as mx

from . import checkpoint as ckpt
from .errors import InputError


class CheckpointSaver:
    """Writes the last checkpoint (with optimizer state) and, when improved, the best one."""

    def __init__(self, net, trainer, cfg, base_meta, state, enabled):
        self.net, self.trainer, self.cfg = net, trainer, cfg
        self.base_meta, self.state, self.enabled = base_meta, state, enabled
        self.last_meta = None

    def save(self, lr, scores, best):
        if not self.enabled:
            return
        meta = dict(self.base_meta, epoch=self.state.epoch, global_step=self.state.global_step,
                    learning_rate=lr, best_score=self.state.best_score,
                    best_epoch=self.state.best_epoch, scores=scores)
        try:
            self.last_meta = ckpt.save_checkpoint(
                self.net, ckpt.last_path(self.cfg.checkpoint_file), dict(meta, kind="last"),
                self.trainer)
            if best:
                last = (ckpt.last_path(self.cfg.checkpoint_file), self.last_meta["params_sha256"])
                ckpt.save_checkpoint(self.net, self.cfg.checkpoint_file, dict(meta, kind="best"),
                                     same_weights_as=last)
        except (OSError, mx.base.MXNetError) as exc:
            # MXNet's writer reports a full disk as MXNetError, not OSError.
            raise InputError(f"could not write checkpoint {self.cfg.checkpoint_file}: "
                             f"{ckpt.error_reason(exc)}; the previous checkpoint is kept") from None
