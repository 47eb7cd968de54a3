"""The network and the random batch of a training or inference row."""
from .specs import model_config


def build_net(spec, size, amp_init, training=False):
    """The network of a row, initialized and hybridized.

    Parameters
    ----------
    spec : dict
        The row; its ``conv_kernel`` and ``norm_kernel`` are set to what the network was built
        with.
    size : int
        Image side.
    amp_init : bool
        Call ``init_amp("bf16")`` first (bf16 training).
    training : bool, default False
        True: as ``segmenter.py`` builds it, with the compiled layer norm (unless
        ``--no-fused-norm``) and, in fp32, the Winograd convolutions (unless ``--no-winograd``)
        of ``unet.model.native``. False: as ``evaluate.py`` builds its float32 network, on
        MXNet's operators (:func:`benchkit.infer.prepare_infer_net` makes the Winograd copy).

    Returns
    -------
    tuple of (ModelConfig, UNet)
    """
    import mxnet as mx
    from unet.model.network import build_unet, initializer
    if amp_init:
        from unet.model.precision import init_amp
        init_amp("bf16")
    if spec["recompute"]:   # as segmenter.py --recompute: before the first array
        from unet.training.recompute import use_lean_allocator
        use_lean_allocator()
    cfg = model_config(spec, size)
    net = build_unet(cfg, fast_norm=spec["fast_norm"], fused_norm=training and spec["fused_norm"],
                     winograd=training and spec["winograd"] and spec["amp"] == "fp32")
    spec["conv_kernel"] = net.conv_kernel
    spec["norm_kernel"] = _norm_kernel(net) if spec["norm"] == "layer" else "batch"
    net.initialize(initializer(), ctx=mx.cpu())
    # --mirror trains on MXNet's executor: the block then only infers (validation), unpinned.
    hybridize(net, spec["static"] and not spec["recompute"] and not (spec["mirror"] and training))
    return cfg, net


def hybridize(net, static):
    """Hybridize ``net``, with ``static_alloc`` and ``static_shape`` if ``static``."""
    if static:
        net.hybridize(static_alloc=True, static_shape=True)
    else:
        net.hybridize()


def _norm_kernel(net):
    """The layer-norm implementation ``net`` was built with: mxnet, gemv or fused."""
    from unet.model import fastnorm
    norm = net.stem.norm1
    if isinstance(norm, fastnorm.LayerNorm):
        return "fused" if norm._fused else "gemv"
    return "mxnet"


def inputs(spec, cfg, size, seed=0):
    """A seeded random batch of the row: images in [-1, 1] ``(N, C, size, size)``, class labels
    ``(N, size, size)`` and unit weights ``(N, size, size)``; ``seed`` default 0."""
    import mxnet as mx
    mx.random.seed(seed)
    shape = (spec["batch"], cfg.in_channels, size, size)
    x = mx.nd.random.uniform(-1, 1, shape=shape)
    y = mx.nd.random.randint(0, cfg.num_classes, shape=(spec["batch"], size, size)).astype("float32")
    return x, y, mx.nd.ones((spec["batch"], size, size))
