"""An exclusive lock file, so that two training runs never write the same checkpoint.

``fcntl.flock`` locks die with their process, so a run killed with SIGKILL leaves no stale lock.
"""
import fcntl
import os

from ..core.errors import InputError


class RunLock:
    """Hold ``path`` locked for the life of the object (or of a ``with`` block).

    Raises :class:`InputError` naming the holder's pid when another process holds it.
    """

    def __init__(self, path, what):
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot create the lock file {self.path} of {what}: "
                             f"{exc.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(self._fd)
            raise InputError(f"{what} is in use by another training run (pid {holder}, lock "
                             f"{self.path}); wait for it or choose another path") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def release(self):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
