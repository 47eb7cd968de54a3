"""Mixed precision through ``mxnet.contrib.amp``: bfloat16 on CPUs with avx512_bf16, float16 on
GPUs. Weights stay float32 (AMP keeps master copies); results are not bit-comparable with fp32."""


def amp_fp32_ops():
    """AMP's float32 op list for bfloat16, plus Concat.

    Concat is dtype-neutral in AMP's lists, but in the U-Net it joins a bf16 convolution output
    and a float32 skip (LayerNorm runs in float32), and refuses mixed inputs: run it in float32.
    """
    from mxnet.contrib import amp
    return amp.list_fp32_ops(amp.amp.bfloat16) + ["Concat", "concat"]


def init_amp(mode):
    """Switch AMP on for ``mode`` in {'bf16', 'fp16'}; must run before the network is built."""
    from mxnet.contrib import amp
    if mode == "bf16":
        amp.init(target_dtype="bfloat16", fp32_ops=amp_fp32_ops())
    elif mode == "fp16":
        amp.init(target_dtype="float16")
    else:
        raise ValueError(f"amp mode must be 'bf16' or 'fp16', got {mode!r}")
