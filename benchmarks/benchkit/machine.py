"""The machine line: CPU model, usable cores, ISA flags, thread and ISA settings, versions."""
import os
import platform

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def machine_info():
    """CPU model, usable cores, selected ISA flags and library versions, as a dict.

    Returns
    -------
    dict
        ``cpu``, ``cores``, ``flags`` (those of :data:`CPU_FLAGS` the CPU has), ``python``,
        ``mxnet`` (None when it is not installed as a distribution), ``omp_num_threads`` and
        ``dnnl_max_cpu_isa`` (see :func:`_setting`).
    """
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from unet.core import amx  # as the CLIs: unet's defaults (threads, AMX) reach the rows
    from unet.core import threads
    try:
        from importlib.metadata import version
        mxnet = version("mxnet")
    except Exception:                  # not installed as a distribution: leave it out
        mxnet = None
    return {"cpu": model, "cores": cores, "flags": [f for f in CPU_FLAGS if f in flags],
            "python": platform.python_version(), "mxnet": mxnet,
            "omp_num_threads": _setting(threads.USER_OMP_THREADS, "OMP_NUM_THREADS",
                                        "one per physical core"),
            "dnnl_max_cpu_isa": _setting(amx.USER_ISA, amx.ISA_VARIABLE, "on this CPU with AMX")}


def _setting(user_value, name, why):
    """What the rows run with for the variable ``name``: the user's value, else the default
    that ``import unet`` filled in (said so, with ``why``), else ``-``."""
    value = user_value or os.environ.get(name)
    if not value:
        return "-"
    return value if user_value else f"{value} (unset: unet's default, {why})"


def machine_line(info):
    """The table's first line, ``machine: ...``, from a :func:`machine_info` dict."""
    return (f"machine: {info['cpu']}, {info['cores']} cores, flags {' '.join(info['flags']) or '-'}"
            f", OMP_NUM_THREADS={info['omp_num_threads']}"
            f", DNNL_MAX_CPU_ISA={info.get('dnnl_max_cpu_isa', '-')}, Python {info['python']}"
            + (f", mxnet {info['mxnet']}" if info.get("mxnet") else ""))
