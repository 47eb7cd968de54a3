"""One OpenMP thread per physical core, unless ``OMP_NUM_THREADS`` says otherwise.

MXNet 1.9.1 on x86 assumes two hardware threads per core and, without ``OMP_NUM_THREADS``, runs
``(cpus + 1) // 2`` OpenMP threads: one thread on a 2-core machine without hyper-threading, half
the speed it could have (a 256x256 training step of the default model: 5.3 s against 2.8 s with
2 threads, measured here). MXNet reads the variable once, when it starts, so this must run before
``import mxnet``; the package's ``__init__`` calls it.
"""
import os

# What the user set, before default_omp_threads() filled it in.
USER_OMP_THREADS = os.environ.get("OMP_NUM_THREADS") or None


def physical_cores():
    """Physical cores among the CPUs this process may run on (hyper-threads counted once);
    the CPU count where the topology cannot be read."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count())
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{base}/physical_package_id") as package, open(f"{base}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            return max(len(cpus), 1)
    return max(len(cores), 1)


def default_omp_threads(environ=os.environ):
    """Set ``OMP_NUM_THREADS`` to :func:`physical_cores` where it is unset; returns its value."""
    if not environ.get("OMP_NUM_THREADS"):
        environ["OMP_NUM_THREADS"] = str(physical_cores())
    return environ["OMP_NUM_THREADS"]


def user_environ():
    """A copy of ``os.environ`` without the ``OMP_NUM_THREADS`` and ``DNNL_MAX_CPU_ISA`` that
    this package filled in (for processes that must choose their own: cluster workers, other
    hosts)."""
    from . import amx
    environ = dict(os.environ)
    if USER_OMP_THREADS is None:
        environ.pop("OMP_NUM_THREADS", None)
    if amx.USER_ISA is None:
        environ.pop(amx.ISA_VARIABLE, None)
    return environ
