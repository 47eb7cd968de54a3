"""The training loop: data -> hybridized U-Net -> Trainer, validation, checkpoints, TensorBoard.

:func:`train` is the whole job behind ``segmenter.py``. It resumes from the last checkpoint with
``checkpoint='load'`` (same epoch count, step, learning rate, optimizer state and best score), keeps
the previous checkpoint whole whatever happens, saves the state on Ctrl-C, and stops with
:class:`~unet.core.errors.TrainingDiverged` on a NaN or infinite loss.
"""
import contextlib
import dataclasses
import logging
import math
import os
import random
import signal
import threading
import time

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..checkpoints import files, loading, writing
from ..core import faults
from ..data.samples import prepare_data
from ..data.loader import EpochLoader, SegmentationDataset
from ..cluster.distributed import (create_kvstore, finish, shard_indices, sync_initial_params,
                          trainer_kwargs)
from ..core.errors import InputError, WorkerDied
from ..core.held_logs import held_info_lines
from ..inference.segmenter import contexts as device_contexts
from ..checkpoints.lock import RunLock
from .losses import SegmentationLoss
from ..model.network import build_unet, finish_deferred_init, initializer
from ..model.precision import init_amp, uses_loss_scaling
from .mirror import MirroredSteps
from .recompute import use_lean_allocator
from ..checkpoints.saver import CheckpointSaver
from .steps import train_epoch
from .tensorboard import TrainingLog, new_run_name
from .ema import averaged_weights, averaging_optimizer
from .validation import validate

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunState:
    """Where a run stands: what a last checkpoint records besides the weights."""

    epoch: int = 0                # completed epochs
    global_step: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    run_name: str = ""


def seed_everything(seed):
    """imgaug first: its first seeding draws from numpy's global RNG (MXNet notes, section 10)."""
    import imgaug
    imgaug.seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


def contexts(cfg):
    """The GPUs of ``--gpu-id`` (checked as in inference), else ``cpu_contexts`` CPU contexts."""
    if cfg.gpu_ids:
        return device_contexts(cfg.gpu_ids)
    return [mx.cpu(i) for i in range(cfg.cpu_contexts)]


def _resume_meta(cfg):
    last = files.last_path(cfg.checkpoint_file)
    if os.path.isdir(last):
        raise InputError(f"--checkpoint=load: {last} is a folder, not a checkpoint")
    if not os.path.isfile(last):
        raise InputError(f"--checkpoint=load: no checkpoint to resume at {last} "
                         f"(start with --checkpoint=new)")
    return last, files.read_meta(last)


def _best_on_disk(path, select_by="dice"):
    """``(best_score, best_epoch)`` of the best checkpoint on disk, ``(-1.0, -1)`` when none or
    when it was chosen by another score than ``select_by``.

    A kill between the last and the best save leaves the last checkpoint naming a best epoch
    that was never written; resuming with its score would never write that best.
    """
    if not os.path.isfile(path):
        return -1.0, -1
    try:
        meta = files.read_meta(path)
    except InputError as err:
        log.warning("%s; the next epoch writes a new best checkpoint", err)
        return -1.0, -1
    chosen_by = meta.get("training", {}).get("select_by", "dice")
    if chosen_by != select_by:
        log.warning("%s was chosen by validation %s, this run selects by %s; the next epoch "
                    "writes a new best checkpoint", path, chosen_by, select_by)
        return -1.0, -1
    return meta["best_score"], meta["best_epoch"]


def selection_score(scores, select_by):
    """The score of ``select_by`` in the validation ``scores``; 0.0 where it is NaN (no
    validation image with cells), so that the first epoch still writes a best checkpoint."""
    value = scores[select_by]
    return 0.0 if math.isnan(value) else value


def _check_same_model(saved, wanted, path):
    diffs = [d for d in saved.differences(wanted)]
    if diffs:
        raise InputError(f"checkpoint {path} was trained with another architecture "
                         f"(checkpoint != flags): {'; '.join(diffs)}")


def train(cfg):
    """Train as ``cfg`` (:class:`~unet.training.config.TrainConfig`) says; returns the final meta.

    Raises :class:`InputError` for bad data or checkpoints, :class:`TrainingDiverged` on a NaN
    loss, ``KeyboardInterrupt`` after saving the state when interrupted, and :class:`WorkerDied`
    after saving it when a data-loader worker died.
    """
    _make_output_folders(cfg.checkpoint_file, cfg.log_dir)
    if cfg.recompute:
        use_lean_allocator()
    seed_everything(cfg.seed)
    if cfg.amp != "fp32":
        init_amp(cfg.amp)
    run = _Run(cfg)
    try:
        run.loop()
        finish(run.is_dist)
    except KeyboardInterrupt:
        with _stop_signals_ignored():
            run.save_interrupted("interrupted")
        raise
    except WorkerDied:
        with _stop_signals_ignored():
            run.save_interrupted("a data-loader worker died")
        raise
    finally:
        run.close()
    return run.saver.last_meta


def _make_output_folders(checkpoint_file, log_dir):
    """Make the checkpoint's and the logs' folders now: a bad path is one line before any work."""
    if os.path.basename(checkpoint_file) in ("", ".", "..") or os.path.isdir(checkpoint_file):
        kind = "is a folder" if os.path.isdir(checkpoint_file) else "names no file"
        raise InputError(f"checkpoint file {checkpoint_file!r} {kind}; name a file such as "
                         f"{os.path.join(checkpoint_file, 'unet_best.params')}")
    for what, folder in (("checkpoint", os.path.dirname(os.path.abspath(checkpoint_file))),
                         ("log", log_dir or ".")):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the {what} folder {folder}: {exc.strerror}") \
                from None


@contextlib.contextmanager
def _stop_signals_ignored():
    """Ignore Ctrl-C and SIGTERM while the state is saved after a stop: a second signal (a
    SIGTERM to the whole process group and then one to this process, a double Ctrl-C) would
    otherwise abort the save and lose the work since the last checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Run:
    """Everything one training run holds: data, network, trainer, logs and where it stands."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.ctx = contexts(cfg)
        kvstore, self.rank, self.num_workers, self.is_dist = create_kvstore(cfg.kvstore,
                                                                            len(self.ctx))
        self.is_chief = self.rank == 0
        self.tb, self.lock, self.loader, self.saver = None, None, None, None
        try:
            # Until the data and the checkpoint have proved sound, INFO lines wait: bad input
            # is its one error line.
            with held_info_lines() as checks_passed:
                if self.is_chief:       # only rank 0 writes checkpoints
                    self.lock = RunLock(cfg.checkpoint_file + ".lock",
                                        f"checkpoint {cfg.checkpoint_file}")
                    files.remove_stale_files(cfg.checkpoint_file)
                self._set_up(kvstore, checks_passed)
        except BaseException:
            self.close()
            raise

    def _set_up(self, kvstore, checks_passed):
        cfg = self.cfg
        resume_meta, last = None, None
        if cfg.checkpoint == "load":
            last, resume_meta = _resume_meta(cfg)
        info = prepare_data(cfg.data_dir, cfg.model.num_classes, channels=cfg.channels)
        self.model_cfg = model_cfg = dataclasses.replace(cfg.model, in_channels=info.channels)
        self.state = RunState(run_name=new_run_name())
        if resume_meta is not None:
            _check_same_model(resume_meta["model_config"], model_cfg, last)
            self.state = RunState(
                epoch=resume_meta["epoch"], global_step=resume_meta["global_step"],
                best_score=resume_meta["best_score"], best_epoch=resume_meta["best_epoch"],
                run_name=resume_meta.get("run_name") or self.state.run_name)
            info = dataclasses.replace(info, normalization=type(info.normalization).from_dict(
                resume_meta["data"]["normalization"]))
            self.state.best_score, self.state.best_epoch = _best_on_disk(cfg.checkpoint_file,
                                                                         cfg.select_by)
        self.info = info
        # Before the network: the loader forks its workers now (unet.data.loader.EpochLoader).
        self.dataset = self._training_set()
        self.loader = EpochLoader(self.dataset, cfg.batch_size, shuffle=True,
                                  num_workers=cfg.num_workers, seed=cfg.seed)
        self._build_network(kvstore)
        if resume_meta is not None:
            loading.load_training_state(self.net, self.trainer if self.can_save_states else None,
                                     last, optimizer=cfg.optimizer, ema=cfg.ema)
            log.info("resuming %s at epoch %d, step %d (best %s %.4f at epoch %d)", last,
                     self.state.epoch, self.state.global_step, cfg.select_by,
                     self.state.best_score, self.state.best_epoch)
        checks_passed()
        if self.is_dist:
            # LayerNorm shapes are deferred until the input's width is known; rank 0's weights
            # go to all. By shape inference, not a forward pass: an inference-mode forward
            # rewrites conv weights into a oneDNN layout the dist kvstore cannot send.
            size = model_cfg.image_size
            finish_deferred_init(self.net, (1, model_cfg.in_channels, size, size))
            sync_initial_params(self.trainer)
        self.loss_fn = SegmentationLoss(cfg.loss, model_cfg.num_classes, cfg.class_weights,
                                        distance_weight=cfg.distance_weight,
                                        distance_clip=cfg.distance_clip)
        if cfg.distance_weight > 0:
            log.info("loss: %s + %g x the Huber loss of the score margin against the signed "
                     "distance to the boundary (clipped at %d px)", cfg.loss, cfg.distance_weight,
                     cfg.distance_clip)
        self.loss_fn.hybridize()
        self.mirrored = MirroredSteps(self.net, self.loss_fn) if cfg.mirror else None
        self.tb = TrainingLog(cfg.log_dir, self.state.run_name, enabled=self.is_chief)
        if self.is_chief:
            log.info("TensorBoard run folder: %s", self.tb.folder)
        self.saver = CheckpointSaver(self.net, self.trainer if self.can_save_states else None,
                                     cfg, self._base_meta(), self.state, self.is_chief)

    def _build_network(self, kvstore):
        cfg = self.cfg
        # The compiled kernels are CPU code: on GPUs the layer norms and convolutions stay
        # MXNet's; under AMP the convolutions run in MXNet's low precision.
        on_cpu = all(c.device_type == "cpu" for c in self.ctx)
        self.net = build_unet(self.model_cfg, fast_norm=cfg.fast_norm, fused_norm=on_cpu,
                              winograd=on_cpu and cfg.winograd and cfg.amp == "fp32")
        self.net.initialize(initializer(), ctx=self.ctx)
        # A static CachedOp keeps all of its memory between steps: no use recomputing then.
        # With --mirror the steps run on MXNet's executor and the block only validates: its
        # memory is then freed after each validation.
        static = not (cfg.recompute or cfg.mirror)
        self.net.hybridize(static_alloc=static, static_shape=static)
        kwargs = trainer_kwargs(cfg.kvstore) or {"update_on_kvstore": False}
        if cfg.ema:
            optimizer, params = averaging_optimizer(cfg.optimizer, cfg.ema,
                                                    **cfg.optimizer_params()), None
        else:
            optimizer, params = cfg.optimizer, cfg.optimizer_params()
        self.trainer = gluon.Trainer(self.net.collect_params(), optimizer, params,
                                     kvstore=kvstore, **kwargs)
        if uses_loss_scaling(cfg.amp):
            from mxnet.contrib import amp
            amp.init_trainer(self.trainer)
        # dist_async updates on the servers: no optimizer state here to save.
        self.can_save_states = not kwargs.get("update_on_kvstore")

    def _training_set(self):
        cfg, samples = self.cfg, self.info.train
        if self.is_dist:
            samples = [samples[i] for i in shard_indices(len(samples), self.rank,
                                                         self.num_workers)]
        epoch_size = cfg.epoch_size or len(samples)
        repeated = [samples[i % len(samples)] for i in range(epoch_size)]
        return SegmentationDataset(repeated, self.info, self.model_cfg.image_size,
                                   augment=cfg.augment, seed=cfg.seed + 1000 * self.rank,
                                   weight_map=cfg.weight_map, w0=cfg.w0, sigma=cfg.sigma,
                                   geometry=cfg.geometry, boundary_weight=cfg.boundary_weight,
                                   boundary_sigma=cfg.boundary_sigma)

    def _base_meta(self):
        cfg, info = self.cfg, self.info
        return {"model": self.model_cfg.to_dict(), "run_name": self.state.run_name,
                "seed": cfg.seed, "command": files.command_line(),
                "data": {"channels": info.channels,
                         "normalization": info.normalization.to_dict(),
                         "encoding": info.encoding.to_dict(), "data_dir": cfg.data_dir},
                "training": _jsonable(dataclasses.asdict(cfg))}

    def loop(self):
        cfg, state = self.cfg, self.state
        started, epoch_seconds = time.time(), 0.0
        for epoch in range(state.epoch, cfg.num_epochs):
            # Not under dist: workers must all run the same epochs, or the others would hang.
            if cfg.time_limit and not self.is_dist \
                    and time.time() - started + epoch_seconds > 60 * cfg.time_limit:
                log.info("time limit of %g min reached after %d epochs", cfg.time_limit, epoch)
                break
            epoch_start = time.time()
            lr = cfg.learning_rate_at(epoch)
            self.trainer.set_learning_rate(lr)
            loss, seconds = train_epoch(self.net, self.trainer, self.loss_fn,
                                        self.loader.epoch(epoch), self.ctx, cfg, state, self.tb,
                                        epoch, self.num_workers, self.mirrored)
            state.epoch = epoch + 1
            if self.is_chief:
                self._end_epoch(epoch, lr, loss, len(self.dataset) / max(seconds, 1e-9))
            epoch_seconds = time.time() - epoch_start

    def _end_epoch(self, epoch, lr, loss, images_per_sec):
        """Validate, log, and save the last (and, if improved, the best) checkpoint."""
        cfg, state, tb = self.cfg, self.state, self.tb
        # The checkpoint's files are written on a second thread meanwhile, and committed by
        # save() below. The histograms first: mostly one thread of Python, they leave the
        # writer a core, which validation's two threads would not.
        self.saver.begin()
        if cfg.histograms:
            tb.histograms(self.net, state.global_step)
        faults.point("train.validation")
        averaged = None
        with averaged_weights(self.trainer) if cfg.ema else contextlib.nullcontext():
            scores, panels = validate(self.net, self.info, self.model_cfg, self.ctx,
                                      cfg.batch_size, cfg.log_images)
            score = selection_score(scores, cfg.select_by)
            improved = score > state.best_score
            if improved and cfg.ema:
                averaged = writing.weights_copy(self.net)
        for name, value in scores.items():
            tb.scalar(f"val/{name}", value, state.global_step)
        tb.scalar("train/images_per_sec", images_per_sec, state.global_step)
        tb.scalar("train/epoch_loss", loss, state.global_step)
        tb.panels("val/panels", panels, state.global_step)
        if improved:
            state.best_score, state.best_epoch = score, epoch + 1
        self.saver.save(lr, scores, best=improved, best_weights=averaged)
        cells = "".join(f"  {key} {scores[key]:.4f}" for key in ("v_rand", "v_info")
                        if key in scores)
        log.info("epoch %d/%d  loss %.4f  val dice %.4f  iou %.4f  pixel error %.4f%s  "
                 "%.1f img/s  lr %.2g%s", epoch + 1, cfg.num_epochs, loss, scores["dice"],
                 scores["mean_iou"], scores["pixel_error"], cells, images_per_sec, lr,
                 "  (best, saved)" if improved else "")

    def close(self):
        # Each in turn even when one fails or a second Ctrl-C comes while the saver waits for
        # its writer: the lock, last, is released in any case.
        closers = [part.close for part in (self.saver, self.loader, self.tb) if part is not None]
        if self.lock is not None:
            closers.append(self.lock.release)
        _close_all(closers)

    def save_interrupted(self, reason):
        if not self.is_chief:
            return
        self.saver.save(self.cfg.learning_rate_at(self.state.epoch), None, best=False)
        log.warning("%s: state saved to %s at step %d; resume with --checkpoint=load", reason,
                    files.last_path(self.cfg.checkpoint_file), self.state.global_step)


def _close_all(closers):
    """Call every function of ``closers`` in order, also after one raised; raise the first
    exception."""
    first = None
    for close in closers:
        try:
            close()
        except BaseException as exc:      # noqa: BLE001 - raised below, after the others ran
            first = first or exc
    if first is not None:
        raise first


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
