"""The training Dataset (augmented crops, weight maps) and its loaders.

Augmentation is seeded per sample from ``(seed, epoch, index)``: forked workers inherit one RNG
state, so anything else repeats augmentations across workers, and the results would differ
between 0 and N workers.
"""
import logging
import time

import cv2
import numpy as np
from mxnet import gluon
from tqdm import tqdm

from .augment import augment as augment_sample
from .augment import build_augmenter, center_crop
from .samples import PROGRESS_DELAY_S, match_channels
from .imageio import display_path, read_image, read_mask
from .weightmap import border_weight_map, boundary_band_weights
from .workers import BatchWorkers

log = logging.getLogger(__name__)
cv2.setNumThreads(0)  # the loader's worker processes are the parallelism


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
        :func:`unet.data.augment.build_augmenter` (random crop, flips, affine, elastic, intensity);
        False takes the central crop.
    geometry : {'elastic', 'affine', 'lossless'}, default 'elastic'
        The augmenter's geometric warps (:func:`unet.data.augment.build_augmenter`).
    seed : int, default 0
        With the epoch (:meth:`set_epoch`) and the index, seeds each sample's augmentation.
    weight_map : bool, default False
        Return the U-Net border weight map (:func:`unet.data.weightmap.border_weight_map`) instead of
        ones. Computed once per mask, here in the main process, so that forked workers share it.
    w0 : float, default 10.0
    sigma : float, default 5.0
        Weight map parameters.
    boundary_weight : float, default 0.0
    boundary_sigma : float, default 2.0
        With ``boundary_weight > 0``, :func:`unet.data.weightmap.boundary_band_weights` is added to
        the weights (ones, or the border weight map), once per mask as the weight map.

    Items are numpy arrays: ``image`` float32 ``(C, S, S)`` normalized, ``label`` float32
    ``(S, S)`` class indices, ``weight`` float32 ``(S, S)``.
    """

    def __init__(self, samples, info, crop_size, augment=True, seed=0, weight_map=False,
                 w0=10.0, sigma=5.0, geometry="elastic", boundary_weight=0.0,
                 boundary_sigma=2.0):
        if int(crop_size) < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size!r}")
        if any(s.mask_path is None for s in samples):
            raise ValueError("every training sample needs a mask_path")
        self.samples, self.info, self.crop_size = list(samples), info, int(crop_size)
        self.seed, self.epoch = int(seed), 0
        self.augmenter = build_augmenter(self.crop_size, geometry) if augment else None
        self.weights = {}
        if weight_map or boundary_weight > 0:
            start = time.perf_counter()
            with tqdm(self.samples, desc="weight maps", unit="mask", leave=False,
                      delay=PROGRESS_DELAY_S, disable=None) as masks:     # on a terminal
                for sample in masks:
                    if sample.mask_path not in self.weights:
                        classes = self._classes(sample)
                        weights = (border_weight_map(classes, w0, sigma) if weight_map
                                   else np.ones(classes.shape, np.float32))
                        if boundary_weight > 0:
                            weights += boundary_band_weights(classes, boundary_weight,
                                                             boundary_sigma)
                        self.weights[sample.mask_path] = weights
            parts = []
            if weight_map:
                parts.append(f"border map w0={w0:g}, sigma={sigma:g}")
            if boundary_weight > 0:
                parts.append(f"boundary band {boundary_weight:g}, sigma {boundary_sigma:g}")
            log.info("computed %d weight maps (%s) in %.1f s", len(self.weights),
                     "; ".join(parts), time.perf_counter() - start)

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


def epoch_order(count, shuffle, epoch, seed):
    """The sample order of one epoch: ``range(count)``, or a permutation drawn from
    ``(seed, epoch)`` when ``shuffle``."""
    if not shuffle:
        return np.arange(count)
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 1])).permutation(
        count)


class EpochLoader:
    """One loader for a whole run; ``loader.epoch(e)`` gives the batches of epoch ``e``.

    The worker processes (:class:`unet.data.workers.BatchWorkers`) are forked once, when the loader
    is made, and serve every epoch: make it before the network, since workers forked from a
    process that holds the network share its memory pages, and every page the next training
    step writes is then copied. The workers are sent the epoch with the sample indices, so the
    batches do not depend on the number of workers.

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
    timeout : float, default 600
        Seconds to wait for one batch from a worker before giving up
        (:class:`unet.core.errors.WorkerDied`): a worker that hangs without dying would otherwise stop
        the run for good.

    Batches are tuples of numpy arrays (:func:`stack_numpy`) of ``len(dataset) // batch_size``
    full batches; the incomplete last batch is discarded, except that a dataset smaller than one
    batch gives one smaller batch. The caller copies them to its devices.
    """

    def __init__(self, dataset, batch_size, shuffle, num_workers, seed=0, timeout=600.0):
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size!r}, "
                             f"{num_workers!r}")
        self.dataset, self.batch_size, self.shuffle, self.seed = (dataset, int(batch_size),
                                                                  bool(shuffle), int(seed))
        count = len(dataset)
        # A dataset smaller than one batch still gives one (smaller) batch.
        self._num_batches = max(1, count // self.batch_size) if count else 0
        self.workers = (BatchWorkers(self._batch, num_workers, timeout=timeout) if num_workers
                        else None)

    def _batch(self, task):
        epoch, indices = task
        return stack_numpy([self.dataset.item(epoch, i) for i in indices])

    def _tasks(self, epoch):
        order = epoch_order(len(self.dataset), self.shuffle, epoch, self.seed)
        return [(int(epoch), [int(i) for i in order[k * self.batch_size:
                                                     (k + 1) * self.batch_size]])
                for k in range(self._num_batches)]

    def epoch(self, epoch):
        """An iterable over the batches of ``epoch`` (tuples of numpy arrays), with a length."""
        tasks = self._tasks(epoch)
        batches = map(self._batch, tasks) if self.workers is None else self.workers.map(tasks)
        return _Sized(batches, len(tasks))

    def __len__(self):
        return self._num_batches

    def close(self):
        """Stop the worker processes; safe to call twice."""
        if self.workers is not None:
            self.workers.close()


class _Sized:
    """An iterator with a length, for progress bars."""

    def __init__(self, iterator, length):
        self.iterator, self.length = iterator, length

    def __iter__(self):
        return self.iterator

    def __len__(self):
        return self.length


def stack_numpy(samples):
    """Batch a list of ``(image, label, weight)`` numpy tuples into numpy arrays.

    Plain numpy arrays travel pickled through the workers' pipes. (MXNet's DataLoader hands
    NDArrays over as shared-memory file descriptors, and 1.9.1 can close such a descriptor twice:
    the second close then hits whatever file reused the number, seen as ``EBADF`` while a
    checkpoint was being written.)
    """
    return tuple(np.stack(field) for field in zip(*samples))
