"""The ssh launcher for real: ``python -m unet.launch --launcher ssh`` through an OpenSSH server
that the test starts on 127.0.0.1 (sshd_server.py: its own keys and configuration in a temporary
folder). Skipped where no sshd is installed."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from sshd_server import (make_keys, requires_openssh, start_sshd, stop_sshd, write_ssh_config,
                         write_sshd_config)
from test_launch import HARD_TIMEOUT, ROOT, WORKER, _assert_cluster_gone

pytestmark = requires_openssh


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1 that lets this user in with a fresh key; yields the ssh_config path
    and the port."""
    folder = tmp_path_factory.mktemp("sshd")
    make_keys(folder)
    port = _free_port()
    config = write_ssh_config(folder, "127.0.0.1")
    server = start_sshd(write_sshd_config(folder, "loopback", "127.0.0.1", port), config,
                        "127.0.0.1", port)
    try:
        yield config, port
    finally:
        stop_sshd(server)


def _launch_ssh(sshd, tmp_path, *worker_args, env=None):
    config, port = sshd
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 {port}\n")
    return subprocess.run(
        [sys.executable, "-m", "unet.launch", "--launcher", "ssh", "-H", str(hosts),
         "--host-ip", "127.0.0.1", "--ssh-config", str(config), "-n", "2", "-s", "1",
         "--timeout", "5", *(f"--env={k}={v}" for k, v in (env or {}).items()),
         sys.executable, WORKER, str(tmp_path), *worker_args],
        cwd=ROOT, capture_output=True, text=True, timeout=HARD_TIMEOUT)


def test_two_workers_over_ssh_train_one_model(sshd, tmp_path):
    run = _launch_ssh(sshd, tmp_path)
    assert run.returncode == 0, run.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_workers"] for r in ranks] == [2, 2]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    assert ranks[0]["states_sha256"] == ranks[1]["states_sha256"]
    shard0, shard1 = (set(r["indices"]) for r in ranks)
    assert not shard0 & shard1 and shard0 | shard1 == set(range(16))
    _assert_cluster_gone(run.stderr, 4)
    assert _remote_workers(tmp_path) == []


def _remote_workers(out_dir):
    """Pids of processes still running this test's worker or server over ssh."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if str(out_dir).encode() in cmdline and b"dist_tiny_worker" in cmdline:
            found.append(int(pid))
    return found


def test_a_killed_remote_worker_stops_the_ssh_cluster(sshd, tmp_path):
    run = _launch_ssh(sshd, tmp_path, env={"DIST_TINY_KILL_RANK": "1",
                                           "DIST_TINY_KILL_STEP": "2"})
    assert run.returncode != 0, run.stderr
    assert re.search(r"worker \d on host 127.0.0.1 \(pid \d+\): ssh (exited with code|died "
                     r"with signal) .*stopping the cluster", run.stderr), run.stderr
    assert not list(tmp_path.glob("rank*.json"))
    deadline = time.time() + 15  # sshd hangs up on the remote side after the client went
    while _remote_workers(tmp_path) and time.time() < deadline:
        time.sleep(0.2)
    assert _remote_workers(tmp_path) == []
