"""unet.training.recompute and unet.training.mirror (``--recompute``, ``--mirror``): a step that
recomputes during backward gives the gradients and statistics of a plain one, and the mirrored
step recomputes only the cheap ops."""
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from unet.model import native
from unet.model.config import ModelConfig
from unet.training.losses import SegmentationLoss
from unet.model.network import build_unet, initializer
from unet.training.mirror import CHEAP_OPS, MirroredSteps, loss_symbol
from unet.training.recompute import forward_backward
from unet.training.config import TrainConfig


def _net_and_batch(winograd=False, fused_norm=False, contexts=1, **model):
    if winograd and not native.conv3x3_available():
        pytest.skip(f"no Winograd kernel: {native.reason(native.CONV3X3)}")
    if fused_norm and not native.width_norm_available():
        pytest.skip(f"no compiled layer norm: {native.reason(native.WIDTH_NORM)}")
    mx.random.seed(3)
    cfg = ModelConfig(base_channels=4, depth=2, image_size=32, in_channels=1, **model)
    net = build_unet(cfg, winograd=winograd, fused_norm=fused_norm)
    assert net.conv_kernel == ("winograd" if winograd else "mxnet")
    net.initialize(initializer(), ctx=[mx.cpu(i) for i in range(contexts)])
    net.hybridize()
    x = mx.nd.random.uniform(shape=(2, 1, 32, 32))
    y = (mx.nd.random.uniform(shape=(2, 32, 32)) > 0.5).astype("float32")
    return net, x, y, mx.nd.random.uniform(0.5, 2, shape=(2, 32, 32))


def _mirrored(net, loss_fn, x, y, w):
    loss, = MirroredSteps(net, loss_fn)([x], [y], [w])
    return loss


def _snapshot(net, trainable):
    return {k: (p.grad() if trainable else p.data()).asnumpy().copy()
            for k, p in net.collect_params().items() if (p.grad_req != "null") == trainable}


@pytest.mark.parametrize("step", [forward_backward, _mirrored], ids=["recompute", "mirror"])
@pytest.mark.parametrize("model", [dict(norm="layer"), dict(norm="batch"),
                                   dict(norm="batch", residual=False, upsample="transpose"),
                                   dict(norm="layer", winograd=True),
                                   dict(norm="layer", winograd=True, fused_norm=True)])
def test_gradients_and_running_stats_equal_a_plain_step(model, step):
    net, x, y, w = _net_and_batch(**model)
    loss_fn = SegmentationLoss("ce+dice", 2)
    with autograd.pause(train_mode=False):
        net(x)                                   # shapes known, statistics untouched
    stats_before = _snapshot(net, trainable=False)
    with autograd.record():
        plain_loss = loss_fn(net(x), y, w)
    plain_loss.backward()
    plain_grads, plain_stats = _snapshot(net, True), _snapshot(net, False)
    for key, value in stats_before.items():      # back to the statistics before the step
        net.collect_params()[key].set_data(mx.nd.array(value))
    for param in net.collect_params().values():
        if param.grad_req != "null":
            param.zero_grad()
    loss = step(net, loss_fn, x, y, w)
    np.testing.assert_allclose(loss.asnumpy(), plain_loss.asnumpy(), rtol=1e-5)
    grads = _snapshot(net, True)
    scale = max(np.abs(g).max() for g in plain_grads.values())
    for key, grad in plain_grads.items():
        np.testing.assert_allclose(grads[key], grad, rtol=1e-4, atol=1e-5 * scale, err_msg=key)
    assert any(np.abs(g).max() > 0 for g in grads.values())
    for key, value in plain_stats.items():       # moved once, as in the plain step
        np.testing.assert_allclose(_snapshot(net, False)[key], value, rtol=1e-5, atol=1e-6)
    if model["norm"] == "batch":
        assert any(not np.allclose(plain_stats[k], stats_before[k]) for k in plain_stats)


def test_config_refuses_dropout_and_mixed_precision():
    with pytest.raises(ValueError, match="dropout"):
        TrainConfig(model=ModelConfig(dropout=0.1), recompute=True)
    with pytest.raises(ValueError, match="fp32 only"):
        TrainConfig(recompute=True, amp="bf16")
    TrainConfig(recompute=True)


def test_only_the_cheap_ops_run_again_in_backward():
    net, x, y, w = _net_and_batch(norm="layer", dropout=0.2)
    steps = MirroredSteps(net, SegmentationLoss("ce", 2))
    steps([x], [y], [w])
    executor, = steps._executors.values()
    ops = re.findall(r"^Op:(\w+), Name=", executor.debug_str(), re.M)
    forward = [op for op in ops if not op.startswith("_backward")]
    counts = {op: forward.count(op) for op in set(forward)}
    plain = re.findall(r'"op": "(\w+)"', loss_symbol(net, SegmentationLoss("ce", 2)).tojson())
    for op in ("Convolution", "elemwise_add", "UpSampling", "Dropout"):
        assert counts[op] == plain.count(op) > 0, op      # computed once: one dropout mask
    for op in CHEAP_OPS & set(plain):
        assert counts[op] == 2 * plain.count(op), op      # again in backward
    assert counts["LeakyReLU"] > 0 and counts["LayerNorm"] == plain.count("LayerNorm") > 0


def test_trainer_steps_on_two_contexts_and_a_second_batch_shape():
    net, x, y, w = _net_and_batch(norm="batch", contexts=2)
    ctx = [mx.cpu(0), mx.cpu(1)]
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.01})
    steps = MirroredSteps(net, SegmentationLoss("ce", 2))   # shapes deferred until the first
    for per_context in (1, 2, 1):
        parts = [[a[i:i + per_context].as_in_context(c) for i, c in enumerate(ctx)]
                 if per_context == 1 else [a.as_in_context(c) for c in ctx] for a in (x, y, w)]
        losses = steps(*parts)
        before = {k: p.data(ctx[0]).asnumpy().copy() for k, p in net.collect_params().items()}
        assert len(losses) == 2 and all(l.shape == (per_context,) for l in losses)
        trainer.step(2 * per_context)               # refuses gradients not flagged fresh
        after = net.collect_params()
        assert any(not np.allclose(after[k].data(ctx[0]).asnumpy(), v) for k, v in before.items())
    assert len(steps._executors) == 4               # two contexts, two batch shapes
    after = net.collect_params()
    assert any(not np.allclose(after[k].data(ctx[0]).asnumpy(), v) for k, v in before.items())
    for key, param in after.items():               # both contexts hold the same weights
        if param.grad_req == "null":                # running statistics: each its own samples
            continue
        np.testing.assert_allclose(param.data(ctx[0]).asnumpy(), param.data(ctx[1]).asnumpy(),
                                   rtol=1e-6, err_msg=key)


def test_config_refuses_mirror_with_recompute_or_mixed_precision():
    with pytest.raises(ValueError, match="choose one"):
        TrainConfig(mirror=True, recompute=True)
    with pytest.raises(ValueError, match="fp32 only"):
        TrainConfig(mirror=True, amp="bf16")
    TrainConfig(mirror=True, model=ModelConfig(dropout=0.1))
    # Unset, it is on for CPU training wherever it can run (not yet tried on a GPU).
    assert TrainConfig().mirror is True and TrainConfig(gpu_ids=(0,)).mirror is False
    assert TrainConfig(amp="bf16").mirror is False and TrainConfig(recompute=True).mirror is False
    assert TrainConfig(mirror=False).mirror is False
