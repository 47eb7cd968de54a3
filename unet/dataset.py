"""The training Dataset (augmented crops, weight maps) and its loaders.

Augmentation is seeded per sample from ``(seed, epoch, index)``: MXNet 1.9.1's forked workers
inherit one RNG state, so anything else repeats augmentations across workers, and the results
would differ between 0 and N workers.
"""
import logging
import multiprocessing.pool
import time

import cv2
import numpy as np
from mxnet import gluon

from .augment import augment as augment_sample
from .augment import build_augmenter, center_crop
from .data import match_channels
from .imageio import display_path, read_image, read_mask
from .weightmap import border_weight_map

log = logging.getLogger(__name__)
cv2.setNumThreads(0)  # the DataLoader's worker processes are the parallelism


def sample_seed(seed, epoch, index):
    """The augmentation seed of one sample: the same in any process, differs between samples."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class SegmentationDataset(gluon.data.Dataset):
    """Training samples as ``(image, label, weight)`` crops of side ``crop_size``.

    Parameters
    ----------
    samples : list of Sample
        With masks; repeats are fine (weight maps are cached per mask file).
    info : DataInfo
        From :func:`prepare_data`: channels, normalization, mask encoding.
    crop_size : int
        Side ``S`` of the square crops; smaller images are mirror-padded.
    augment : bool, default True
        :func:`unet.augment.build_augmenter` (random crop, flips, affine, elastic, intensity);
        False takes the central crop.
    seed : int, default 0
        With the epoch (:meth:`set_epoch`) and the index, seeds each sample's augmentation.
    weight_map : bool, default False
        Return the U-Net border weight map (:func:`unet.weightmap.border_weight_map`) instead of
        ones. Computed once per mask, here in the main process, so that forked workers share it.
    w0 : float, default 10.0
    sigma : float, default 5.0
        Weight map parameters.

    Items are numpy arrays: ``image`` float32 ``(C, S, S)`` normalized, ``label`` float32
    ``(S, S)`` class indices, ``weight`` float32 ``(S, S)``.
    """

    def __init__(self, samples, info, crop_size, augment=True, seed=0, weight_map=False,
                 w0=10.0, sigma=5.0):
        if int(crop_size) < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size!r}")
        if any(s.mask_path is None for s in samples):
            raise ValueError("every training sample needs a mask_path")
        self.samples, self.info, self.crop_size = list(samples), info, int(crop_size)
        self.seed, self.epoch = int(seed), 0
        self.augmenter = build_augmenter(self.crop_size) if augment else None
        self.weights = {}
        if weight_map:
            start = time.perf_counter()
            for sample in self.samples:
                if sample.mask_path not in self.weights:
                    classes = self._classes(sample)
                    self.weights[sample.mask_path] = border_weight_map(classes, w0, sigma)
            log.info("computed %d weight maps (w0=%g, sigma=%g) in %.1f s", len(self.weights),
                     w0, sigma, time.perf_counter() - start)

    def set_epoch(self, epoch):
        """Select the epoch that ``dataset[i]`` augments for (the loader passes its own)."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.samples)

    def _classes(self, sample):
        return self.info.encoding.decode(read_mask(sample.mask_path),
                                         name=display_path(sample.mask_path))

    def __getitem__(self, index):
        """The sample ``index`` with the augmentation of the current epoch (:meth:`set_epoch`)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return self.item(self.epoch, index % len(self))

    def item(self, epoch, index):
        """The sample ``0 <= index < len(self)`` as augmented in ``epoch``."""
        sample = self.samples[index]
        image = match_channels(read_image(sample.image_path), self.info.channels,
                               display_path(sample.image_path))
        classes = self._classes(sample)
        weight = self.weights.get(sample.mask_path)
        if self.augmenter is not None:
            image, classes, weight = augment_sample(
                self.augmenter, image, classes, weight,
                seed=sample_seed(self.seed, epoch, index))
        else:
            image, classes = center_crop(image, self.crop_size), center_crop(classes,
                                                                             self.crop_size)
            weight = None if weight is None else center_crop(weight, self.crop_size)
        if weight is None:
            weight = np.ones(classes.shape, np.float32)
        return (self.info.normalization.apply(image), classes.astype(np.float32),
                np.ascontiguousarray(weight, dtype=np.float32))


class _FixedOrder(gluon.data.Sampler):
    def __init__(self, order):
        self.order = [int(i) for i in order]

    def __iter__(self):
        return iter(self.order)

    def __len__(self):
        return len(self.order)


def epoch_order(count, shuffle, epoch, seed):
    """The sample order of one epoch: ``range(count)``, or a permutation drawn from
    ``(seed, epoch)`` when ``shuffle``."""
    if not shuffle:
        return np.arange(count)
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 1])).permutation(
        count)


class EpochLoader:
    """One loader for a whole run; ``loader.epoch(e)`` gives the batches of epoch ``e``.

    The worker processes are forked once, when the loader is made, and serve every epoch: make
    it before the network. MXNet 1.9.1's DataLoader forks its workers when it is made (after a
    full garbage collection), and workers forked from a process that holds the network share its
    memory pages: every page the next training step writes is then copied. The workers learn the
    epoch from the sample indices they are sent, so the batches do not depend on the number of
    workers.

    Parameters
    ----------
    dataset : SegmentationDataset
        Anything with ``__len__`` and ``item(epoch, index)``.
    batch_size : int
    shuffle : bool
        Each epoch a permutation drawn from ``(seed, epoch)`` (:func:`epoch_order`).
    num_workers : int
        Worker processes; 0 loads in the calling process.
    seed : int, default 0

    Batches are tuples of numpy arrays (:func:`stack_numpy`) of ``len(dataset) // batch_size``
    full batches; the incomplete last batch is discarded, except that a dataset smaller than one
    batch gives one smaller batch. The caller copies them to its devices.
    """

    def __init__(self, dataset, batch_size, shuffle, num_workers, seed=0):
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size!r}, "
                             f"{num_workers!r}")
        self._batches = _EpochBatches(len(dataset), batch_size, shuffle, seed)
        self._loader = gluon.data.DataLoader(_EpochView(dataset), batch_sampler=self._batches,
                                             num_workers=num_workers, batchify_fn=stack_numpy)

    def epoch(self, epoch):
        """An iterable over the batches of ``epoch``: tuples of numpy arrays."""
        self._batches.epoch = int(epoch)
        return self._loader

    def __len__(self):
        return len(self._batches)

    def close(self):
        """Stop the worker processes (also done when the loader is garbage-collected), also
        when some were killed from outside."""
        pool, self._loader._worker_pool = self._loader._worker_pool, None
        if pool is not None:
            terminate_pool(pool)


def terminate_pool(pool, timeout=10.0):
    """``pool.terminate()`` for a ``multiprocessing.Pool`` that also returns when a worker was
    killed from outside.

    An idle worker waits for its next task holding the task queue's read lock, and
    ``Pool.terminate`` first takes that lock: a worker killed while waiting (a SIGTERM sent to the
    whole process group, as ``pkill -f`` or a batch scheduler's cancel does; the OOM killer) keeps
    it taken forever, and terminate hangs. So the pool first stops replacing dead workers, its
    workers are killed, and the lock is freed before terminating. Uses the internals of
    Python 3.10-3.11's ``multiprocessing.pool``.
    """
    handler = pool._worker_handler
    handler._state = multiprocessing.pool.TERMINATE
    pool._change_notifier.put(None)         # wakes the handler, which then stops
    handler.join(timeout)
    workers = list(pool._pool)
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(timeout)
    # No worker is alive: whether the lock was free or held by a killed worker, it is free after.
    lock = pool._inqueue._rlock
    lock.acquire(block=False)
    lock.release()
    pool.terminate()


class _EpochView(gluon.data.Dataset):
    """Item ``epoch * len(dataset) + index`` is ``dataset.item(epoch, index)``: the workers learn
    the epoch from the indices they are sent."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset.item(*divmod(int(key), len(self.dataset)))


class _EpochBatches(gluon.data.Sampler):
    """Batches of keys ``epoch * count + index`` for :class:`_EpochView`, in the epoch's order."""

    def __init__(self, count, batch_size, shuffle, seed):
        self.count, self.batch_size, self.shuffle, self.seed = count, batch_size, shuffle, seed
        self.epoch = 0
        # A dataset smaller than one batch still gives one (smaller) batch.
        self.last_batch = "keep" if count < batch_size else "discard"

    def __iter__(self):
        keys = self.epoch * self.count + epoch_order(self.count, self.shuffle, self.epoch,
                                                     self.seed)
        return iter(gluon.data.BatchSampler(_FixedOrder(keys), self.batch_size, self.last_batch))

    def __len__(self):
        return len(gluon.data.BatchSampler(range(self.count), self.batch_size, self.last_batch))


def stack_numpy(samples):
    """Batch a list of ``(image, label, weight)`` numpy tuples into numpy arrays.

    MXNet's default batchify hands NDArrays from the workers over as shared-memory file
    descriptors, and 1.9.1 can close such a descriptor twice: the second close then hits
    whatever file reused the number (seen as ``EBADF`` while a checkpoint was being written).
    Plain numpy arrays travel pickled through the pool's pipe instead.
    """
    return tuple(np.stack(field) for field in zip(*samples))
