"""The chunks of a chunked run spread over a Dask cluster (``dask.distributed``).

Each task is one output chunk: the worker loads the job's checkpoint on its first task and keeps
it (:func:`unet.inference.chunked.worker_state`), reads the chunk's input region and writes the
chunk into the Zarr store itself; the driver only counts finished chunks. The workers must see
the input, the output folder and the checkpoints at the same paths (one machine, or a shared
file system) and have this package installed.

Dask redoes the chunks of a worker that dies (its nanny starts a new one) up to
``distributed.scheduler.allowed-failures`` times per chunk (3 by default); a task that raises is
retried :data:`RETRIES` times. A chunk is written whole or not at all, so a chunk redone
elsewhere is never seen half-written.
"""
import contextlib
import logging

from ..core.threads import USER_OMP_THREADS, physical_cores
from .chunked import segment_chunk, worker_state

logger = logging.getLogger(__name__)

RETRIES = 2


def process_chunk(chunk_id, job):
    """A worker's task: predict and write the output chunk ``chunk_id`` of ``job``."""
    segmenter, image, output = worker_state(job)
    segment_chunk(segmenter, image, output, chunk_id, job.probabilities, job.overlay)
    return chunk_id


@contextlib.contextmanager
def _quiet_distributed():
    """distributed logs every start, connection and cancelled task at INFO: keep its warnings
    only, unless the root logger shows debug lines (``--verbose``)."""
    log = logging.getLogger("distributed")
    level = log.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def cluster_client(workers=0, scheduler=None):
    """A ``distributed.Client``: of the scheduler at ``scheduler``, else of a local cluster of
    ``workers`` processes of one task thread each, the cores shared among them
    (``OMP_NUM_THREADS``, unless set), every port on 127.0.0.1 (the scheduler's and workers'
    HTTP servers too: no dashboard); closed (the local cluster stopped) on exit."""
    from distributed import Client, LocalCluster
    with _quiet_distributed():
        if scheduler:
            with Client(scheduler) as client:
                yield client
            return
        threads = USER_OMP_THREADS or str(max(1, physical_cores() // workers))
        loopback = "127.0.0.1:0"
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=loopback,
                          worker_dashboard_address=loopback, scheduler_kwargs={"dashboard": False},
                          silence_logs=logging.WARNING, env={"OMP_NUM_THREADS": threads}) \
                as cluster, Client(cluster) as client:
            yield client


def run_on_cluster(job, pending, bar, workers=0, scheduler=None):
    """Run :func:`process_chunk` on every chunk id of ``pending``, advancing the tqdm ``bar``
    as chunks finish; the first error of a chunk (after its retries) is raised."""
    from distributed import as_completed
    with cluster_client(workers, scheduler) as client:
        logger.info("Dask cluster %s: %d workers", client.scheduler.address,
                    len(client.scheduler_info()["workers"]))
        futures = client.map(process_chunk, pending, job=job, pure=False, retries=RETRIES)
        try:
            for future in as_completed(futures):
                future.result()
                bar.update(1)
        finally:
            client.cancel(futures)
