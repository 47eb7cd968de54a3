"""A chunked output that a killed run continues: a Zarr v2 group written chunk by chunk.

The output ``NAME.zarr`` is a group of arrays of one chunk grid: ``mask`` and, when asked,
``probabilities``; ``(H, W)`` for a section, ``(Z, H, W)`` for a stack (``(..., 3)`` for colour
masks), chunks of ``(1,) chunk x chunk``. The group's ``.zattrs`` hold the run record
(``unet_run``: checkpoints, options, input), so a later command knows whether the output is its
own to continue.

Whole or absent: zarr's DirectoryStore writes every chunk file to ``KEY.UUID.partial`` and then
renames it onto ``KEY`` (``os.replace``, atomic on one file system), so a kill leaves at worst a
``.partial`` file, which the next run removes. An output chunk is done when its ``mask`` chunk
file exists: the other arrays' chunks are written first. The group itself appears at once:
it is built in a hidden folder beside it and renamed into place. Chunks of zeros are written
too (``write_empty_chunks``), so that "present" means "done".
"""
import json
import os
import shutil
import tempfile

import zarr

from ..core import faults
from ..core.errors import InputError
from .imageio import display_path

RUN_KEY = "unet_run"
MASK = "mask"


class _Store(zarr.storage.DirectoryStore):
    """zarr's DirectoryStore (temp file, then rename), with a fault point between the two for
    the kill tests (:mod:`unet.core.faults`, point ``chunked.partial``): the chunks' store."""

    @staticmethod
    def _tofile(a, fn):
        zarr.storage.DirectoryStore._tofile(a, fn)
        faults.point("chunked.partial")


def _differing(stored, record, prefix=""):
    """The first key (dotted) whose value differs between two run records."""
    for key in sorted(set(stored) | set(record)):
        a, b = stored.get(key), record.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differing(a, b, f"{prefix}{key}.")
            if inner:
                return inner
        elif a != b:
            return prefix + key
    return None


class ChunkedOutput:
    """The chunked output at ``path`` (made by :func:`open_output`): its arrays, chunk grid and
    which chunks are done."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.name = display_path(self.path)
        store = _Store(self.path)
        self.group = zarr.open_group(store, mode="r+")
        self.arrays = {key: zarr.open_array(store, path=key, mode="r+", write_empty_chunks=True)
                       for key in self.group.array_keys()}
        mask = self.arrays[MASK]
        self.section = self.group.attrs[RUN_KEY]["input"]["section"]
        self.shape = (1,) + mask.shape[:2] if self.section else mask.shape[:3]   # (Z, H, W)
        self.chunk = mask.chunks[int(not self.section)]
        self.trailing = mask.ndim - (2 if self.section else 3)                # 1: colour masks
        self.grid = tuple(-(-n // self.chunk) for n in self.shape[1:])        # (rows, columns)

    def chunk_ids(self):
        """Every output chunk as ``(z, row, column)``, slice by slice, row-major."""
        return [(z, i, j) for z in range(self.shape[0]) for i in range(self.grid[0])
                for j in range(self.grid[1])]

    def box(self, chunk_id):
        """``(z, rows, cols)``: the slice and the pixel rows and columns of an output chunk."""
        z, i, j = chunk_id
        c, (height, width) = self.chunk, self.shape[1:]
        return z, slice(i * c, min((i + 1) * c, height)), slice(j * c, min((j + 1) * c, width))

    def _key(self, chunk_id):
        """The mask's chunk file name of ``chunk_id``."""
        z, i, j = chunk_id
        index = ((i, j) if self.section else (z, i, j)) + (0,) * self.trailing
        return ".".join(map(str, index))

    def pending(self):
        """The chunk ids not yet written, in :meth:`chunk_ids` order."""
        done = set(os.listdir(os.path.join(self.path, MASK)))
        return [chunk for chunk in self.chunk_ids() if self._key(chunk) not in done]

    def write(self, chunk_id, arrays):
        """Write the ``(h, w[, 3])`` arrays of one chunk (by array name), ``mask`` last."""
        z, rows, cols = self.box(chunk_id)
        where = (rows, cols) if self.section else (z, rows, cols)
        for key in sorted(arrays, key=lambda k: k == MASK):
            self.arrays[key][where] = arrays[key]
        faults.point("chunked.chunk")

    def remove_partial(self):
        """Delete the ``.partial`` files a killed write left (call with no writer running)."""
        for key in self.arrays:
            folder = os.path.join(self.path, key)
            for name in os.listdir(folder):
                if name.endswith(".partial"):
                    os.remove(os.path.join(folder, name))


def open_output(path, record, shape, section, chunk, arrays):
    """The chunked output at ``path`` for the run ``record``: made when absent, continued when
    it holds this run's record.

    Parameters
    ----------
    path : str
        The ``.zarr`` folder; its parent must exist.
    record : dict
        JSON-able description of the run (checkpoints, options, input); stored in the group.
    shape : tuple of int
        ``(Z, H, W)`` of the input.
    section : bool
        A 2D input: arrays ``(H, W)`` instead of ``(Z, H, W)``.
    chunk : int
        Side of the output chunks in pixels.
    arrays : dict
        ``{name: (dtype, trailing shape)}``; ``mask`` among them.

    Raises
    ------
    InputError
        ``path`` exists and is not an output of this run (another record, or not one of ours);
        the parent folder is missing or not writable.
    """
    path = os.fspath(path)
    name = display_path(path)
    record = json.loads(json.dumps(dict(record, input=dict(record["input"], section=section))))
    if os.path.exists(path):
        _check_record(path, name, record)
        output = ChunkedOutput(path)
        output.remove_partial()
        return output
    parent = os.path.dirname(os.path.abspath(path))
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise InputError(f"{name}: cannot create the output ({err.strerror})") from None
    try:
        group = zarr.open_group(zarr.storage.DirectoryStore(tmp), mode="w")
        lead = shape[1:] if section else shape
        for key, (dtype, trailing) in arrays.items():
            group.create_dataset(key, shape=tuple(lead) + tuple(trailing), dtype=dtype,
                                 chunks=(1,) * (not section) + (chunk, chunk) + tuple(trailing),
                                 fill_value=0, write_empty_chunks=True)
        group.attrs[RUN_KEY] = record
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ChunkedOutput(path)


def _check_record(path, name, record):
    """InputError unless the existing ``path`` holds the run ``record``."""
    try:
        stored = zarr.open_group(path, mode="r").attrs[RUN_KEY]
    except Exception:  # not a Zarr group, or one without our record
        raise InputError(f"{name}: exists and is not an output of evaluate.py; remove it or "
                         "choose another --output") from None
    key = _differing(stored, record)
    if key is not None:
        raise InputError(f"{name}: exists and belongs to another run ({key} differs: "
                         f"{json.dumps(_lookup(stored, key))} there, {json.dumps(_lookup(record, key))} "
                         "now); remove it or choose another --output")


def _lookup(record, dotted):
    for part in dotted.split("."):
        record = record.get(part) if isinstance(record, dict) else None
    return record
