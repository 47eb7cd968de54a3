"""unet.model.fastnorm.LayerNorm computes nn.LayerNorm()'s function, gradients and parameters."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd
from mxnet.gluon import nn

from unet.model import fastnorm
from unet.model.config import ModelConfig
from unet.model.network import build_unet, initializer


def run(block, x, ograd):
    """Output, input gradient and parameter gradients of one recorded pass."""
    x = x.copy()
    x.attach_grad()
    with autograd.record():
        y = block(x)
    y.backward(ograd)
    grads = {name.rsplit("_", 1)[-1]: p.grad().asnumpy()
             for name, p in block.collect_params().items() if p.grad_req != "null"}
    return y.asnumpy(), x.grad.asnumpy(), grads


def twin_blocks(shape, hybrid, **options):
    ref, fast = nn.LayerNorm(**options), fastnorm.LayerNorm(**options)
    rng = np.random.default_rng(1)
    for block in (ref, fast):
        block.initialize()
        if hybrid:
            block.hybridize()
        block(mx.nd.zeros(shape))                    # deferred shapes
        block.gamma.set_data(mx.nd.array(rng.normal(1, 0.5, shape[-1]) if block is ref else
                                         ref.gamma.data().asnumpy()))
        block.beta.set_data(mx.nd.array(rng.normal(0, 0.5, shape[-1]) if block is ref else
                                        ref.beta.data().asnumpy()))
    return ref, fast


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 8, 16), (3, 33), (1, 2, 3, 1)])
@pytest.mark.parametrize("hybrid", [False, True])
def test_same_function_and_gradients(shape, hybrid):
    ref, fast = twin_blocks(shape, hybrid)
    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.normal(3, 2, shape))
    ograd = mx.nd.array(rng.normal(0, 1, shape))
    y_ref, dx_ref, g_ref = run(ref, x, ograd)
    y_fast, dx_fast, g_fast = run(fast, x, ograd)
    np.testing.assert_allclose(y_fast, y_ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(dx_fast, dx_ref, atol=1e-5, rtol=0)
    assert sorted(g_fast) == sorted(g_ref) == ["beta", "gamma"]
    for name in g_ref:
        np.testing.assert_allclose(g_fast[name], g_ref[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("center, scale", [(False, True), (True, False), (False, False)])
def test_center_and_scale_options(center, scale):
    shape = (2, 3, 4, 6)
    ref, fast = twin_blocks(shape, True, center=center, scale=scale)
    x = mx.nd.random.normal(shape=shape)
    ograd = mx.nd.random.normal(shape=shape)
    (y_ref, dx_ref, g_ref), (y_fast, dx_fast, g_fast) = run(ref, x, ograd), run(fast, x, ograd)
    np.testing.assert_allclose(y_fast, y_ref, atol=1e-5)
    np.testing.assert_allclose(dx_fast, dx_ref, atol=1e-5)
    assert sorted(g_fast) == sorted(g_ref)


def test_parameters_match_nn_layernorm():
    ref, fast = twin_blocks((1, 2, 3, 9), True)
    shapes = lambda b: {k.rsplit("_", 1)[-1]: (p.shape, p.grad_req)  # noqa: E731
                        for k, p in b.collect_params().items()}
    assert shapes(fast) == shapes(ref) == {"gamma": ((9,), "write"), "beta": ((9,), "write")}
    assert type(fast).__name__ == "LayerNorm"
    assert "in_channels=9" in repr(fast)


def tiny_unet(size=32, fast=False):
    """A tiny U-Net; ``fast`` builds its layer norms with fastnorm (``--fast-norm``)."""
    net = build_unet(ModelConfig(in_channels=1, base_channels=4, depth=2, image_size=size),
                     fast_norm=fast)
    net.initialize(initializer())
    return net


def test_checkpoint_of_standard_model_loads_and_gives_same_output(tmp_path):
    x = mx.nd.random.uniform(shape=(2, 1, 32, 32))
    standard = tiny_unet()
    expected = standard(x).asnumpy()
    path = str(tmp_path / "standard.params")
    standard.save_parameters(path)
    fast = tiny_unet(fast=True)
    assert any(isinstance(b, fastnorm.LayerNorm) for b in fast.stem._children.values())
    fast.load_parameters(path)                       # same names and shapes, strict loading
    fast.hybridize(static_alloc=True, static_shape=True)
    np.testing.assert_allclose(fast(x).asnumpy(), expected, atol=1e-4)


def test_summary_table_is_identical(capsys):
    x = mx.nd.zeros((1, 1, 32, 32))
    tiny_unet().summary(x)
    standard = capsys.readouterr().out
    tiny_unet(fast=True).summary(x)
    assert capsys.readouterr().out == standard
    assert "LayerNorm-" in standard


def test_hybridized_before_first_call_infers_shapes():
    net = tiny_unet(64, fast=True)
    net.hybridize(static_alloc=True, static_shape=True)
    with autograd.record():
        out = net(mx.nd.ones((1, 1, 64, 64)))
    out.backward()
    gammas = [p for name, p in net.collect_params().items() if name.endswith("gamma")]
    assert gammas and {p.shape for p in gammas} == {(64,), (32,), (16,)}
    assert all(np.isfinite(p.grad().asnumpy()).all() for p in gammas)
