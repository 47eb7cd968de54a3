"""The fused layer-norm kernel (``width_norm.cc``): compiled on first use, loaded into MXNet.

MXNet 1.9 can load operators from a shared library (``mx.library.load``, its custom-operator
API). ``width_norm.cc`` adds ``unet_width_norm(x, gamma, beta, eps)``: the layer norm over the last
axis of :class:`mxnet.gluon.nn.LayerNorm`, with a forward and a backward pass that each sweep the
rows once. In a training step of the default model it is ~4x faster than
:mod:`unet.fastnorm`'s GEMV formulation and ~5x faster than MXNet's own LayerNorm backward.

:func:`width_norm_available` compiles the source with the system's C++ compiler (``$CXX``, else
``g++``; about 7 s, once) into a cache folder, keyed by a hash of the source, MXNet's headers, the
compiler command, the flags and the machine, and loads it (a cached file that does not load is
compiled again). Where that fails (no compiler, another platform) it logs one warning and
returns False, and the network falls back to the pure-MXNet layer norms; ``UNET_NATIVE=0`` turns
the kernel off. The cache folder is ``$UNET_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/unet``, else
``~/.cache/unet``. CPU only, float32 only (AMP keeps it in float32: :mod:`unet.precision`).

Load it before ``mxnet.contrib.amp.init``: ``mx.library.load`` re-creates MXNet's operator
functions and would drop AMP's wrappers (:func:`unet.precision.init_amp` loads it first).
"""
import fcntl
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

OP_NAME = "unet_width_norm"
SOURCE = Path(__file__).with_name("width_norm.cc")
FLAGS = ["-shared", "-fPIC", "-std=c++17", "-O3", "-fopenmp"]

log = logging.getLogger(__name__)
_state = {}     # "loaded": bool, "reason": why not, once decided in this process


def cache_dir():
    """Where compiled kernels are kept (see the module docstring)."""
    if os.environ.get("UNET_NATIVE_CACHE"):
        return Path(os.environ["UNET_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unet"


def _mxnet_dir():
    import mxnet
    return Path(mxnet.__file__).parent


def _compiler():
    """The compiler command as a list: ``$CXX`` (which may carry arguments, e.g. ``ccache g++``)
    or ``g++``."""
    return shlex.split(os.environ.get("CXX") or "") or ["g++"]


def library_path():
    """The cached library for this source, these MXNet headers, compiler, flags and machine."""
    mx_dir = _mxnet_dir()
    digest = hashlib.sha256()
    for part in (SOURCE, mx_dir / "include" / "mxnet" / "lib_api.h", mx_dir / "src" / "lib_api.cc"):
        digest.update(part.read_bytes())
    digest.update(" ".join(_compiler() + FLAGS + [platform.machine()]).encode())
    return cache_dir() / f"libunet_width_norm-{digest.hexdigest()[:16]}.so"


def _compile(target, replace=None):
    """Compile into ``target`` under a lock; another process may be doing the same.

    ``replace``: a cached library that failed to load; it is rebuilt unless another process has
    replaced it meanwhile.
    """
    mx_dir = _mxnet_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists() and (replace is None or target.stat().st_ino != replace):
            return                          # built by another process meanwhile
        compiler = _compiler()
        if shutil.which(compiler[0]) is None:
            raise RuntimeError(f"no C++ compiler ({' '.join(compiler)}; set CXX)")
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            cmd = [*compiler, *FLAGS, f"-I{mx_dir / 'include'}", str(SOURCE),
                   str(mx_dir / "src" / "lib_api.cc"), "-o", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines()
                errors = [line for line in lines if "error" in line] or lines
                raise RuntimeError(f"{compiler[0]} failed: "
                                   f"{errors[0] if errors else done.returncode}")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o755 & ~umask)   # mkstemp's 0600 would keep other users out
            os.replace(tmp, target)         # a crash never leaves a half-written library
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def width_norm_available():
    """Compile (once) and load the kernel; True when ``unet_width_norm`` can be used.

    Decided once per process; a failure is logged as one warning with its reason.
    """
    if "loaded" not in _state:
        _state["loaded"], _state["reason"] = _load()
        if not _state["loaded"] and _state["reason"]:
            log.warning("fused layer-norm kernel not available (%s): using MXNet's layer norm, "
                        "slower to train", _state["reason"])
    return _state["loaded"]


def width_norm_loaded():
    """True when :func:`width_norm_available` has loaded the kernel in this process."""
    return _state.get("loaded", False)


def _load():
    if os.environ.get("UNET_NATIVE", "1") == "0":
        return False, None
    import mxnet as mx
    from mxnet.contrib.amp import amp
    if amp._amp_initialized:
        # Loading re-creates MXNet's operator functions: AMP's wrappers would silently go.
        return False, "mxnet.contrib.amp was initialized before the kernel was loaded"
    try:
        path = library_path()
        if not path.exists():
            log.info("compiling the fused layer-norm kernel into %s", path.parent)
            _compile(path)
        try:
            mx.library.load(str(path), verbose=False)
        except mx.base.MXNetError:
            # A damaged cache file (a disk error, a copy from elsewhere): rebuild it once.
            log.info("the cached kernel %s did not load: compiling it again", path)
            _compile(path, replace=path.stat().st_ino)
            mx.library.load(str(path), verbose=False)
    except (OSError, RuntimeError, subprocess.SubprocessError, mx.base.MXNetError) as exc:
        lines = str(exc).strip().splitlines()
        return False, lines[-1] if lines else type(exc).__name__
    if not hasattr(mx.nd, OP_NAME):
        return False, f"{OP_NAME} not registered by {path.name}"
    return True, None
