"""The ``infer`` row (one forward pass) and the ``tiled`` row (overlap-tiled inference)."""
import json

from .flops import conv_gflop
from .nets import build_net, hybridize, inputs
from .timing import median, peak_rss_mb, timed


def prepare_infer_net(spec, size):
    """A ready inference net for the spec (bf16 conversion, oneDNN fusion, the Winograd copy),
    its input, and a function that returns the fp32 output of MXNet's own convolutions.

    Returns
    -------
    tuple of (ModelConfig, block, NDArray, callable)
        Sets ``spec["conv_kernel"]`` and, with ``--fuse``, ``spec["fused_nodes"]``.
    """
    cfg, net = build_net(spec, size, amp_init=False)
    x, _, _ = inputs(spec, cfg, size)
    winograd = spec["amp"] == "fp32" and spec["winograd"] and not spec["fuse"]
    # With the Winograd copy, the reference runs last: a pass of MXNet's convolutions moves the
    # shared weights into its oneDNN layout (the kernel would then be handed a converted copy on
    # every call, which evaluate.py never pays) and keeps its own buffers.
    reference = None if winograd else net(x)
    plain = net
    if spec["amp"] == "bf16":   # as evaluate.py --amp bf16 does
        from unet.model.precision import bf16_inference_network
        net = bf16_inference_network(net, cfg.in_channels, size)
    elif spec["amp"] == "int8":  # as evaluate.py --amp int8 does, on 4 random tiles
        import numpy as np
        from unet.model.precision import int8_inference_network
        tiles = np.random.default_rng(1).uniform(-1, 1, (4, cfg.in_channels, size, size))
        net = int8_inference_network(net, tiles.astype(np.float32))
    elif winograd:                  # as evaluate.py does in fp32
        from unet.model.network import inference_copy
        net = inference_copy(net)
        hybridize(net, spec["static"])
    spec["conv_kernel"] = getattr(net, "conv_kernel", "mxnet")
    if spec["fuse"]:
        net.optimize_for(x, backend="MKLDNN", static_alloc=spec["static"],
                         static_shape=spec["static"])
        graph = json.loads(net._cached_graph[1].tojson())
        spec["fused_nodes"] = sum(n["op"].startswith("_sg_mkldnn") for n in graph["nodes"])
    return cfg, net, x, (lambda: plain(x)) if reference is None else (lambda: reference)


def _forward(net, x):
    """A call of ``net`` on ``x`` that waits for the output."""
    return lambda: net(x).wait_to_read()


def run_infer(spec):
    """Time forward passes of one batch, then compare the output with the fp32 reference.

    Returns
    -------
    dict
        ``first_ms``, ``times_ms``, the max and mean softmax difference and the argmax
        agreement with the reference, ``fused_nodes``, ``conv_kernel``, ``peak_rss_mb`` and
        ``gflop``.
    """
    import mxnet as mx
    cfg, net, x, reference = prepare_infer_net(spec, spec["size"])
    first, times = timed(_forward(net, x), spec["warmup"], spec["repeat"])
    peak = peak_rss_mb()            # before a late reference pass adds its own buffers
    probs = mx.nd.softmax(net(x).astype("float32"), axis=1)
    ref_probs = mx.nd.softmax(reference(), axis=1)
    diff = mx.nd.abs(probs - ref_probs)
    agree = mx.nd.mean(probs.argmax(axis=1) == ref_probs.argmax(axis=1))
    return dict(first_ms=first, times_ms=times, max_prob_diff_vs_fp32=float(diff.max().asscalar()),
                mean_prob_diff_vs_fp32=float(diff.mean().asscalar()),
                argmax_agreement_vs_fp32=float(agree.asscalar()),
                fused_nodes=spec.get("fused_nodes"), conv_kernel=spec["conv_kernel"],
                peak_rss_mb=round(peak, 1),
                gflop=spec["batch"] * conv_gflop(cfg, spec["size"], spec["size"]))


def run_tiled(spec):
    """Time ``predict_probabilities`` on a ``tiled_image`` square against single tile passes.

    Returns
    -------
    dict
        ``first_ms``, ``times_ms`` (whole images), ``single_ms_median``, ``per_pixel_vs_single``
        (the tiled time per pixel over the single pass'), ``image``, ``tile`` and ``gflop``.
    """
    import numpy as np
    from unet.inference.tiling import predict_probabilities
    tile = spec["size"]
    cfg, net, x, _ = prepare_infer_net(dict(spec, batch=1), tile)
    side = spec["tiled_image"]
    image = np.random.default_rng(0).uniform(-1, 1, (cfg.in_channels, side, side)).astype(np.float32)

    def tiled():
        predict_probabilities(net, image, tile, batch_size=spec["batch"], overlap=spec["overlap"])

    _, single_times = timed(_forward(net, x), spec["warmup"], spec["repeat"])
    first, times = timed(tiled, 1, max(1, spec["repeat"] // 3))
    per_pixel = median(times) / side ** 2 / (median(single_times) / tile ** 2)
    return dict(first_ms=first, times_ms=times, single_ms_median=median(single_times),
                per_pixel_vs_single=per_pixel, image=side, tile=tile,
                gflop=conv_gflop(cfg, side, side))
