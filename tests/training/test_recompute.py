"""unet.training.recompute: a recomputing step gives the gradients and statistics of a plain one."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from unet.model import native
from unet.model.config import ModelConfig
from unet.training.losses import SegmentationLoss
from unet.model.network import build_unet, initializer
from unet.training.recompute import forward_backward
from unet.training.config import TrainConfig


def _net_and_batch(winograd=False, **model):
    if winograd and not native.conv3x3_available():
        pytest.skip(f"no Winograd kernel: {native.reason(native.CONV3X3)}")
    mx.random.seed(3)
    cfg = ModelConfig(base_channels=4, depth=2, image_size=32, in_channels=1, **model)
    net = build_unet(cfg, winograd=winograd)
    assert net.conv_kernel == ("winograd" if winograd else "mxnet")
    net.initialize(initializer())
    net.hybridize()
    x = mx.nd.random.uniform(shape=(2, 1, 32, 32))
    y = (mx.nd.random.uniform(shape=(2, 32, 32)) > 0.5).astype("float32")
    return net, x, y, mx.nd.ones((2, 32, 32))


def _snapshot(net, trainable):
    return {k: (p.grad() if trainable else p.data()).asnumpy().copy()
            for k, p in net.collect_params().items() if (p.grad_req != "null") == trainable}


@pytest.mark.parametrize("model", [dict(norm="layer"), dict(norm="batch"),
                                   dict(norm="batch", residual=False, upsample="transpose"),
                                   dict(norm="layer", winograd=True)])
def test_gradients_and_running_stats_equal_a_plain_step(model):
    net, x, y, w = _net_and_batch(**model)
    loss_fn = SegmentationLoss("ce", 2)
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
    loss = forward_backward(net, loss_fn, x, y, w)
    np.testing.assert_allclose(loss.asnumpy(), plain_loss.asnumpy(), rtol=1e-6)
    grads = _snapshot(net, True)
    scale = max(np.abs(g).max() for g in plain_grads.values())
    for key, grad in plain_grads.items():
        np.testing.assert_allclose(grads[key], grad, rtol=1e-4, atol=1e-5 * scale, err_msg=key)
    assert any(np.abs(g).max() > 0 for g in grads.values())
    for key, value in plain_stats.items():       # moved once, as in the plain step
        np.testing.assert_allclose(_snapshot(net, False)[key], value, rtol=1e-6, atol=1e-7)
    if model["norm"] == "batch":
        assert any(not np.allclose(plain_stats[k], stats_before[k]) for k in plain_stats)


def test_config_refuses_dropout_and_mixed_precision():
    with pytest.raises(ValueError, match="dropout"):
        TrainConfig(model=ModelConfig(dropout=0.1), recompute=True)
    with pytest.raises(ValueError, match="fp32 only"):
        TrainConfig(recompute=True, amp="bf16")
    TrainConfig(recompute=True)
