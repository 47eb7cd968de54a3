"""An exclusive lock file, so that two training runs never write the same checkpoint.

``fcntl.flock`` locks die with their process, so a run killed with SIGKILL leaves no stale lock
(only its file, which the next run takes over). A run that ends removes the file while it still
holds the lock; a run that locked the file just before it was removed sees that the path no
longer names the file it locked, and locks the path's new file instead.
"""
import fcntl
import os

from .errors import InputError

_ATTEMPTS = 5       # a removal can only come between opening and locking: any retry is rare


class RunLock:
    """Hold ``path`` locked for the life of the object (or of a ``with`` block); the file is
    removed on :meth:`release`.

    Raises :class:`InputError` naming the holder's pid when another process holds it.
    """

    def __init__(self, path, what):
        self.path, self._fd = os.fspath(path), None
        for _ in range(_ATTEMPTS):
            fd = self._open_and_lock(what)
            if _names(self.path, fd):
                self._fd = fd
                break
            os.close(fd)        # locked a file a finished run had just removed: once more
        else:
            raise InputError(f"cannot lock {self.path} of {what}: it is removed and made again "
                             "as fast as it is opened")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def _open_and_lock(self, what):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot create the lock file {self.path} of {what}: "
                             f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise InputError(f"{what} is in use by another training run (pid {holder}, lock "
                             f"{self.path}); wait for it or choose another path") from None
        return fd

    def release(self):
        """Remove the lock file, then unlock it. Safe to call twice."""
        if self._fd is not None:
            if _names(self.path, self._fd):
                try:
                    os.remove(self.path)
                except OSError:
                    pass        # a read-only folder: the file stays, unlocked
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _names(path, fd):
    """Whether ``path`` is (still) the file open as ``fd``."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)
