"""Images too large for memory, read by regions: Zarr v2 arrays, OME-Zarr groups, tiled TIFFs.

:func:`open_chunked` gives a :class:`ChunkedImage`: the shape ``(Z, H, W)`` and channel count of
a 2D section (``Z == 1``) or a 3D stack, and :meth:`ChunkedImage.region`, which reads only the
stored chunks or TIFF tiles that overlap the rows and columns asked for.

- A Zarr v2 array (``zarr.open``): rank 2 is ``(Y, X)``, rank 3 ``(Z, Y, X)``, gray.
- An OME-Zarr (NGFF) group: its first multiscale's first dataset, the full resolution; the axes
  its metadata names say which is which (``t``/``z`` slices, ``c`` channels of 1 or 3, ``y``,
  ``x``; any other axis must be of length 1).
- A TIFF: every page is a slice (a single page is a section); tiled or striped, gray or RGB. Only
  the tiles (strips) that overlap a region are read and decoded.

Pixels: uint8, uint16 or float, scaled as :func:`unet.data.imageio.read_image` scales a file.
"""
import os

import numpy as np
import tifffile

from ..core.errors import InputError
from .imageio import display_path, image_from_array
from .stacks import _check_pages, _layout, _quiet_tifffile

PIXEL_TYPES = ("uint8", "uint16", "float16", "float32", "float64")
TIFF_SUFFIXES = (".tif", ".tiff")
_JPEG = {6, 7, 33007, 34892}       # TIFF compressions whose segments need the JPEG tables


def is_zarr(path):
    """Whether ``path`` is a Zarr v2 array or group (a folder with ``.zarray`` or ``.zgroup``)."""
    return any(os.path.isfile(os.path.join(path, meta)) for meta in (".zarray", ".zgroup"))


class ChunkedImage:
    """A lazily read image of ``Z`` slices of ``H x W`` pixels and ``channels`` channels.

    ``section`` is True for a single 2D image (outputs are then 2D). Subclasses implement
    :meth:`read`; :meth:`region` scales what it returns.
    """

    def __init__(self, name, shape, channels, dtype, section):
        self.name, self.shape, self.channels = name, tuple(int(n) for n in shape), channels
        self.dtype, self.section = np.dtype(dtype), section
        if self.dtype.name not in PIXEL_TYPES:
            raise InputError(f"{name}: pixel type {self.dtype}; a chunked input must be one of "
                             f"{', '.join(PIXEL_TYPES)}")
        if min(self.shape) < 1:
            raise InputError(f"{name}: empty image of shape {self.shape}")

    def read(self, z, rows, cols):
        """``(h, w, channels)`` pixels as stored of slice ``z``, rows and columns the slices
        ``rows`` and ``cols`` (steps of 1, inside the image)."""
        raise NotImplementedError

    def region(self, z, rows, cols):
        """float32 ``(h, w, channels)`` in ``[0, 1]`` (:func:`unet.data.imageio.read_image`'s
        scaling) of slice ``z``, rows ``rows``, columns ``cols``."""
        return image_from_array(self.name, self.read(z, rows, cols))

    def close(self):
        """Release the file handles (a no-op where there are none)."""


class _ZarrImage(ChunkedImage):
    """A Zarr array whose axes have the roles ``roles`` ('z', 'y', 'x', 'c' or '1' for an axis of
    length 1 that is dropped)."""

    def __init__(self, name, array, roles):
        self.array, self.roles = array, roles
        size = dict(zip(roles, array.shape))
        channels = size.get("c", 1)
        super().__init__(name, (size.get("z", 1), size["y"], size["x"]), channels, array.dtype,
                         section="z" not in roles)

    def read(self, z, rows, cols):
        where = {"z": z, "y": rows, "x": cols, "c": slice(None), "1": 0}
        block = self.array[tuple(where[role] for role in self.roles)]   # kept axes in order
        kept = [role for role in self.roles if role in "yxc"]
        if "c" not in kept:
            return block[..., None]                                    # (h, w, 1)
        return block.transpose([kept.index(role) for role in "yxc"])   # (h, w, C)


def _ome_roles(name, group):
    """``(array, roles)``: the full-resolution array of an OME-Zarr multiscale group and the
    role of each of its axes."""
    multiscales = group.attrs.get("multiscales")
    if not multiscales:
        raise InputError(f"{name}: a Zarr group without OME-Zarr 'multiscales' metadata; give "
                         "the path of one of its arrays")
    try:
        scale = multiscales[0]
        array = group[scale["datasets"][0]["path"]]
        axes = [a["name"] if isinstance(a, dict) else a for a in scale.get("axes", [])]
    except (KeyError, IndexError, TypeError) as err:
        raise InputError(f"{name}: malformed OME-Zarr multiscales metadata ({err})") from None
    axes = [str(a).lower() for a in axes] or (["z", "y", "x"] if array.ndim == 3 else ["y", "x"])
    if len(axes) != array.ndim or "y" not in axes or "x" not in axes:
        raise InputError(f"{name}: OME-Zarr axes {axes} do not fit an array of shape "
                         f"{array.shape}; they must name y and x")
    roles = []
    for axis, length in zip(axes, array.shape):
        if axis in ("y", "x", "c"):
            roles.append(axis)
        elif axis in ("z", "t") and length > 1:
            roles.append("z")
        elif length == 1:
            roles.append("1")
        else:
            raise InputError(f"{name}: OME-Zarr axis {axis} of length {length}; only one of "
                             "z and t may be longer than 1")
    if roles.count("z") > 1:
        raise InputError(f"{name}: OME-Zarr axes {axes} {tuple(array.shape)}: z and t are both "
                         "longer than 1; give one stack of slices")
    return array, roles


def _open_zarr(path, name):
    import zarr
    try:
        node = zarr.open(path, mode="r")
    except Exception as err:  # zarr raises several types for a damaged store
        raise InputError(f"{name}: cannot open as Zarr ({type(err).__name__}: {err})") from None
    if isinstance(node, zarr.hierarchy.Group):
        array, roles = _ome_roles(name, node)
    else:
        array = node
        if array.ndim not in (2, 3):
            raise InputError(f"{name}: a Zarr array of rank {array.ndim} {tuple(array.shape)}; "
                             "give a 2D section (Y, X), a 3D stack (Z, Y, X), or an OME-Zarr "
                             "group whose axes name them")
        roles = ["z", "y", "x"][3 - array.ndim:]
    if roles.count("c") and array.shape[roles.index("c")] not in (1, 3):
        raise InputError(f"{name}: {array.shape[roles.index('c')]} channels; a chunked input "
                         "must be gray or RGB")
    return _ZarrImage(name, array, roles)


class _TiffImage(ChunkedImage):
    """The pages of a TIFF as slices, read tile by tile (or strip by strip)."""

    def __init__(self, name, tif):
        self.tif = tif
        self.pages = list(tif.pages)
        page = self.pages[0]
        series = tif.series[0]
        _layout(name, series.axes, series.shape)          # one stack of gray or RGB slices
        if any(axis == "C" and length > 1 for axis, length in zip(series.axes, series.shape)) \
                and page.samplesperpixel == 1:
            raise InputError(f"{name}: TIFF axes {series.axes} store the channels as separate "
                             "pages; a chunked input needs one gray or RGB page per slice "
                             "(or a Zarr array)")
        samples = page.samplesperpixel - (page.extrasamples != () and page.samplesperpixel in
                                          (2, 4))                     # alpha dropped
        if samples not in (1, 3) or page.imagedepth != 1:
            raise InputError(f"{name}: TIFF pages of {page.samplesperpixel} samples, depth "
                             f"{page.imagedepth}; a chunked input must be gray or RGB slices")
        self.segment = (page.tilelength, page.tilewidth) if page.is_tiled else \
            (min(page.rowsperstrip, page.imagelength), page.imagewidth)       # (h, w) of a tile
        self.planes = page.shaped[0]                 # samples stored apart (planar), else 1
        super().__init__(name, (len(self.pages), page.imagelength, page.imagewidth), samples,
                         page.dtype, section=len(self.pages) == 1)

    def read(self, z, rows, cols):
        page = self.pages[z]
        out = np.zeros((rows.stop - rows.start, cols.stop - cols.start, self.channels),
                       page.dtype)
        seg_h, seg_w = self.segment
        planes = self.planes
        grid = (planes, -(-page.imagelength // seg_h), -(-page.imagewidth // seg_w))
        places = [(plane, r, c) for plane in range(planes)
                  for r in range(rows.start // seg_h, -(-rows.stop // seg_h))
                  for c in range(cols.start // seg_w, -(-cols.stop // seg_w))]
        handle, options = self.tif.filehandle, {"_fullsize": page.is_tiled}
        if page.compression in _JPEG:
            options.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        for plane, r, c in places:
            index = int(np.ravel_multi_index((plane, r, c), grid))
            data = None
            if page.databytecounts[index]:
                handle.seek(page.dataoffsets[index])
                data = handle.read(page.databytecounts[index])
            decoded, (_, _, y, x, _), _ = page.decode(data, index, **options)
            if decoded is None:                      # an empty segment: zeros
                continue
            tile = decoded[0]                        # (h, w, contig samples)
            y0, y1 = max(y, rows.start), min(y + tile.shape[0], rows.stop)
            x0, x1 = max(x, cols.start), min(x + tile.shape[1], cols.stop)
            part = tile[y0 - y:y1 - y, x0 - x:x1 - x]
            target = (slice(y0 - rows.start, y1 - rows.start),
                      slice(x0 - cols.start, x1 - cols.start))
            if planes > 1:
                if plane < self.channels:
                    out[target + (plane,)] = part[..., 0]
            else:
                out[target] = part[..., :self.channels]
        return out

    def close(self):
        self.tif.close()


def _open_tiff(path, name):
    try:
        with _quiet_tifffile():
            tif = tifffile.TiffFile(path)
    except Exception as err:  # tifffile raises many types for a damaged file
        raise InputError(f"{name}: cannot read as a TIFF ({type(err).__name__}: {err})") from None
    try:
        with _quiet_tifffile():
            _check_pages(name, tif)
            return _TiffImage(name, tif)
    except BaseException:
        tif.close()
        raise


def open_chunked(path):
    """The image at ``path`` read by regions: a Zarr array or OME-Zarr group (a folder), or a
    TIFF file. InputError (one line, naming it) for anything else, a rank, axes, pixel type or
    channel count it cannot segment, or TIFF pages of different sizes."""
    name = display_path(path)
    if os.path.isdir(path):
        if not is_zarr(path):
            raise InputError(f"{name}: a folder that is not a Zarr v2 array or group (no "
                             ".zarray or .zgroup)")
        return _open_zarr(path, name)
    if not os.path.isfile(path):
        raise InputError(f"{name}: no such file or folder")
    if not os.fspath(path).lower().endswith(TIFF_SUFFIXES):
        raise InputError(f"{name}: a chunked input is a Zarr array or group or a TIFF; "
                         "other images are read whole")
    return _open_tiff(path, name)
