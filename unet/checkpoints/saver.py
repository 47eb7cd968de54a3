"""Checkpoint writing for the training loop: the last state every epoch, the best when improved."""
import concurrent.futures
import contextlib

import mxnet as mx

from . import files, loading, writing
from ..core.errors import InputError
from .optimizer_state import optimizer_arrays


class CheckpointSaver:
    """Writes the last checkpoint (with optimizer state) and, when improved, the best one.

    At the end of an epoch, :meth:`begin` starts writing the last checkpoint's files on a second
    thread while the histograms and validation run (from a copy of the weights, 144 MB for the
    default model, held until written; nothing updates the optimizer state meanwhile): about
    0.4 s an epoch of the default model on 2 cores (docs/records/speed.md). :meth:`save`, once
    the scores are known, commits them: every checkpoint is still on disk before the next epoch
    starts, and a crash before the commit leaves the previous one. Files begun for a save that
    does not come are removed by :meth:`close` (or, after a kill, by the next run's
    :func:`unet.checkpoints.files.remove_stale_files`).
    """

    def __init__(self, net, trainer, cfg, base_meta, state, enabled):
        self.net, self.trainer, self.cfg = net, trainer, cfg
        self.base_meta, self.state, self.enabled = base_meta, state, enabled
        self.last_meta = None
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="checkpoint") if enabled else None
        self._begun = None

    def begin(self):
        """Start writing the files of the run's state as it is now. Until :meth:`save`, the
        network may only be used for inference and the optimizer not at all."""
        if not self.enabled:
            return
        self._discard()
        # The arrays are taken here, on the training thread: on a GPU that is a copy.
        optimizer = None if self.trainer is None else optimizer_arrays(self.trainer)
        self._begun = self._writer.submit(
            writing.prepare_checkpoint, writing.weights_copy(self.net), self._last_path(),
            optimizer, self.state.global_step)

    def save(self, lr, scores, best, best_weights=None):
        """Commit the last checkpoint (what :meth:`begin` wrote, else written now) and, when
        ``best``, the best one: the network's weights, or ``best_weights`` (a
        :func:`unet.checkpoints.writing.weights_copy`) where they differ. A failed write raises
        :class:`InputError`."""
        if not self.enabled:
            return
        meta = dict(self.base_meta, epoch=self.state.epoch, global_step=self.state.global_step,
                    learning_rate=lr, best_score=self.state.best_score,
                    best_epoch=self.state.best_epoch, scores=scores)
        last = self._last_path()
        with self._write_errors_said():
            if self._begun is not None:
                prepared = self._take_begun()
            else:
                prepared = writing.prepare_checkpoint(self.net, last, self.trainer,
                                                   self.state.global_step)
            self.last_meta = writing.commit_checkpoint(prepared, dict(meta, kind="last"))
            if best and best_weights is not None:
                writing.save_checkpoint(best_weights, self.cfg.checkpoint_file,
                                        dict(meta, kind="best"))
            elif best:
                writing.save_checkpoint(self.net, self.cfg.checkpoint_file, dict(meta, kind="best"),
                                     same_weights_as=(last, self.last_meta["params_sha256"]))

    def close(self):
        """Remove files begun for a save that did not come; stop the writer thread."""
        if self._writer is not None:
            self._discard()
            self._writer.shutdown(wait=True)

    def _take_begun(self):
        # A Ctrl-C while waiting leaves the files begun: the state save that follows commits
        # them, the run's state being the same. A failed write has removed its files.
        begun = self._begun
        try:
            prepared = begun.result()
        except BaseException:
            if begun.done() and begun.exception() is not None:
                self._begun = None
            raise
        self._begun = None
        return prepared

    def _discard(self):
        if self._begun is None:
            return
        try:
            prepared = self._take_begun()
        except Exception:       # noqa: BLE001 - a failed write has removed its files
            return
        writing.discard_checkpoint(prepared)

    def _last_path(self):
        return files.last_path(self.cfg.checkpoint_file)

    @contextlib.contextmanager
    def _write_errors_said(self):
        try:
            yield
        except (OSError, mx.base.MXNetError) as exc:
            # MXNet's writer reports a full disk as MXNetError, not OSError.
            raise InputError(f"could not write checkpoint {self.cfg.checkpoint_file}: "
                             f"{loading.error_reason(exc)}; the previous checkpoint is kept") from None
