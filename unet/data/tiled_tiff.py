"""Tiled TIFF outputs written tile by tile from a chunked array, in the memory of one tile.

A section or a stack of any size becomes a TIFF of one page per slice, cut in square tiles
(zlib-compressed) that TIFF readers and viewers (Fiji, QuPath, napari, tifffile) read one by one.
Each tile is read from the source array when tifffile asks for it: with the tile equal to the
source's chunk, one chunk is decoded per tile and nothing else is held.
"""
import sys

import numpy as np
import tifffile
from tqdm import tqdm

from ..core import faults
from ..core.atomic import remove_temps_beside
from ..core.errors import InputError
from .imageio import display_path, write_file

TILE_MULTIPLE = 16        # the TIFF specification's rule for tile sides


def check_tile(tile):
    """InputError unless ``tile`` pixels can be the side of a TIFF tile (a multiple of 16)."""
    if tile % TILE_MULTIPLE:
        raise InputError(f"--chunk {tile}: a tiled TIFF output needs chunks whose side is a "
                         f"multiple of {TILE_MULTIPLE} (its tiles are the chunks), e.g. "
                         f"{max(TILE_MULTIPLE, tile // TILE_MULTIPLE * TILE_MULTIPLE)}")


def write_tiled_tiff(path, array, section, tile, progress=False):
    """Atomically write ``array`` as a tiled TIFF, one page per slice.

    Parameters
    ----------
    path : str
        Destination (written to a temporary file beside it, then renamed).
    array : array-like
        Sliced like a NumPy array (a Zarr array): ``(H, W)`` or ``(H, W, 3)`` for a ``section``,
        ``(Z, H, W)`` or ``(Z, H, W, 3)`` otherwise; uint8, uint16 or float32. A trailing 3 is
        written as RGB.
    section : bool
        A single 2D image: one page.
    tile : int
        Side of the tiles in pixels, a multiple of 16; the tiles at the right and bottom edges
        are zero-padded, as TIFF stores them.
    progress : bool, default False
        A bar over the tiles on stderr.

    Returns
    -------
    str
        ``path``.
    """
    check_tile(tile)
    shape = tuple(array.shape)
    depth, height, width = ((1,) + shape if section else shape)[:3]
    rgb = shape[-1:] == (3,) and len(shape) == 3 + (not section)
    places = [(z, y, x) for z in range(depth) for y in range(0, height, tile)
              for x in range(0, width, tile)]

    def tiles(bar):
        for z, y, x in places:
            where = (slice(y, y + tile), slice(x, x + tile))
            tile_pixels = np.ascontiguousarray(array[where if section else (z,) + where])
            bar.update(1)
            faults.point("tiff.tile")
            yield tile_pixels

    def write(tmp):
        with tqdm(desc=f"writing {display_path(path)}", unit="tile", total=len(places),
                  disable=None if progress else True, file=sys.stderr) as bar:
            tifffile.imwrite(tmp, tiles(bar), shape=shape, dtype=array.dtype, tile=(tile, tile),
                             photometric="rgb" if rgb else "minisblack", compression="zlib",
                             metadata={"axes": "ZYXS"[section:len(shape) + section]})

    remove_temps_beside(path)     # a killed write is done again whole, never continued
    write_file(path, write)
    return path

