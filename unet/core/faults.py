"""Fault injection for the reliability tests: die with SIGKILL at a named point.

Set ``UNET_KILL_AT=POINT:N`` to kill the process the N-th time (1-based) it passes ``POINT``;
``UNET_KILL_SIGNAL=INT`` (or ``TERM``) sends that signal instead of SIGKILL, to test the clean
exits; ``TERM-GROUP`` sends SIGTERM to the whole process group, the data-loader workers included,
as ``pkill -f`` or a batch scheduler's cancel does; ``KILL-WORKER`` kills the child process whose
name sorts first (data-loader worker 0) instead, as the OOM killer might.
Points: ``train.step`` (after an optimizer update), ``train.validation`` (before validating,
the epoch's checkpoint files being written), ``checkpoint.prepared`` (a checkpoint's files
written and hashed, on the writer thread, nothing renamed), ``checkpoint.params_written`` (the
pending JSON written too), ``checkpoint.renamed`` (weights renamed, JSON still pending),
``checkpoint.committed`` (after the JSON rename); ``chunked.partial`` (a chunk file of chunked
inference written, not renamed), ``chunked.chunk`` (a chunk whole), ``tiff.tile`` (a tile of a
tiled TIFF output read for its writer), ``chunked.tiff`` (one TIFF output written whole).
Unset (the normal case), :func:`point` costs one dictionary lookup.
"""
import multiprocessing
import os
import signal

ENV = "UNET_KILL_AT"
SIGNAL_ENV = "UNET_KILL_SIGNAL"
_hits = {}


def point(name):
    """Kill this process if ``UNET_KILL_AT`` names ``name`` and its count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        kind, _, scope = os.environ.get(SIGNAL_ENV, "KILL").partition("-")
        if scope == "GROUP":
            os.killpg(os.getpgrp(), getattr(signal, f"SIG{kind}"))
        elif scope == "WORKER":
            worker = min(multiprocessing.active_children(), key=lambda child: child.name)
            os.kill(worker.pid, getattr(signal, f"SIG{kind}"))
        else:
            os.kill(os.getpid(), getattr(signal, f"SIG{kind}"))
