"""unet.model.native: the compiled layer norm computes nn.LayerNorm's function and gradients, trains
under bf16 AMP, and its absence (no compiler) falls back with one warning; the Winograd 3x3
convolutions compute nn.Conv2D's function and gradients (training) or forward pass (inference,
following changed weights, refusing to train), and their absence (no oneDNN wheel) falls back with
one warning."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from unet.model import fastnorm
from unet.model import native
from unet.model import winograd
from unet.model.network import build_unet, inference_copy, initializer
from project_paths import ROOT as PROJECT_ROOT

ROOT = Path(PROJECT_ROOT)


@pytest.fixture(scope="module")
def kernel():
    # Only a missing compiler skips; a kernel that stops compiling or loading fails here.
    if shutil.which(native._compiler()[0]) is None:
        pytest.skip("no C++ compiler: training uses MXNet's layer norm")
    assert native.width_norm_available(), native.reason(native.WIDTH_NORM)


@pytest.mark.parametrize("shape, eps", [((2, 3, 5, 24), 1e-5), ((1, 2, 7, 33), 0.5),
                                        ((4, 65), 1.0)])
def test_fused_norm_matches_mxnet_layer_norm_and_its_gradients(kernel, shape, eps):
    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.normal(2.0, 3.0, shape))
    gamma = mx.nd.array(rng.uniform(0.5, 1.5, shape[-1]))
    beta = mx.nd.array(rng.normal(0.0, 1.0, shape[-1]))
    head = mx.nd.array(rng.normal(0.0, 1.0, shape))
    _assert_same_forward_backward(lambda *a: mx.nd.LayerNorm(*a, axis=-1, eps=eps),
                                  lambda *a: mx.nd.unet_width_norm(*a, eps=eps),
                                  (x, gamma, beta), head, ("y", "dx", "dgamma", "dbeta"), 1e-4)


def _assert_same_forward_backward(reference, op, inputs, head, names, atol):
    """``op(*inputs)`` and the gradients of ``inputs`` (for output gradient ``head``) equal
    ``reference``'s: rtol 1e-4, and ``atol`` times each reference array's largest value."""
    def forward_backward(function):
        for a in inputs:
            a.attach_grad()
        with autograd.record():
            y = function(*inputs)
        y.backward(head)
        return [y.asnumpy()] + [a.grad.asnumpy() for a in inputs]

    expected, got = forward_backward(reference), forward_backward(op)
    for name, e, g in zip(names, expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=atol * np.abs(e).max(), err_msg=name)


def test_fused_block_adds_up_gradients_where_asked(kernel):
    # grad_req='add' (gradient accumulation): the operator could only overwrite, so the block
    # takes its GEMV path; three steps must sum three gradients, as nn.LayerNorm's do.
    x = mx.nd.random.normal(shape=(2, 3, 4, 16))
    grads = []
    for block in (mx.gluon.nn.LayerNorm(), fastnorm.LayerNorm(fused=True)):
        block.initialize()
        block.hybridize()
        block.collect_params().setattr("grad_req", "add")
        for step in range(3):
            with autograd.record():
                y = block(x * (step + 1))
            y.backward(mx.nd.ones_like(y) * (step + 1))
        grads.append([block.gamma.grad().asnumpy(), block.beta.grad().asnumpy()])
    for expected, got in zip(*grads):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert grads[0][1][0] == pytest.approx(2 * 3 * 4 * (1 + 2 + 3))


def _step(net, x, label):
    with autograd.record():
        loss = mx.nd.softmax_cross_entropy(net(x).transpose((0, 2, 3, 1)).reshape((-1, 2)),
                                           label.reshape((-1,)))
    loss.backward()
    return net(x).asnumpy(), {k: p.grad().asnumpy()
                              for k, p in net._collect_params_with_prefix().items()
                              if p.grad_req != "null"}


def test_unet_with_the_fused_norm_equals_the_reference_one(kernel, tmp_path):
    from unet.model.config import ModelConfig
    cfg = ModelConfig(in_channels=1, num_classes=2, base_channels=4, depth=2, image_size=32)
    reference = build_unet(cfg)
    fused = build_unet(cfg, fused_norm=True)
    assert isinstance(fused.stem.norm1, fastnorm.LayerNorm) and fused.stem.norm1._fused
    assert not isinstance(reference.stem.norm1, fastnorm.LayerNorm)
    reference.initialize(initializer())
    x = mx.nd.random.uniform(-1, 1, (2, 1, 32, 32))
    reference(x)
    for p in reference.collect_params().values():
        if p.name.endswith(("gamma", "beta")):
            p.set_data(mx.nd.random.uniform(0.5, 1.5, p.shape))
    reference.save_parameters(str(tmp_path / "p.params"))
    fused.load_parameters(str(tmp_path / "p.params"))     # same parameter names and shapes
    _assert_same_step(reference, fused, x)


def _assert_same_step(reference, other, x):
    """One hybridized training step of each net on ``x``: the same outputs and gradients."""
    label = mx.nd.array(np.random.default_rng(1).integers(0, 2, (2, 32, 32)))
    for net in (reference, other):
        net.hybridize(static_alloc=True, static_shape=True)
    out_ref, grads_ref = _step(reference, x, label)
    out, grads = _step(other, x, label)
    np.testing.assert_allclose(out, out_ref, rtol=1e-4, atol=1e-4)
    assert grads.keys() == grads_ref.keys()
    # One absolute scale for all: a conv bias before a layer norm has a zero gradient in exact
    # arithmetic (the norm removes the row mean), so its float noise has no scale of its own.
    scale = max(np.abs(g).max() for g in grads_ref.values())
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=name)


def _python(code, **env):
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full, cwd=ROOT, timeout=300)


def test_bf16_training_runs_the_fused_norm_in_float32_without_loss_scaling(kernel):
    done = _python("""
        from types import SimpleNamespace
        import mxnet as mx
        from mxnet import gluon
        from unet.model.config import ModelConfig
        from unet.training.losses import SegmentationLoss
        from unet.training.steps import batch_gradients
        from unet.model.network import build_unet, initializer
        from unet.model.precision import amp_fp32_ops, init_amp, uses_loss_scaling
        from mxnet.contrib.amp import loss_scaler
        def refuse(*a, **k):
            raise AssertionError("bf16 must not run the loss scaler's overflow check")
        loss_scaler.LossScaler.has_overflow = refuse
        init_amp("bf16")
        assert "unet_width_norm" in amp_fp32_ops() and not uses_loss_scaling("bf16")
        cfg = ModelConfig(in_channels=1, num_classes=2, base_channels=4, depth=2, image_size=32)
        net = build_unet(cfg, fused_norm=True)
        assert net.stem.norm1._fused
        net.initialize(initializer())
        net.hybridize(static_alloc=True, static_shape=True)
        trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-2})
        x = mx.nd.random.uniform(-1, 1, (2, 1, 32, 32))
        label = (x[:, 0] > 0)
        losses = []
        loss_fn = SegmentationLoss("ce", 2)
        for _ in range(15):      # the training loop's own step (unet.training.steps)
            loss, = batch_gradients(net, trainer, loss_fn, [[x], [label], [mx.nd.ones_like(label)]],
                                    SimpleNamespace(amp="bf16", recompute=False))
            trainer.step(2)
            losses.append(float(loss.mean().asscalar()))
        print("losses", losses[0], losses[-1])
        assert losses[-1] < 0.7 * losses[0], losses
    """)
    assert done.returncode == 0, done.stderr[-2000:]


def test_without_a_compiler_layer_norms_fall_back_with_one_warning(tmp_path):
    done = _python("""
        import logging
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from unet.model import fastnorm
        from unet.model import native
        from unet.model.config import ModelConfig
        from unet.model.network import build_unet
        cfg = ModelConfig(in_channels=1, num_classes=2, base_channels=4, depth=2, image_size=32)
        plain = build_unet(cfg, fused_norm=True)
        fast = build_unet(cfg, fast_norm=True, fused_norm=True)
        assert not isinstance(plain.stem.norm1, fastnorm.LayerNorm)
        assert isinstance(fast.stem.norm1, fastnorm.LayerNorm) and not fast.stem.norm1._fused
        assert not native.width_norm_available()
    """, CXX=str(tmp_path / "no-such-compiler"), UNET_NATIVE_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if "kernel not available" in line]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0], done.stderr
    assert not list((tmp_path / "cache").glob("*.so"))


def test_the_kernel_is_compiled_once_into_the_cache_and_never_after_amp(kernel, tmp_path):
    cache = tmp_path / "cache"
    code = """
        from unet.model import native
        print("available", native.width_norm_available(), native.reason(native.WIDTH_NORM))
    """
    first = _python(code, UNET_NATIVE_CACHE=str(cache))
    assert "available True" in first.stdout, first.stderr[-2000:]
    built = list(cache.glob("*.so"))
    assert len(built) == 1 and sorted(p.name for p in cache.iterdir()) == [".build.lock",
                                                                            built[0].name]
    stamp = built[0].stat().st_mtime_ns
    # No compiler on the PATH now: only the cached library can make it available.
    second = _python(code, UNET_NATIVE_CACHE=str(cache), PATH=str(tmp_path))
    assert "available True" in second.stdout and built[0].stat().st_mtime_ns == stamp
    # A damaged cache file is compiled again, not kept failing.
    built[0].write_bytes(b"not a library")
    damaged = _python(code, UNET_NATIVE_CACHE=str(cache))
    assert "available True" in damaged.stdout, damaged.stderr[-2000:]
    assert built[0].stat().st_size > 1000 and os.access(built[0], os.R_OK | os.X_OK)
    umask = os.umask(0)
    os.umask(umask)
    assert built[0].stat().st_mode & 0o777 == 0o755 & ~umask     # not mkstemp's 0600
    # $CXX may carry arguments (ccache g++, g++ -O2): a fresh cache compiles with them.
    with_args = _python(code, UNET_NATIVE_CACHE=str(tmp_path / "cache2"), CXX="g++ -g0")
    assert "available True" in with_args.stdout, with_args.stderr[-2000:]
    late = _python("""
        from mxnet.contrib import amp
        amp.init(target_dtype="bfloat16")
        from unet.model import native
        print("available", native.width_norm_available(), native.reason(native.WIDTH_NORM))
    """, UNET_NATIVE_CACHE=str(cache))
    assert "available False mxnet.contrib.amp was initialized" in late.stdout, late.stderr[-2000:]


@pytest.fixture(scope="module")
def conv_kernel():
    # Only a missing compiler or a CPU without oneDNN's Winograd kernels (no AVX-512) skips; a
    # kernel that stops compiling or loading fails here.
    if shutil.which(native._compiler()[0]) is None:
        pytest.skip("no C++ compiler: MXNet's convolutions run")
    available = native.conv3x3_available()
    if not available and native.reason(native.CONV3X3) == native.CONV3X3.probe_failure:
        pytest.skip(native.CONV3X3.probe_failure)
    assert available, native.reason(native.CONV3X3)


def _convolution(x, weight, bias):
    return mx.nd.Convolution(x, weight, bias, kernel=(3, 3), pad=(1, 1),
                             num_filter=weight.shape[0]).asnumpy()


def _assert_close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("n, c, k, h, w", [(1, 1, 8, 32, 48), (2, 16, 32, 20, 36),
                                           (3, 5, 3, 7, 9), (1, 64, 64, 32, 32)])
def test_winograd_conv_matches_mxnet_convolution(conv_kernel, n, c, k, h, w):
    rng = np.random.default_rng(0)
    x = mx.nd.array(rng.normal(0.0, 1.0, (n, c, h, w)))
    weight = mx.nd.array(rng.normal(0.0, (2.0 / (9 * c)) ** 0.5, (k, c, 3, 3)))
    bias = mx.nd.array(rng.normal(0.0, 0.5, k))
    _assert_close(mx.nd.unet_conv3x3(x, weight, bias).asnumpy(), _convolution(x, weight, bias))


# Every algorithm a pass can take: direct everywhere (fewer than 16 channels; at most 256
# pixels), Winograd but the weight gradient (at most 1024 pixels: 32x32 and 2x16x24), Winograd
# everywhere (40x40).
@pytest.mark.parametrize("n, c, k, h, w", [(2, 3, 8, 20, 36), (1, 32, 48, 8, 12),
                                           (1, 16, 32, 32, 32), (2, 64, 64, 16, 24),
                                           (1, 32, 16, 40, 40)])
def test_winograd_training_conv_matches_mxnet_convolution_and_its_gradients(conv_kernel, n, c, k,
                                                                              h, w):
    rng = np.random.default_rng(3)
    x = mx.nd.array(rng.normal(0.0, 1.0, (n, c, h, w)))
    weight = mx.nd.array(rng.normal(0.0, (2.0 / (9 * c)) ** 0.5, (k, c, 3, 3)))
    bias = mx.nd.array(rng.normal(0.0, 0.5, k))
    head = mx.nd.array(rng.normal(0.0, 1.0, (n, k, h, w)))
    _assert_same_forward_backward(
        lambda *a: mx.nd.Convolution(*a, kernel=(3, 3), pad=(1, 1), num_filter=k),
        mx.nd.unet_conv3x3_train, (x, weight, bias), head, ("y", "dx", "dweight", "dbias"), 1e-5)


def test_the_kernel_reports_its_buffers(conv_kernel):
    from unet.model.native import conv3x3_buffers_mb
    before = conv3x3_buffers_mb()
    # Weights no earlier test used: a new entry in the cache of transformed weights, larger than
    # the plain weights (0.14 MiB).
    weight = mx.nd.random.uniform(shape=(64, 64, 3, 3))
    x, bias = mx.nd.ones((1, 64, 40, 40)), mx.nd.ones(64)
    mx.nd.unet_conv3x3(x, weight, bias).wait_to_read()
    buffers = conv3x3_buffers_mb()
    assert 0.14 <= buffers["transformed_weights"] - before["transformed_weights"] <= 0.6
    # The data and the output in oneDNN's blocked layout (0.78 MiB), grown to the largest so far.
    assert buffers["layouts"] >= 0.7 and buffers["scratchpad"] > 0


def test_winograd_block_adds_up_gradients_where_asked(conv_kernel):
    # grad_req='add': the operator could only overwrite, so the block runs MXNet's convolution.
    x = mx.nd.random.normal(shape=(2, 3, 8, 8))
    grads = []
    for block in (mx.gluon.nn.Conv2D(4, 3, padding=1, in_channels=3), winograd.Conv2D(4, 3)):
        block.initialize(mx.init.Constant(0.1))
        block.hybridize()
        block.collect_params().setattr("grad_req", "add")
        for step in range(3):
            with autograd.record():
                y = block(x * (step + 1))
            y.backward()
        grads.append([block.weight.grad().asnumpy(), block.bias.grad().asnumpy()])
    for expected, got in zip(*grads):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert grads[1][1][0] == pytest.approx(2 * 8 * 8 * 3)


def test_unet_with_winograd_convolutions_trains_like_the_reference(conv_kernel, make_net,
                                                                    tmp_path):
    from unet.model.config import ModelConfig
    cfg = ModelConfig(in_channels=1, num_classes=2, base_channels=4, depth=2, image_size=32)
    reference = make_net()
    reference.save_parameters(str(tmp_path / "p.params"))
    fast = build_unet(cfg, winograd=True)
    assert fast.conv_kernel == "winograd" and not fast.stem.conv1.inference
    assert build_unet(cfg).conv_kernel == "mxnet"
    fast.load_parameters(str(tmp_path / "p.params"))
    _assert_same_step(reference, fast, mx.nd.random.uniform(-1, 1, (2, 1, 32, 32)))


def test_winograd_conv_follows_changed_weights(conv_kernel):
    # The kernel keeps transformed weights between calls: weights written in place, and new
    # arrays (whose addresses the allocator may hand out again), must never meet stale ones.
    # 16 channels and 2x16x16 pixels: the sizes where the kernel runs Winograd.
    rng = np.random.default_rng(1)
    x = mx.nd.array(rng.normal(0.0, 1.0, (2, 16, 16, 16)))
    weight = mx.nd.array(rng.normal(0.0, 0.2, (8, 16, 3, 3)))
    bias = mx.nd.zeros(8)
    for scale in (1.0, -0.5, 3.0):
        weight[:] = weight * scale
        _assert_close(mx.nd.unet_conv3x3(x, weight, bias).asnumpy(), _convolution(x, weight, bias))
    weight[:] = weight[::-1]     # the same values in other places
    _assert_close(mx.nd.unet_conv3x3(x, weight, bias).asnumpy(), _convolution(x, weight, bias))
    for seed in range(4):
        fresh = mx.nd.array(np.random.default_rng(seed).normal(0.0, 0.2, (8, 16, 3, 3)))
        _assert_close(mx.nd.unet_conv3x3(x, fresh, bias).asnumpy(), _convolution(x, fresh, bias))
        del fresh


def test_inference_copy_shares_the_weights_and_computes_the_same(conv_kernel, make_net, tmp_path):
    net = make_net(norm="layer")
    fast = inference_copy(net)
    assert fast is not net and isinstance(fast.stem.conv1, winograd.Conv2D)
    assert fast.stem.conv1.inference and fast.up[0].conv.inference
    assert not isinstance(net.stem.conv1, winograd.Conv2D)
    assert fast.stem.conv1.weight is net.stem.conv1.weight
    # Its layer norms on the compiled kernel where it loads (the same function, faster).
    if native.width_norm_available():
        assert isinstance(fast.stem.norm1, fastnorm.LayerNorm) and fast.stem.norm1._fused
    assert fast.stem.norm1.gamma is net.stem.norm1.gamma
    assert inference_copy(net, winograd=False) is net and inference_copy(fast) is fast
    x = mx.nd.array(np.random.default_rng(2).uniform(-1, 1, (3, 1, 32, 32)))
    net.hybridize(static_alloc=True)
    fast.hybridize(static_alloc=True)
    _assert_close(fast(x).asnumpy(), net(x).asnumpy())
    # New weights loaded into the network reach the copy.
    other = make_net(seed=5)
    other.save_parameters(str(tmp_path / "other.params"))
    net.load_parameters(str(tmp_path / "other.params"))
    _assert_close(fast(x).asnumpy(), other(x).asnumpy())
    # The kernel has no gradient: training the copy fails loudly, not silently.
    with pytest.raises(mx.base.MXNetError, match="no backward pass"):
        with autograd.record():
            y = fast(x)
        y.backward()
        mx.nd.waitall()


def test_without_the_onednn_wheel_inference_falls_back_with_one_warning(tmp_path):
    done = _python("""
        import importlib.metadata, logging
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        real_files = importlib.metadata.files
        def files(name):
            if name == "onednn-cpu-gomp":
                raise importlib.metadata.PackageNotFoundError(name)
            return real_files(name)
        importlib.metadata.files = files
        import mxnet as mx
        from unet.model import native
        from unet.model.config import ModelConfig
        from unet.model.network import build_unet, inference_copy, initializer
        cfg = ModelConfig(in_channels=1, num_classes=2, base_channels=4, depth=2, image_size=32)
        net = build_unet(cfg)
        net.initialize(initializer())
        assert inference_copy(net) is net and inference_copy(net) is net
        assert not native.conv3x3_available()
    """, UNET_NATIVE_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if "kernel not available" in line]
    assert len(warnings) == 1 and "onednn-cpu-gomp is not installed" in warnings[0], done.stderr


def test_a_cpu_without_winograd_kernels_keeps_mxnet_convolutions(conv_kernel, tmp_path):
    # Where oneDNN has no Winograd kernel (no AVX-512), the operators would only add layout
    # conversions: the library's probe says so and the network keeps MXNet's convolutions.
    done = _python("""
        import logging
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from unet.model import native
        assert native._probe(native.library_path(native.CONV3X3), native.CONV3X3.probe)
        native._probe = lambda path, function: False
        from unet.model.config import ModelConfig
        from unet.model.network import build_unet
        cfg = ModelConfig(in_channels=1, num_classes=2, base_channels=4, depth=2, image_size=32)
        assert build_unet(cfg, winograd=True).conv_kernel == "mxnet"
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if "kernel not available" in line]
    assert len(warnings) == 1 and "needs AVX-512" in warnings[0], done.stderr
