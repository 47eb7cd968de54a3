"""The U-Net, assembled from ``unet.model.blocks``; reads like the diagram in the paper."""
import mxnet as mx
from mxnet.gluon import nn

from .blocks import LEAKY_SLOPE, BaseConvBlock, DownSampleBlock, UpsampleConvLayer
from .config import ModelConfig, nearest_valid_sizes


class UNet(nn.HybridSequential):
    """U-Net: an encoder of ``depth`` ``DownSampleBlock``s, a mirrored decoder of
    ``UpsampleConvLayer`` + concatenation with the encoder output + ``BaseConvBlock``, and a final
    1x1 convolution to class scores.

    It derives from ``HybridSequential`` only so that ``net.summary()`` prints no row for the
    network itself, exactly like the reference table; its forward is its own, not sequential.

    Parameters
    ----------
    config : ModelConfig, default ``ModelConfig()``
        See :class:`unet.model.config.ModelConfig`. With ``norm='layer'`` the network is bound to inputs
        of width ``config.image_size``: LayerNorm's parameters have the width's shape.
    norm_kernel : {'mxnet', 'gemv', 'fused'}, default 'mxnet'
        The layer norms' implementation (:func:`unet.model.blocks.make_norm`; :func:`norm_kernel`
        picks one): the same function and parameters, so a checkpoint loads into any.
    conv_kernel : {'mxnet', 'winograd', 'winograd-inference'}, default 'mxnet'
        The 3x3 convolutions' implementation (:func:`unet.model.winograd.conv3x3`; :func:`conv_kernel`
        picks one): the Winograd kernels are faster, 'winograd-inference' has no backward pass
        (:func:`inference_copy`); the same parameters.

    Input ``(N, in_channels, H, W)`` with H and W multiples of ``2**depth``; output
    ``(N, num_classes, H, W)`` unnormalized class scores.
    """

    def __init__(self, config=None, norm_kernel="mxnet", conv_kernel="mxnet", **kwargs):
        super().__init__(**kwargs)
        self.config = config = config or ModelConfig()
        self.conv_kernel = conv_kernel
        c = config.base_channels
        opts = dict(norm=config.norm, residual=config.residual, dropout=config.dropout,
                    norm_kernel=norm_kernel, conv_kernel=conv_kernel)
        with self.name_scope():
            self.stem = BaseConvBlock(config.in_channels, c, **opts)
            self.down = []
            for level in range(config.depth):
                block = DownSampleBlock(c * 2 ** level, **opts)
                self.register_child(block, f"down{level}")
                self.down.append(block)
            self.up, self.fuse = [], []
            for level in reversed(range(config.depth)):
                wide = c * 2 ** (level + 1)
                up = UpsampleConvLayer(wide, config.upsample, conv_kernel)
                fuse = BaseConvBlock(wide, wide // 2, **opts)
                self.register_child(up, f"up{level}")
                self.register_child(fuse, f"fuse{level}")
                self.up.append(up)
                self.fuse.append(fuse)
            self.head = nn.Conv2D(config.num_classes, 1, in_channels=c)

    def forward(self, x, *args):
        if isinstance(x, mx.nd.NDArray):
            self.check_input_shape(x.shape)
        return super().forward(x, *args)

    def check_input_shape(self, shape):
        """Raise ``ValueError`` unless ``shape`` is ``(N, in_channels, H, W)`` this net accepts."""
        cfg = self.config
        if len(shape) != 4 or shape[1] != cfg.in_channels:
            raise ValueError(f"input must be (N, {cfg.in_channels}, H, W), got {tuple(shape)}")
        for axis, size in (("height", shape[2]), ("width", shape[3])):
            if size % cfg.size_multiple:
                raise ValueError(
                    f"input {axis} {size} is not a multiple of 2**depth = {cfg.size_multiple}; "
                    f"nearest valid sizes: {nearest_valid_sizes(size, cfg.depth)}")
        if cfg.norm == "layer" and shape[3] != cfg.image_size:
            raise ValueError(
                f"input width {shape[3]} differs from {cfg.image_size}: a layer-norm model "
                f"normalizes over the width and only accepts the width it was built for")

    def hybrid_forward(self, F, x):
        skips = [self.stem(x)]                       # (N, C, H, W)
        for block in self.down:
            skips.append(block(skips[-1]))           # (N, 2^k C, H/2^k, W/2^k)
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            x = up(x)                                # (N, C', 2h, 2w), C' = half of x's channels
            x = fuse(F.concat(x, skips.pop(), dim=1))  # (N, 2C', 2h, 2w) -> (N, C', 2h, 2w)
        return self.head(x)                          # (N, num_classes, H, W)


def build_unet(config=None, fast_norm=False, fused_norm=False, winograd=False, **kwargs):
    """A new, uninitialized :class:`UNet`; initialize it with :func:`initializer`.

    The defaults give the reference's ``nn.LayerNorm`` and MXNet's convolutions; ``fused_norm``
    and ``fast_norm`` ask for the faster layer norms of :func:`norm_kernel`, ``winograd`` for
    the Winograd convolutions of :func:`conv_kernel` (for networks that run on the CPU).
    """
    return UNet(config or ModelConfig(), norm_kernel=norm_kernel(fast_norm, fused_norm),
                conv_kernel=conv_kernel(winograd), **kwargs)


def conv_kernel(winograd=False):
    """The 3x3 convolutions' implementation to build for training: ``'winograd'`` (the compiled
    kernel of :mod:`unet.model.native`) when asked for and available, else ``'mxnet'``."""
    if winograd:
        from .native import conv3x3_available
        if conv3x3_available():
            return "winograd"
    return "mxnet"


def norm_kernel(fast_norm=False, fused_norm=False):
    """The layer-norm implementation to build (see :func:`unet.model.blocks.make_norm`).

    ``fused_norm``: the compiled kernel of :mod:`unet.model.native` where it compiles and loads (for
    networks that run on the CPU), else what ``fast_norm`` asks for: the GEMV block (True) or
    ``nn.LayerNorm`` (False).
    """
    if fused_norm:
        from .native import width_norm_available
        if width_norm_available():
            return "fused"
    return "gemv" if fast_norm else "mxnet"


def inference_copy(net, winograd=True):
    """``net`` with its 3x3 convolutions on the Winograd kernel of :mod:`unet.model.native`, for fp32
    inference on CPUs, and its layer norms on the compiled kernel where it loads; ``net`` itself
    where the Winograd kernel is not wanted or not available.

    The copy shares ``net``'s parameters (the same arrays: loading new weights into one changes
    both) and has no backward pass. ``net`` stays as it is (training, export, quantization).
    """
    if net.conv_kernel == "winograd-inference" or conv_kernel(winograd) != "winograd":
        return net
    return UNet(net.config, norm_kernel=norm_kernel(fused_norm=True),
                conv_kernel="winograd-inference", prefix=net.prefix, params=net.collect_params())


def initializer():
    """He/Kaiming Gaussian, std sqrt(2 / fan_in) adjusted for the leaky slope, as in the paper.

    Biases and normalization parameters keep their own initializers (zeros, ones).
    """
    return mx.init.MSRAPrelu(factor_type="in", slope=LEAKY_SLOPE)


def finish_deferred_init(net, sample_shape):
    """Give every parameter of an initialized ``net`` its arrays, shapes taken from an input of
    ``sample_shape`` ``(N, C, H, W)`` (a layer norm's width is known only from the input), by
    shape inference alone: unlike a first forward pass, no activation is allocated (130 MB at
    512x512 for the default model, kept by the allocator). Parameters already set are left."""
    params = [p for p in net.collect_params().values() if p._deferred_init]
    if params:
        net.infer_shape(mx.nd.zeros(sample_shape))
        for param in params:
            param._finish_deferred_init()


def count_parameters(net):
    """Number of scalar parameters (shapes must be known: run a forward pass first)."""
    total = 0
    for param in net.collect_params().values():
        size = 1
        for dim in param.shape:
            size *= dim
        total += size
    return total
