"""The ``train`` row: one training step (forward, loss, backward, Adam update)."""
from .flops import conv_gflop
from .nets import build_net, inputs
from .timing import timed


def run_train(spec):
    """Time training steps of the row's network on one random batch of ``spec["batch"]``.

    Returns
    -------
    dict
        ``first_ms``, ``times_ms``, ``gflop`` (3x the forward's), ``last_loss`` and ``step``: how
        the step ran ('mirror': MXNet's executor, unet.training.mirror; 'recompute';
        'cachedop': the hybridized block).
    """
    import mxnet as mx
    from mxnet import autograd, gluon
    from unet.training.losses import SegmentationLoss
    bf16 = spec["amp"] == "bf16"
    cfg, net = build_net(spec, spec["size"], amp_init=bf16, training=True)
    x, y, w = inputs(spec, cfg, spec["size"])
    loss_fn = SegmentationLoss("ce", cfg.num_classes)
    loss_fn.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-4})
    # As unet.training.loop: bfloat16 needs no loss scaling (unet.model.precision.uses_loss_scaling).
    losses = []
    if spec["recompute"]:
        from unet.training.recompute import forward_backward
    if spec["mirror"]:
        from unet.training.mirror import MirroredSteps
        mirrored = MirroredSteps(net, loss_fn)

    def step():
        if spec["recompute"]:
            loss = forward_backward(net, loss_fn, x, y, w)
        elif spec["mirror"]:
            loss, = mirrored([x], [y], [w])
        else:
            with autograd.record():
                loss = loss_fn(net(x), y, w)
            loss.backward()
        trainer.step(spec["batch"])
        losses.append(float(loss.mean().asscalar()))
        mx.nd.waitall()

    first, times = timed(step, spec["warmup"], spec["repeat"])
    return dict(first_ms=first, times_ms=times, gflop=3 * spec["batch"] * conv_gflop(
        cfg, spec["size"], spec["size"]), last_loss=losses[-1],
        step="recompute" if spec["recompute"] else "mirror" if spec["mirror"] else "cachedop")
