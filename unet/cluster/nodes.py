"""The processes of a parameter-server cluster, as command lines: which run where, with what
``DMLC_*`` environment. Builds, runs nothing; :mod:`unet.cluster.launch` starts and watches them.

A cluster is one scheduler, servers (``python -c "import mxnet"``: importing mxnet with
``DMLC_ROLE`` set turns the process into that role) and workers running the user's command.
"""
import shlex
import socket
import sys
from dataclasses import dataclass, field

from ..core.errors import InputError
from ..core.threads import user_environ

SERVER_CODE = "import mxnet"
FORWARDED_ENV = ("OMP_NUM_THREADS", "KMP_AFFINITY", "LD_LIBRARY_PATH", "DMLC_INTERFACE",
                 "PS_VERBOSE", "DNNL_MAX_CPU_ISA")
KEEPALIVE_S = 5      # ssh: seconds between keep-alives when the host sends nothing
KEEPALIVE_COUNT = 3  # unanswered keep-alives before ssh gives the host up (ssh's own default)
SSH_FAILED = 255     # ssh's exit code for its own errors, a lost host among them


@dataclass(frozen=True)
class Node:
    """One process of the cluster: ``argv`` runs here with ``env`` added to the launcher's."""

    role: str
    index: int
    argv: tuple
    env: dict = field(default_factory=dict)
    host: str = None  # the remote host that ``argv`` reaches over ssh; None: this machine

    @property
    def label(self):
        return self.role if self.role == "scheduler" else f"{self.role} {self.index}"


def free_port(host="127.0.0.1"):
    """A TCP port that was free on ``host`` a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def cluster_env(root_uri, root_port, num_workers, num_servers):
    """The ``DMLC_*`` variables every process of the cluster shares."""
    return {"DMLC_PS_ROOT_URI": str(root_uri), "DMLC_PS_ROOT_PORT": str(root_port),
            "DMLC_NUM_WORKER": str(num_workers), "DMLC_NUM_SERVER": str(num_servers)}


def local_nodes(num_workers, num_servers, command, port, env=None, python=sys.executable):
    """Scheduler, servers and workers on 127.0.0.1; ``env`` is added to every process."""
    base = {"OMP_NUM_THREADS": user_environ().get("OMP_NUM_THREADS", "1"), **(env or {}),
            **cluster_env("127.0.0.1", port, num_workers, num_servers),
            "DMLC_NODE_HOST": "127.0.0.1"}  # without it ps-lite binds a non-loopback interface
    server = (python, "-c", SERVER_CODE)
    nodes = [Node("scheduler", 0, server, {**base, "DMLC_ROLE": "scheduler"})]
    nodes += [Node("server", i, server, {**base, "DMLC_ROLE": "server"})
              for i in range(num_servers)]
    nodes += [Node("worker", i, tuple(command), {**base, "DMLC_ROLE": "worker"})
              for i in range(num_workers)]
    return nodes


def read_hostfile(path):
    """Parse a hosts file: one ``host [port]`` (or ``host:port``) a line, ``#`` comments.

    Returns
    -------
    list of (str, str)
        ``(host, ssh_port)``; the port defaults to ``'22'``.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read hosts file {path}: {err}") from None
    hosts = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].replace(":", " ").split()
        words = [w for w in words if not w.startswith("slots=")]  # MPI-style host files
        if not words:
            continue
        if len(words) > 2 or not all(w.isdigit() for w in words[1:]):
            raise InputError(f"{path}:{number}: expected 'host [port]', got {line.strip()!r}")
        hosts.append((words[0], words[1] if len(words) == 2 else "22"))
    if not hosts:
        raise InputError(f"hosts file {path} names no host")
    return hosts


def keepalive_window(interval, count=KEEPALIVE_COUNT):
    """Seconds of silence after which ssh gives a host up: ``(count + 1) * interval``.

    ssh sends a keep-alive after each ``interval`` seconds in which the host sent nothing and
    exits with code 255 when ``count`` of them are unanswered, at the next one.
    """
    return (count + 1) * interval


def ssh_options(keepalive=KEEPALIVE_S):
    """The ``-o`` options of every ssh: no prompts, and give up a host that stops answering.

    ``keepalive`` (seconds, 0 for ssh's defaults: no keep-alives, the system's connect timeout)
    bounds both how long a silent host goes unnoticed and how long a connection may take.
    """
    options = ["StrictHostKeyChecking=no", "BatchMode=yes"]
    if keepalive:
        options += [f"ServerAliveInterval={keepalive}", f"ServerAliveCountMax={KEEPALIVE_COUNT}",
                    f"ConnectTimeout={keepalive_window(keepalive)}"]
    return tuple(word for option in options for word in ("-o", option))


def ssh_nodes(hosts, num_workers, num_servers, command, port, host_ip, cwd, env=None,
              python=sys.executable, environ=None, ssh_config=None, keepalive=KEEPALIVE_S):
    """The cluster over ssh: scheduler here, servers then workers round-robin over ``hosts``.

    Builds the command lines only, runs nothing. ``host_ip`` is this machine's address as the
    hosts reach it (the scheduler's ``DMLC_PS_ROOT_URI``); each remote process binds the address
    its host is named by in the hosts file (``DMLC_NODE_HOST``). The few variables of
    ``FORWARDED_ENV`` that are set in ``environ`` (default ``os.environ``) and ``env`` are
    passed on. ``ssh_config`` is an ssh configuration file (``ssh -F``) in place of the user's;
    ``keepalive`` is ssh's keep-alive interval, :func:`ssh_options`.
    """
    environ = user_environ() if environ is None else environ
    shared = {**{k: environ[k] for k in FORWARDED_ENV if k in environ}, **(env or {}),
              **cluster_env(host_ip, port, num_workers, num_servers)}
    server = (python, "-c", SERVER_CODE)
    nodes = [Node("scheduler", 0, server, {**shared, "DMLC_ROLE": "scheduler"})]
    roles = [("server", i, server) for i in range(num_servers)]
    roles += [("worker", i, tuple(command)) for i in range(num_workers)]
    for slot, (role, index, argv) in enumerate(roles):
        host, ssh_port = hosts[slot % len(hosts)]
        remote_env = {**shared, "DMLC_ROLE": role, "DMLC_NODE_HOST": host}
        assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in remote_env.items())
        remote = f"cd {shlex.quote(cwd)} && exec env {assignments} {shlex.join(argv)}"
        config = ("-F", ssh_config) if ssh_config else ()
        ssh = ("ssh", *config, "-tt", *ssh_options(keepalive), "-p", ssh_port, host, remote)
        nodes.append(Node(role, index, ssh, {}, host))
    return nodes
