"""The parent side: every row in a fresh ``bench.py --child`` process, so that peak memory and
one-time costs belong to that row alone."""
import json
import os
import subprocess
import sys
from pathlib import Path

from .epoch import add_epoch_reference, epoch_reference_spec
from .specs import variant_name

BENCHMARKS = Path(__file__).resolve().parents[1]   # bench.py's folder; the project's one above


def child_env(spec):
    """The environment of a row's child: this one, the project on ``PYTHONPATH``, and the
    variables of the row's levers (``--threads``, ``--env``, ...)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCHMARKS.parent),
                                                      env.get("PYTHONPATH")]))
    if not spec["fused_norm"] and spec["task"] == "epoch":
        env["UNET_NATIVE"] = "0"        # unet.training.loop builds with the kernels: turn them all off
    if spec["fuse"] and spec["norm"] == "layer":
        # MXNet 1.9.1 wires the wrong inputs into a conv+sum fusion next to a LayerNorm
        # ("Shape inconsistent, Provided = [64]"): keep the other fusions, skip that one.
        env["MXNET_DISABLE_MKLDNN_FUSE_CONV_SUM"] = "1"
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    # Otherwise the child's first import, unet, sets what segmenter.py and evaluate.py run with.
    for item in spec["env"]:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def run_row(spec, timeout):
    """Run one row in a fresh interpreter; a failure becomes a row with ``status='error: ...'``.

    Parameters
    ----------
    spec : dict
        The row, as :func:`benchkit.specs.row_specs` makes it.
    timeout : int
        Seconds the child may take.

    Returns
    -------
    dict
        The child's row.
    """
    command = [sys.executable, str(BENCHMARKS / "bench.py"), "--child", json.dumps(spec)]
    try:
        done = subprocess.run(command, env=child_env(spec), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return _error_row(spec, f"timed out after {timeout} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return _error_row(spec, f"rc {done.returncode}: {tail[:300]}")


def _error_row(spec, why):
    """The row of a child that gave no row, with ``status`` ``error: why``."""
    return dict(task=spec["task"], size=spec["size"], channels=spec["channels"],
                variant=variant_name(spec), status=f"error: {why}")


def measure_row(spec, timeout):
    """:func:`run_row`; for an epoch row, with the reference steps of fresh processes just before
    and after it (:func:`benchkit.epoch.add_epoch_reference`)."""
    if spec["task"] != "epoch":
        return run_row(spec, timeout)
    before = run_row(epoch_reference_spec(spec), timeout)
    row = run_row(spec, timeout)
    after = run_row(epoch_reference_spec(spec), timeout)
    return add_epoch_reference(row, [before, after])
