"""Checkpoints: self-describing round trip, one-line errors for every broken file, the crash window
of the commit protocol, failing writes, pickle-free optimizer state, and the run lock."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from unet.checkpoints import files, loading, writing
from unet.core.errors import InputError
from unet.checkpoints.lock import RunLock

X = mx.nd.array(np.random.RandomState(5).rand(2, 1, 32, 32))


def output(net):
    return net(X).asnumpy()


def saved(make_net, make_meta, tmp_path, **overrides):
    """A batch-norm tiny net saved as ``tmp_path/unet.params``; returns ``(net, path)``."""
    net = make_net(norm="batch", **overrides)
    path = str(tmp_path / "unet.params")
    writing.save_checkpoint(net, path, make_meta(net.config))
    return net, path


def one_line_error(call, *names):
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    return message


def edit_json(path, change):
    with open(files.meta_path(path), encoding="utf-8") as handle:
        meta = json.load(handle)
    change(meta)
    with open(files.meta_path(path), "w", encoding="utf-8") as handle:
        json.dump(meta, handle)


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp" in n)


def test_save_read_load_round_trip(make_net, make_meta, tmp_path):
    net, path = saved(make_net, make_meta, tmp_path)
    meta = files.read_meta(path)
    assert meta["model_config"] == net.config
    assert (meta["epoch"], meta["global_step"], meta["format"]) == (1, 10, files.FORMAT)
    assert meta["params_sha256"] == files.sha256_file(path)
    loaded, _ = loading.load_for_inference(path)
    np.testing.assert_array_equal(output(loaded), output(net))
    assert sorted(os.listdir(tmp_path)) == ["unet.params", "unet.params.json"]


# ---- broken checkpoints: one InputError line each ----------------------------------------------

def truncate(path):
    with open(path, "rb+") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def replace_bytes(path):
    size = os.path.getsize(path)
    with open(path, "wb") as handle:
        handle.write(np.random.RandomState(0).bytes(size))


def flip_weight_byte(path):
    # A bit flip deep inside the weights still loads in MXNet; only the sha256 catches it.
    with open(path, "rb+") as handle:
        handle.seek(os.path.getsize(path) - 7)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("damage", [truncate, replace_bytes, flip_weight_byte])
def test_damaged_params_file(make_net, make_meta, tmp_path, damage):
    _, path = saved(make_net, make_meta, tmp_path)
    damage(path)
    one_line_error(lambda: loading.load_for_inference(path), path, "sha256")


def test_missing_params_and_missing_json(make_net, make_meta, tmp_path):
    _, path = saved(make_net, make_meta, tmp_path)
    one_line_error(lambda: files.read_meta(str(tmp_path / "none.params")), "none.params")
    one_line_error(lambda: files.read_meta(str(tmp_path)), str(tmp_path), "is a folder")
    os.remove(files.meta_path(path))
    one_line_error(lambda: loading.load_for_inference(path), path, files.meta_path(path))


def drop(key):
    return lambda meta: meta.pop(key)


def setter(key, value):
    return lambda meta: meta.__setitem__(key, value)


@pytest.mark.parametrize("change,names", [
    (drop("data"), ["'data'"]),
    (setter("data", {"channels": 1}), ["'data'"]),
    (drop("epoch"), ["epoch"]),
    (setter("epoch", -1), ["epoch", "-1"]),
    (setter("global_step", "12"), ["global_step", "'12'"]),
    (drop("model"), ["model config"]),
    (lambda m: m["model"].pop("depth"), ["depth"]),
    (lambda m: m["model"].update(norm="group"), ["group"]),
    (lambda m: m["model"].update(colour=1), ["colour"]),
    (setter("format", "keras-h5"), ["keras-h5"]),
    (drop("format"), ["not a unet checkpoint"]),
])
def test_json_with_missing_or_wrong_fields(make_net, make_meta, tmp_path, change, names):
    _, path = saved(make_net, make_meta, tmp_path)
    edit_json(path, change)
    one_line_error(lambda: loading.load_for_inference(path), files.meta_path(path), *names)


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", "", '{"format": "other", "epoch": 1}'])
def test_json_of_another_kind(make_net, make_meta, tmp_path, text):
    _, path = saved(make_net, make_meta, tmp_path)
    with open(files.meta_path(path), "w", encoding="utf-8") as handle:
        handle.write(text)
    one_line_error(lambda: files.read_meta(path), files.meta_path(path))


def test_checkpoint_of_another_architecture(make_net, make_meta, tmp_path):
    _, path = saved(make_net, make_meta, tmp_path, base_channels=8)
    narrow = make_net(norm="batch", base_channels=4)
    one_line_error(lambda: loading.load_parameters(narrow, path, mx.cpu()), path, "does not fit")
    # A JSON that lies about the architecture: read_meta passes, loading the weights does not.
    edit_json(path, lambda meta: meta["model"].update(base_channels=4))
    assert files.read_meta(path)["model_config"].base_channels == 4
    one_line_error(lambda: loading.load_for_inference(path), path, "does not fit")


# ---- training helpers --------------------------------------------------------------------------

OPTIMIZER_PARAMS = {"sgd": {"momentum": 0.9, "wd": 1e-4}, "nag": {"momentum": 0.9},
                    "rmsprop": {}, "adagrad": {}, "adadelta": {}, "adam": {}}


def trainer_for(net, optimizer):
    params = dict(OPTIMIZER_PARAMS[optimizer], learning_rate=0.01)
    return gluon.Trainer(net.collect_params(), optimizer, params, update_on_kvstore=False)


def train_steps(net, trainer, steps, start, ctx=(mx.cpu(),)):
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss(axis=1)
    for step in range(start, start + steps):
        rng = np.random.RandomState(step)
        xs = gluon.utils.split_and_load(mx.nd.array(rng.rand(2, 1, 32, 32)), ctx)
        ys = gluon.utils.split_and_load(mx.nd.array(rng.randint(0, 2, (2, 32, 32))), ctx)
        with autograd.record():
            losses = [loss_fn(net(x), y) for x, y in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(2)


def weights(net):
    """Trainable arrays on every device (BatchNorm running stats are saved as the mean over
    devices, so they are not compared)."""
    return {f"{name[len(net.prefix):]}@{ctx}": p.data(ctx).asnumpy()
            for name, p in net.collect_params().items() if p.grad_req != "null"
            for ctx in p.list_ctx()}


# ---- the commit protocol under failure ---------------------------------------------------------

def fail_replace_onto(monkeypatch, target):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.fspath(dst) == target:
            raise OSError(28, "No space left on device (simulated)")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def trained(make_net, steps, seed=0):
    net = make_net(seed=seed, norm="batch")
    trainer = trainer_for(net, "adam")
    train_steps(net, trainer, steps, start=0)
    return net, trainer


def test_crash_between_the_two_renames_is_accepted(make_net, make_meta, tmp_path, monkeypatch):
    net, trainer = trained(make_net, 1)
    path = str(tmp_path / "unet-last.params")
    writing.save_checkpoint(net, path, make_meta(net.config, epoch=1, global_step=1), trainer)
    train_steps(net, trainer, 1, start=1)
    fail_replace_onto(monkeypatch, files.meta_path(path))
    with pytest.raises(OSError):
        writing.save_checkpoint(net, path, make_meta(net.config, epoch=2, global_step=2), trainer)
    monkeypatch.undo()
    assert os.path.isfile(files.meta_path(path) + ".pending")
    meta = files.read_meta(path)
    assert (meta["epoch"], meta["global_step"]) == (2, 2)
    loaded, _ = loading.load_for_inference(path)
    np.testing.assert_array_equal(output(loaded), output(net))
    resumed = make_net(seed=3, norm="batch")
    resumed_trainer = trainer_for(resumed, "adam")
    loading.load_training_state(resumed, resumed_trainer, path)
    assert resumed_trainer._optimizer.num_update == 2
    assert leftovers(tmp_path) == []


def snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


@pytest.mark.parametrize("failure", ["states", "save_weights", "params_rename",
                                     "pending_json"])
def test_failing_write_keeps_previous_checkpoint(make_net, make_meta, tmp_path, monkeypatch,
                                                 failure):
    net, trainer = trained(make_net, 1)
    path = str(tmp_path / "unet-last.params")
    writing.save_checkpoint(net, path, make_meta(net.config, epoch=1, global_step=1), trainer)
    expected = output(net)
    before = snapshot(tmp_path)
    train_steps(net, trainer, 1, start=1)
    if failure == "states":
        fail_replace_onto(monkeypatch, str(tmp_path / "unet-last-step2.states"))
    elif failure == "save_weights":
        def broken(net, filename):
            with open(filename, "wb") as handle:
                handle.write(b"\x12\x01partial")
            raise OSError(28, "No space left on device (simulated)")
        monkeypatch.setattr(writing, "save_weights", broken)
    elif failure == "params_rename":
        fail_replace_onto(monkeypatch, path)
    else:
        fail_replace_onto(monkeypatch, files.meta_path(path) + ".pending")
    with pytest.raises(OSError):
        writing.save_checkpoint(net, path, make_meta(net.config, epoch=2, global_step=2), trainer)
    monkeypatch.undo()
    after = snapshot(tmp_path)
    for name, data in before.items():
        assert after[name] == data, f"{name} changed"
    assert leftovers(tmp_path) == []
    assert files.read_meta(path)["epoch"] == 1
    loaded, _ = loading.load_for_inference(path)
    np.testing.assert_array_equal(output(loaded), expected)
    resumed = make_net(seed=3, norm="batch")
    resumed_trainer = trainer_for(resumed, "adam")
    loading.load_training_state(resumed, resumed_trainer, path)
    assert resumed_trainer._optimizer.num_update == 1


# ---- optimizer state ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer,devices", [(name, 1) for name in OPTIMIZER_PARAMS]
                         + [("sgd", 2), ("adam", 2)])
def test_resumed_training_equals_uninterrupted(make_net, make_meta, tmp_path, optimizer, devices):
    ctx = [mx.cpu(i) for i in range(devices)]
    net = make_net(norm="batch", ctx=ctx)
    trainer = trainer_for(net, optimizer)
    train_steps(net, trainer, 2, start=0, ctx=ctx)
    path = str(tmp_path / "unet-last.params")
    meta = writing.save_checkpoint(net, path, make_meta(net.config, global_step=2), trainer=trainer)
    assert meta["optimizer_state"]["num_update"] == 2
    train_steps(net, trainer, 2, start=2, ctx=ctx)

    resumed = make_net(seed=7, norm="batch", ctx=ctx)
    resumed_trainer = trainer_for(resumed, optimizer)
    loading.load_training_state(resumed, resumed_trainer, path)
    train_steps(resumed, resumed_trainer, 2, start=2, ctx=ctx)
    expected, got = weights(net), weights(resumed)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_old_states_removed_and_tampered_states_refused(make_net, make_meta, tmp_path):
    net = make_net(norm="batch")
    trainer = trainer_for(net, "adam")
    path = str(tmp_path / "unet-last.params")
    for step in (1, 2):
        train_steps(net, trainer, 1, start=step)
        writing.save_checkpoint(net, path, make_meta(net.config, global_step=step), trainer=trainer)
    names = sorted(os.listdir(tmp_path))
    assert names == ["unet-last-step2.states", "unet-last.params", "unet-last.params.json"]
    assert files.read_meta(path)["optimizer_state"]["file"] == "unet-last-step2.states"

    with open(tmp_path / "unet-last-step2.states", "ab") as handle:
        handle.write(b"\0")
    other = make_net(norm="batch")
    one_line_error(lambda: loading.load_training_state(other, trainer_for(other, "adam"), path),
                   "unet-last-step2.states")


# ---- run lock ----------------------------------------------------------------------------------

def test_run_lock_in_one_process(tmp_path):
    lock_path = str(tmp_path / "run.lock")
    with RunLock(lock_path, "checkpoint unet.params"):
        one_line_error(lambda: RunLock(lock_path, "checkpoint unet.params"),
                       f"pid {os.getpid()}", lock_path, "unet.params")
    RunLock(lock_path, "checkpoint unet.params").release()


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
sys.stdin.read()
"""


def test_run_lock_held_by_another_process(tmp_path):
    lock_path = str(tmp_path / "run.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, lock_path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line_error(lambda: RunLock(lock_path, "run folder"), f"pid {holder.pid}")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with RunLock(lock_path, "run folder"):        # the lock died with its process
        assert open(lock_path).read().strip() == str(os.getpid())


def test_best_shares_the_last_file_and_stays_whole_when_last_moves_on(make_net, make_meta,
                                                                     tmp_path, monkeypatch):
    net, trainer = trained(make_net, 1)
    last, best = str(tmp_path / "u-last.params"), str(tmp_path / "u.params")
    last_meta = writing.save_checkpoint(net, last, make_meta(net.config), trainer)
    writing.save_checkpoint(net, best, make_meta(net.config),
                         same_weights_as=(last, last_meta["params_sha256"]))
    assert os.stat(best).st_ino == os.stat(last).st_ino       # linked, not written again
    expected = output(loading.load_for_inference(best)[0])
    train_steps(net, trainer, 2, start=1)                      # the last checkpoint moves on
    writing.save_checkpoint(net, last, make_meta(net.config, global_step=3), trainer)
    assert os.stat(best).st_ino != os.stat(last).st_ino
    np.testing.assert_array_equal(output(loading.load_for_inference(best)[0]), expected)
    assert not np.allclose(output(loading.load_for_inference(last)[0]), expected)
    # Where hard links fail (some network file systems), the weights are written instead.
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(1, "no links")))
    other = str(tmp_path / "v.params")
    writing.save_checkpoint(net, other, make_meta(net.config), same_weights_as=(last, "unused"))
    assert files.read_meta(other)["params_sha256"] == files.sha256_file(other)
    np.testing.assert_array_equal(output(loading.load_for_inference(other)[0]),
                                  output(loading.load_for_inference(last)[0]))
    assert leftovers(tmp_path) == []


def test_weights_file_is_what_gluon_writes(make_net, tmp_path):
    net, _ = trained(make_net, 1)
    net.save_parameters(str(tmp_path / "gluon.params"))
    writing.save_weights(net, str(tmp_path / "ours.params"))
    assert (tmp_path / "ours.params").read_bytes() == (tmp_path / "gluon.params").read_bytes()


def _stale_folder(tmp_path, last_json):
    """A checkpoint folder with the last weights, ``last_json`` as their JSON (None: no JSON),
    a states file that JSON names, an older one it does not, and a killed write's temp file."""
    (tmp_path / "unet-last.params").write_bytes(b"weights")
    if last_json is not None:
        (tmp_path / "unet-last.params.json").write_text(last_json)
    for name in ("unet-last-step6.states", "unet-last-step3.states",
                 ".unet-last.params.tmp1234"):
        (tmp_path / name).write_bytes(b"x")
    return str(tmp_path / "unet.params")


def test_remove_stale_files_removes_only_what_no_json_names(tmp_path):
    checkpoint = _stale_folder(tmp_path, json.dumps(
        {"optimizer_state": {"file": "unet-last-step6.states"}}))
    removed = files.remove_stale_files(checkpoint)
    assert sorted(removed) == [".unet-last.params.tmp1234", "unet-last-step3.states"]
    assert sorted(os.listdir(tmp_path)) == ["unet-last-step6.states", "unet-last.params",
                                            "unet-last.params.json"]


@pytest.mark.parametrize("last_json", [None, "{not json"], ids=["json-missing", "json-corrupt"])
def test_remove_stale_files_keeps_the_states_when_a_json_is_unreadable(tmp_path, last_json):
    # A damaged checkpoint is refused when resumed; the optimizer state must survive that, so
    # that a restored JSON resumes (found by an audit: the resume deleted it before refusing).
    checkpoint = _stale_folder(tmp_path, last_json)
    assert files.remove_stale_files(checkpoint) == [".unet-last.params.tmp1234"]
    assert {"unet-last-step6.states", "unet-last-step3.states"} <= set(os.listdir(tmp_path))
