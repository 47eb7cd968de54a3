"""Chunked inference: an input of any size segmented chunk by chunk into a Zarr or tiled TIFF
output, in bounded memory, continued after a kill, in this process or over a Dask cluster.

The output's chunk grid is the unit of work: each output chunk is predicted from its input
region plus a halo (:func:`unet.inference.blockwise.window_arrays`) and written whole
(:mod:`unet.data.chunked_store`). Memory then depends on the chunk and tile sizes, never on the
image's. A run that is killed leaves finished chunks and nothing half-written; the same command
continues it, doing only the chunks still absent. On a cluster (:mod:`.dask_chunks`) every
worker loads the checkpoint once and writes its chunks into the store itself.

A TIFF output (``NAME.tif``) is computed into the Zarr store ``NAME.tif.chunks.zarr`` the same
way, then written from it tile by tile (:mod:`unet.data.tiled_tiff`; a tile is a chunk) and the
store removed: a run killed while the TIFFs are written writes them again from the whole store.
"""
import functools
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field

from tqdm import tqdm

from ..checkpoints.files import sha256_file
from ..core import faults
from ..core.errors import InputError
from ..data.chunked_io import TIFF_SUFFIXES, open_chunked
from ..data.chunked_store import ChunkedOutput, open_output
from ..data.imageio import display_path
from ..data.tiled_tiff import check_tile, write_tiled_tiff
from .blockwise import calibrate, output_layout, window_arrays
from .segmenter import Segmenter, contexts, output_paths

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
        The ``.zarr`` output (:mod:`unet.data.chunked_store`), or a ``.tif`` mask (tiled TIFF,
        with ``NAME_prob.tif`` and ``NAME_overlay.tif`` beside it as asked).
    chunk : int, default 1024
        Side of the output chunks in pixels (a multiple of 16 for a TIFF output).
    probabilities : {None, 'png16', 'npy'}, default None
        Also write the foreground probability (uint16 or float32 array ``probabilities``;
        'png16' only for a TIFF output).
    options : tuple of (str, value), default ()
        Keyword arguments of :class:`unet.inference.segmenter.Segmenter` (batch_size, tta,
        threshold, overlap, amp, winograd), as pairs so that the job can be hashed.
    gpu_ids : tuple of int, default ()
        GPUs to run on (default: the CPU).
    overlay : bool, default False
        Also write the mask drawn over the input (uint8 RGB array ``overlay``).
    """

    checkpoints: tuple
    input_path: str
    output_path: str
    chunk: int = DEFAULT_CHUNK
    probabilities: str = None
    options: tuple = field(default=())
    gpu_ids: tuple = ()
    overlay: bool = False

    def __post_init__(self):
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise InputError(f"--chunk must be a positive number of pixels, got {self.chunk!r}")
        if self.tiff:
            check_tile(self.chunk)
            if self.probabilities == "npy":
                raise InputError("--probabilities npy: a TIFF output takes png16 (NAME_prob.tif, "
                                 "16-bit); float32 probabilities need a .zarr output")

    @property
    def tiff(self):
        """Whether the output is a tiled TIFF (else a Zarr group)."""
        return self.output_path.lower().endswith(TIFF_SUFFIXES)

    @property
    def store_path(self):
        """The Zarr store the chunks are written to: the output itself, or beside a TIFF."""
        return self.output_path + ".chunks.zarr" if self.tiff else self.output_path

    def tiff_files(self):
        """``{array name: TIFF path}`` of a TIFF output, the mask last."""
        paths = output_paths(self.output_path, ".tif")
        files = {"overlay": paths["overlay"]} if self.overlay else {}
        if self.probabilities:
            files["probabilities"] = paths[self.probabilities]
        return dict(files, mask=self.output_path)

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
                "options": dict(options, chunk=self.chunk, probabilities=self.probabilities,
                                overlay=self.overlay)}


def prepare(job, segmenter, image):
    """Open or create the job's output for ``image`` (InputError if it belongs to another run)
    and calibrate an int8 ``segmenter`` on regions of ``image``; returns the output."""
    outputs = list(job.tiff_files().values()) if job.tiff else [job.output_path]
    if os.path.realpath(job.input_path) in map(os.path.realpath, outputs + [job.store_path]):
        raise InputError(f"{display_path(job.input_path)}: an output would replace the input; "
                         "choose another --output")
    output = open_output(job.store_path, job.record(image), image.shape, image.section,
                         job.chunk, output_layout(segmenter, job.probabilities, job.overlay))
    calibrate(segmenter, image, job.chunk)
    return output


def segment_chunk(segmenter, image, output, chunk_id, probabilities=None, overlay=False):
    """Predict and write one output chunk ``(z, row, column)``."""
    z, rows, cols = output.box(chunk_id)
    output.write(chunk_id, window_arrays(segmenter, image, z, rows, cols, probabilities,
                                         overlay))


def write_tiffs(job, output, progress=False):
    """Write the TIFF files of a finished TIFF job from its store ``output``, then remove the
    store; returns the files written, the mask last."""
    files = job.tiff_files()
    for key, path in files.items():
        write_tiled_tiff(path, output.arrays[key], output.section, job.chunk, progress)
        faults.point("chunked.tiff")
    shutil.rmtree(job.store_path)
    return list(files.values())


@functools.lru_cache(maxsize=1)
def worker_state(job):
    """``(segmenter, image, output)`` of ``job`` in this process, loaded on its first chunk and
    kept for the next ones (a Dask worker loads the checkpoint once per run)."""
    segmenter = job.load_segmenter()
    image = open_chunked(job.input_path)
    calibrate(segmenter, image, job.chunk)
    return segmenter, image, ChunkedOutput(job.store_path)


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
    tuple of (list of str, int)
        The outputs written (the ``.zarr`` group, or the TIFF files, the mask last) and the
        number of chunks computed by this call (those a killed run finished are not redone).

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
        logger.info("%s: %d of %d chunks of %d px to do (%s)", display_path(job.store_path),
                    len(pending), total, job.chunk, "x".join(map(str, image.shape)))
        if checked is not None:
            checked()
        with tqdm(desc="chunks", unit="chunk", total=total, initial=total - len(pending),
                  disable=None if progress else True, file=sys.stderr) as bar:
            if pending and (workers or scheduler):
                from .dask_chunks import run_on_cluster
                run_on_cluster(job, pending, bar, workers=workers, scheduler=scheduler)
            else:
                for chunk_id in pending:
                    segment_chunk(segmenter, image, output, chunk_id, job.probabilities,
                                  job.overlay)
                    bar.update(1)
        output.remove_partial()          # what a killed worker left; no writer runs now
    finally:
        image.close()
    written = write_tiffs(job, output, progress) if job.tiff else [job.output_path]
    return written, len(pending)
