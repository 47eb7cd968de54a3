"""Chunked inference: an input of any size segmented chunk by chunk into a Zarr output, in
bounded memory, continued after a kill, in this process or over a Dask cluster.

The output's chunk grid is the unit of work: each output chunk is predicted from its input
region plus a halo (:func:`unet.inference.blockwise.window_arrays`) and written whole
(:mod:`unet.data.chunked_store`). Memory then depends on the chunk and tile sizes, never on the
image's. A run that is killed leaves finished chunks and nothing half-written; the same command
continues it, doing only the chunks still absent. On a cluster (:mod:`.dask_chunks`) every
worker loads the checkpoint once and writes its chunks into the store itself.
"""
import functools
import logging
import os
import sys
from dataclasses import dataclass, field

from tqdm import tqdm

from ..checkpoints.files import sha256_file
from ..core.errors import InputError
from ..data.chunked_io import open_chunked
from ..data.chunked_store import ChunkedOutput, open_output
from ..data.imageio import display_path
from .blockwise import calibrate, output_layout, window_arrays
from .segmenter import Segmenter, contexts

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 1024


@dataclass(frozen=True)
class ChunkedJob:
    """Everything a process of a chunked run needs, in plain values (it is sent to workers).

    Parameters
    ----------
    checkpoints : tuple of str
        One checkpoint, or an ensemble's.
    input_path : str
        A Zarr array, an OME-Zarr group or a TIFF (:func:`unet.data.chunked_io.open_chunked`).
    output_path : str
        The ``.zarr`` output (:mod:`unet.data.chunked_store`).
    chunk : int, default 1024
        Side of the output chunks in pixels.
    probabilities : {None, 'png16', 'npy'}, default None
        Also write the foreground probability (uint16 or float32 array ``probabilities``).
    options : tuple of (str, value), default ()
        Keyword arguments of :class:`unet.inference.segmenter.Segmenter` (batch_size, tta,
        threshold, overlap, amp, winograd), as pairs so that the job can be hashed.
    gpu_ids : tuple of int, default ()
        GPUs to run on (default: the CPU).
    """

    checkpoints: tuple
    input_path: str
    output_path: str
    chunk: int = DEFAULT_CHUNK
    probabilities: str = None
    options: tuple = field(default=())
    gpu_ids: tuple = ()

    def __post_init__(self):
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise InputError(f"--chunk must be a positive number of pixels, got {self.chunk!r}")

    def load_segmenter(self):
        """The :class:`Segmenter` of the job's checkpoints and options."""
        return Segmenter.from_checkpoints(self.checkpoints, ctx=contexts(self.gpu_ids),
                                          **dict(self.options))

    def record(self, image):
        """The run record kept in the output: what makes two commands the same run (the batch
        size and the Winograd kernel change results only by float rounding: not in it)."""
        options = {key: value for key, value in self.options
                   if key not in ("batch_size", "winograd")}
        return {"checkpoints": [sha256_file(path) for path in self.checkpoints],
                "input": {"path": os.path.realpath(self.input_path), "shape": image.shape,
                          "channels": image.channels, "dtype": image.dtype.name},
                "options": dict(options, chunk=self.chunk, probabilities=self.probabilities)}


def prepare(job, segmenter, image):
    """Open or create the job's output for ``image`` (InputError if it belongs to another run)
    and calibrate an int8 ``segmenter`` on regions of ``image``; returns the output."""
    if os.path.realpath(job.output_path) == os.path.realpath(job.input_path):
        raise InputError(f"{display_path(job.output_path)}: the output would replace the input; "
                         "choose another --output")
    output = open_output(job.output_path, job.record(image), image.shape, image.section,
                         job.chunk, output_layout(segmenter, job.probabilities))
    calibrate(segmenter, image, job.chunk)
    return output


def segment_chunk(segmenter, image, output, chunk_id, probabilities=None):
    """Predict and write one output chunk ``(z, row, column)``."""
    z, rows, cols = output.box(chunk_id)
    output.write(chunk_id, window_arrays(segmenter, image, z, rows, cols, probabilities))


@functools.lru_cache(maxsize=1)
def worker_state(job):
    """``(segmenter, image, output)`` of ``job`` in this process, loaded on its first chunk and
    kept for the next ones (a Dask worker loads the checkpoint once per run)."""
    segmenter = job.load_segmenter()
    image = open_chunked(job.input_path)
    calibrate(segmenter, image, job.chunk)
    return segmenter, image, ChunkedOutput(job.output_path)


def segment_chunked(job, segmenter=None, progress=True, workers=0, scheduler=None,
                    checked=None):
    """Segment ``job.input_path`` into the chunked output ``job.output_path``.

    Parameters
    ----------
    job : ChunkedJob
    segmenter : Segmenter, default None
        Already loaded from the job (default: loaded here).
    progress : bool, default True
        A bar over the output chunks on stderr.
    workers : int, default 0
        Run on a local Dask cluster of this many worker processes (0: in this process).
    scheduler : str, default None
        Run on the Dask cluster of this scheduler address instead.
    checked : callable, default None
        Called without arguments once the input and output are checked, before the work
        (``evaluate.py``: to release the log lines held until then).

    Returns
    -------
    tuple of (str, int)
        The output path and the number of chunks computed by this call (those a killed run
        finished are not redone).

    Raises
    ------
    InputError
        A bad input (rank, pixel type, channels, TIFF pages), an output of another run.
    """
    segmenter = segmenter if segmenter is not None else job.load_segmenter()
    image = open_chunked(job.input_path)
    try:
        output = prepare(job, segmenter, image)
        pending = output.pending()
        total = len(output.chunk_ids())
        logger.info("%s: %d of %d chunks of %d px to do (%s)", display_path(job.output_path),
                    len(pending), total, job.chunk, "x".join(map(str, image.shape)))
        if checked is not None:
            checked()
        with tqdm(desc="chunks", unit="chunk", total=total, initial=total - len(pending),
                  disable=not progress, file=sys.stderr) as bar:
            if pending and (workers or scheduler):
                from .dask_chunks import run_on_cluster
                run_on_cluster(job, pending, bar, workers=workers, scheduler=scheduler)
            else:
                for chunk_id in pending:
                    segment_chunk(segmenter, image, output, chunk_id, job.probabilities)
                    bar.update(1)
        output.remove_partial()          # what a killed worker left; no writer runs now
    finally:
        image.close()
    return job.output_path, len(pending)
