"""The U-Net's 3x3 convolutions on the compiled Winograd kernel of :mod:`unet.native`.

MXNet 1.9.1 runs every convolution on its bundled oneDNN with the direct algorithm. For the 3x3,
stride 1 convolutions that make up almost all of a U-Net's work, oneDNN's F(4x4, 3x3) Winograd
kernel does the same in 2.3-4.8x less time per layer on an AVX-512 CPU (measured with
``benchmarks/bench.py``; see the README's *Speed*), in float32, with results that differ from
the direct algorithm's by rounding only (~1e-5 relative). The kernel has no backward pass: these
blocks are for inference (:func:`unet.model.inference_copy`).
"""
from mxnet.gluon import nn


class Conv2D(nn.Conv2D):
    """``nn.Conv2D(channels, 3, padding=1, in_channels=in_channels)`` whose forward pass runs
    the compiled ``unet_conv3x3`` operator (load it first:
    :func:`unet.native.conv3x3_available`). CPU, float32, inference only.

    The same parameters (``weight`` of shape ``(channels, in_channels, 3, 3)`` and ``bias``) and
    the same class name, so checkpoints load either way and ``net.summary()`` prints the same
    table.

    Input ``(N, in_channels, H, W)``, output ``(N, channels, H, W)``.
    """

    def __init__(self, channels, in_channels, **kwargs):
        super().__init__(channels, 3, padding=1, in_channels=in_channels, **kwargs)

    def hybrid_forward(self, F, x, weight, bias=None):
        return F.unet_conv3x3(x, weight, bias)


def conv3x3(channels, in_channels, kernel="mxnet"):
    """A 3x3 convolution, padding 1: ``nn.Conv2D`` (``kernel='mxnet'``) or :class:`Conv2D` on
    the Winograd kernel (``kernel='winograd'``)."""
    if kernel == "winograd":
        return Conv2D(channels, in_channels)
    return nn.Conv2D(channels, 3, padding=1, in_channels=in_channels)
