"""An OpenSSH server for the ssh launcher tests: keys, configurations and a started ``sshd``, all
in a temporary folder (nothing in ~/.ssh is read or written). test_launch_ssh.py runs one on
127.0.0.1, test_netns.py one in each network namespace. Debian: ``apt-get install
openssh-server``; ``.ci/run`` installs it when it can."""
import os
import shutil
import subprocess
import time

import pytest

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
MISSING = (None if os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("ssh-keygen")
           else "needs OpenSSH's sshd, ssh and ssh-keygen")
requires_openssh = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=30)


def make_keys(folder):
    """A host key and a client key that may log in, in ``folder``."""
    _keygen(folder / "host_key")
    _keygen(folder / "client_key")
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    os.chmod(folder / "authorized_keys", 0o600)


def write_ssh_config(folder, pattern):
    """An ssh_config that logs in to the hosts matching ``pattern`` with the client key."""
    path = folder / "ssh_config"
    path.write_text(
        f"Host {pattern}\n  IdentityFile {folder / 'client_key'}\n  IdentitiesOnly yes\n"
        "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n")
    return path


def write_sshd_config(folder, name, address, port, extra=""):
    """``folder/name.sshd_config``: listen on ``address:port``, keys only, plus ``extra`` lines."""
    path = folder / f"{name}.sshd_config"
    path.write_text(
        f"ListenAddress {address}\nPort {port}\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / name}.pid\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n" + extra)
    return path


def start_sshd(sshd_config, ssh_config, address, port, prefix=()):
    """Run ``sshd -D`` (after ``prefix``, e.g. ``ip netns exec NS``) and wait until ssh logs in.

    Returns the Popen; skips the test when sshd does not start or lets nobody in.
    """
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # its privilege separation folder
    server = subprocess.Popen([*prefix, SSHD, "-D", "-e", "-f", str(sshd_config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if server.poll() is not None:
            pytest.skip(f"sshd did not start: {server.stderr.read().strip()[-300:]}")
        probe = subprocess.run(
            ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
             "-p", str(port), address, "true"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return server
        time.sleep(0.1)
    stop_sshd(server)
    pytest.skip(f"cannot log in to the test sshd: {probe.stderr.strip()[-300:]}")


def stop_sshd(server):
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
