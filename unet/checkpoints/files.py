"""The files of a checkpoint: their names, the JSON that describes the weights, and the clean-up
after a killed write.

A checkpoint ``P`` (e.g. ``unet_best.params``) is:

- ``P``: the weights, written with ``save_parameters`` (MXNet's array format, no pickle);
- ``P.json``: the model config, data normalization and mask encoding, epoch, global step,
  learning rate, best score, seeds, library versions and the sha256 of ``P``, so that
  ``evaluate.py`` rebuilds the network from the checkpoint alone;
- for the "last" checkpoint of a run also ``<stem>-stepN.states``: the optimizer state, in
  MXNet's array format too (:mod:`unet.checkpoints.optimizer_state`), named by step so an old
  one is never overwritten.

Writing them is :mod:`unet.checkpoints.writing`, reading them back into a network
:mod:`unet.checkpoints.loading`.
"""
import hashlib
import json
import logging
import os
import platform
import sys

import mxnet as mx
import numpy as np

from .. import __version__
from ..core.errors import InputError
from ..model.config import ModelConfig

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


def command_line():
    return " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])


def states_file(path):
    """The optimizer-state file that the committed JSON of ``path`` names, or None."""
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
