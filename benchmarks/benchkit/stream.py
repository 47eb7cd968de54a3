"""The ``stream`` row: chunked inference (``evaluate.py --output NAME.zarr`` or ``NAME.tif``)
of a synthetic Zarr section, Zarr in, Zarr or tiled TIFF out, in this process; its peak memory
should not grow with the image."""
import os
import shutil
import tempfile
import time

from .nets import build_net
from .timing import peak_rss_mb


def _write_input(path, side, chunk):
    """A ``side x side`` uint8 Zarr section of smooth stripes and noise, written chunk by chunk
    (the image is never whole in memory)."""
    import numpy as np
    import zarr
    array = zarr.open_array(path, mode="w", shape=(side, side), chunks=(chunk, chunk),
                            dtype="uint8")
    rng = np.random.default_rng(0)
    for y in range(0, side, chunk):
        for x in range(0, side, chunk):
            rows = np.arange(y, min(y + chunk, side))[:, None]
            cols = np.arange(x, min(x + chunk, side))[None, :]
            stripes = 127 + 100 * np.sin((rows + 2 * cols) / 9.0)
            noise = rng.integers(-20, 21, stripes.shape)
            array[y:y + chunk, x:x + chunk] = np.clip(stripes + noise, 0, 255).astype(np.uint8)


def run_stream(spec):
    """Segment a ``size x size`` Zarr section chunk by chunk (chunks of ``stream_chunk``) with a
    freshly initialized network of tile ``stream_tile``, once, into ``stream_output`` ('zarr'
    or 'tif').

    Returns
    -------
    dict
        ``times_ms`` (the one run), ``seconds``, ``image``, ``tile``, ``chunk``, ``chunks``,
        ``output``, ``megapixels_per_s`` and ``peak_rss_mb``.
    """
    from unet.inference.chunked import ChunkedJob, segment_chunked
    from unet.inference.segmenter import Segmenter
    side, tile, chunk = spec["size"], spec["stream_tile"], spec["stream_chunk"]
    cfg, net = build_net(spec, tile, amp_init=False)
    meta = {"model": cfg.to_dict(),
            "data": {"channels": cfg.in_channels,
                     "normalization": {"mean": [0.5] * cfg.in_channels,
                                       "std": [0.25] * cfg.in_channels},
                     "encoding": {"kind": "binary", "values": [0, 255], "colormap": None}}}
    segmenter = Segmenter(net, meta, batch_size=spec["batch"], overlap=spec["overlap"],
                          amp=spec["amp"], winograd=spec["winograd"])
    folder = tempfile.mkdtemp(prefix="bench-stream-")
    try:
        source = os.path.join(folder, "in.zarr")
        target = os.path.join(folder, "out." + spec["stream_output"])
        _write_input(source, side, chunk)
        job = ChunkedJob((), source, target, chunk=chunk)
        start = time.perf_counter()
        _, chunks = segment_chunked(job, segmenter, progress=False)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return dict(times_ms=[seconds * 1e3], seconds=seconds, image=side, tile=tile, chunk=chunk,
                chunks=chunks, output=spec["stream_output"], megapixels_per_s=side * side / 1e6 / seconds,
                peak_rss_mb=round(peak_rss_mb(), 1), images=1)
