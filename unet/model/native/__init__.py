"""Compiled operators, built on first use and loaded into MXNet.

MXNet 1.9 can load operators from a shared library (``mx.library.load``, its custom-operator
API). Two live here, each in one C++ file:

- ``width_norm.cc`` adds ``unet_width_norm(x, gamma, beta, eps)``: the layer norm over the last
  axis of :class:`mxnet.gluon.nn.LayerNorm`, with a forward and a backward pass that each sweep the
  rows once. In a training step of the default model it is ~4x faster than
  :mod:`unet.model.fastnorm`'s GEMV formulation and ~5x faster than MXNet's own LayerNorm backward.
  Used for training on CPUs (:func:`width_norm_available`) and in the fp32 inference copy
  (:func:`unet.model.network.inference_copy`).
- ``conv3x3.cc`` adds ``unet_conv3x3_train(data, weight, bias)`` and ``unet_conv3x3(data, weight,
  bias)``: ``nn.Conv2D(kernel_size=3, padding=1)`` on oneDNN's Winograd kernels, 2.3-4.8x faster
  per layer forward and 2-3x backward than the direct algorithm MXNet asks its oneDNN for; the
  first trains, the second (forward only) infers. It links the oneDNN 2.x library of the
  ``onednn-cpu-gomp`` wheel (``requirements.txt``), and is used in fp32 on CPUs where oneDNN has
  those kernels (AVX-512; :func:`conv3x3_available`).

Each ``*_available()`` compiles its source with the system's C++ compiler (``$CXX``, else
``g++``; 12-16 s each on a 2-core Xeon, once) into a cache folder, keyed by a hash of the
source, MXNet's headers, the compiler command, the flags and the machine, and loads it (a
cached file that does not load is compiled again). Where that fails (no compiler, no oneDNN wheel, a CPU without AVX-512 for the
convolutions, another platform) it logs one warning and returns False, and the network falls
back to MXNet's own operators; ``UNET_NATIVE=0`` turns both off. The cache folder is ``$UNET_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/unet``, else
``~/.cache/unet``. CPU only, float32 only.

Load them before ``mxnet.contrib.amp.init``: ``mx.library.load`` re-creates MXNet's operator
functions and would drop AMP's wrappers (:func:`unet.model.precision.init_amp` loads the layer norm
first).
"""
import ctypes
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FLAGS = ["-shared", "-fPIC", "-std=c++17", "-O3", "-fopenmp"]
ONEDNN_WHEEL = "onednn-cpu-gomp"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kernel:
    """One compiled operator: its C++ file, the operator it registers and how it is described."""
    name: str           # file stem and library name
    op_name: str        # the MXNet operator it registers
    what: str           # for log lines
    fallback: str       # what runs instead, for the warning
    uses_onednn: bool = False
    probe: str = ""     # an exported C function: 1 when the kernel is worth using on this machine
    probe_failure: str = ""

    @property
    def source(self):
        return Path(__file__).with_name(f"{self.name}.cc")


WIDTH_NORM = Kernel("width_norm", "unet_width_norm", "fused layer-norm kernel",
                    "using MXNet's layer norm, slower to train")
CONV3X3 = Kernel("conv3x3", "unet_conv3x3", "Winograd convolution kernel",
                 "using MXNet's convolutions, slower", uses_onednn=True,
                 probe="unet_winograd_supported",
                 probe_failure="oneDNN has no Winograd convolution for this CPU (it needs AVX-512)")
OP_NAME = WIDTH_NORM.op_name
_state = {}     # kernel name -> (loaded: bool, reason: str or None), once decided in this process
_loaded_paths = {}  # kernel name -> the library file MXNet loaded


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


def onednn_library_dir():
    """The folder of ``libdnnl.so.2`` installed by the ``onednn-cpu-gomp`` wheel.

    Raises ``RuntimeError`` when the wheel is not installed.
    """
    try:
        files = importlib.metadata.files(ONEDNN_WHEEL) or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"{ONEDNN_WHEEL} is not installed (pip install -r requirements.txt)") \
            from None
    for file in files:
        if file.name == "libdnnl.so.2":
            return Path(file.locate()).resolve().parent
    raise RuntimeError(f"{ONEDNN_WHEEL} has no libdnnl.so.2")


def _flags(kernel):
    """Compiler flags after the common ones: oneDNN's headers (MXNet's copy, 2.x like the wheel)
    and the wheel's library, found at run time through the rpath."""
    if not kernel.uses_onednn:
        return []
    lib = onednn_library_dir()
    return [f"-I{_mxnet_dir() / 'include' / 'mkldnn'}", f"-L{lib}", "-l:libdnnl.so.2",
            f"-Wl,-rpath,{lib}"]


def _hashed_files(kernel):
    include = _mxnet_dir() / "include"
    files = [kernel.source, kernel.source.with_name("operator.h"), include / "mxnet" / "lib_api.h",
             _mxnet_dir() / "src" / "lib_api.cc"]
    if kernel is CONV3X3:
        files += [kernel.source.with_name(name) for name in ("weights_hash.h", "onednn_conv.h")]
    if kernel.uses_onednn:
        files += [include / "mkldnn" / "oneapi" / "dnnl" / name
                  for name in ("dnnl.hpp", "dnnl.h", "dnnl_types.h", "dnnl_version.h")]
    return files


def library_path(kernel=WIDTH_NORM):
    """The cached library for this source, these MXNet headers, compiler, flags and machine."""
    digest = hashlib.sha256()
    for part in _hashed_files(kernel):
        digest.update(part.read_bytes())
    digest.update(" ".join(_compiler() + FLAGS + _flags(kernel) + [platform.machine()]).encode())
    return cache_dir() / f"libunet_{kernel.name}-{digest.hexdigest()[:16]}.so"


def _compile(kernel, target, replace=None):
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
            cmd = [*compiler, *FLAGS, f"-I{mx_dir / 'include'}", str(kernel.source),
                   str(mx_dir / "src" / "lib_api.cc"), *_flags(kernel), "-o", tmp]
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


def available(kernel):
    """Compile (once) and load ``kernel``; True when its operator can be used.

    Decided once per process; a failure is logged as one warning with its reason.
    """
    if kernel.name not in _state:
        _state[kernel.name] = loaded, reason = _load(kernel)
        if not loaded and reason:
            log.warning("%s not available (%s): %s", kernel.what, reason, kernel.fallback)
    return _state[kernel.name][0]


def loaded(kernel):
    """True when :func:`available` has loaded ``kernel`` in this process."""
    return _state.get(kernel.name, (False, None))[0]


def reason(kernel):
    """Why ``kernel`` is not available (None when it is, or when not tried yet)."""
    return _state.get(kernel.name, (False, None))[1]


def width_norm_available():
    """:func:`available` for the fused layer norm (training)."""
    return available(WIDTH_NORM)


def width_norm_loaded():
    """True when :func:`width_norm_available` has loaded the kernel in this process."""
    return loaded(WIDTH_NORM)


def conv3x3_available():
    """:func:`available` for the Winograd 3x3 convolutions (fp32 training and inference on
    CPUs)."""
    return available(CONV3X3)


def conv3x3_buffers_mb():
    """What the loaded Winograd kernel holds besides MXNet's arrays, in MiB to 0.01: ``layouts``
    (tensors in its own memory layouts), ``scratchpad`` (the primitives' work space), both grown
    to the largest layer so far, and ``transformed_weights`` (inference's cache); None when the
    kernel is not loaded in this process."""
    if not loaded(CONV3X3):
        return None
    # The library MXNet loaded: dlopen returns the same handle, so the same buffers.
    query = ctypes.CDLL(str(_loaded_paths[CONV3X3.name])).unet_conv3x3_buffer_bytes
    query.restype, query.argtypes = ctypes.c_size_t, [ctypes.c_int]
    mib = [query(slot) / 2 ** 20 for slot in range(6)]
    return {"layouts": round(sum(mib[:4]), 2), "scratchpad": round(mib[4], 2),
            "transformed_weights": round(mib[5], 2)}


def _probe(path, function):
    """Call the library's exported ``int function(void)`` (before MXNet loads it); a library that
    does not load is treated as usable here and left to MXNet's loader, which rebuilds it."""
    try:
        library = ctypes.CDLL(str(path))
    except OSError:
        return True
    return bool(getattr(library, function)())


def _load(kernel):
    if os.environ.get("UNET_NATIVE", "1") == "0":
        return False, None
    import mxnet as mx
    from mxnet.contrib.amp import amp
    if amp._amp_initialized:
        # Loading re-creates MXNet's operator functions: AMP's wrappers would silently go.
        return False, "mxnet.contrib.amp was initialized before the kernel was loaded"
    try:
        path = library_path(kernel)
        if not path.exists():
            log.info("compiling the %s into %s", kernel.what, path.parent)
            _compile(kernel, path)
        if kernel.probe and not _probe(path, kernel.probe):
            return False, kernel.probe_failure
        try:
            mx.library.load(str(path), verbose=False)
        except mx.base.MXNetError:
            # A damaged cache file (a disk error, a copy from elsewhere): rebuild it once.
            log.info("the cached kernel %s did not load: compiling it again", path)
            _compile(kernel, path, replace=path.stat().st_ino)
            mx.library.load(str(path), verbose=False)
    except (OSError, RuntimeError, subprocess.SubprocessError, mx.base.MXNetError) as exc:
        lines = str(exc).strip().splitlines()
        return False, lines[-1] if lines else type(exc).__name__
    if not hasattr(mx.nd, kernel.op_name):
        return False, f"{kernel.op_name} not registered by {path.name}"
    _loaded_paths[kernel.name] = path
    return True, None
