"""The U-Net (issue 2): shapes and hand-counted parameters over the option grid, the golden
summary, hybridized == imperative, export and save/load round trips, and bad options."""
import itertools
import os
import re

import mxnet as mx
import numpy as np
import pytest

import segmenter
from unet.model.config import ModelConfig
from unet.model.network import build_unet, count_parameters, finish_deferred_init, initializer

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "summary-3x512x512.txt")


# ---- parameter counts by hand ------------------------------------------------------------------

def conv_params(k, cin, cout):
    return k * k * cin * cout + cout


def norm_params(norm, channels, width):
    """(trainable, non-trainable): LayerNorm has gamma and beta over the width; BatchNorm gamma
    and beta over the channels plus running mean and variance, which are not trainable."""
    return (2 * width, 0) if norm == "layer" else (2 * channels, 2 * channels)


def block_params(cfg, cin, cout, width):
    trainable = conv_params(3, cin, cout) + conv_params(3, cout, cout)
    if cfg.residual:
        trainable += conv_params(1, cin, cout)
    fixed = 0
    for _ in range(2):
        t, f = norm_params(cfg.norm, cout, width)
        trainable, fixed = trainable + t, fixed + f
    return trainable, fixed


def expected_params(cfg, width):
    """(trainable, non-trainable) of a UNet fed inputs of width ``width``."""
    c = cfg.base_channels
    parts = [block_params(cfg, cfg.in_channels, c, width)]
    for level in range(cfg.depth):                        # encoder: 2x2 pool halves the width
        parts.append(block_params(cfg, c * 2 ** level, c * 2 ** (level + 1),
                                  width // 2 ** (level + 1)))
    for level in reversed(range(cfg.depth)):              # decoder
        wide = c * 2 ** (level + 1)
        kernel = 3 if cfg.upsample == "upsample" else 2
        parts.append((conv_params(kernel, wide, wide // 2), 0))
        parts.append(block_params(cfg, wide, wide // 2, width // 2 ** level))
    parts.append((conv_params(1, c, cfg.num_classes), 0))
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def summary_text(net, x, capsys):
    capsys.readouterr()
    net.summary(x)
    return capsys.readouterr().out


def summary_count(text, label):
    return int(re.search(rf"{label}: (\d+)", text).group(1))


def test_hand_formula_matches_the_reference_total():
    # The reference table's total, computed without MXNet: guards the formula itself.
    assert expected_params(ModelConfig(), 512) == (35916994, 0)


# ---- the option grid ---------------------------------------------------------------------------

# (depth, H, W): even multiples of 2**depth, and odd multiples with H != W. A layer-norm model is
# bound to W (its image_size), so only H varies there.
SIZES = {"even": (2, 32, 32), "odd": (3, 40, 24)}
GRID = list(itertools.product(("layer", "batch"), (True, False), (0.0, 0.3),
                              ("upsample", "transpose"), sorted(SIZES)))


@pytest.mark.parametrize("norm,residual,dropout,upsample,size", GRID)
def test_grid_shapes_counts_and_hybridize(make_net, capsys, norm, residual, dropout, upsample,
                                          size):
    depth, height, width = SIZES[size]
    net = make_net(norm=norm, residual=residual, dropout=dropout, upsample=upsample, depth=depth,
                   image_size=width, base_channels=4, num_classes=3)
    cfg = net.config
    x = mx.nd.array(np.random.RandomState(1).rand(2, 1, height, width))

    table = summary_text(net, x, capsys)
    trainable, fixed = expected_params(cfg, width)
    assert summary_count(table, "Total params") == trainable + fixed
    assert summary_count(table, "Trainable params") == trainable
    assert summary_count(table, "Non-trainable params") == fixed
    assert count_parameters(net) == trainable + fixed
    assert table.count("Dropout-") == (2 * cfg.depth + 1 if dropout else 0)
    assert table.count("BaseConvBlock-") == 2 * cfg.depth + 1
    assert table.count("DownSampleBlock-") == table.count("UpsampleConvLayer-") == cfg.depth

    imperative = net(x)
    assert imperative.shape == (2, 3, height, width)
    net.hybridize()
    hybrid = net(x)
    np.testing.assert_allclose(hybrid.asnumpy(), imperative.asnumpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hybridize", [False, True])
def test_deferred_shapes_finish_without_a_forward_pass(hybridize):
    # The layer norms' width comes from the input; shape inference gives the same parameters
    # (same seed, same draws) as the first forward pass would.
    config = ModelConfig(in_channels=1, base_channels=4, depth=2, image_size=32)
    nets = []
    for by_inference in (True, False):
        mx.random.seed(3)
        net = build_unet(config)
        net.initialize(initializer(), ctx=[mx.cpu(0), mx.cpu(1)])
        if hybridize:
            net.hybridize()
        if by_inference:
            finish_deferred_init(net, (1, 1, 32, 32))
        else:
            net(mx.nd.zeros((1, 1, 32, 32), ctx=mx.cpu(0)))
        nets.append(net)
    by_inference, by_forward = (n.collect_params() for n in nets)
    assert count_parameters(nets[0]) == count_parameters(nets[1])
    for (name, a), b in zip(by_inference.items(), by_forward.values()):
        assert a.shape == b.shape, name
        for ctx in (mx.cpu(0), mx.cpu(1)):
            np.testing.assert_array_equal(a.data(ctx).asnumpy(), b.data(ctx).asnumpy(), name)
    finish_deferred_init(nets[0], (1, 1, 32, 32))       # nothing left to do: unchanged
    assert nets[0](mx.nd.ones((2, 1, 32, 32))).shape == (2, 2, 32, 32)


def test_batch_norm_model_accepts_any_valid_size(make_net):
    net = make_net(norm="batch", depth=2, image_size=32)
    for height, width in ((32, 32), (12, 20), (48, 80)):
        out = net(mx.nd.ones((1, 1, height, width)))
        assert out.shape == (1, 2, height, width)


def test_dropout_is_active_only_in_training(make_net):
    x = mx.nd.array(np.random.RandomState(2).rand(1, 1, 32, 32))
    net = make_net(norm="batch", dropout=0.5)
    assert np.array_equal(net(x).asnumpy(), net(x).asnumpy())
    with mx.autograd.record(train_mode=True):
        first, second = net(x), net(x)
    assert not np.array_equal(first.asnumpy(), second.asnumpy())


# ---- golden summary ----------------------------------------------------------------------------

def golden_lines():
    with open(GOLDEN, encoding="utf-8") as handle:
        return handle.read().splitlines()


def test_default_summary_matches_golden_table(capsys):
    net = build_unet()
    net.initialize(initializer())
    lines = summary_text(net, mx.nd.ones((1, 3, 512, 512)), capsys).splitlines()
    mx.nd.waitall()      # the forward runs asynchronously: charge its ~10 s to this test
    expected = golden_lines()
    for row, (got, want) in enumerate(zip(lines, expected), 1):
        assert got == want, f"summary row {row} differs"
    assert len(lines) == len(expected)


def test_segmenter_summary_prints_golden_table(capsys):
    assert segmenter.main(["--summary", "--channels", "3", "--image-size", "512"]) == 0
    mx.nd.waitall()
    assert capsys.readouterr().out.splitlines() == golden_lines()


def test_segmenter_summary_follows_model_flags(capsys):
    argv = ["--summary", "--channels", "1", "--image-size", "32", "--base-channels", "4",
            "--depth", "2", "--norm", "batch", "--no-residual", "--upsample", "transpose"]
    assert segmenter.main(argv) == 0
    table = capsys.readouterr().out
    cfg = ModelConfig(in_channels=1, base_channels=4, depth=2, norm="batch", residual=False,
                      upsample="transpose", image_size=32)
    assert summary_count(table, "Total params") == sum(expected_params(cfg, 32))
    assert "(1, 2, 32, 32)" in table


def run_main(argv):
    try:
        return segmenter.main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv,names", [
    (["--summary", "--norm", "group"], ["group"]),
    (["--summary", "--image-size", "500"], ["500", "496", "512"]),
    (["--summary", "--dropout", "1.5"], ["1.5"]),
    (["--data-dir", "/nonexistent", "--class-weights", "0,0"], ["class-weights", "not all 0"]),
    (["--data-dir", "/nonexistent", "--cpu-contexts", "3", "--batch-size", "2"],
     ["batch-size", "2"]),
    (["--data-dir", "/nonexistent", "--checkpoint-file", ""], ["'' names no file"]),
])
def test_segmenter_bad_flag_is_one_line_exit_2(capsys, argv, names):
    assert run_main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    for name in names:
        assert name in lines[0]
    assert captured.out == ""


# ---- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_export_round_trip(make_net, tmp_path, norm):
    net = make_net(norm=norm)
    x = mx.nd.array(np.random.RandomState(3).rand(2, 1, 48, 32))
    net.hybridize()
    expected = net(x).asnumpy()
    prefix = str(tmp_path / "unet")
    net.export(prefix, epoch=0)
    imported = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"],
                                            prefix + "-0000.params", ctx=mx.cpu())
    np.testing.assert_allclose(imported(x).asnumpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm,upsample", [("layer", "upsample"), ("batch", "transpose")])
def test_save_load_round_trip(make_net, tmp_path, norm, upsample):
    net = make_net(seed=0, norm=norm, upsample=upsample)
    x = mx.nd.array(np.random.RandomState(4).rand(2, 1, 32, 32))
    expected = net(x).asnumpy()
    path = str(tmp_path / "w.params")
    net.save_parameters(path)
    other = make_net(seed=1, norm=norm, upsample=upsample)
    assert not np.allclose(other(x).asnumpy(), expected)
    other.load_parameters(path)
    np.testing.assert_array_equal(other(x).asnumpy(), expected)


# ---- bad options -------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("norm", "group"), ("upsample", "bilinear"), ("dropout", 1.0), ("dropout", -0.1),
    ("dropout", "0.5"), ("residual", "yes"), ("depth", 0), ("base_channels", -4),
    ("in_channels", 2.0), ("num_classes", 1), ("image_size", True),
])
def test_bad_option_raises_naming_value(field, value):
    with pytest.raises(ValueError) as info:
        ModelConfig(**{field: value})
    assert field in str(info.value) and repr(value) in str(info.value)


def test_image_size_not_a_multiple_names_nearest_sizes():
    with pytest.raises(ValueError, match=r"500.*\[496, 512\]"):
        ModelConfig(image_size=500)
    with pytest.raises(ValueError, match=r"20.*\[16, 24\]"):
        ModelConfig(image_size=20, depth=3)


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("shape,pattern", [
    ((1, 1, 44, 32), r"height 44 .*\[40, 48\]"),
    ((1, 1, 32, 20), r"width 20 .*\[16, 24\]"),
    ((1, 1, 4, 32), r"height 4 .*\[8\]"),
    ((1, 3, 32, 32), r"\(N, 1, H, W\).*\(1, 3, 32, 32\)"),
    ((1, 32, 32), r"\(1, 32, 32\)"),
])
def test_bad_input_shape_raises(make_net, hybridize, shape, pattern):
    net = make_net(norm="batch", depth=3)
    if hybridize:
        net.hybridize()
    with pytest.raises(ValueError, match=pattern):
        net(mx.nd.ones(shape))


@pytest.mark.parametrize("hybridize", [False, True])
def test_layer_norm_model_refuses_another_width(make_net, hybridize):
    net = make_net(norm="layer", image_size=32)
    if hybridize:
        net.hybridize()
    with pytest.raises(ValueError, match=r"width 64 .*32"):
        net(mx.nd.ones((1, 1, 32, 64)))
    assert net(mx.nd.ones((1, 1, 64, 32))).shape == (1, 2, 64, 32)
