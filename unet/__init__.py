"""unet: a U-Net segmentation toolkit on MXNet Gluon, faithful to the reference implementation.

The stages are subpackages: ``core`` (errors, CLI helpers, atomic writes, threads), ``model``,
``data``, ``checkpoints``, ``inference``, ``training``, ``cluster`` and ``commands`` (the
programs). The public API below is imported on first use, so that ``python -m unet.launch`` and
the other modules that need no network start without importing MXNet (about 1.4 s). Importing
the package sets ``OMP_NUM_THREADS`` to the number of physical cores where it is unset
(:mod:`unet.core.threads`) and, on CPUs with Intel AMX, lets oneDNN's bfloat16 and int8 kernels
use it (:mod:`unet.core.amx`): import ``unet`` before ``mxnet``.

    from unet import Segmenter, read_image
    prediction = Segmenter.from_checkpoint("unet_best.params").predict(read_image("a.png"))
"""
import importlib

from .core.amx import enable_amx
from .core.threads import default_omp_threads

default_omp_threads()
enable_amx()

__version__ = "0.1.0"
_EXPORTS = {
    "BaseConvBlock": "model.blocks", "DownSampleBlock": "model.blocks",
    "UpsampleConvLayer": "model.blocks", "ModelConfig": "model.config", "UNet": "model.network",
    "build_unet": "model.network", "count_parameters": "model.network",
    "initializer": "model.network", "read_image": "data.imageio", "read_mask": "data.imageio",
    "write_png": "data.imageio", "Segmenter": "inference.segmenter", "TrainConfig": "training.config",
    "train": "training.loop", "InputError": "core.errors"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
