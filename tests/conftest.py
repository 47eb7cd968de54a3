"""Shared fixtures: tiny seeded U-Nets and the checkpoint metadata that describes them.

``make_net(**overrides)`` builds an initialized ``UNet`` from a tiny config (1 channel, 2 classes,
base width 4, depth 2, image size 32; any ``ModelConfig`` field can be overridden), runs one
forward so that every parameter has its shape, and by default gives biases, norm parameters and
BatchNorm running statistics random values, so that tests cannot pass on all-zero or all-one
parameters. ``make_meta(config)`` is a minimal valid ``meta`` for ``save_checkpoint``.
"""
import unet  # noqa: F401  (before mxnet, as the CLIs: its thread and AMX defaults)
import mxnet as mx
import numpy as np
import pytest

from unet.model.config import ModelConfig
from unet.model.network import build_unet, initializer

TINY = dict(in_channels=1, num_classes=2, base_channels=4, depth=2, image_size=32)


def randomize_parameters(net, seed=0):
    """Random biases, gamma/beta and running stats (running_var > 0); weights keep their init."""
    rng = np.random.RandomState(seed)
    for name, param in sorted(net.collect_params().items()):
        shape = param.shape
        if name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith(("bias", "beta", "running_mean")):
            value = rng.normal(0.0, 0.1, shape)
        else:
            continue
        param.set_data(mx.nd.array(value, dtype=np.float32))


@pytest.fixture
def make_net():
    """Factory ``make_net(seed=0, randomize=True, ctx=None, **config_overrides) -> UNet``."""

    def make(seed=0, randomize=True, ctx=None, **overrides):
        config = ModelConfig(**dict(TINY, **overrides))
        mx.random.seed(seed)
        net = build_unet(config)
        net.initialize(initializer(), ctx=ctx)
        size = config.image_size
        net(mx.nd.zeros((1, config.in_channels, size, size)))
        if randomize:
            randomize_parameters(net, seed)
        return net

    return make


@pytest.fixture
def make_meta():
    """Factory ``make_meta(config, epoch=1, global_step=10) -> dict`` for ``save_checkpoint``."""

    def make(config, epoch=1, global_step=10):
        return {"model": config.to_dict(), "epoch": epoch, "global_step": global_step,
                "best_score": 0.5, "best_epoch": epoch,
                "data": {"channels": config.in_channels,
                         "normalization": {"mean": [0.5] * config.in_channels,
                                           "std": [0.25] * config.in_channels},
                         "encoding": {"kind": "binary", "values": [0, 255], "colormap": None}}}

    return make


@pytest.fixture
def rng():
    """A seeded ``np.random.RandomState(0)``."""
    return np.random.RandomState(0)
