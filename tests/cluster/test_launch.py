"""Several devices, several workers: unet.cluster.distributed helpers and the unet.cluster.launch cluster launcher.

The cluster tests start real ps-lite clusters on 127.0.0.1 only (scheduler, server, workers) with a
hard timeout on every subprocess; the ssh launcher is tested through its pure command builder.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn

from unet.cluster import nodes as cluster_nodes
from unet.cluster import distributed
from unet.cluster import launch
from unet.core.errors import InputError
from project_paths import ROOT

WORKER = os.path.join(ROOT, "tests", "cluster", "dist_tiny_worker.py")
HARD_TIMEOUT = 60


# ---------------------------------------------------------------- unet.cluster.distributed, one machine

def _tiny_net():
    # No BatchNorm: its statistics are computed per device, so several devices would differ.
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, padding=1, in_channels=1, activation="relu"),
            nn.Conv2D(2, 1, in_channels=4))
    return net


def _train(ctx_list, weights, x, y, steps=2):
    net = _tiny_net()
    net.initialize(ctx=ctx_list)
    params = list(net.collect_params().values())  # the same order in every _tiny_net
    for param, value in zip(params, weights):
        param.set_data(value)
    kvstore, rank, num_workers, is_dist = distributed.create_kvstore("device", len(ctx_list))
    assert (rank, num_workers, is_dist) == (0, 1, False)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9},
                            kvstore=kvstore, **distributed.trainer_kwargs("device"))
    grads = None
    for _ in range(steps):
        xs, ys = distributed.split_batch(x, ctx_list), distributed.split_batch(y, ctx_list)
        with autograd.record():
            losses = [gluon.loss.L2Loss()(net(a), b) for a, b in zip(xs, ys)]
        autograd.backward(losses)
        if grads is None:  # the first step's gradient, summed over the devices
            grads = [sum(g.asnumpy() for g in p.list_grad()) for p in params]
        trainer.step(x.shape[0])
    return grads, [p.data(ctx_list[0]).asnumpy() for p in params]


def test_several_cpu_contexts_match_one_context():
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.uniform(-1, 1, (5, 1, 12, 12)))  # 5 over 2 devices: an uneven split
    y = mx.nd.array(rng.uniform(-1, 1, (5, 2, 12, 12)))
    ref = _tiny_net()
    ref.initialize(mx.init.Xavier())
    weights = [p.data() for p in ref.collect_params().values()]
    grads1, params1 = _train([mx.cpu(0)], weights, x, y)
    grads2, params2 = _train([mx.cpu(0), mx.cpu(1)], weights, x, y)
    for i, weight in enumerate(weights):
        np.testing.assert_allclose(grads2[i], grads1[i], rtol=0, atol=1e-5)
        np.testing.assert_allclose(params2[i], params1[i], rtol=0, atol=1e-5)
        assert np.abs(params1[i] - weight.asnumpy()).max() > 1e-3  # it trained


def test_split_batch_sizes_and_bad_arguments():
    parts = distributed.split_batch(np.zeros((5, 1, 4, 4), "float32"), [mx.cpu(0), mx.cpu(1)])
    assert [p.shape[0] for p in parts] == [3, 2]
    with pytest.raises(ValueError, match="batch of 1"):
        distributed.split_batch(mx.nd.zeros((1, 1)), [mx.cpu(0), mx.cpu(1)])
    with pytest.raises(ValueError, match="ctx_list"):
        distributed.split_batch(mx.nd.zeros((2, 1)), [])


@pytest.mark.parametrize("num_samples,num_workers", [(16, 2), (7, 3), (5, 5), (10, 4), (3, 1)])
def test_shards_are_disjoint_cover_and_have_equal_length(num_samples, num_workers):
    shards = [distributed.shard_indices(num_samples, r, num_workers) for r in range(num_workers)]
    assert len({len(s) for s in shards}) == 1
    unique = [set(s) for s in shards]
    assert sum(len(u) for u in unique) == num_samples
    assert set().union(*unique) == set(range(num_samples))


def test_shard_indices_bad_arguments():
    with pytest.raises(ValueError, match="rank=2"):
        distributed.shard_indices(10, 2, 2)
    with pytest.raises(InputError, match="3 sample"):
        distributed.shard_indices(3, 0, 4)


def test_create_kvstore_and_trainer_kwargs(monkeypatch):
    for key in distributed.CLUSTER_ENV:
        monkeypatch.delenv(key, raising=False)
    assert distributed.create_kvstore("local", 1) == (None, 0, 1, False)
    assert distributed.create_kvstore("local", 3)[0] == "local"
    with pytest.raises(InputError, match="DMLC_ROLE.*python -m unet.launch"):
        distributed.create_kvstore("dist_sync", 1)
    with pytest.raises(ValueError, match="'nccl'"):
        distributed.create_kvstore("nccl", 2)
    with pytest.raises(ValueError, match="num_devices"):
        distributed.create_kvstore("device", 0)
    env = {"DMLC_ROLE": "server", "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "1",
           "DMLC_NUM_SERVER": "1", "DMLC_NUM_WORKER": "1"}
    with pytest.raises(InputError, match="'server'"):
        distributed.check_cluster_env("dist_async", env)
    distributed.check_cluster_env("dist_async", {**env, "DMLC_ROLE": "worker"})
    assert distributed.trainer_kwargs("dist_sync") == {"update_on_kvstore": False}
    assert distributed.trainer_kwargs("dist_async") == {"update_on_kvstore": True}
    assert distributed.trainer_kwargs("device") == {}
    assert not distributed.can_save_trainer_states("dist_async")
    assert distributed.can_save_trainer_states("dist_sync_device")
    assert distributed.global_batch_size(4, 3) == 12


def test_sync_initial_params_refuses_deferred_parameters():
    net = nn.Dense(2)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), "sgd", kvstore=None, update_on_kvstore=False)
    with pytest.raises(ValueError, match="finish_deferred_init"):
        distributed.sync_initial_params(trainer)
    net(mx.nd.ones((1, 3)))
    distributed.sync_initial_params(trainer)  # a local no-kvstore trainer: nothing to broadcast


def test_in_cluster_finish_and_hard_exit():
    assert distributed.in_cluster({"DMLC_ROLE": "worker"})
    assert not distributed.in_cluster({"DMLC_ROLE": "server"}) and not distributed.in_cluster({})
    distributed.finish(True)
    code = ("import atexit\nfrom unet.cluster.distributed import hard_exit\n"
            "atexit.register(print, 'normal shutdown ran')\nprint('flushed', end='')\nhard_exit(5)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=HARD_TIMEOUT)
    assert (run.returncode, run.stdout) == (5, "flushed"), run.stderr


# ---------------------------------------------------------------- unet.cluster.launch, command building

def test_local_nodes_bind_loopback(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    nodes = cluster_nodes.local_nodes(2, 1, ["python", "train.py"], 4321, {"FOO": "bar"},
                                      python="py")
    assert [n.label for n in nodes] == ["scheduler", "server 0", "worker 0", "worker 1"]
    for node in nodes:
        assert node.env["DMLC_PS_ROOT_URI"] == node.env["DMLC_NODE_HOST"] == "127.0.0.1"
        assert (node.env["DMLC_PS_ROOT_PORT"], node.env["DMLC_NUM_WORKER"],
                node.env["DMLC_NUM_SERVER"]) == ("4321", "2", "1")
        assert node.env["OMP_NUM_THREADS"] == "1" and node.env["FOO"] == "bar"
        assert node.env["DMLC_ROLE"] == node.role
    assert nodes[0].argv == ("py", "-c", "import mxnet")
    assert nodes[3].argv == ("python", "train.py")


def _remote(node):
    """(host, ssh port, cwd, env, argv) of an ssh node's command line."""
    argv = node.argv
    assert argv[:2] == ("ssh", "-tt") and argv[-4] == "-p" and argv[-2] == node.host
    assert argv[2:-4] == cluster_nodes.ssh_options()
    words = shlex.split(argv[-1])
    assert words[0] == "cd" and words[2:5] == ["&&", "exec", "env"]
    env = dict(w.split("=", 1) for w in words[5:] if "=" in w and w.split("=")[0].isupper())
    return argv[-2], argv[-3], words[1], env, words[5 + len(env):]


def test_ssh_nodes_round_robin_and_quoting():
    hosts = [("node-a", "22"), ("node-b", "2222")]
    command = ["/venv/bin/python", "segmenter.py", "--name", "two words"]
    nodes = cluster_nodes.ssh_nodes(hosts, 3, 2, command, 9000, "10.1.2.3",
                                    "/path with space/unet", env={"MXNET_X": "1"},
                                    python="/venv/bin/python",
                                    environ={"OMP_NUM_THREADS": "4", "AWS_SECRET_ACCESS_KEY": "s"})
    assert [n.label for n in nodes] == ["scheduler", "server 0", "server 1", "worker 0",
                                        "worker 1", "worker 2"]
    scheduler = nodes[0]
    assert scheduler.argv == ("/venv/bin/python", "-c", "import mxnet")
    assert scheduler.env["DMLC_ROLE"] == "scheduler"
    assert scheduler.env["DMLC_PS_ROOT_URI"] == "10.1.2.3"
    placed = [_remote(n) for n in nodes[1:]]
    assert [(h, p) for h, p, *_ in placed] == [("node-a", "22"), ("node-b", "2222"),
                                               ("node-a", "22"), ("node-b", "2222"),
                                               ("node-a", "22")]
    for node, (host, _, cwd, env, argv) in zip(nodes[1:], placed):
        assert cwd == "/path with space/unet"
        assert env["DMLC_ROLE"] == node.role and env["DMLC_NODE_HOST"] == host
        assert (env["DMLC_PS_ROOT_URI"], env["DMLC_PS_ROOT_PORT"]) == ("10.1.2.3", "9000")
        assert (env["DMLC_NUM_WORKER"], env["DMLC_NUM_SERVER"]) == ("3", "2")
        assert env["OMP_NUM_THREADS"] == "4" and env["MXNET_X"] == "1"
        assert "AWS_SECRET_ACCESS_KEY" not in env
        expected = command if node.role == "worker" else ["/venv/bin/python", "-c",
                                                          "import mxnet"]
        assert argv == expected


def test_ssh_keepalives_give_a_silent_host_up_and_the_failure_names_it():
    assert cluster_nodes.ssh_options(5) == (
        "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=3", "-o", "ConnectTimeout=20")
    assert cluster_nodes.ssh_options(0) == ("-o", "StrictHostKeyChecking=no", "-o",
                                            "BatchMode=yes")
    assert cluster_nodes.keepalive_window(5) == 20
    nodes = cluster_nodes.ssh_nodes([("10.0.0.7", "22")], 1, 1, ["python"], 9000, "10.0.0.1",
                                    "/p", keepalive=2)
    assert [n.host for n in nodes] == [None, "10.0.0.7", "10.0.0.7"]
    assert "ServerAliveInterval=2" in nodes[2].argv
    assert launch.describe_failure(nodes[2], 42, 255) == (
        "worker 0 on host 10.0.0.7 (pid 42): ssh exited with code 255 (lost 10.0.0.7: it "
        "stopped answering or its process was killed)")
    assert launch.describe_failure(nodes[1], 41, -9) == (
        "server 0 on host 10.0.0.7 (pid 41): ssh died with signal 9 (SIGKILL)")
    assert launch.describe_failure(nodes[0], 40, 3) == "scheduler (pid 40) exited with code 3"
    assert launch.parse_args(["-n", "1", "python"]).keepalive == cluster_nodes.KEEPALIVE_S
    with pytest.raises(SystemExit):
        launch.parse_args(["-n", "1", "--keepalive", "-1", "python"])


def test_read_hostfile(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# cluster\nnode-a\nnode-b 2222\n\nnode-c:23  # spare\nnode-d slots=4\n")
    assert cluster_nodes.read_hostfile(str(path)) == [("node-a", "22"), ("node-b", "2222"),
                                               ("node-c", "23"), ("node-d", "22")]
    path.write_text("node-a\nnode-b twenty\n")
    with pytest.raises(InputError, match=r"hosts:2: expected 'host \[port\]'"):
        cluster_nodes.read_hostfile(str(path))
    path.write_text("# nothing\n")
    with pytest.raises(InputError, match="names no host"):
        cluster_nodes.read_hostfile(str(path))


def test_cli_errors(tmp_path, capsys):
    for argv in (["-n", "2"], ["-n", "0", "python"], ["-n", "1", "--env", "NOEQUALS", "x"],
                 ["-n", "1", "--launcher", "ssh", "python"]):
        with pytest.raises(SystemExit) as info:
            launch.main(argv)
        assert info.value.code == 2
    capsys.readouterr()
    missing = str(tmp_path / "missing-hosts")
    code = launch.main(["-n", "1", "--launcher", "ssh", "-H", missing, "--host-ip", "10.9.9.9",
                        "python", "train.py"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and missing in err[0]
    assert launch.main(["-n", "1", str(tmp_path / "no-such-program")]) == 2
    assert "no-such-program: no such executable" in capsys.readouterr().err


# ---------------------------------------------------------------- unet.cluster.launch, real clusters

def _launch(args, env=None):
    return subprocess.run([sys.executable, "-m", "unet.launch", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=HARD_TIMEOUT)


def _assert_cluster_gone(log_text, expected):
    pids = [int(p) for p in re.findall(r"started .* \(pid (\d+)\)", log_text)]
    assert len(pids) == expected, log_text
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        assert b"import mxnet" not in cmdline and b"dist_tiny_worker" not in cmdline, pid


def test_two_workers_train_one_model(tmp_path):
    run = _launch(["-n", "2", "-s", "1", "--timeout", "5", sys.executable, WORKER, str(tmp_path)])
    assert run.returncode == 0, run.stderr
    _assert_cluster_gone(run.stderr, 4)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_workers"] for r in ranks] == [2, 2]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    assert ranks[0]["states_sha256"] == ranks[1]["states_sha256"]  # save_states works under dist
    shard0, shard1 = (set(r["indices"]) for r in ranks)
    assert not shard0 & shard1 and shard0 | shard1 == set(range(16))
    # The same as one process on the union of the two shards' batches (the global batch).
    assert_same_params(tmp_path / "rank0.params", reference_params(tmp_path))


def reference_params(out_dir, num_workers=2):
    """What ``num_workers`` tiny workers train together, computed by one process: its .params."""
    ref = subprocess.run([sys.executable, WORKER, str(out_dir), "--reference", str(num_workers)],
                         capture_output=True, text=True, timeout=HARD_TIMEOUT)
    assert ref.returncode == 0, ref.stderr
    return out_dir / "reference.params"


def assert_same_params(path, expected_path):
    got, expected = mx.nd.load(str(path)), mx.nd.load(str(expected_path))
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(got[key].asnumpy(), expected[key].asnumpy(), rtol=0,
                                   atol=1e-5)


def test_killed_worker_stops_the_cluster(tmp_path):
    run = _launch(["-n", "2", "-s", "1", "--timeout", "5", sys.executable, WORKER, str(tmp_path)],
                  env={"DIST_TINY_KILL_RANK": "1", "DIST_TINY_KILL_STEP": "2"})
    assert run.returncode == 128 + signal.SIGKILL, run.stderr
    assert re.search(r"worker \d \(pid \d+\) died with signal 9 \(SIGKILL\); stopping the cluster",
                     run.stderr), run.stderr
    assert "still running" not in run.stderr  # SIGTERM was enough: no wait for the timeout
    _assert_cluster_gone(run.stderr, 4)
    assert not list(tmp_path.glob("*.json"))


def test_failing_worker_before_the_cluster_forms(tmp_path):
    code = "import sys; print('10%\\r100%\\rabout to fail', flush=True); sys.exit(3)"
    run = _launch(["-n", "1", "--timeout", "5", "--", sys.executable, "-c", code])
    assert run.returncode == 3, run.stderr
    assert "[worker 0] about to fail\n" in run.stdout  # as a terminal shows a redrawn line
    assert re.search(r"worker 0 \(pid \d+\) exited with code 3; stopping the cluster", run.stderr)
    _assert_cluster_gone(run.stderr, 3)


def test_sigterm_to_the_launcher_stops_the_cluster():
    # Waits forever; on SIGINT (the launcher's first stop signal to workers) it "saves" and exits.
    worker = ("import signal, sys\n"
              "def save(*_): print('state saved', flush=True); sys.exit(0)\n"
              "signal.signal(signal.SIGINT, save)\nprint('ready', flush=True)\nsignal.pause()")
    proc = subprocess.Popen([sys.executable, "-m", "unet.launch", "-n", "1", "--timeout", "5",
                             sys.executable, "-c", worker], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(HARD_TIMEOUT, proc.kill)  # readline() has no timeout of its own
    watchdog.start()
    try:
        assert proc.stdout.readline() == "[worker 0] ready\n"  # the worker's handler is set
        proc.send_signal(signal.SIGTERM)
        out, log_text = proc.communicate(timeout=HARD_TIMEOUT)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, log_text
    assert "received SIGTERM; stopping the cluster" in log_text
    assert "[worker 0] state saved" in out
    _assert_cluster_gone(log_text, 3)


def test_ssh_config_goes_to_every_ssh_and_must_exist(tmp_path, capsys):
    nodes = cluster_nodes.ssh_nodes([("node-a", "22")], 1, 1, ["python"], 9000, "10.1.2.3", "/p",
                                    ssh_config="/etc/cluster/ssh_config")
    for node in nodes[1:]:
        assert node.argv[:3] == ("ssh", "-F", "/etc/cluster/ssh_config")
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a\n")
    code = launch.main(["-n", "1", "--launcher", "ssh", "-H", str(hosts), "--host-ip",
                        "127.0.0.1", "--ssh-config", str(tmp_path / "nope"), "python"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope: no such ssh configuration file" in err[0]


def test_the_launcher_does_not_import_mxnet():
    code = ("import sys, unet.cluster.launch; print('mxnet' in sys.modules); "
            "from unet import *; print(UNet.__name__, 'mxnet' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=HARD_TIMEOUT)
    assert run.stdout.split() == ["False", "UNet", "True"], run.stderr
