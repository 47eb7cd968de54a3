"""The U-Net's parts. Their class names appear in ``net.summary()`` and are part of the contract.

Activations are functional (``F.LeakyReLU``), so they take no row in the summary, as in the
reference.
"""
from mxnet.gluon import nn

from .winograd import conv3x3

LEAKY_SLOPE = 0.01


def make_norm(norm, kernel="mxnet"):
    """The normalization layer: ``'batch'`` or ``'layer'``, a layer norm over the last axis (the
    width, on NCHW; the reference).

    ``kernel`` picks the layer norm's implementation, all the same function with the same
    parameters (a checkpoint loads into any): ``'mxnet'`` ``nn.LayerNorm()``; ``'gemv'``
    :class:`unet.model.fastnorm.LayerNorm`, a faster backward pass made of GEMV products (more training
    memory); ``'fused'`` the same block on the compiled kernel of :mod:`unet.model.native` (fastest to
    train, CPU only; resolve it with :func:`unet.model.network.norm_kernel`).
    """
    if norm == "batch":
        return nn.BatchNorm()
    if kernel in ("gemv", "fused"):
        from .fastnorm import LayerNorm
        return LayerNorm(fused=kernel == "fused")
    return nn.LayerNorm()


class BaseConvBlock(nn.HybridBlock):
    """x -> [1x1 proj] -> conv3x3 -> norm -> act -> [dropout] -> conv3x3 -> norm (+ proj) -> act.

    Parameters
    ----------
    in_channels : int
    out_channels : int
    norm : {'layer', 'batch'}, default 'layer'
    residual : bool, default True
        Add a 1x1 projection of the input before the last activation. Off gives the paper's
        plain double convolution.
    dropout : float, default 0.0
        Probability of a Dropout block after the first activation; 0 adds none.
    norm_kernel : {'mxnet', 'gemv', 'fused'}, default 'mxnet'
        The layer norm's implementation (:func:`make_norm`).
    conv_kernel : {'mxnet', 'winograd', 'winograd-inference'}, default 'mxnet'
        The 3x3 convolutions' implementation (:func:`unet.model.winograd.conv3x3`; the Winograd kernels
        are CPU only, 'winograd-inference' has no backward pass).

    Input ``(N, in_channels, H, W)``, output ``(N, out_channels, H, W)``.
    """

    def __init__(self, in_channels, out_channels, norm="layer", residual=True, dropout=0.0,
                 norm_kernel="mxnet", conv_kernel="mxnet", **kwargs):
        super().__init__(**kwargs)
        self.residual = residual
        with self.name_scope():
            # Registration order is the summary's row order: projection first, as in the reference.
            if residual:
                self.proj = nn.Conv2D(out_channels, 1, in_channels=in_channels)
            self.conv1 = conv3x3(out_channels, in_channels, conv_kernel)
            self.norm1 = make_norm(norm, norm_kernel)
            self.drop = nn.Dropout(dropout) if dropout > 0 else None
            self.conv2 = conv3x3(out_channels, out_channels, conv_kernel)
            self.norm2 = make_norm(norm, norm_kernel)

    def hybrid_forward(self, F, x):
        skip = self.proj(x) if self.residual else None
        return self.second_half(F, self.first_half(F, x), skip)

    def first_half(self, F, x):
        """conv3x3 -> norm -> act -> [dropout]: ``(N, in, H, W)`` -> ``(N, out, H, W)``."""
        y = F.LeakyReLU(self.norm1(self.conv1(x)), act_type="leaky", slope=LEAKY_SLOPE)
        return self.drop(y) if self.drop is not None else y

    def second_half(self, F, y, skip):
        """conv3x3 -> norm (+ ``skip``, the projected input, or None) -> act."""
        y = self.norm2(self.conv2(y))
        if skip is not None:
            y = y + skip
        return F.LeakyReLU(y, act_type="leaky", slope=LEAKY_SLOPE)


class DownSampleBlock(nn.HybridBlock):
    """2x2 max-pool, then a ``BaseConvBlock`` that doubles the channels.

    Input ``(N, C, H, W)``, output ``(N, 2C, H/2, W/2)``; keyword arguments go to the block.
    """

    def __init__(self, in_channels, norm="layer", residual=True, dropout=0.0, norm_kernel="mxnet",
                 conv_kernel="mxnet", **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.pool = nn.MaxPool2D(pool_size=2, strides=2)
            self.conv = BaseConvBlock(in_channels, 2 * in_channels, norm, residual, dropout,
                                      norm_kernel, conv_kernel)

    def hybrid_forward(self, F, x):
        return self.conv(self.pool(x))


class UpsampleConvLayer(nn.HybridBlock):
    """Double H and W, halve the channels.

    ``mode='upsample'`` (the reference): nearest up-sampling, then a 3x3 convolution.
    ``mode='transpose'``: a 2x2 ``Conv2DTranspose`` with stride 2, which learns the up-sampling
    but can leave checkerboard artefacts (https://distill.pub/2016/deconv-checkerboard/).

    ``conv_kernel``: the 3x3 convolution's implementation (:func:`unet.model.winograd.conv3x3`).

    Input ``(N, C, H, W)``, output ``(N, C/2, 2H, 2W)``.
    """

    def __init__(self, in_channels, mode="upsample", conv_kernel="mxnet", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        out_channels = in_channels // 2
        with self.name_scope():
            if mode == "upsample":
                self.conv = conv3x3(out_channels, in_channels, conv_kernel)
            else:
                self.conv = nn.Conv2DTranspose(out_channels, 2, strides=2,
                                               in_channels=in_channels)

    def hybrid_forward(self, F, x):
        if self.mode == "upsample":
            x = F.UpSampling(x, scale=2, sample_type="nearest")
        return self.conv(x)
