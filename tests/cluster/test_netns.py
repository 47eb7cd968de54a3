"""The ssh launcher across separate hosts: network namespaces on this machine, each with its own
network stack, address and sshd, on a bridge that the test creates (10.213.S.0/24, S per run; the
launcher and its scheduler stay in the root namespace, at 10.213.S.1 on the bridge). Nothing
leaves the machine; every namespace, the bridge and every process are removed afterwards.

- dist_sync over three hosts trains what the same run trains on loopback;
- a host whose link is cut mid-epoch is noticed by ssh keep-alives (the launcher's default
  ``--keepalive``), the launcher stops the cluster with one line naming the host, the last
  checkpoint is whole and a resume on the remaining hosts continues;
- a slow link gives the same result, later: ``tc netem`` delay and loss, or a ``tbf`` rate
  limit (each skipped where the kernel lacks the qdisc).

Needs root, iproute2's ``ip`` and ``tc``, and OpenSSH; skipped with the reason otherwise.
``pytest -s`` prints the measured times.
"""
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from project_paths import ROOT
from sshd_server import (MISSING, make_keys, start_sshd, stop_sshd, write_ssh_config,
                         write_sshd_config)
from test_launch import WORKER, assert_same_params, reference_params
from unet.checkpoints.files import last_path, read_meta
from unet.cluster.nodes import KEEPALIVE_S, keepalive_window
from unet.core.errors import InputError
from unet.data.demo import generate_demo_dataset


def _missing():
    if MISSING:
        return MISSING
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    if not (shutil.which("ip") and shutil.which("tc")):
        return "needs iproute2's ip and tc"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))

RUN_TIMEOUT = 120  # seconds, any one launcher run
NOTICE_LIMIT = 60  # seconds from a cut link to the launcher's exit
# The hosts' sshd drops a silent client after 3 s, as a host that outlives its link would:
# processes left on a cut-off host end too, and the test can check that nothing is left.
HOST_SSHD = "ClientAliveInterval 1\nClientAliveCountMax 3\n"
_runs = itertools.count()


def _ip(*args, check=True):
    run = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and run.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {run.stderr.strip()}")
    return run.stdout


@dataclass
class Host:
    netns: str
    address: str
    veth: str  # the root namespace's end of its link, on the bridge
    sshd: subprocess.Popen = None

    def pids(self):
        return {int(p) for p in _ip("netns", "pids", self.netns, check=False).split()}


class Network:
    """A bridge in the root namespace and ``hosts`` namespaces on it, each running sshd."""

    def __init__(self, count):
        run = next(_runs)
        tag = f"{os.getpid() % 10000:04d}{run % 10}"
        self.bridge = f"unbr{tag}"
        self.subnet = 20 + (os.getpid() + run) % 200
        self.gateway = f"10.213.{self.subnet}.1"
        self.hosts = [Host(f"unet-{tag}-h{i}", f"10.213.{self.subnet}.{i + 2}", f"unv{tag}h{i}")
                      for i in range(count)]

    def build(self):
        # A net under the bridge's route: whatever is still addressed to the hosts when the
        # bridge is gone (a cut host's connections retry) is dropped here, never routed off
        # this machine by the default route.
        _ip("route", "add", "unreachable", f"10.213.{self.subnet}.0/24", "metric", "4000")
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns",
                host.netns)
            _ip("link", "set", host.veth, "master", self.bridge, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")

    def start_sshd(self, folder):
        self.ssh_config = write_ssh_config(folder, f"10.213.{self.subnet}.*")
        for host in self.hosts:
            config = write_sshd_config(folder, host.netns, host.address, 22, HOST_SSHD)
            host.sshd = start_sshd(config, self.ssh_config, host.address, 22,
                                   prefix=("ip", "netns", "exec", host.netns))

    def leftovers(self):
        """``{netns: [command lines]}`` of the processes in the hosts beside their sshd."""
        found = {}
        for host in self.hosts:
            for pid in host.pids() - {host.sshd.pid if host.sshd else -1}:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        line = handle.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                found.setdefault(host.netns, []).append(line[:200])
        return found

    def assert_nothing_left(self, seconds=15):
        """Wait up to ``seconds`` for the hosts to hold nothing but their sshd."""
        deadline = time.monotonic() + seconds
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.leftovers() == {}

    def open_connections(self):
        """This namespace's TCP connections to the hosts that may still send (not TIME-WAIT)."""
        run = subprocess.run(["ss", "-Htn", "state", "connected", "dst",
                              f"10.213.{self.subnet}.0/24"], capture_output=True, text=True,
                             timeout=30)
        return [line for line in run.stdout.splitlines() if not line.startswith("TIME-WAIT")]

    def remove(self):
        """Processes, connections, namespaces, links: all gone, even after a cut link.

        A connection to a cut-off host sends its FIN again and again; left past the bridge, it
        would follow the default route off this machine. Links go back up first so that the
        hosts can answer, and what is left is closed with ``ss -K``.
        """
        for host in self.hosts:
            _ip("link", "set", host.veth, "up", check=False)
            subprocess.run(["tc", "qdisc", "del", "dev", host.veth, "root"], capture_output=True,
                           timeout=30)
        for host in self.hosts:
            if host.sshd is not None:
                stop_sshd(host.sshd)
            for _ in range(50):  # bounded: SIGKILL, then look again
                pids = host.pids()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            _ip("netns", "exec", host.netns, "ss", "-K", check=False)
        deadline = time.monotonic() + 5
        while self.open_connections() and time.monotonic() < deadline:
            subprocess.run(["ss", "-K", "dst", f"10.213.{self.subnet}.0/24"],
                           capture_output=True, timeout=30)
            time.sleep(0.1)
        for host in self.hosts:
            _ip("link", "del", host.veth, check=False)  # both ends, even if the netns lingers
            _ip("netns", "del", host.netns, check=False)
        _ip("link", "del", self.bridge, check=False)
        _ip("route", "del", "unreachable", f"10.213.{self.subnet}.0/24", "metric", "4000",
            check=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("netns_ssh")
    make_keys(folder)
    return folder


@pytest.fixture
def network(keys):
    """Three hosts on a fresh bridge, each with its own sshd; removed afterwards."""
    net = Network(3)
    try:
        try:
            net.build()
        except RuntimeError as err:
            pytest.skip(f"cannot make network namespaces: {err}")
        net.start_sshd(keys)
        yield net
    finally:
        net.remove()
    assert not [h for h in net.hosts if h.netns in _ip("netns", "list").split()]
    links = _ip("link", "show")
    assert not [name for name in [net.bridge] + [h.veth for h in net.hosts] if name in links]
    assert net.open_connections() == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny worker's parameters after 2 workers' dist_sync run, as on loopback."""
    return reference_params(tmp_path_factory.mktemp("reference"))


def _launcher(net, hosts, tmp_path, *command, flags=()):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{h.address} 22\n" for h in hosts))
    return [sys.executable, "-m", "unet.launch", "--launcher", "ssh", "-H", str(hostfile),
            "--host-ip", net.gateway, "--ssh-config", str(net.ssh_config), "-n", "2", "-s", "1",
            "--timeout", "5", *flags, sys.executable, *command]


def _run(argv):
    started = time.monotonic()
    run = subprocess.run(argv, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return run, time.monotonic() - started


def _train_tiny(net, tmp_path, reference):
    """The tiny worker over all hosts: server 0, worker 0, worker 1 on one host each."""
    run, seconds = _run(_launcher(net, net.hosts, tmp_path, WORKER, str(tmp_path)))
    assert run.returncode == 0, run.stderr[-3000:]
    for host in net.hosts:  # each process on its own host
        assert f"-p 22 {host.address} " in run.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    assert_same_params(tmp_path / "rank0.params", reference)
    net.assert_nothing_left()
    return seconds


def test_dist_sync_across_hosts_trains_what_loopback_trains(network, reference, tmp_path):
    seconds = _train_tiny(network, tmp_path, reference)
    print(f"\n3 hosts, 4 steps: {seconds:.1f} s")


@pytest.mark.parametrize("qdisc", [
    ("netem", "delay", "20ms", "loss", "1%"),              # 20 ms each way between hosts, 1% lost
    ("tbf", "rate", "16kbit", "burst", "1600", "latency", "5s"),  # a throttled link: 2 kB/s
], ids=["netem-delay-loss", "tbf-16kbit"])
def test_a_slow_link_gives_the_same_result(network, reference, tmp_path, qdisc):
    for host in network.hosts:  # on the way into every host
        add = subprocess.run(["tc", "qdisc", "add", "dev", host.veth, "root", *qdisc],
                             capture_output=True, text=True, timeout=30)
        if "qdisc kind is unknown" in add.stderr:
            pytest.skip(f"this kernel has no {qdisc[0]} qdisc (sch_{qdisc[0]})")
        assert add.returncode == 0, add.stderr
    seconds = _train_tiny(network, tmp_path, reference)
    print(f"\n3 hosts, {' '.join(qdisc)}, 4 steps: {seconds:.1f} s")


def _segmenter(data, tmp_path, epochs, *extra):
    # 8 images, 2 workers, batch 2, 96 crops an epoch: 24 steps a worker, about 3 s.
    return ("segmenter.py", "--kvstore", "dist_sync", "--data-dir", str(data),
            "--checkpoint-file", str(tmp_path / "ck" / "u.params"),
            "--log-dir", str(tmp_path / "logs"), "--base-channels", "4", "--depth", "2",
            "--image-size", "32", "--norm", "batch", "--batch-size", "2", "--epoch-size", "96",
            "--num-workers", "0", "--num-epochs", str(epochs), *extra)


def _wait_for_checkpoint(path, proc, epoch, seconds):
    """The time at which ``path`` holds epoch ``epoch`` whole; fails if ``proc`` ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if read_meta(path)["epoch"] >= epoch:
                return time.monotonic()
        except InputError:
            pass
        time.sleep(0.05)
    pytest.fail(f"no checkpoint of epoch {epoch} (launcher exit code {proc.poll()})")


def test_a_vanished_host_stops_the_cluster_and_the_rest_resume(network, tmp_path):
    data = tmp_path / "data"
    generate_demo_dataset(data, seed=5, size=32, n_train=8, n_validate=2, n_test=0)
    last = last_path(tmp_path / "ck" / "u.params")
    victim = network.hosts[2]  # worker 1's host
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(_launcher(network, network.hosts, tmp_path,
                                          *_segmenter(data, tmp_path, 3)),
                                cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=stdout, stderr=stderr)
    try:
        saved = _wait_for_checkpoint(last, proc, 1, RUN_TIMEOUT)
        time.sleep(0.5)  # into epoch 2, which lasts about 3 s
        _ip("link", "set", victim.veth, "down")  # no FIN, no RST: the host is just gone
        cut = time.monotonic()
        code = proc.wait(timeout=NOTICE_LIMIT + 30)
        noticed = time.monotonic() - cut
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_text = err.read_text()
    assert code != 0, log_text[-3000:]
    assert noticed < NOTICE_LIMIT, log_text[-3000:]
    errors = [line for line in log_text.splitlines() if line.startswith("[launch] ERROR")]
    assert len(errors) == 1 and f"on host {victim.address} " in errors[0], log_text[-3000:]
    assert read_meta(last)["epoch"] == 1  # the cut came in epoch 2; epoch 1's checkpoint is whole
    network.assert_nothing_left()  # the cut-off host's sshd ended its sessions too

    run, resumed = _run(_launcher(network, network.hosts[:2], tmp_path,
                                  *_segmenter(data, tmp_path, 2, "--checkpoint", "load")))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming" in run.stdout + run.stderr
    assert read_meta(last)["epoch"] == 2
    network.assert_nothing_left()
    print(f"\n{errors[0]}\nnoticed after {noticed:.1f} s (--keepalive {KEEPALIVE_S}: at most "
          f"{keepalive_window(KEEPALIVE_S)} s of silence); lost: {cut - saved:.1f} s of training "
          f"since the checkpoint + {noticed:.1f} s waiting; resume: {resumed:.1f} s")
