"""The child side of ``bench.py --child SPEC``: measure one row in this fresh process."""
import importlib

from .epoch import run_epoch
from .infer import run_infer, run_tiled
from .loader import run_data
from .specs import STEP_TASKS, variant_name
from .stream import run_stream
from .timing import CPU_MS, median, peak_rss_mb
from .train import run_train

RUNNERS = {"train": run_train, "infer": run_infer, "data": run_data, "epoch": run_epoch,
           "tiled": run_tiled, "stream": run_stream}
NEEDS = {"data": "unet.data.loader", "epoch": "unet.training.loop", "tiled": "unet.inference.tiling",
         "stream": "unet.inference.chunked"}


def child(spec):
    """Measure one row in this (fresh) process.

    Parameters
    ----------
    spec : dict
        One row of :func:`benchkit.specs.row_specs`.

    Returns
    -------
    dict
        The row: its task, size, channels, batch and variant, ``status`` (``ok``, or
        ``not available: ...`` when the module of :data:`NEEDS` its task needs does not import)
        and the measurements.
    """
    import unet      # noqa: F401  (before mxnet, as the CLIs: threads and AMX, unet.core.amx)
    import cv2
    cv2.setNumThreads(0)
    row = {k: spec[k] for k in ("task", "size", "channels", "batch")}
    row["variant"] = variant_name(spec)
    needed = NEEDS.get(spec["task"])
    if needed:
        try:
            importlib.import_module(needed)
        except ImportError as exc:
            return dict(row, status=f"not available: {needed} ({exc})")
    return _add_result(row, spec, RUNNERS[spec["task"]](spec))


def _add_result(row, spec, result):
    """The ``row`` with the summary of a runner's ``result`` (the median, min and max of its
    ``times_ms``, the rates, the peak memory) and the result's own values, floats to 6 digits."""
    times = result.pop("times_ms")
    ms = median(times)
    for kernel in ("norm_kernel", "conv_kernel"):
        if kernel in spec:
            row[kernel] = spec[kernel]
    row.update(ms_median=round(ms, 2), ms_min=round(min(times), 2), ms_max=round(max(times), 2),
               repeat=len(times), times_ms=[round(t, 2) for t in times],
               peak_rss_mb=round(peak_rss_mb(), 1), status="ok")
    if spec.get("conv_kernel", "").startswith("winograd"):
        from unet.model.native import conv3x3_buffers_mb
        row["winograd_buffers_mb"] = conv3x3_buffers_mb()
    if CPU_MS and spec["task"] in STEP_TASKS:
        row["cpu_ms_median"] = round(median(CPU_MS), 2)
    if "gflop" in result:
        row["gflops_achieved"] = float(f"{result['gflop'] / (ms / 1e3):.4g}")  # tiny models too
    images = result.get("images", spec["batch"])
    row["images_per_s"] = round(images / (ms / 1e3), 3)
    row.update({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in result.items()})
    return row
