"""Intel AMX for MXNet's bfloat16 and int8 kernels, where the CPU and Linux allow it.

MXNet 1.9.1 bundles oneDNN 2.4, which has AMX kernels (Xeon Sapphire Rapids and later: CPU flags
``amx_tile`` and ``amx_bf16``) but leaves them off unless ``DNNL_MAX_CPU_ISA=AVX512_CORE_AMX``, and
never asks Linux (5.16 and later) for the permission to use the tile registers
(``arch_prctl(ARCH_REQ_XCOMP_PERM)``): with the variable set and no permission, the first AMX
instruction kills the process (SIGILL). :func:`enable_amx` asks for the permission and, where it
is granted and the variable is unset, sets it; MXNet reads the variable when oneDNN first runs,
so this must happen before ``import mxnet``, and the package's ``__init__`` calls it.

Only ``--amp bf16`` and ``--amp int8`` change: fp32 has no AMX kernels. On a 2-core Xeon with AMX
(README, *Speed*) a bf16 training step of the default model at 256x256 took 1.55 s with AMX and
4.03 s without. A ``DNNL_MAX_CPU_ISA`` the user set is kept (``AVX512_CORE_BF16`` turns AMX off;
oneDNN takes the value as written, in capitals); the permission is asked for whenever the CPU has
AMX, so that a variable inherited from a parent process that set it does not crash this one, and
where Linux refuses it while the variable asks for AMX a warning says so. After a oneDNN kernel
has run (``mxnet`` imported and used first) the variable no longer changes anything.
"""
import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

ISA_VARIABLE = "DNNL_MAX_CPU_ISA"
AMX_ISA = "AVX512_CORE_AMX"
AMX_FLAGS = frozenset({"amx_tile", "amx_bf16"})

# x86-64 Linux: arch_prctl's syscall number, its request for an extended feature's permission,
# and the feature number of the AMX tile data (arch/x86/include/uapi/asm/prctl.h).
_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

# What the user set, before enable_amx() filled it in.
USER_ISA = os.environ.get(ISA_VARIABLE) or None


def cpu_flags(path="/proc/cpuinfo"):
    """The feature flags of the first CPU in ``path`` (an empty set where it cannot be read)."""
    try:
        with open(path) as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def request_tile_permission():
    """Ask Linux for this process's permission to use the AMX tile registers; True if granted.

    False off x86-64 Linux and on kernels older than 5.16 (no such request: EINVAL).
    """
    # A 32-bit Python on an x86-64 kernel has other syscall numbers (158 is sched_yield there).
    if platform.system() != "Linux" or platform.machine() != "x86_64" \
            or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return False
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_long]
    return syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0


def enable_amx(environ=os.environ, flags=None, request=request_tile_permission):
    """Let oneDNN use AMX where the CPU has it and Linux grants it; returns whether it may.

    Parameters
    ----------
    environ : mapping, default ``os.environ``
        Gets ``DNNL_MAX_CPU_ISA=AVX512_CORE_AMX`` where the variable is unset.
    flags : set of str, optional
        The CPU's flags; default :func:`cpu_flags`.
    request : callable, default :func:`request_tile_permission`
        Asks for the permission; called only when the CPU has AMX.
    """
    flags = cpu_flags() if flags is None else flags
    if not AMX_FLAGS <= set(flags):
        return False
    if not request():
        if environ.get(ISA_VARIABLE) == AMX_ISA:
            log.warning("%s=%s is set but Linux refused this process the AMX permission: bf16 "
                        "and int8 convolutions may stop it with SIGILL (unset the variable)",
                        ISA_VARIABLE, AMX_ISA)
        return False
    if not environ.get(ISA_VARIABLE):
        environ[ISA_VARIABLE] = AMX_ISA
    return environ[ISA_VARIABLE] == AMX_ISA
