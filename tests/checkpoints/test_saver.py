"""unet.checkpoints.saver: the last checkpoint's files are written beside validation and committed after it,
as the state was at ``begin``; a save that does not come leaves nothing; write errors are one line."""
import concurrent.futures
import os
import threading
import types

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from unet.checkpoints import files, loading, writing
from unet.checkpoints import optimizer_state as trainer_state
from unet.core.errors import InputError
from unet.checkpoints.saver import CheckpointSaver

X = mx.nd.array(np.random.RandomState(5).rand(2, 1, 32, 32))


def train_step(net, trainer, seed):
    rng = np.random.RandomState(seed)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(axis=1)
    with autograd.record():
        loss = loss_fn(net(mx.nd.array(rng.rand(2, 1, 32, 32))),
                       mx.nd.array(rng.randint(0, 2, (2, 32, 32))))
    loss.backward()
    trainer.step(2)


def folder_bytes(folder):
    return {n: (folder / n).read_bytes() for n in os.listdir(folder)}


def temporaries(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp" in n or n.endswith(".pending"))


@pytest.fixture
def run(make_net, make_meta, tmp_path):
    """A tiny batch-norm net after one Adam step and its saver, as the training loop holds them."""
    net = make_net(norm="batch")
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.01},
                            update_on_kvstore=False)
    train_step(net, trainer, 0)
    state = types.SimpleNamespace(epoch=1, global_step=1, best_score=0.5, best_epoch=1)
    cfg = types.SimpleNamespace(checkpoint_file=str(tmp_path / "unet.params"))
    base = {k: v for k, v in make_meta(net.config).items()
            if k not in ("epoch", "global_step", "best_score", "best_epoch")}
    saver = CheckpointSaver(net, trainer, cfg, base, state, enabled=True)
    yield types.SimpleNamespace(net=net, trainer=trainer, state=state, saver=saver,
                                last=files.last_path(cfg.checkpoint_file), folder=tmp_path)
    saver.close()


def test_begun_files_hold_the_state_at_begin(run, monkeypatch):
    expected = run.net(X).asnumpy()
    changed, real = threading.Event(), writing.prepare_checkpoint

    def prepare_late(*args, **kwargs):      # the writer starts only after the weights change
        changed.wait(60)
        return real(*args, **kwargs)
    monkeypatch.setattr(writing, "prepare_checkpoint", prepare_late)
    run.saver.begin()
    for param in run.net.collect_params().values():      # what must not reach the checkpoint
        param.set_data(param.data() * 0)
    changed.set()
    for _ in range(3):                                    # validation: inference passes meanwhile
        run.net(X).wait_to_read()
    run.saver.save(1e-3, {"dice": 0.6}, best=True)
    for path in (run.last, run.saver.cfg.checkpoint_file):
        loaded, meta = loading.load_for_inference(path)
        np.testing.assert_array_equal(loaded(X).asnumpy(), expected)
        assert (meta["epoch"], meta["global_step"], meta["scores"]) == (1, 1, {"dice": 0.6})
    assert files.read_meta(run.last)["optimizer_state"]["num_update"] == 1
    assert temporaries(run.folder) == []


def test_begun_save_resumes_like_a_direct_one(run, make_net):
    run.saver.begin()
    run.saver.save(1e-3, {"dice": 0.6}, best=False)
    resumed = make_net(seed=3, norm="batch")
    trainer = gluon.Trainer(resumed.collect_params(), "adam", {"learning_rate": 0.01},
                            update_on_kvstore=False)
    loading.load_training_state(resumed, trainer, run.last)
    train_step(run.net, run.trainer, 1)
    train_step(resumed, trainer, 1)
    np.testing.assert_allclose(resumed(X).asnumpy(), run.net(X).asnumpy(), rtol=1e-5, atol=1e-6)


def test_a_save_that_does_not_come_leaves_the_previous_checkpoint(run):
    run.saver.save(1e-3, {"dice": 0.6}, best=True)          # epoch 1, written directly
    before = folder_bytes(run.folder)
    train_step(run.net, run.trainer, 1)
    run.state.epoch, run.state.global_step = 2, 2
    run.saver.begin()                   # validation of epoch 2 then fails, or the run is stopped
    run.saver.close()
    assert folder_bytes(run.folder) == before


def test_a_second_begin_replaces_the_first(run):
    run.saver.begin()
    run.state.global_step = 2
    run.saver.begin()
    run.saver.save(1e-3, None, best=False)
    assert files.read_meta(run.last)["optimizer_state"]["file"] == "unet-last-step2.states"
    assert sorted(n for n in os.listdir(run.folder) if n.endswith(".states")) == \
        ["unet-last-step2.states"]
    assert temporaries(run.folder) == []


def test_a_failed_background_write_is_one_line_and_keeps_the_checkpoint(run, monkeypatch):
    run.saver.save(1e-3, {"dice": 0.6}, best=True)
    before = folder_bytes(run.folder)
    real = trainer_state.save_optimizer_state

    def full_disk(trainer, path):
        real(trainer, path)
        raise OSError(28, "No space left on device (simulated)")
    monkeypatch.setattr(writing, "save_optimizer_state", full_disk)
    run.state.epoch, run.state.global_step = 2, 2
    run.saver.begin()
    with pytest.raises(InputError) as info:
        run.saver.save(1e-3, {"dice": 0.7}, best=True)
    assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    assert folder_bytes(run.folder) == before


def test_ctrl_c_while_waiting_leaves_the_files_to_the_state_save(run, monkeypatch):
    run.saver.begin()
    real, interrupted = concurrent.futures.Future.result, []

    def result(self, timeout=None):     # the signal comes as the write ends, on the main thread
        value = real(self, timeout)
        if threading.current_thread() is threading.main_thread() and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return value
    monkeypatch.setattr(concurrent.futures.Future, "result", result)
    with pytest.raises(KeyboardInterrupt):
        run.saver.save(1e-3, {"dice": 0.6}, best=True)
    run.saver.save(1e-3, None, best=False)      # what train.save_interrupted does next
    meta = files.read_meta(run.last)
    assert (meta["global_step"], meta["scores"]) == (1, None)
    assert files.sha256_file(run.last) == meta["params_sha256"]
    assert sorted(n for n in os.listdir(run.folder) if n.endswith(".states")) == \
        ["unet-last-step1.states"]
    assert temporaries(run.folder) == []
