"""Segmenting images with a trained checkpoint: image -> probabilities -> classes -> mask file.

:class:`Segmenter` holds a network rebuilt from its checkpoint together with the data config it
was trained with (channels, normalization, mask encoding), so an image file goes in and a mask in
the training masks' own values (0/255 for binary) comes out, at the image's size.
"""
import logging
import os
import sys
from dataclasses import dataclass

import mxnet as mx
import numpy as np
from tqdm import tqdm

from ..checkpoints.loading import load_for_inference
from ..data.samples import PROGRESS_DELAY_S, Normalization, match_channels
from ..core.errors import InputError
from ..data.imageio import display_path, read_image, write_file, write_png
from ..data.stacks import read_stack, write_stack
from ..data.masks import MaskEncoding
from ..model.network import inference_copy
from .postprocess import split_cells
from ..model.precision import bf16_inference_network, int8_inference_network
from .tiling import evenly_spaced, predict_probabilities, sample_tiles

logger = logging.getLogger(__name__)

PROBABILITY_FORMATS = ("png16", "npy")
#: Tiles that calibrate an int8 network (``amp='int8'``), spread over the calibration images.
CALIBRATION_TILES = 4
OVERLAY_COLOR = (255, 0, 0)


@dataclass
class Prediction:
    """The result for one image of ``H x W`` pixels and ``K`` classes."""

    probabilities: np.ndarray  # (K, H, W) float32
    classes: np.ndarray        # (H, W) int32 class indices
    mask: np.ndarray           # (H, W) or (H, W, 3) uint8 in the training masks' values


def classes_from_probabilities(probabilities, threshold=0.5):
    """``(H, W)`` int32 classes from ``(K, H, W)`` probabilities.

    Two classes: foreground (1) where its probability is at least ``threshold``. More classes: the
    most probable one (``threshold`` is not used).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    if probabilities.shape[0] == 2:
        return (probabilities[1] >= threshold).astype(np.int32)
    return probabilities.argmax(axis=0).astype(np.int32)


def foreground_probability(probabilities):
    """``(H, W)`` probability of any foreground class (everything but class 0)."""
    return np.clip(1.0 - probabilities[0], 0.0, 1.0)


def boundaries(classes):
    """``(H, W)`` bool: pixels with a 4-neighbour of another class."""
    edge = np.zeros(classes.shape, bool)
    vertical = classes[1:, :] != classes[:-1, :]
    horizontal = classes[:, 1:] != classes[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def overlay_image(image, classes, color=OVERLAY_COLOR):
    """``(H, W, 3)`` uint8: the ``(H, W, C)`` [0, 1] image, class boundaries drawn in ``color``."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    out = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    out[boundaries(classes)] = color
    return out


class Segmenter:
    """A trained network and the data config it expects.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        Initialized :class:`unet.model.network.UNet` on every context in ``ctx``; hybridized here.
    meta : dict
        Checkpoint metadata: ``meta['model']`` (``ModelConfig.to_dict()``) and ``meta['data']``
        with ``channels``, ``normalization`` and ``encoding``.
    ctx : mxnet.Context or list of mxnet.Context, default None
        None means ``mx.cpu()``.
    batch_size : int, default 4
        Tiles per forward pass (see :func:`unet.inference.tiling.predict_probabilities`).
    tta : bool, default False
        Average over the 8 flips and quarter turns of every tile.
    threshold : float, default 0.5
        Foreground probability threshold of a binary model.
    overlap : int, default None
        Tile overlap in pixels; None means a quarter tile.
    cell_splitting : unet.inference.postprocess.CellSplitting, default None
        Separate touching cells of a binary model (:func:`unet.inference.postprocess.split_cells`);
        None thresholds only, as the reference does.
    amp : {'fp32', 'bf16', 'int8'}, default 'fp32'
        'bf16' runs a bfloat16 copy of the network (CPU only; fast on CPUs with avx512_bf16).
        'int8' runs an int8 copy (CPU only; fast on CPUs with avx512_vnni), calibrated by
        :meth:`calibrate` (folder mode: on images spread over the folder), else on
        :data:`CALIBRATION_TILES` tiles of the first image :meth:`predict` is given.
    winograd : bool, default True
        With fp32 on CPUs, run the 3x3 convolutions on the compiled Winograd kernel of
        :mod:`unet.model.native` (:func:`unet.model.network.inference_copy`): about half the time of MXNet's
        own at 512x512, the same probabilities up to float rounding (~1e-5). Where the kernel is
        not available (no compiler, no oneDNN wheel) MXNet's convolutions run, after one warning.

    :meth:`add_members` makes it an ensemble: the probabilities of every member (each with its
    own network, tile size and input normalization) are averaged before the threshold.
    """

    def __init__(self, net, meta, ctx=None, batch_size=4, tta=False, threshold=None,
                 overlap=None, cell_splitting=None, amp="fp32", winograd=True):
        binary = int(meta["model"]["num_classes"]) == 2
        if threshold is not None and not binary:
            raise InputError(f"a threshold is for a binary model; this one has "
                             f"{meta['model']['num_classes']} classes and takes the argmax")
        threshold = 0.5 if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        if cell_splitting is not None and not binary:
            raise InputError(f"splitting cells needs a binary model; this one has "
                             f"{meta['model']['num_classes']} classes")
        self.cell_splitting = cell_splitting
        self.net, self.meta = net, meta
        self.ctx = ctx if ctx is not None else mx.cpu()
        self.batch_size, self.tta = batch_size, tta
        self.threshold, self.overlap = threshold, overlap
        self.tile_size = int(meta["model"]["image_size"])
        self.num_classes = int(meta["model"]["num_classes"])
        data = meta["data"]
        self.channels = int(data["channels"])
        self.normalization = Normalization.from_dict(data["normalization"])
        self.encoding = MaskEncoding.from_dict(data["encoding"])
        net.hybridize(static_alloc=True)
        self.forward_net = net  # what predict() runs; self.net stays float32 (export)
        if amp not in ("fp32", "bf16", "int8"):
            raise ValueError(f"amp must be 'fp32', 'bf16' or 'int8', got {amp!r}")
        contexts = self.ctx if isinstance(self.ctx, (list, tuple)) else [self.ctx]
        if amp != "fp32" and any(c.device_type != "cpu" for c in contexts):
            raise InputError(f"--amp {amp} runs on the CPU only; use fp32 on GPUs")
        if amp == "bf16":
            self.forward_net = bf16_inference_network(net, self.channels, self.tile_size)
        elif amp == "fp32" and all(c.device_type == "cpu" for c in contexts):
            self.forward_net = inference_copy(net, winograd)
            self.forward_net.hybridize(static_alloc=True)
        self.needs_calibration = amp == "int8"
        self.members = []

    def add_members(self, others):
        """Average the probabilities of the :class:`Segmenter` ``others`` with this one's.

        They must predict the same classes with the same mask encoding (``InputError`` if not);
        their networks, tiles and input normalizations may differ. This segmenter's threshold,
        cell splitting and mask encoding decide the masks.
        """
        for other in others:
            if other.num_classes != self.num_classes or \
                    other.encoding.to_dict() != self.encoding.to_dict():
                raise InputError(f"an ensemble needs checkpoints of the same classes and mask "
                                 f"encoding: {self.num_classes} classes "
                                 f"({self.encoding.to_dict()['kind']}) against "
                                 f"{other.num_classes} ({other.encoding.to_dict()['kind']})")
            self.members.append(other)

    @classmethod
    def from_checkpoints(cls, params_paths, ctx=None, **options):
        """One checkpoint, or an ensemble of several (:meth:`add_members`), from their files."""
        first, *others = [cls.from_checkpoint(path, ctx=ctx, **options) for path in params_paths]
        first.add_members(others)
        return first

    @classmethod
    def from_checkpoint(cls, params_path, ctx=None, **options):
        """Rebuild the network from checkpoint ``params_path`` and its JSON; InputError if bad."""
        net, meta = load_for_inference(params_path, ctx if ctx is not None else mx.cpu())
        try:
            Normalization.from_dict(meta["data"]["normalization"])
            MaskEncoding.from_dict(meta["data"]["encoding"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{display_path(params_path)}.json: bad data config: {err}") from None
        segmenter = cls(net, meta, ctx=ctx, **options)
        logger.info("loaded %s: %s classes, tile %d, epoch %s", display_path(params_path),
                    meta["model"]["num_classes"], meta["model"]["image_size"], meta.get("epoch"))
        return segmenter

    def calibrate(self, images, names=None):
        """Build the int8 network (``amp='int8'``) from :data:`CALIBRATION_TILES` tiles spread
        over ``images``, ``(H, W, C)`` float32 [0, 1] images like those to segment (a first image
        unlike the rest, blank or of another stain, would calibrate the ranges badly: give a few
        of the folder). Once; does nothing for other ``amp`` modes or when already calibrated.
        """
        images = list(images)
        names = list(names) if names is not None else ["image"] * len(images)
        for member in self.members:
            member.calibrate(images, names)
        if not self.needs_calibration:
            return
        images, names = images[:CALIBRATION_TILES], names[:CALIBRATION_TILES]
        counts = [CALIBRATION_TILES // len(images) + (i < CALIBRATION_TILES % len(images))
                  for i in range(len(images))]
        tiles = [sample_tiles(self.normalization.apply(match_channels(image, self.channels, name)),
                              self.tile_size, count)
                 for image, name, count in zip(images, names, counts)]
        self.forward_net = int8_inference_network(self.net, np.concatenate(tiles))
        self.needs_calibration = False

    def predict(self, image, name="image", progress=False):
        """Segment an ``(H, W, C)`` float32 [0, 1] image; returns a :class:`Prediction`.
        ``progress``: a bar of the forward passes on stderr, shown once they take over a second
        (default False)."""
        self.calibrate([image], [name])       # int8 not yet calibrated: on this image
        with tqdm(desc="tiles", unit="pass", total=0, leave=False, delay=PROGRESS_DELAY_S,
                  disable=None if progress else True, file=sys.stderr) as bar:
            probabilities = self._probabilities(image, name, bar)
            if self.members:
                for member in self.members:
                    probabilities += member._probabilities(image, name, bar)
                probabilities /= 1 + len(self.members)
        if self.cell_splitting is None:
            classes = classes_from_probabilities(probabilities, self.threshold)
        else:
            classes = split_cells(probabilities[1], self.threshold,
                                  self.cell_splitting).astype(np.int32)
        return Prediction(probabilities, classes, self.encoding.encode(classes))

    def _probabilities(self, image, name, bar):
        """``(K, H, W)`` float32: this segmenter's own network on the ``(H, W, C)`` image."""
        image = self.normalization.apply(match_channels(image, self.channels, name))
        return predict_probabilities(
            self.forward_net, image, self.tile_size, ctx=self.ctx,
            batch_size=self.batch_size, overlap=self.overlap, tta=self.tta,
            progress=None if bar.disable else bar)


def output_paths(mask_path, suffix=".png"):
    """``{'mask', 'overlay', 'png16', 'npy'}`` beside ``mask_path``; ``NAME_mask.png`` gives
    ``NAME_overlay.png``, ``NAME_prob.png`` and ``NAME_prob.npy`` (``suffix`` '.tif' for a
    stack: ``NAME_overlay.tif``, ``NAME_prob.tif``)."""
    mask_path = os.fspath(mask_path)
    root = os.path.splitext(mask_path)[0]
    if root.endswith("_mask"):
        root = root[:-len("_mask")]
    return {"mask": mask_path, "overlay": f"{root}_overlay{suffix}",
            "png16": f"{root}_prob{suffix}", "npy": f"{root}_prob.npy"}


def default_mask_path(image_path, folder=None, suffix=".png"):
    """``NAME_mask.png`` (or ``suffix``) in ``folder`` (default: beside the image)."""
    image_path = os.fspath(image_path)
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(folder if folder is not None else os.path.dirname(image_path),
                        f"{stem}_mask{suffix}")


def output_files(mask_path, overlay=False, probabilities=None, suffix=".png"):
    """The files :func:`write_outputs` (``suffix`` '.tif': :func:`segment_stack`) writes for
    these arguments."""
    paths = output_paths(mask_path, suffix)
    return [paths["mask"]] + [paths["overlay"]] * bool(overlay) + \
        ([paths[probabilities]] if probabilities else [])


def refuse_replacing_inputs(outputs, inputs):
    """InputError naming the first of the files ``outputs`` that is one of ``inputs`` (after
    resolving links): a run must not write over what it reads."""
    taken = {os.path.realpath(path) for path in inputs}
    for path in outputs:
        if os.path.realpath(path) in taken:
            raise InputError(f"{display_path(path)}: an output would replace this input file; "
                             f"choose another output path")


def output_arrays(prediction, image, overlay=False, probabilities=None):
    """The arrays :func:`write_outputs` writes for one image, by :func:`output_paths` key:
    ``mask``, then ``overlay`` (uint8 RGB) and ``png16`` (uint16) or ``npy`` (float32) as
    asked."""
    if probabilities not in (None,) + PROBABILITY_FORMATS:
        raise ValueError(f"probabilities must be one of {PROBABILITY_FORMATS} or None, "
                         f"got {probabilities!r}")
    arrays = {"mask": prediction.mask}
    if overlay:
        arrays["overlay"] = overlay_image(image, prediction.classes)
    if probabilities is not None:
        foreground = foreground_probability(prediction.probabilities)
        arrays[probabilities] = (foreground * 65535.0 + 0.5).astype(np.uint16) \
            if probabilities == "png16" else foreground.astype(np.float32)
    return arrays


def write_outputs(prediction, image, mask_path, overlay=False, probabilities=None):
    """Write the mask at ``mask_path`` and optionally the overlay and probability map beside it.

    Parameters
    ----------
    prediction : Prediction
    image : numpy.ndarray
        The ``(H, W, C)`` [0, 1] input, drawn under the overlay.
    mask_path : str
        Destination of the mask PNG.
    overlay : bool, default False
        Also write ``NAME_overlay.png``.
    probabilities : {None, 'png16', 'npy'}, default None
        Also write the foreground probability as a 16-bit PNG (0..65535) or a float32 ``.npy``.

    Returns
    -------
    list of str
        Written paths.
    """
    paths = output_paths(mask_path)
    arrays = output_arrays(prediction, image, overlay, probabilities)
    for kind, array in arrays.items():
        (_write_npy if kind == "npy" else write_png)(paths[kind], array)
    return [paths[kind] for kind in arrays]


def _write_npy(path, array):
    write_file(path, lambda tmp: np.save(tmp, array, allow_pickle=False))


def segment_file(segmenter, image_path, mask_path, overlay=False, probabilities=None,
                 progress=False):
    """Read ``image_path``, segment it, write the outputs; returns ``(prediction, written)``.
    An output that would replace the image is refused before any work. ``progress``: a bar of
    the forward passes once they take over a second (default False)."""
    refuse_replacing_inputs(output_files(mask_path, overlay, probabilities), [image_path])
    image = read_image(image_path)
    prediction = segmenter.predict(image, display_path(image_path), progress=progress)
    return prediction, write_outputs(prediction, image, mask_path, overlay, probabilities)


def segment_stack(segmenter, stack_path, mask_path, overlay=False, probabilities=None,
                  progress=False):
    """Read the TIFF stack ``stack_path`` (:func:`unet.data.stacks.read_stack`), segment every
    slice, write the outputs as stacks of as many pages in the same order; returns
    ``(predictions, written)``, one :class:`Prediction` per slice.

    The mask (``mask_path``), ``NAME_overlay.tif`` and ``NAME_prob.tif`` (16-bit) are multi-page
    TIFFs, ``NAME_prob.npy`` a ``(Z, H, W)`` float32 array; each is written whole at the end, or
    not at all. An output that would replace the stack is refused before any work.
    ``progress``: a bar over the slices (default False).
    """
    refuse_replacing_inputs(output_files(mask_path, overlay, probabilities, ".tif"),
                            [stack_path])
    stack = read_stack(stack_path)                                # (Z, H, W, C)
    name = display_path(stack_path)
    chosen = evenly_spaced(len(stack), CALIBRATION_TILES)         # int8: over the stack
    segmenter.calibrate([stack[z] for z in chosen], [f"{name} slice {z}" for z in chosen])
    predictions, slices = [], {}
    for z, image in enumerate(tqdm(stack, desc="segmenting", unit="slice", file=sys.stderr,
                                   disable=None if progress else True)):
        predictions.append(segmenter.predict(image, f"{name} slice {z}"))
        for kind, array in output_arrays(predictions[-1], image, overlay, probabilities).items():
            slices.setdefault(kind, []).append(array)
    paths = output_paths(mask_path, ".tif")
    for kind, arrays in slices.items():
        (_write_npy if kind == "npy" else write_stack)(paths[kind], np.stack(arrays))
    return predictions, [paths[kind] for kind in slices]


def contexts(gpu_ids):
    """``[mx.gpu(i), ...]`` for ``gpu_ids``, or ``[mx.cpu()]`` when empty; InputError for a GPU
    this machine does not have."""
    if not gpu_ids:
        return [mx.cpu()]
    if any(i < 0 for i in gpu_ids) or len(set(gpu_ids)) != len(gpu_ids):
        raise InputError(f"--gpu-id {','.join(map(str, gpu_ids))}: GPU numbers must be "
                         f"distinct and non-negative")
    available = mx.context.num_gpus()
    missing = [i for i in gpu_ids if i >= available]
    if missing:
        raise InputError(f"--gpu-id {','.join(map(str, gpu_ids))}: this machine has "
                         f"{available} GPU(s) visible to MXNet; GPU {missing[0]} does not exist")
    return [mx.gpu(i) for i in gpu_ids]
