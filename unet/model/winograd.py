"""The U-Net's 3x3 convolutions on the compiled Winograd kernels of :mod:`unet.model.native`.

MXNet 1.9.1 runs every convolution on its bundled oneDNN with the direct algorithm. For the 3x3,
stride 1 convolutions that make up almost all of a U-Net's work, oneDNN's F(4x4, 3x3) Winograd
kernels do the same in 2.3-4.8x less time per layer forward and 2-3x less backward on an AVX-512
CPU (docs/records/speed.md), in float32, with results that differ from the direct algorithm's
by rounding only (~1e-6 to 1e-5 relative). Two operators: ``unet_conv3x3_train`` (forward and
backward, for training) and ``unet_conv3x3`` (forward only, with the weights kept transformed
between calls, for inference: :func:`unet.model.network.inference_copy`).
"""
from mxnet.gluon import nn

KERNELS = ("mxnet", "winograd", "winograd-inference")


class Conv2D(nn.Conv2D):
    """``nn.Conv2D(channels, 3, padding=1, in_channels=in_channels)`` on a compiled Winograd
    operator (load it first: :func:`unet.model.native.conv3x3_available`). CPU, float32.

    The same parameters (``weight`` of shape ``(channels, in_channels, 3, 3)`` and ``bias``) and
    the same class name, so checkpoints load either way and ``net.summary()`` prints the same
    table.

    Parameters
    ----------
    channels, in_channels : int
    inference : bool, default False
        Forward only (``unet_conv3x3``: faster, no gradient); else ``unet_conv3x3_train``, which
        overwrites its gradients: where they are to be added up (``grad_req='add'``, gradient
        accumulation) this block runs MXNet's convolution instead. That is decided when the graph
        is built (the first call, or the first after ``hybridize()``): set ``grad_req`` before.
    prefix, params
        As for any Gluon block.

    Input ``(N, in_channels, H, W)``, output ``(N, channels, H, W)``.
    """

    def __init__(self, channels, in_channels, inference=False, prefix=None, params=None):
        super().__init__(channels, 3, padding=1, in_channels=in_channels, prefix=prefix,
                         params=params)
        self.inference = inference

    def hybrid_forward(self, F, x, weight, bias=None):
        if self.inference:
            return F.unet_conv3x3(x, weight, bias)
        if "add" in (self.weight.grad_req, self.bias.grad_req):
            return super().hybrid_forward(F, x, weight, bias)
        return F.unet_conv3x3_train(x, weight, bias)


def conv3x3(channels, in_channels, kernel="mxnet"):
    """A 3x3 convolution, padding 1, by ``kernel``: ``'mxnet'`` ``nn.Conv2D``; ``'winograd'``
    :class:`Conv2D` for training; ``'winograd-inference'`` :class:`Conv2D` forward only."""
    if kernel not in KERNELS:
        raise ValueError(f"conv kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "mxnet":
        return nn.Conv2D(channels, 3, padding=1, in_channels=in_channels)
    return Conv2D(channels, in_channels, inference=kernel == "winograd-inference")
