"""Self-describing, crash-safe checkpoints.

A checkpoint ``P`` (e.g. ``unet_best.params``) is:

- ``P``: the weights, written with ``save_parameters`` (MXNet's array format, no pickle);
- ``P.json``: the model config, data normalization and mask encoding, epoch, global step,
  learning rate, best score, seeds, library versions and the sha256 of ``P``, so that
  ``evaluate.py`` rebuilds the network from the checkpoint alone;
- for the "last" checkpoint of a run also ``<stem>-stepN.states``: the optimizer state, in MXNet's
  array format too (:mod:`unet.checkpoints.optimizer_state`), named by step so an old one is never overwritten.

Commit protocol: the new JSON is first written whole to ``P.json.pending``, then the weights are
renamed onto ``P``, then the pending JSON onto ``P.json``. A crash between the two renames leaves a
pending JSON whose sha256 matches ``P``; readers accept it. Every other moment leaves the old or the
new checkpoint whole.
"""
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
import time

import mxnet as mx
import numpy as np

from .. import __version__
from ..core import faults
from ..core.atomic import fsync_dir, fsync_file, temp_path_beside, write_json
from ..model.config import ModelConfig
from ..core.errors import InputError
from ..model.network import build_unet
from .optimizer_state import load_optimizer_state, save_optimizer_state

log = logging.getLogger(__name__)

FORMAT = "unet-checkpoint"
FORMAT_VERSION = 1


def meta_path(params_path):
    """``P.json``: the config beside weights ``P``."""
    return os.fspath(params_path) + ".json"


def last_path(checkpoint_file):
    """The last-epoch checkpoint beside the best one: ``unet_best.params`` -> ``unet_best-last.params``."""
    root, ext = os.path.splitext(os.fspath(checkpoint_file))
    return f"{root}-last{ext or '.params'}"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        # Large reads: each one takes the GIL back, which a busy main thread holds for up to
        # its 5 ms switch interval while this runs beside it.
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions():
    return {"unet": __version__, "mxnet": mx.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def save_checkpoint(net, path, meta, trainer=None, same_weights_as=None):
    """Write weights (and the optimizer state when ``trainer`` is given) and the JSON, atomically.

    ``meta`` is any JSON-able dict; ``format``, ``versions``, ``saved_at`` and the sha256 sums are
    added. ``same_weights_as``: ``(params path, sha256)`` of a committed checkpoint that holds
    ``net``'s current weights; its file is hard-linked instead of written again where the file
    system allows. Raises ``OSError`` when a write fails; the previous checkpoint is then still
    whole. The same as :func:`prepare_checkpoint` then :func:`commit_checkpoint`.
    """
    prepared = prepare_checkpoint(net, path, trainer, meta.get("global_step", 0),
                                  same_weights_as=same_weights_as)
    return commit_checkpoint(prepared, meta)


@dataclasses.dataclass(frozen=True)
class PreparedCheckpoint:
    """A checkpoint's files, written, fsync'ed and hashed, that no reader sees yet.

    ``weights_tmp``: the weights, in a temporary file beside ``path``; ``optimizer_state``: the
    JSON's entry for the states file (written under its own step-numbered name), or None;
    ``old_states``: the states file the committed checkpoint names now, removed after the commit.
    """
    path: str
    weights_tmp: str
    params_sha256: str
    optimizer_state: "dict | None"
    old_states: "str | None"


def prepare_checkpoint(net, path, trainer=None, global_step=0, same_weights_as=None):
    """The slow half of a save: write and hash the files of a checkpoint of ``net`` (a Block, or
    its :func:`weights_copy`) and ``trainer`` (a Trainer, or its
    :func:`unet.checkpoints.optimizer_state.optimizer_arrays`) at ``path``; returns a
    :class:`PreparedCheckpoint` for :func:`commit_checkpoint` or :func:`discard_checkpoint`.

    Nothing a reader of ``path`` looks at changes, so it may run on another thread while the
    network is used for inference (validation), given its :func:`weights_copy` and an optimizer
    state nothing updates meanwhile. ``global_step`` names the states file. Raises ``OSError``
    and then leaves nothing behind.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    _finish_interrupted_commit(path)
    old_states = _states_file(path)
    tmp, states_path, optimizer_state = temp_path_beside(path), None, None
    try:
        # The optimizer state is hashed on a second thread while the weights are written and
        # hashed on this one (hashlib lets go of the GIL): a few tenths of a second an epoch.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as hasher:
            if trainer is not None:
                stem = os.path.splitext(os.path.basename(path))[0]
                states_name = f"{stem}-step{global_step}.states"
                states_path = os.path.join(folder, states_name)
                counters = save_optimizer_state(trainer, states_path)
                states_digest = hasher.submit(sha256_file, states_path)
            if _link_weights(same_weights_as, tmp):
                params_sha256 = same_weights_as[1]
            else:
                save_weights(net, tmp)
                params_sha256 = sha256_file(tmp)
                fsync_file(tmp)
            if trainer is not None:
                optimizer_state = dict(counters, file=states_name, sha256=states_digest.result())
    except BaseException:
        _remove_new_files(tmp, states_path, old_states)
        raise
    faults.point("checkpoint.prepared")
    return PreparedCheckpoint(path, tmp, params_sha256, optimizer_state, old_states)


def commit_checkpoint(prepared, meta):
    """The quick half of a save: make a :class:`PreparedCheckpoint` the checkpoint at its path,
    described by ``meta`` (any JSON-able dict; ``format``, ``versions``, ``saved_at`` and the
    sha256 sums are added); returns the JSON written. Raises ``OSError`` when a write fails; the
    previous checkpoint is then still whole, and the prepared files are removed.
    """
    path = prepared.path
    meta = dict(meta, format=FORMAT, format_version=FORMAT_VERSION,
                versions=library_versions(), saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                params_sha256=prepared.params_sha256)
    if prepared.optimizer_state is not None:
        meta["optimizer_state"] = prepared.optimizer_state
    pending = meta_path(path) + ".pending"
    pending_written = params_renamed = False
    try:
        write_json(pending, meta)
        pending_written = True
        faults.point("checkpoint.params_written")
        os.replace(prepared.weights_tmp, path)      # fsync'ed by prepare_checkpoint
        params_renamed = True       # from here the pending JSON names the new files
        fsync_dir(os.path.dirname(os.path.abspath(path)))
        faults.point("checkpoint.renamed")
        os.replace(pending, meta_path(path))
        faults.point("checkpoint.committed")
    except BaseException:
        # Until the weights are renamed, the new files are orphans of this failed save; after
        # that the pending JSON names them and readers accept that JSON.
        if not params_renamed:
            discard_checkpoint(prepared)
            if pending_written:
                with contextlib.suppress(OSError):
                    os.remove(pending)
        raise
    new_states = (prepared.optimizer_state or {}).get("file")
    if prepared.old_states and prepared.old_states != new_states:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(os.path.dirname(os.path.abspath(path)), prepared.old_states))
    return meta


def discard_checkpoint(prepared):
    """Remove the files of a :class:`PreparedCheckpoint` that will not be committed."""
    states = (prepared.optimizer_state or {}).get("file")
    folder = os.path.dirname(os.path.abspath(prepared.path))
    _remove_new_files(prepared.weights_tmp, states and os.path.join(folder, states),
                      prepared.old_states)


def _remove_new_files(weights_tmp, states_path, old_states):
    """A failed save's files; a states file of the same name as the committed one (a save at
    the same step) is that checkpoint's and stays."""
    with contextlib.suppress(OSError):
        os.remove(weights_tmp)
    if states_path and os.path.basename(states_path) != old_states:
        with contextlib.suppress(OSError):
            os.remove(states_path)


def save_weights(net, path):
    """``net.save_parameters(path)``: the same file, without the copy of every weight that
    Gluon makes first where a parameter lives on one CPU context (144 MB for the default model).
    ``net`` may also be the ``{name: NDArray}`` to write (:func:`weights_copy`).
    """
    if isinstance(net, dict):
        mx.nd.save(path, net)
        return
    params = net._collect_params_with_prefix()
    if all(p.list_ctx() == [mx.cpu()] for p in params.values()):
        mx.nd.save(path, {name: p.data() for name, p in params.items()})
    else:
        net.save_parameters(path)


def weights_copy(net):
    """``{name: NDArray on the CPU}``: a copy of ``net``'s weights as ``save_parameters`` names
    them, for :func:`save_weights` while the network goes on being used. An inference pass may
    move a weight into another oneDNN layout in place, which a writer on another thread would
    read half-way."""
    return {name: p._reduce() for name, p in net._collect_params_with_prefix().items()}


def _link_weights(source, tmp):
    """Hard-link ``source[0]`` onto the empty temporary file ``tmp``; False where not possible.

    Every checkpoint file is replaced by a rename, never rewritten, so two names of one inode
    stay independent: the next save of one of them gives it a new inode.
    """
    if source is None:
        return False
    try:
        os.remove(tmp)
        os.link(source[0], tmp)
    except OSError:
        return False
    return True


def _finish_interrupted_commit(path):
    """Commit the pending JSON of a save killed between its two renames.

    That JSON is then the only description of the weights on disk; the new save's pending JSON
    would overwrite it, and a kill before the new weights are renamed would lose the checkpoint.
    """
    pending = meta_path(path) + ".pending"
    if not (os.path.isfile(pending) and os.path.isfile(path)):
        return
    try:
        with open(pending, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and data.get("params_sha256") == sha256_file(path):
        os.replace(pending, meta_path(path))


def remove_stale_files(checkpoint_file):
    """Delete what killed writes left beside a run's checkpoints; returns the names removed.

    That is hidden temporary files of this run's checkpoint names, and ``-stepN.states`` files
    that no JSON (committed or pending) names. Call it only while holding the run's lock.

    A ``.states`` file is kept while a checkpoint's JSON is unreadable, or missing beside its
    weights: no kill leaves that, and the optimizer state is then the user's to recover (a
    restored JSON names it again), not ours to judge.
    """
    folder = os.path.dirname(os.path.abspath(checkpoint_file))
    best, last = os.path.basename(checkpoint_file), os.path.basename(last_path(checkpoint_file))
    prefixes = [f".{name}." for name in (best, last)]
    states_prefix = os.path.splitext(last)[0] + "-step"
    prefixes.append("." + states_prefix)
    referenced, metas_intact = set(), True
    for name in (best, last):
        metas = [os.path.join(folder, meta_path(name) + suffix) for suffix in ("", ".pending")]
        if os.path.exists(os.path.join(folder, name)) and not any(map(os.path.exists, metas)):
            metas_intact = False
        for meta_file in filter(os.path.exists, metas):
            try:
                with open(meta_file, encoding="utf-8") as handle:
                    referenced.add(json.load(handle).get("optimizer_state", {}).get("file"))
            except (OSError, ValueError, AttributeError):
                metas_intact = False
    removed = []
    for name in os.listdir(folder):
        stale_temp = any(name.startswith(p) for p in prefixes) and ".tmp" in name
        orphan = metas_intact and name.startswith(states_prefix) and name.endswith(".states") \
            and name not in referenced
        if stale_temp or orphan:
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    if removed:
        log.info("removed %d file(s) left by an interrupted write: %s", len(removed),
                 ", ".join(sorted(removed)))
    return removed


def _states_file(path):
    try:
        with open(meta_path(path), encoding="utf-8") as handle:
            return json.load(handle).get("optimizer_state", {}).get("file")
    except (OSError, ValueError, AttributeError):
        return None


def _load_json(path):
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a checkpoint config (expected a JSON object)")
    return data


def read_meta(path):
    """The JSON of checkpoint ``path`` after checking that it describes these exact weights.

    Raises :class:`InputError` with one line for a missing file, a missing or unreadable JSON,
    weights that do not match the JSON's sha256 (truncated, corrupt or replaced), or a JSON that
    is not a unet checkpoint config.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"checkpoint {path} is a folder; name its .params file")
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path} does not exist")
    candidates = [meta_path(path), meta_path(path) + ".pending"]
    if not any(os.path.isfile(c) for c in candidates):
        raise InputError(f"checkpoint {path} has no config {meta_path(path)} beside it; "
                         f"it was not written by segmenter.py")
    digest = sha256_file(path)
    meta = None
    for candidate in candidates:
        if os.path.isfile(candidate):
            data = _load_json(candidate)
            if data.get("params_sha256") == digest:
                meta = data
                break
    if meta is None:
        data = _load_json(candidates[0]) if os.path.isfile(candidates[0]) else {}
        if data and data.get("format") != FORMAT:
            raise InputError(f"{candidates[0]} is not a unet checkpoint config")
        raise InputError(f"checkpoint {path} does not match its config (sha256 differs): "
                         f"the file is truncated, corrupt or was replaced")
    _validate_meta(meta, candidates[0])
    return meta


def _validate_meta(meta, name):
    if meta.get("format") != FORMAT:
        raise InputError(f"{name} is not a unet checkpoint config (format {meta.get('format')!r})")
    try:
        meta["model_config"] = ModelConfig.from_dict(meta.get("model"))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: bad model config: {exc}") from None
    data = meta.get("data")
    if not isinstance(data, dict) or not {"channels", "normalization", "encoding"} <= set(data):
        raise InputError(f"{name}: missing or incomplete 'data' section "
                         f"(channels, normalization, encoding)")
    for key in ("epoch", "global_step"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{name}: '{key}' must be a non-negative integer, "
                             f"got {meta.get(key)!r}")


def load_parameters(net, path, ctx):
    """``net.load_parameters`` with MXNet's errors turned into one :class:`InputError` line."""
    try:
        net.load_parameters(os.fspath(path), ctx=ctx)
    except (AssertionError, ValueError, mx.base.MXNetError) as exc:
        raise InputError(f"checkpoint {path} does not fit the network: {error_reason(exc)}") from None


def error_reason(exc):
    """One line for ``exc``: an OSError's strerror, else the last line of its message (MXNet's
    errors carry a C++ traceback; the last line is the one that says what)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def load_for_inference(path, ctx=None):
    """Rebuild the network from checkpoint ``path`` alone; returns ``(net, meta)``.

    Never reads the optimizer state (the only file of a run that MXNet could have pickled).
    """
    meta = read_meta(path)
    net = build_unet(meta["model_config"])
    load_parameters(net, path, ctx or mx.cpu())
    return net, meta


def load_training_state(net, trainer, path, optimizer=None):
    """Load weights and optimizer state of a last checkpoint into ``net`` and ``trainer``.

    Returns the checkpoint's meta. The optimizer state is read with MXNet's array loader, after
    its sha256 is checked against the JSON. When ``optimizer`` (a name) differs from the one the
    checkpoint was trained with, the optimizer state starts fresh.
    """
    meta = read_meta(path)
    load_parameters(net, path, trainer._contexts if trainer is not None else mx.cpu())
    state = meta.get("optimizer_state")
    saved_optimizer = meta.get("training", {}).get("optimizer")
    if state and optimizer is not None and saved_optimizer != optimizer:
        log.warning("optimizer changed from %s to %s: its state starts fresh",
                    saved_optimizer, optimizer)
        state = None
    if trainer is not None and state:
        states_path = os.path.join(os.path.dirname(os.path.abspath(path)), state["file"])
        if not os.path.isfile(states_path) or sha256_file(states_path) != state.get("sha256"):
            raise InputError(f"optimizer state {states_path} is missing or does not match "
                             f"{meta_path(path)}")
        try:
            load_optimizer_state(trainer, states_path, state)
        except (KeyError, ValueError, mx.base.MXNetError) as exc:
            raise InputError(f"optimizer state {states_path} does not fit: "
                             f"{error_reason(exc)}") from None
    return meta


def command_line():
    return " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])
