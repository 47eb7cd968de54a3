"""The ``epoch`` row: a short real ``unet.training.loop.train`` run against the same number of
pure training steps, which the parent measures in fresh processes around it."""
import os
import tempfile
import time

from .loader import demo_dataset
from .specs import model_config
from .timing import median

# The epoch row's run: the first epoch builds and compiles; the second's checkpoint is the run's
# second, whose 432 MB of new file pages cost this VM up to 1 s of system time more than any
# later save (the first two saves of a run took 1.3-1.4 s, the later ones 0.5-0.7 s: from the
# third on, the pages a save frees are reused). Steady state is what a long training run pays.
WARMUP_EPOCHS, TIMED_EPOCHS = 2, 2


def run_epoch(spec):
    """The last ``TIMED_EPOCHS`` epochs of one ``unet.training.loop.train`` run of
    ``WARMUP_EPOCHS + TIMED_EPOCHS``, each from the end of the previous epoch to the end of its
    own (steps, validation, logging, checkpoints); ``parts_ms``: the mean time per epoch of its
    steps (with the waits for data), validation, checkpoint (what the epoch waits for: the copy of
    the weights, the files' write beyond validation, the commit) and histograms; ``step_ms_by_epoch``:
    for every epoch of the run, the median time from the start of one step's forward pass to the
    next's (the whole step: data, forward, backward, update, loss readout, logging). The pure
    steps to compare with are measured by the parent, in fresh processes
    (:func:`add_epoch_reference`)."""
    from unet.training import loop as training
    size, count = spec["size"], spec["epoch_images"]
    ends, step_starts, parts = _instrument()
    with tempfile.TemporaryDirectory() as folder:
        data = demo_dataset(os.path.join(folder, "data"), size, count)
        cfg = _train_config(spec, folder, data)
        start = time.perf_counter()
        training.train(cfg)
    timed_ends = ends[WARMUP_EPOCHS - 1:]
    epochs_ms = [(b - a) * 1e3 for a, b in zip(timed_ends, timed_ends[1:])]
    steps = max(count // spec["batch"], 1)          # the loader drops an incomplete last batch
    # A step lasts until the next one starts; an epoch's last step until the epoch's end, after
    # which validation and the checkpoint follow, so the last step of each epoch is left out.
    by_epoch = [round(median([b - a for a, b in zip(t, t[1:])]) * 1e3, 1) if len(t) > 1 else None
                for t in step_starts[:len(ends)]]
    return dict(first_ms=(ends[0] - start) * 1e3, times_ms=epochs_ms, steps=steps, images=count,
                parts_ms=parts, step_ms_by_epoch=by_epoch)


def _instrument():
    """Put clocks into ``unet.training`` for the rest of this process.

    Returns
    -------
    tuple of (list, list of list, dict)
        Filled during the run: ``ends``, the ``perf_counter`` at each epoch's end;
        ``step_starts``, per epoch, at each step's start; ``parts``, the ms per timed epoch of
        ``steps``, ``validation``, ``checkpoint`` and ``histograms``.
    """
    from unet.training import steps as step_loop
    from unet.training import loop as training
    from unet.checkpoints.saver import CheckpointSaver
    from unet.training.tensorboard import TrainingLog
    ends, real_end_epoch = [], training._Run._end_epoch
    parts = {"steps": 0.0, "validation": 0.0, "checkpoint": 0.0, "histograms": 0.0}
    step_starts = [[]]        # per epoch: when each step's forward pass began
    real_batch_gradients = step_loop.batch_gradients

    def end_epoch(run, *args, **kwargs):
        real_end_epoch(run, *args, **kwargs)
        ends.append(time.perf_counter())
        step_starts.append([])

    def batch_gradients(*args, **kwargs):
        step_starts[-1].append(time.perf_counter())
        return real_batch_gradients(*args, **kwargs)

    training._Run._end_epoch = end_epoch
    step_loop.batch_gradients = batch_gradients
    clocks = ((training, "train_epoch", "steps"),
              (training, "validate", "validation"),
              (CheckpointSaver, "begin", "checkpoint"),     # the weights' copy; the files are
              (CheckpointSaver, "save", "checkpoint"),      # written beside validation
              (TrainingLog, "histograms", "histograms"))
    for owner, name, part in clocks:
        _time_part(owner, name, parts, part, ends)
    return ends, step_starts, parts


def _time_part(owner, name, parts, part, ends):
    """Wrap ``owner.name`` so that, once ``WARMUP_EPOCHS`` epochs have ended (``len(ends)``),
    each call adds its ms per timed epoch to ``parts[part]``."""
    real = getattr(owner, name)

    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            if len(ends) >= WARMUP_EPOCHS:
                parts[part] += (time.perf_counter() - start) * 1e3 / TIMED_EPOCHS
    setattr(owner, name, call)


def _train_config(spec, folder, data):
    """The ``TrainConfig`` of the epoch row's run on the data set ``data``, writing into
    ``folder``."""
    from unet.training.config import TrainConfig
    count = spec["epoch_images"]
    return TrainConfig(model=model_config(spec, spec["size"]), channels=spec["channels"],
                       data_dir=data, checkpoint_file=os.path.join(folder, "c", "u.params"),
                       log_dir=os.path.join(folder, "logs"), batch_size=spec["batch"],
                       num_epochs=WARMUP_EPOCHS + TIMED_EPOCHS, epoch_size=count,
                       num_workers=spec["workers"],
                       amp=spec["amp"], fast_norm=spec["fast_norm"],
                       winograd=spec["winograd"], recompute=spec["recompute"],
                       mirror=spec["mirror"], seed=0)


def epoch_reference_spec(spec):
    """The isolated training steps an epoch row is compared with: 8 (or ``--repeat``) after 2
    of warm-up, with the epoch's kernels (its ``--no-fused-norm`` turns off both)."""
    return dict(spec, task="train", warmup=2, repeat=max(8, spec["repeat"]),
                winograd=spec["winograd"] and spec["fused_norm"])


def add_epoch_reference(row, references):
    """Add ``reference_step_ms`` (the median step of the ``references``, train rows measured in
    fresh processes just before and after the epoch's), ``pure_steps_ms`` (``steps`` times it)
    and ``overhead`` to an epoch row. Fresh processes, because a step measured in the epoch's
    own process after training was up to 30% slower; two, because this machine's speed drifts
    by several percent from one minute to the next."""
    if row.get("status") != "ok":
        return row
    failed = [r for r in references if r.get("status") != "ok"]
    if failed:
        return dict(row, status=f"error: reference steps: {failed[0].get('status')}")
    times = [t for r in references for t in r["times_ms"]]
    row = dict(row, reference_step_ms=round(median(times), 2))
    row["pure_steps_ms"] = round(row["steps"] * row["reference_step_ms"], 1)
    row["overhead"] = round(row["ms_median"] / row["pure_steps_ms"] - 1.0, 4)
    return row
