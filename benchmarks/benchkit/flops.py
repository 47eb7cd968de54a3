"""The FLOP count behind GFLOP/s: the convolutions only, 2*k*k*Cin*Cout*H*W per forward."""


def conv_gflop(cfg, height, width):
    """Convolution GFLOP of one forward pass of one ``height x width`` image.

    Counted on a batch-norm twin of ``cfg`` at the smallest valid size and scaled by area: every
    convolution keeps the stage's resolution, so the count is exactly proportional to H*W.

    Parameters
    ----------
    cfg : unet.model.config.ModelConfig
        The model; its ``norm`` and ``image_size`` do not change the count.
    height, width : int
        The image size counted for.

    Returns
    -------
    float
        The count in GFLOP (1e9 FLOP; a multiply-add counts 2).
    """
    import dataclasses
    import mxnet as mx
    from mxnet.gluon import nn
    from unet.model.network import build_unet
    small = cfg.size_multiple
    twin = build_unet(dataclasses.replace(cfg, norm="batch", image_size=small))
    twin.initialize()
    total = [0]

    def hook(block, inputs, output):
        cout, cin, kh, kw = block.weight.shape
        if isinstance(block, nn.Conv2DTranspose):            # weight (Cin, Cout, k, k), input grid
            cout, cin = cin, cout
            area = inputs[0].shape[2] * inputs[0].shape[3]
        else:
            area = output.shape[2] * output.shape[3]
        total[0] += 2 * kh * kw * cin * cout * area

    def attach(block):
        if isinstance(block, (nn.Conv2D, nn.Conv2DTranspose)):
            block.register_forward_hook(hook)
        for child in block._children.values():
            attach(child)

    attach(twin)
    twin(mx.nd.zeros((1, cfg.in_channels, small, small)))
    return total[0] * (height * width) / (small * small) / 1e9
