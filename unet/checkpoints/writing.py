"""Writing a checkpoint (:mod:`unet.checkpoints.files` says what its files are) so that a crash
at any moment leaves the old or the new one whole.

Commit protocol: the new JSON is first written whole to ``P.json.pending``, then the weights are
renamed onto ``P``, then the pending JSON onto ``P.json``. A crash between the two renames leaves
a pending JSON whose sha256 matches ``P``; readers accept it, and the next save commits it first.
The slow half (:func:`prepare_checkpoint`: write and hash) may run on another thread; the quick
half (:func:`commit_checkpoint`: the renames) runs when the checkpoint is due.
"""
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import time

import mxnet as mx

from ..core import faults
from ..core.atomic import fsync_dir, fsync_file, temp_path_beside, write_json
from .files import FORMAT, FORMAT_VERSION, library_versions, meta_path, sha256_file, states_file
from .optimizer_state import save_optimizer_state


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
    old_states = states_file(path)
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
