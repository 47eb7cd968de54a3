"""--ema: a moving average of the weights kept in the optimizer state, validated and saved as
the best checkpoint, carried by the last one and continued on resume."""
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from test_train import demo, params_of, run  # noqa: F401  (demo: a fixture)
from unet.checkpoints.files import last_path, read_meta
from unet.checkpoints.optimizer_state import load_optimizer_state, optimizer_arrays
from unet.training.config import TrainConfig
from unet.training.ema import averaged_weights, averaging_optimizer


def trainer_of(optimizer, decay=None, **params):
    net = gluon.nn.Dense(3, in_units=4)
    net.initialize(mx.init.Uniform(), ctx=mx.cpu())
    if decay is not None:
        optimizer, params = averaging_optimizer(optimizer, decay, **params), None
    return net, gluon.Trainer(net.collect_params(), optimizer, params,
                              update_on_kvstore=False)


def steps(net, trainer, count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        x = mx.nd.array(rng.normal(size=(5, 4)))
        with mx.autograd.record():
            loss = (net(x) ** 2).mean()
        loss.backward()
        trainer.step(5)


@pytest.mark.parametrize("optimizer, params", [("adam", {"learning_rate": 0.1}),
                                               ("sgd", {"learning_rate": 0.1, "momentum": 0.9})])
def test_the_average_follows_the_raw_weights_which_train_as_without_it(optimizer, params):
    mx.random.seed(1)
    plain, plain_trainer = trainer_of(optimizer, **params)
    mx.random.seed(1)
    net, trainer = trainer_of(optimizer, decay=0.8, **params)
    weight = net.weight.data()
    expected = weight.asnumpy().copy()
    for step in range(6):
        steps(plain, plain_trainer, 1, seed=step)
        steps(net, trainer, 1, seed=step)
        expected = 0.8 * expected + 0.2 * weight.asnumpy()
    np.testing.assert_allclose(weight.asnumpy(), plain.weight.data().asnumpy(), rtol=1e-6)
    raw = weight.asnumpy().copy()
    with averaged_weights(trainer):
        np.testing.assert_allclose(net.weight.data().asnumpy(), expected, rtol=1e-5)
        assert not np.allclose(net.weight.data().asnumpy(), raw)
    np.testing.assert_array_equal(net.weight.data().asnumpy(), raw)
    with pytest.raises(RuntimeError), averaged_weights(trainer):
        raise RuntimeError("validation failed")
    np.testing.assert_array_equal(net.weight.data().asnumpy(), raw)      # restored anyway


def test_the_average_is_saved_and_restored_with_the_optimizer_state(tmp_path):
    net, trainer = trainer_of("adam", decay=0.5, learning_rate=0.1)
    steps(net, trainer, 3)
    arrays, counters = optimizer_arrays(trainer)
    mx.nd.save(str(tmp_path / "s"), arrays)
    json.dumps(counters)
    with averaged_weights(trainer):
        average = net.weight.data().asnumpy()
    other, other_trainer = trainer_of("adam", decay=0.5, learning_rate=0.1)
    other.weight.set_data(net.weight.data())
    other.bias.set_data(net.bias.data())
    steps(other, other_trainer, 1)          # creates states, then replaced by the loaded ones
    other.weight.set_data(net.weight.data())
    other.bias.set_data(net.bias.data())
    load_optimizer_state(other_trainer, str(tmp_path / "s"), counters)
    with averaged_weights(other_trainer):
        np.testing.assert_array_equal(other.weight.data().asnumpy(), average)
    steps(net, trainer, 2, seed=5)
    steps(other, other_trainer, 2, seed=5)
    with averaged_weights(trainer), averaged_weights(other_trainer):
        np.testing.assert_allclose(other.weight.data().asnumpy(), net.weight.data().asnumpy(),
                                   rtol=1e-6)


def test_bad_decays_are_refused():
    with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
        TrainConfig(ema=1.0)
    with pytest.raises(ValueError, match="dist_async updates on the servers"):
        TrainConfig(ema=0.9, kvstore="dist_async")


def averages_in_states(last):
    """``{parameter index: average}`` from the optimizer state of a last checkpoint."""
    meta = read_meta(last)
    arrays = mx.nd.load(os.path.join(os.path.dirname(last), meta["optimizer_state"]["file"]))
    return {int(key.split("/")[0]): value.asnumpy() for key, value in arrays.items()
            if key.count("/") == 1 and key.endswith("/1")}


def test_the_best_checkpoint_holds_the_average_and_a_resume_continues_it(tmp_path, demo):
    flags = ["--ema", "0.9", "--lr-decay-epoch", "1", "--epoch-size", "16"]
    code, ckpt = run(["--num-epochs", "1"] + flags, tmp_path / "a", demo)
    assert code == 0
    best, last = params_of(ckpt), params_of(last_path(ckpt))
    averages = averages_in_states(last_path(ckpt))
    assert averages and read_meta(ckpt)["training"]["ema"] == 0.9
    # The best (epoch 1, the only one) is the average; the last keeps the raw weights.
    by_shape = {}
    for name in sorted(best):
        by_shape.setdefault(best[name].shape, []).append(name)
    matched = 0
    for average in averages.values():
        names = [n for n in by_shape.get(average.shape, []) if np.allclose(best[n], average)]
        matched += bool(names)
        for name in names:
            assert not np.allclose(last[name], average), name
    assert matched == len(averages)
    # Resumed for a second epoch: the same weights and averages as two epochs straight.
    code, _ = run(["--num-epochs", "2", "--checkpoint", "load"] + flags, tmp_path / "a", demo)
    assert code == 0
    code, straight = run(["--num-epochs", "2"] + flags, tmp_path / "b", demo)
    assert code == 0
    resumed, whole = params_of(last_path(ckpt)), params_of(last_path(straight))
    for name in whole:
        np.testing.assert_allclose(resumed[name], whole[name], rtol=1e-4, atol=1e-5, err_msg=name)
    a, b = averages_in_states(last_path(ckpt)), averages_in_states(last_path(straight))
    assert a.keys() == b.keys()
    for index in a:
        np.testing.assert_allclose(a[index], b[index], rtol=1e-4, atol=1e-5)
