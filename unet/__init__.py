"""unet: a U-Net segmentation toolkit on MXNet Gluon, faithful to the reference implementation.

The names below are imported on first use, so that ``python -m unet.launch`` and the other
modules that need no network start without importing MXNet (about 1.4 s). Importing the package
sets ``OMP_NUM_THREADS`` to the number of physical cores where it is unset (``unet.threads``) and,
on CPUs with Intel AMX, lets oneDNN's bfloat16 and int8 kernels use it (``unet.amx``): import
``unet`` before ``mxnet``.
"""
import importlib

from .amx import enable_amx
from .threads import default_omp_threads

default_omp_threads()
enable_amx()

__version__ = "0.1.0"
_EXPORTS = {"BaseConvBlock": "blocks", "DownSampleBlock": "blocks", "UpsampleConvLayer": "blocks",
            "ModelConfig": "config", "InputError": "errors", "UNet": "model",
            "build_unet": "model", "count_parameters": "model", "initializer": "model"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
