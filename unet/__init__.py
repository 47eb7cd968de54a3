"""unet: a U-Net segmentation toolkit on MXNet Gluon, faithful to the reference implementation."""
from .blocks import BaseConvBlock, DownSampleBlock, UpsampleConvLayer
from .config import ModelConfig
from .errors import InputError
from .model import UNet, build_unet, count_parameters, initializer

__version__ = "0.1.0"
__all__ = ["BaseConvBlock", "DownSampleBlock", "UpsampleConvLayer", "ModelConfig", "InputError",
           "UNet", "build_unet", "count_parameters", "initializer", "__version__"]
