"""Mixed precision through ``mxnet.contrib.amp``: bfloat16 on CPUs with avx512_bf16, float16 on
GPUs. Weights stay float32 (AMP keeps master copies); results are not bit-comparable with fp32."""


def amp_fp32_ops(compiled=True):
    """AMP's float32 op list for bfloat16, plus Concat and (``compiled``) the fused layer norm.

    Concat is dtype-neutral in AMP's lists, but in the U-Net it joins a bf16 convolution output
    and a float32 skip (LayerNorm runs in float32), and refuses mixed inputs: run it in float32.
    The fused layer norm of :mod:`unet.model.native` (when loaded) computes in float32 only; AMP's graph
    conversion (``convert_hybrid_block``) accepts only MXNet's own operators: ``compiled=False``.
    """
    from mxnet.contrib import amp
    from . import native
    extra = [native.OP_NAME] if compiled and native.width_norm_loaded() else []
    return amp.list_fp32_ops(amp.amp.bfloat16) + ["Concat", "concat"] + extra


def init_amp(mode):
    """Switch AMP on for ``mode`` in {'bf16', 'fp16'}; must run before the network is built.

    For bf16 (CPU) it first loads the fused layer-norm kernel (:mod:`unet.model.native`): loaded later,
    it would drop AMP's operator wrappers.
    """
    from mxnet.contrib import amp
    if mode == "bf16":
        from .native import width_norm_available
        width_norm_available()
        amp.init(target_dtype="bfloat16", fp32_ops=amp_fp32_ops())
    elif mode == "fp16":
        amp.init(target_dtype="float16")
    else:
        raise ValueError(f"amp mode must be 'bf16' or 'fp16', got {mode!r}")


def uses_loss_scaling(mode):
    """Whether training in AMP ``mode`` scales the loss (AMP's dynamic loss scaler).

    Only float16 does: its exponent range is narrow, small gradients underflow to zero unless the
    loss is scaled up first. bfloat16 has float32's exponent range, so nothing underflows that
    would not in float32, and the scaler's all-finite check of every gradient is pure cost
    (0.8-1 s per step of the default model on a 2-core CPU, longer than the Adam update itself).
    A non-finite loss still stops training (:class:`unet.core.errors.TrainingDiverged`).
    """
    return mode == "fp16"


def bf16_inference_network(net, in_channels, tile_size):
    """A bfloat16 copy of the hybridized float32 ``net`` for inference on the CPU.

    ``mxnet.contrib.amp.convert_hybrid_block`` converts the graph of the last forward pass, so
    ``net`` is run once on a zero ``(1, in_channels, tile_size, tile_size)`` tile first. Outputs are
    bfloat16 scores; cast them to float32 before the softmax (``unet.inference.tiling`` does).
    """
    import mxnet as mx
    from mxnet.contrib import amp
    net(mx.nd.zeros((1, in_channels, tile_size, tile_size), ctx=mx.cpu()))
    return amp.convert_hybrid_block(net, target_dtype="bfloat16",
                                    fp32_ops=amp_fp32_ops(compiled=False), ctx=mx.cpu())


def int8_inference_network(net, tiles):
    """An int8 copy of the float32 ``net`` for inference on the CPU (oneDNN; fast with
    avx512_vnni).

    ``mxnet.contrib.quantization.quantize_net_v2`` runs every convolution, pooling and concat in
    int8; the layer norms, activations and up-sampling stay float32 between a dequantize and a
    quantize. Each layer's int8 range is the min and max of its output on ``tiles`` (its "naive"
    calibration): ``(N, C, T, T)`` float32 normalized tiles of the images to segment (e.g.
    :func:`unet.inference.tiling.sample_tiles`). Outputs are float32 scores.
    """
    import mxnet as mx
    from mxnet.contrib import quantization
    calibration = mx.io.NDArrayIter(data=mx.nd.array(tiles), batch_size=1, data_name="data")
    quantized = quantization.quantize_net_v2(
        net, quantized_dtype="auto", calib_data=calibration, calib_mode="naive",
        num_calib_examples=len(tiles), ctx=mx.cpu())
    quantized.hybridize(static_alloc=True, static_shape=True)
    return quantized
