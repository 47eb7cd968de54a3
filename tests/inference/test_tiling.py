"""Overlap-tile prediction: shapes, tiled == direct, blending, TTA, contexts, bad arguments."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

from unet.model.config import ModelConfig
from unet.model.network import build_unet, initializer
from unet.inference.tiling import (blend_window, dihedral, predict_probabilities, sample_tiles, tile_layout,
                         undo_dihedral)

TILE = 32


def tiny_unet(norm="layer", in_channels=1, num_classes=2, ctx=None, seed=0):
    mx.random.seed(seed)
    config = ModelConfig(in_channels=in_channels, num_classes=num_classes, base_channels=4,
                         depth=2, norm=norm, image_size=TILE)
    net = build_unet(config)
    net.initialize(initializer(), ctx=ctx or mx.cpu())
    return net


class Pointwise(nn.HybridBlock):
    """1x1 convolutions only: every pixel is predicted from itself, so tiling must be exact."""

    def __init__(self, in_channels=1, num_classes=3, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a = nn.Conv2D(8, 1, in_channels=in_channels, activation="tanh")
            self.b = nn.Conv2D(num_classes, 1, in_channels=8)

    def hybrid_forward(self, F, x):
        return self.b(self.a(x))


class Smooth(nn.HybridBlock):
    """One 3x3 convolution with zero padding: wrong only on a tile's outermost pixels."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(2, 3, padding=1, in_channels=1)

    def hybrid_forward(self, F, x):
        return self.conv(x)


def softmax(scores):
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_image(height, width, channels=1, seed=0):
    return np.random.RandomState(seed).rand(channels, height, width).astype(np.float32)


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize("tta", [False, True])
def test_one_tile_equals_direct_forward(norm, tta):
    net = tiny_unet(norm)
    net.hybridize()
    image = random_image(TILE, TILE)
    direct = softmax(net(mx.nd.array(image[None])).asnumpy())[0]
    tiled = predict_probabilities(net, image, TILE)
    np.testing.assert_allclose(tiled, direct, atol=1e-6)
    if not tta:
        return
    expected = np.mean([undo_dihedral(softmax(net(mx.nd.array(dihedral(image, k)[None].copy()))
                                              .asnumpy())[0], k) for k in range(8)], axis=0)
    np.testing.assert_allclose(predict_probabilities(net, image, TILE, tta=True), expected,
                               atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 45), (31, 33), (5, 97), (70, 50), (64, 64)])
def test_any_size_gives_probabilities_of_that_size(shape):
    net = tiny_unet("layer", in_channels=3, num_classes=3)
    probs = predict_probabilities(net, random_image(*shape, channels=3), TILE, batch_size=3)
    assert probs.shape == (3,) + shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert np.isfinite(probs).all()


@pytest.mark.parametrize("overlap", [0, 5, 16, 31])
def test_pointwise_net_is_reproduced_exactly_by_blending(overlap):
    net = Pointwise()
    net.initialize(mx.init.Normal(1.0))
    image = random_image(83, 61)
    direct = softmax(net(mx.nd.array(image[None])).asnumpy())[0]
    tiled = predict_probabilities(net, image, TILE, overlap=overlap, batch_size=5)
    np.testing.assert_allclose(tiled, direct, atol=1e-5)


def test_no_seams_where_tiles_meet():
    """A 3x3 zero-padded convolution is wrong only on each tile's edge; the blend hides it."""
    net = Smooth()
    net.initialize(mx.init.Normal(1.0))
    image = random_image(100, 70) * 4
    direct = softmax(net(mx.nd.array(image[None])).asnumpy())[0]
    hard = predict_probabilities(net, image, TILE, overlap=0)
    blended = predict_probabilities(net, image, TILE, overlap=8)
    inner = (slice(None), slice(1, -1), slice(1, -1))           # the image's own border differs
    assert np.abs(hard - direct)[inner].max() > 0.05             # abutting tiles do show seams
    assert np.abs(blended - direct)[inner].max() < 0.02


def test_tta_is_exact_for_a_rotation_equivariant_net():
    net = Pointwise()
    net.initialize(mx.init.Normal(1.0))
    image = random_image(50, 41)
    np.testing.assert_allclose(predict_probabilities(net, image, TILE, tta=True),
                               predict_probabilities(net, image, TILE), atol=1e-5)


def test_tta_changes_nothing_for_a_symmetric_input_and_makes_the_net_equivariant():
    net = tiny_unet("layer")
    image = random_image(TILE, TILE)
    image = np.mean([dihedral(image, k) for k in range(8)], axis=0)    # invariant under all 8
    probs = predict_probabilities(net, image, TILE, tta=True)
    for k in range(8):
        np.testing.assert_allclose(dihedral(probs, k), probs, atol=1e-6)
    turned = predict_probabilities(net, dihedral(random_image(TILE, TILE), 1).copy(), TILE,
                                   tta=True)
    plain = predict_probabilities(net, random_image(TILE, TILE), TILE, tta=True)
    np.testing.assert_allclose(turned, dihedral(plain, 1), atol=1e-6)


def test_batch_size_and_contexts_do_not_change_the_result():
    contexts = [mx.cpu(0), mx.cpu(1)]
    net = tiny_unet("batch", ctx=contexts)
    image = random_image(45, 70)
    reference = predict_probabilities(net, image, TILE, batch_size=1)
    for batch_size, ctx in ((4, None), (7, contexts), (64, contexts[1])):
        np.testing.assert_allclose(
            predict_probabilities(net, image, TILE, ctx=ctx, batch_size=batch_size),
            reference, atol=1e-6)


def test_layout_and_window():
    assert tile_layout(32, 32, 8) == (0, 0, [0])
    assert tile_layout(20, 32, 8) == (6, 6, [0])
    pad0, pad1, offsets = tile_layout(100, 32, 8)
    assert (pad0, pad1) == (4, 4) and offsets[0] == 0 and offsets[-1] == 100 + 8 - 32
    assert max(np.diff(offsets)) <= 32 - 8
    window = blend_window(32, 8)
    assert window.min() > 0 and window.max() == pytest.approx(1.0)
    for k in range(8):
        np.testing.assert_array_equal(dihedral(window, k), window)
    a = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    assert len({dihedral(a, k).tobytes() for k in range(8)}) == 8
    for k in range(8):
        np.testing.assert_array_equal(undo_dihedral(dihedral(a, k), k), a)


@pytest.mark.parametrize("kwargs, match", [
    (dict(image=np.zeros((8, 8), np.float32)), "image"),
    (dict(image=np.zeros((1, 0, 8), np.float32)), "empty"),
    (dict(tile_size=0), "tile_size"),
    (dict(batch_size=0), "batch_size"),
    (dict(overlap=32), "overlap"),
    (dict(overlap=-1), "overlap"),
    (dict(ctx=[]), "ctx"),
])
def test_bad_arguments_raise(kwargs, match):
    args = dict(net=Pointwise(), image=random_image(8, 8), tile_size=TILE)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        predict_probabilities(**args)


def test_sample_tiles_spreads_padded_tiles_over_the_image():
    image = np.arange(3 * 100 * 70, dtype=np.float32).reshape(3, 100, 70)
    tiles = sample_tiles(image, 32, count=4)
    assert tiles.shape == (4, 3, 32, 32) and tiles.dtype == np.float32
    np.testing.assert_array_equal(tiles[0], image[:, :32, :32])      # the first tile, unpadded
    assert len({t.tobytes() for t in tiles}) == 4
    small = sample_tiles(image[:, :20, :10], 32, count=4)           # one padded tile
    assert small.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal(small[0, :, 6:26, 11:21], image[:, :20, :10])


def test_a_progress_bar_counts_the_forward_passes_of_each_image():
    import io
    from tqdm import tqdm
    net = Pointwise()
    net.initialize(mx.init.Normal(1.0))
    image = random_image(83, 61)
    _, _, rows = tile_layout(83, TILE, 8)
    _, _, cols = tile_layout(61, TILE, 8)
    passes = -(-len(rows) * len(cols) // 5)
    with tqdm(total=0, file=io.StringIO()) as bar:
        first = predict_probabilities(net, image, TILE, overlap=8, batch_size=5, progress=bar)
        assert (bar.n, bar.total) == (passes, passes) and passes > 1
        predict_probabilities(net, image, TILE, overlap=8, batch_size=5, tta=True, progress=bar)
        assert bar.n == bar.total == passes + -(-8 * len(rows) * len(cols) // 5)
    np.testing.assert_array_equal(
        first, predict_probabilities(net, image, TILE, overlap=8, batch_size=5))
