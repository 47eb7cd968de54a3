"""Start a parameter-server cluster and watch it: ``python -m unet.launch -n 2 COMMAND...``.

The equivalent of MXNet's ``tools/launch.py`` (whose ``dmlc_tracker`` fails on Python 3.11 and
binds a non-loopback address), without its dependency. It starts one scheduler, ``-s`` servers
(``python -c "import mxnet"`` with ``DMLC_ROLE`` set: importing mxnet turns the process into that
role) and ``-n`` workers running ``COMMAND`` with ``DMLC_ROLE=worker``. ps-lite has no timeouts: a
cluster whose process died waits forever, so the launcher watches every process; when one exits
non-zero or is killed it logs one line, stops the others (SIGTERM, SIGKILL after ``--timeout``
seconds) and exits non-zero. Ctrl-C or SIGTERM to the launcher stops the whole cluster: the
workers get SIGINT first and ``--timeout`` seconds to save their state (a second Ctrl-C cuts
that short). Under ``dist_sync`` that rarely succeeds: a worker waiting in a push for a peer that
already stopped never returns to Python, and is killed; the checkpoint of the last epoch stays.

``--launcher local`` (default) runs everything on this machine on 127.0.0.1 with a fresh port,
``OMP_NUM_THREADS=1`` unless set. ``--launcher ssh -H HOSTFILE`` runs the scheduler here and the
servers and workers round-robin over the hosts (lines ``host [port]``) through
``ssh -tt host 'cd CWD && exec env DMLC_...=... COMMAND'``: nothing is copied, the project, its
Python environment (at ``sys.executable``'s path) and the data must be at the same paths on every
host. The pseudo-terminal makes the remote processes die with their ssh connection (SIGHUP:
on a stop, remote workers get no SIGINT and save nothing). A host that vanishes (power, link)
sends nothing, not even a FIN: ssh keep-alives (``--keepalive``) make its ssh clients exit with
code 255 once it has been silent for 4 intervals, and the launcher stops the cluster naming it.

Output of every process is passed through, each line prefixed ``[worker 0]``, ``[server 0]`` or
``[scheduler]``, stdout to stdout and stderr to stderr. The worker number is the launcher's; the
rank a worker gets from the kvstore is assigned by ps-lite and may differ.
"""
import argparse
import contextlib
import ctypes
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from ..core.cli import OneLineParser
from .nodes import (KEEPALIVE_COUNT, KEEPALIVE_S, SSH_FAILED, free_port, keepalive_window,
                    local_nodes, read_hostfile, ssh_nodes)
from ..core.errors import InputError
from ..core.threads import user_environ

log = logging.getLogger(__name__)

POLL_S = 0.05


def _death_signal_setter():
    """A function for ``preexec_fn`` that makes the child get SIGKILL when the launcher dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``), None elsewhere; libc is looked up here, in the
    parent, because the child may only call it between fork and exec.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return None
    return lambda: prctl(1, int(signal.SIGKILL))  # 1 == PR_SET_PDEATHSIG


def _pump(stream, prefix, out, lock):
    for raw in iter(stream.readline, b""):
        # What a terminal would show: progress bars redraw after "\r", ssh -tt ends lines "\r\n".
        text = raw.decode("utf-8", "replace").rstrip("\r\n").rsplit("\r", 1)[-1]
        with lock:
            out.write(f"{prefix}{text}\n")
            out.flush()
    stream.close()


def describe_exit(code):
    """``'exited with code 3'`` or ``'died with signal 9 (SIGKILL)'`` for a return code."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown"
    return f"died with signal {-code} ({name})"


def describe_failure(node, pid, code):
    """The launcher's one line on a failed process: label, pid, host and what its code means."""
    if node.host is None:
        return f"{node.label} (pid {pid}) {describe_exit(code)}"
    text = f"{node.label} on host {node.host} (pid {pid}): ssh {describe_exit(code)}"
    if code == SSH_FAILED:  # a remote process killed by a signal also ends its ssh with 255
        text += f" (lost {node.host}: it stopped answering or its process was killed)"
    return text


class Cluster:
    """The running processes of ``nodes``: start, watch, stop. See :func:`run_cluster`."""

    def __init__(self, nodes, timeout):
        self.nodes, self.timeout = nodes, timeout
        self.procs, self.threads = [], []
        self.stop_signal = None
        self.hurry = False  # a second Ctrl-C: stop waiting for the processes to leave
        self.stopped = False

    def start(self):
        preexec = _death_signal_setter() if sys.platform.startswith("linux") else None
        try:
            for node in self.nodes:
                proc = subprocess.Popen(
                    node.argv, env={**user_environ(), **node.env}, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                    preexec_fn=preexec)
                self.procs.append(proc)
                log.info("started %s (pid %d): %s", node.label, proc.pid, shlex.join(node.argv))
        except OSError as err:
            self.stop()
            raise InputError(f"cannot run {shlex.join(node.argv)}: {err.strerror}") from None
        # Readers start only now: fork with preexec_fn is unsafe while other threads run.
        lock = threading.Lock()
        for node, proc in zip(self.nodes, self.procs):
            for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
                thread = threading.Thread(
                    target=_pump, args=(stream, f"[{node.label}] ", out, lock), daemon=True)
                thread.start()
                self.threads.append(thread)

    def watch(self):
        """Poll until the workers are done, a process fails or a stop is asked; the exit code."""
        workers = [p for n, p in zip(self.nodes, self.procs) if n.role == "worker"]
        while self.stop_signal is None:
            for node, proc in zip(self.nodes, self.procs):
                code = proc.poll()
                if code:
                    log.error("%s; stopping the cluster", describe_failure(node, proc.pid, code))
                    self.stop()
                    return code if code > 0 else 128 - code
            if all(p.poll() == 0 for p in workers):
                # Servers and scheduler leave by themselves once every worker has finalized.
                self._wait(self.timeout)
                if self.stop():
                    log.warning("the workers finished but servers/scheduler were still running "
                                "after %gs; killed them", self.timeout)
                return 0
            time.sleep(POLL_S)
        log.error("received %s; stopping the cluster", signal.Signals(self.stop_signal).name)
        self.stop(interrupt=True)
        return 128 + self.stop_signal

    def _wait(self, seconds, procs=None):
        procs = self.procs if procs is None else procs
        deadline = time.monotonic() + seconds
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline \
                and not self.hurry:
            time.sleep(POLL_S)

    def _signal(self, proc, sig):
        try:
            os.killpg(proc.pid, sig)  # the process and anything it started (loader workers)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, interrupt=False):
        """SIGTERM every live process, SIGKILL after ``timeout``; True if any was still alive.

        With ``interrupt``, the workers first get SIGINT, as from a Ctrl-C in their terminal, and
        ``timeout`` seconds to save their state (the training loop does on KeyboardInterrupt).
        """
        if self.stopped:
            return False
        self.stopped = True
        if interrupt:
            workers = [p for n, p in zip(self.nodes, self.procs)
                       if n.role == "worker" and p.poll() is None]
            for proc in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)  # the worker only, not its loader
            self._wait(self.timeout, workers)
        alive = [p for p in self.procs if p.poll() is None]
        for proc in alive:
            self._signal(proc, signal.SIGTERM)
        self._wait(self.timeout)
        for node, proc in zip(self.nodes, self.procs):
            if proc.poll() is None:
                log.warning("%s (pid %d) still running %gs after SIGTERM; killing it",
                            node.label, proc.pid, self.timeout)
            self._signal(proc, signal.SIGKILL)
            proc.wait()
        for thread in self.threads:
            thread.join(timeout=1)
        return bool(alive)


def run_cluster(nodes, timeout=10.0):
    """Start ``nodes``, watch them, stop them; returns the launcher's exit code.

    0 when every worker exited 0; the failed process's exit code (128 + signal when it was
    killed) when one failed; 128 + signal when the launcher got SIGINT or SIGTERM.
    """
    cluster = Cluster(nodes, timeout)
    handlers = {}

    def on_signal(signum, frame):
        cluster.hurry = cluster.stop_signal is not None
        cluster.stop_signal = signum

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    try:
        cluster.start()
        return cluster.watch()
    finally:
        cluster.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _env_pair(text):
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv=None):
    parser = OneLineParser(
        prog="python -m unet.launch", description=__doc__.split("\n\n")[0],
        epilog="Example: python -m unet.launch -n 2 -s 1 python segmenter.py --kvstore dist_sync")
    parser.add_argument("-n", "--num-workers", type=int, required=True, help="worker processes")
    parser.add_argument("-s", "--num-servers", type=int,
                        help="server processes (default: as many as workers)")
    parser.add_argument("--launcher", choices=("local", "ssh"), default="local",
                        help="where to run them (default: local)")
    parser.add_argument("-H", "--hostfile", help="ssh: hosts, one 'host [port]' a line")
    parser.add_argument("--host-ip", help="ssh: this machine's address as the hosts reach it "
                        "(default: what its name resolves to)")
    parser.add_argument("--ssh-config", metavar="FILE",
                        help="ssh: configuration file for ssh (ssh -F FILE: user, identity file, "
                             "known hosts) in place of ~/.ssh/config")
    parser.add_argument("--keepalive", type=int, default=KEEPALIVE_S, metavar="SECONDS",
                        help=f"ssh: seconds between keep-alives to a host that sends nothing; "
                             f"when {KEEPALIVE_COUNT} go unanswered ssh gives the host up and the "
                             f"cluster is stopped; connecting may take as long (default: "
                             f"{KEEPALIVE_S}: a vanished host is noticed within "
                             f"{keepalive_window(KEEPALIVE_S)}s; 0: off, as plain ssh)")
    parser.add_argument("--port", type=int, help="scheduler port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds between SIGTERM and SIGKILL when stopping (default: 10)")
    parser.add_argument("--env", type=_env_pair, action="append", default=[],
                        metavar="KEY=VALUE", help="set in every process (repeatable)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the worker command")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("COMMAND is missing")
    if args.num_workers < 1:
        parser.error(f"--num-workers must be >= 1, got {args.num_workers}")
    args.num_servers = args.num_workers if args.num_servers is None else args.num_servers
    if args.num_servers < 1:
        parser.error(f"--num-servers must be >= 1, got {args.num_servers}")
    if args.launcher == "ssh" and not args.hostfile:
        parser.error("--launcher ssh needs -H HOSTFILE")
    if args.timeout <= 0:
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    if args.keepalive < 0:
        parser.error(f"--keepalive must be >= 0, got {args.keepalive}")
    return args


def _free_port_on(address):
    """A free port on ``address`` (the scheduler binds it), or on any address where
    ``address`` is not this machine's own (behind NAT)."""
    try:
        return free_port(address)
    except OSError:
        return free_port("0.0.0.0")


def _this_host_ip():
    address = socket.gethostbyname(socket.getfqdn())
    if address.startswith("127."):
        raise InputError(f"this machine's name resolves to {address}, which other hosts cannot "
                         f"reach: pass --host-ip")
    return address


def main(argv=None):
    """Run the launcher; returns the exit code (2 for bad arguments or input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[launch] %(levelname)s %(message)s")
    env = dict(args.env)
    try:
        if args.launcher == "local":
            if shutil.which(args.command[0]) is None:
                raise InputError(f"cannot run {args.command[0]}: no such executable")
            port = args.port or free_port("127.0.0.1")
            nodes = local_nodes(args.num_workers, args.num_servers, args.command, port, env)
        else:
            hosts = read_hostfile(args.hostfile)
            host_ip = args.host_ip or _this_host_ip()
            port = args.port or _free_port_on(host_ip)
            if args.ssh_config and not os.path.isfile(args.ssh_config):
                raise InputError(f"{args.ssh_config}: no such ssh configuration file")
            nodes = ssh_nodes(hosts, args.num_workers, args.num_servers, args.command, port,
                              host_ip, os.getcwd(), env, ssh_config=args.ssh_config,
                              keepalive=args.keepalive)
        return run_cluster(nodes, args.timeout)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
