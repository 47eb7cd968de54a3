"""Several devices and several machines: kvstore creation, data sharding and batch splitting.

One machine, several devices (``--gpu-id 0,1``): the batch is split across the contexts with
:func:`split_batch`, each context computes its part's gradient, and the Trainer's ``'device'``
kvstore sums them before every update, so the result equals one device on the same total batch
(within float rounding; BatchNorm statistics are the exception, they are computed per device).

Several machines (``--kvstore dist_sync``): every worker process runs the same training script
under ``python -m unet.launch``, which sets the ``DMLC_*`` variables. What the training loop must
do, and what these helpers give it:

- :func:`create_kvstore` connects to the cluster and returns this worker's rank and the number of
  workers. ``Trainer(..., kvstore=kv, **trainer_kwargs(kv_name))``.
- Each worker reads its own shard, :func:`shard_indices`. Under ``dist_sync`` every worker must
  run the same number of steps: a worker with one step more waits forever for the others' push.
- The kvstore sums the workers' gradients, so call ``trainer.step(local_batch * num_workers)``
  (:func:`global_batch_size`) to get the mean gradient of the global batch, as on one machine.
- Validation, logs and checkpoints are written by rank 0 only. The workers need no barrier for
  that: a worker that is ahead simply waits in its next push.
- Resume: ``update_on_kvstore=False`` makes every worker run the optimizer itself on the same
  summed gradient, so ``Trainer.save_states`` works and the states are identical on all workers.
  On resume *every* worker must load the same params and states files (the project and its data
  must be at the same path on every host); the weights alone would be broadcast from rank 0 by
  ``kv.init``, but the optimizer states would not, and the workers would drift apart.
- ``dist_async`` needs ``update_on_kvstore=True`` (MXNet refuses otherwise): the optimizer runs on
  the servers and ``Trainer.save_states`` raises, so an async run cannot checkpoint its optimizer.
"""
import contextlib
import logging
import os
import sys

import mxnet as mx
from mxnet import gluon

from ..core.errors import InputError

log = logging.getLogger(__name__)

LOCAL_KVSTORES = ("device", "local")
DIST_KVSTORES = ("dist_sync", "dist_async", "dist_sync_device")
KVSTORES = LOCAL_KVSTORES + DIST_KVSTORES
CLUSTER_ENV = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER",
               "DMLC_NUM_WORKER")


def check_cluster_env(name, environ=None):
    """Raise :class:`InputError` unless ``environ`` describes a worker of a cluster.

    Parameters
    ----------
    name : str
        The requested kvstore, for the message.
    environ : mapping, default ``os.environ``
    """
    environ = os.environ if environ is None else environ
    missing = [key for key in CLUSTER_ENV if not environ.get(key)]
    if missing:
        raise InputError(f"kvstore {name!r} needs a cluster but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not set: run it through "
                         f"python -m unet.launch -n WORKERS COMMAND...")
    if environ["DMLC_ROLE"] != "worker":
        raise InputError(f"kvstore {name!r}: DMLC_ROLE is {environ['DMLC_ROLE']!r}, "
                         f"the training script must run as a worker (python -m unet.launch)")


def create_kvstore(name, num_devices):
    """Make the kvstore for ``name`` and say where this process stands in the cluster.

    Parameters
    ----------
    name : {'device', 'local', 'dist_sync', 'dist_async', 'dist_sync_device'}
        ``'device'`` sums gradients on the devices, ``'local'`` on the CPU; the ``dist_*`` kinds
        connect to the parameter-server cluster started by ``python -m unet.launch``.
    num_devices : int
        Devices (contexts) this process trains on, >= 1.

    Returns
    -------
    kvstore : str, KVStore or None
        What to pass as the Trainer's ``kvstore``: None for a single local device (no kvstore is
        needed), the name for several local devices (the Trainer creates it), a connected
        ``KVStore`` for dist. Creating a dist kvstore blocks until the whole cluster is up.
    rank : int
        This worker's rank, 0 outside a cluster. ps-lite assigns it in the order the workers
        register, so it need not match the launcher's worker number.
    num_workers : int
        Workers in the cluster, 1 outside one.
    is_dist : bool
    """
    if name not in KVSTORES:
        raise ValueError(f"kvstore must be one of {KVSTORES}, got {name!r}")
    if int(num_devices) < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices!r}")
    if name in LOCAL_KVSTORES:
        return (name if num_devices > 1 else None), 0, 1, False
    check_cluster_env(name)
    kv = mx.kv.create(name)
    log.info("kvstore %s: worker %d of %d, %d device(s)", name, kv.rank, kv.num_workers,
             num_devices)
    return kv, kv.rank, kv.num_workers, True


def trainer_kwargs(name):
    """Extra keyword arguments for ``gluon.Trainer`` under kvstore ``name``.

    ``{'update_on_kvstore': False}`` for ``dist_sync`` and ``dist_sync_device``, so that the
    workers update locally and ``Trainer.save_states`` works (with the default, the optimizer runs
    on the servers and saving states raises ``Cannot save states for distributed training``).
    ``dist_async`` requires ``update_on_kvstore=True``; local kvstores use MXNet's default: ``{}``.
    """
    if name not in KVSTORES:
        raise ValueError(f"kvstore must be one of {KVSTORES}, got {name!r}")
    if name == "dist_async":
        return {"update_on_kvstore": True}
    if name in DIST_KVSTORES:
        return {"update_on_kvstore": False}
    return {}


def can_save_trainer_states(name):
    """Whether ``Trainer.save_states`` works under kvstore ``name`` (all but ``dist_async``)."""
    return trainer_kwargs(name).get("update_on_kvstore") is not True


def sync_initial_params(trainer):
    """Give every worker rank 0's weights now, before the first training step.

    The Trainer broadcasts rank 0's weights lazily, in its first ``step``: that first step's
    gradients would then come from each worker's own initialization. Call this once after
    creating the Trainer under ``dist_sync`` (or seed every worker the same); it does nothing for
    a Trainer with ``update_on_kvstore`` not False (MXNet then refuses a later change of batch
    size). It uses the Trainer's private ``_init_kvstore``/``_init_params``, as ``save_states``
    does, and waits until the broadcast is done.

    The parameters must be initialized with known shapes (no deferred initialization): give the
    layers their input channels, or call :func:`unet.model.network.finish_deferred_init` (shape
    inference, no forward pass), as the training loop does. A forward pass in inference mode
    reorders convolution weights in place into a oneDNN layout that the dist kvstore cannot send:
    rank 0's init push fails ("We can't generate TBlob for MKLDNN data"), raised here as
    ``ValueError``, and the server aborts with "init N first".
    """
    if trainer._kvstore_params.get("update_on_kvstore") is not False:
        return
    deferred = [p.name for p in trainer._params if p._deferred_init]
    if deferred:
        raise ValueError(f"parameters {deferred[:3]} are not initialized yet: call "
                         f"unet.model.network.finish_deferred_init before sync_initial_params")
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    try:
        mx.nd.waitall()
    except mx.base.MXNetError as err:
        if "MKLDNN" not in str(err):
            raise
        raise ValueError("cannot broadcast weights in a oneDNN layout: finish the deferred "
                         "shapes by unet.model.network.finish_deferred_init, not by an "
                         "inference-mode forward pass") from None


def finish(is_dist):
    """Wait for every pending kvstore push and pull; call it when a dist training run ends.

    A worker whose interpreter exits with a push or pull still in flight hangs in ps-lite's
    shutdown, and the whole cluster with it.
    """
    if is_dist:
        mx.nd.waitall()


def in_cluster(environ=None):
    """Whether this process is a worker started by ``python -m unet.launch``."""
    return (os.environ if environ is None else environ).get("DMLC_ROLE") == "worker"


def hard_exit(code):
    """End this process now with ``code``, skipping the interpreter's shutdown.

    For a cluster worker that failed: its normal exit would wait in the kvstore's shutdown for
    the other workers forever, so the launcher would never learn of the failure. Flushes the
    logging handlers and standard streams, then ``os._exit(code)``.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def global_batch_size(local_batch, num_workers):
    """The batch size to pass to ``trainer.step``: the kvstore sums all workers' gradients."""
    if local_batch < 1 or num_workers < 1:
        raise ValueError(f"local_batch and num_workers must be >= 1, got {local_batch!r}, "
                         f"{num_workers!r}")
    return local_batch * num_workers


def shard_indices(num_samples, rank, num_workers):
    """The sample indices worker ``rank`` trains on: every ``num_workers``-th sample from ``rank``.

    The shards are disjoint and together cover ``range(num_samples)``. Shards that come out one
    sample short are padded with their own first sample, so that every worker has
    ``ceil(num_samples / num_workers)`` samples and runs the same number of steps per epoch,
    which ``dist_sync`` requires.

    Returns
    -------
    list of int
    """
    if num_workers < 1 or not 0 <= rank < num_workers:
        raise ValueError(f"need 0 <= rank < num_workers, got rank={rank!r}, "
                         f"num_workers={num_workers!r}")
    if num_samples < num_workers:
        raise InputError(f"the training set has {num_samples} sample(s), fewer than the "
                         f"{num_workers} workers: every worker needs at least one")
    shard = list(range(rank, num_samples, num_workers))
    size = -(-num_samples // num_workers)
    return shard + shard[:size - len(shard)]


def split_batch(batch, ctx_list):
    """Split ``batch`` along axis 0 into one slice per context and copy each there.

    A thin wrapper over ``gluon.utils.split_and_load(..., even_split=False)``: a batch of 5 on
    2 contexts gives slices of 3 and 2 (pass ``trainer.step`` the total, 5). A batch smaller
    than the number of contexts raises ``ValueError``.

    Parameters
    ----------
    batch : NDArray or numpy.ndarray, shape (N, ...)
    ctx_list : list of Context

    Returns
    -------
    list of NDArray, one per context
    """
    if not ctx_list:
        raise ValueError(f"ctx_list must name at least one context, got {ctx_list!r}")
    if batch.shape[0] < len(ctx_list):
        raise ValueError(f"a batch of {batch.shape[0]} cannot be split over "
                         f"{len(ctx_list)} contexts")
    return gluon.utils.split_and_load(batch, ctx_list, batch_axis=0, even_split=False)
