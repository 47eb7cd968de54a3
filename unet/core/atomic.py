"""Atomic file writes: a crash at any moment leaves either the old file or the new one, whole.

Every file the package writes goes to a temporary name in the destination's folder (same file
system, so ``os.replace`` is an atomic rename), is flushed and fsync'ed, then renamed over the
destination. The temporary name keeps the destination's suffix so that writers that pick a
format by extension (``cv2.imwrite``) still work.
"""
import contextlib
import glob
import json
import os
import tempfile


def _read_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: setting and restoring the process-wide umask on a writer thread would give the
# files another thread creates meanwhile the mode 0666.
_UMASK = _read_umask()


def fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path):
    """(folder, prefix, suffix) of the temporary files of ``path``: ``.NAME.XXXX.tmp.SUFFIX``."""
    path = os.fsdecode(path)        # bytes paths too (non-UTF-8 names come as surrogates)
    base = os.path.basename(path)
    return os.path.dirname(os.path.abspath(path)), f".{base}.", f".tmp{os.path.splitext(base)[1]}"


def temp_path_beside(path):
    """A new empty file in ``path``'s folder (so that a rename onto ``path`` is atomic), with the
    usual file mode; its hidden name keeps ``path``'s suffix: ``.NAME.XXXX.tmp.SUFFIX``."""
    folder, prefix, suffix = _temp_name(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)     # mkstemp makes 0600; give the usual file mode
    return tmp


def remove_temps_beside(path):
    """Delete the temporary files of :func:`temp_path_beside` that writes of ``path`` killed
    before their rename left behind; call it only while nothing else writes ``path``."""
    folder, prefix, suffix = _temp_name(path)
    pattern = glob.escape(prefix) + "*" + glob.escape(suffix)
    for leftover in glob.glob(os.path.join(glob.escape(folder), pattern)):
        os.remove(leftover)


def fsync_file(path):
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def replace_synced(tmp, path):
    """fsync ``tmp``, rename it onto ``path``, then fsync the folder (so the rename survives a
    power cut)."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(os.fsdecode(path))))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The caller writes the temporary file by any means (``cv2.imwrite``, ``net.save_parameters``).
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    tmp = temp_path_beside(path)
    try:
        yield tmp
        replace_synced(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(path, data):
    """Atomically write ``data`` (bytes) to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_text(path, text):
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, sort_keys=True):
    """Atomically write ``obj`` as indented JSON to ``path``; ``sort_keys=False`` keeps the
    dicts' own order (default: sorted)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
