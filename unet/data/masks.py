"""Mask formats: how class indices are stored in mask files, and the conversions both ways.

Users save masks in three ways, and the network must see class indices ``0..K-1`` whatever the
file holds:

- ``'binary'``: two classes stored as 0/255 (or 0/1, or 0/65535); class ``i`` is ``values[i]``.
  A 0/255 mask is never fed as class 255.
- ``'index'``: class ``i`` stored as the value ``i`` (gray or palette-index PNGs).
- ``'color'``: RGB masks; class ``i`` is the colour ``colormap[i] = [r, g, b]``.

The format is inferred once from the union of values in all training masks
(:func:`infer_encoding`) and stored in the checkpoint (:meth:`MaskEncoding.to_dict`), so that
inference writes predictions in the same format.
"""
import logging
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import InputError

log = logging.getLogger(__name__)

KINDS = ("binary", "index", "color")
_BINARY_VALUES = ([0, 255], [0, 1], [0, 65535])
_SHOW = 8  # unexpected values listed in an error message


def _pack(rgb):
    """(..., 3) integer colours -> (...) int64 keys."""
    rgb = np.asarray(rgb, np.int64)
    return (rgb[..., 0] << 32) | (rgb[..., 1] << 16) | rgb[..., 2]


def listing(values):
    """Sorted mask values (ints and/or colours) as short text for an error message."""
    values = sorted(values, key=lambda v: v if isinstance(v, tuple) else (v, v, v))
    more = f" and {len(values) - _SHOW} more" if len(values) > _SHOW else ""
    return ", ".join(str(list(v) if isinstance(v, tuple) else v) for v in values[:_SHOW]) + more


def unique_values(raw):
    """Return the set of values in a mask as read by :func:`unet.data.imageio.read_mask`.

    Ints for ``(H, W)`` masks, ``(r, g, b)`` tuples for ``(H, W, 3)`` masks.
    """
    raw = np.asarray(raw)
    if raw.ndim == 2:
        return {int(v) for v in np.unique(raw)}
    if raw.ndim == 3 and raw.shape[2] == 3:
        return {tuple(int(c) for c in v) for v in np.unique(raw.reshape(-1, 3), axis=0)}
    raise ValueError(f"mask must be (H, W) or (H, W, 3), got shape {raw.shape}")


@dataclass
class MaskEncoding:
    """How class indices are stored in mask files.

    Parameters
    ----------
    kind : {'binary', 'index', 'color'}
    values : list of int
        Class ``i`` is stored as ``values[i]``; ``[0, 255]`` or ``[0, 1]`` (or ``[0, 65535]``) for
        binary, ``[0, 1, ..., K-1]`` for index, ``[0, ..., K-1]`` (unused) for color.
    colormap : list of [r, g, b], optional
        Required for ``'color'``: ``colormap[i]`` is the colour of class ``i``.
    """

    kind: str
    values: list
    colormap: list = field(default=None)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"mask encoding kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "color":
            if not isinstance(self.colormap, (list, tuple)) or len(self.colormap) < 2:
                raise ValueError(f"color encoding needs a colormap of >= 2 colours, got "
                                 f"{self.colormap!r}")
            if any(not isinstance(c, (list, tuple)) or len(c) != 3
                   or any(not isinstance(x, (int, np.integer)) or not 0 <= x <= 65535 for x in c)
                   for c in self.colormap):
                raise ValueError(f"colormap entries must be [r, g, b] integers, got "
                                 f"{self.colormap!r}")
            self.colormap = [[int(x) for x in c] for c in self.colormap]
            if len({tuple(c) for c in self.colormap}) != len(self.colormap):
                raise ValueError(f"colormap has repeated colours: {self.colormap!r}")
            self.values = list(range(len(self.colormap)))
            return
        if not isinstance(self.values, (list, tuple)) or \
                any(not isinstance(v, (int, np.integer)) for v in self.values):
            raise ValueError(f"mask encoding values must be a list of ints, got {self.values!r}")
        self.values = [int(v) for v in self.values]
        if self.kind == "binary" and self.values not in _BINARY_VALUES:
            raise ValueError(f"binary values must be one of {_BINARY_VALUES}, got {self.values}")
        if self.kind == "index" and (len(self.values) < 2
                                     or self.values != list(range(len(self.values)))):
            raise ValueError(f"index values must be [0, 1, ..., K-1] with K >= 2, got "
                             f"{self.values}")
        if self.colormap is not None:
            raise ValueError(f"a colormap only goes with kind 'color', not {self.kind!r}")

    @property
    def num_classes(self):
        """Number of classes ``K``."""
        return len(self.colormap) if self.kind == "color" else len(self.values)

    def to_dict(self):
        """Plain JSON-able dict; :meth:`from_dict` inverts it."""
        return {"kind": self.kind, "values": list(self.values), "colormap": self.colormap}

    @classmethod
    def from_dict(cls, d):
        """Rebuild from :meth:`to_dict` output; ``ValueError`` on a malformed dict."""
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError(f"mask encoding must be a dict with a 'kind', got {d!r}")
        unknown = set(d) - {"kind", "values", "colormap"}
        if unknown:
            raise ValueError(f"mask encoding has unknown keys {sorted(unknown)}")
        return cls(kind=d["kind"], values=d.get("values", []), colormap=d.get("colormap"))

    def _fail(self, message, name):
        if name is not None:
            raise InputError(f"{name}: {message}")
        raise ValueError(message)

    def decode(self, raw, name=None):
        """Convert a stored mask to class indices.

        Parameters
        ----------
        raw : numpy.ndarray
            Integer ``(H, W)``, or ``(H, W, 3)`` for colour (a 2-D mask is read as gray colours).
        name : str, optional
            The mask's file name. With it, bad values raise :class:`InputError` naming the file;
            without it, ``ValueError``.

        Returns
        -------
        numpy.ndarray
            int32 ``(H, W)`` in ``0..K-1``.
        """
        raw = np.asarray(raw)
        if self.kind == "color":
            if raw.ndim == 2:
                raw = np.repeat(raw[:, :, None], 3, axis=2)
            if raw.ndim != 3 or raw.shape[2] != 3:
                self._fail(f"colour mask must be (H, W, 3), got shape {raw.shape}", name)
            keys, table = _pack(raw), _pack(self.colormap)
        else:
            if raw.ndim != 2:
                self._fail(f"{self.kind} masks must be single-channel, got a colour mask of "
                           f"shape {raw.shape}", name)
            keys, table = raw.astype(np.int64), np.asarray(self.values, np.int64)
        order = np.argsort(table)
        pos = np.searchsorted(table[order], keys).clip(0, len(table) - 1)
        found = table[order][pos] == keys
        if not found.all():
            bad = raw[~found] if self.kind != "color" else raw[~found].reshape(-1, 3)
            self._fail(f"unexpected mask values {listing(unique_values(_as_mask(bad)))} for "
                       f"{self._describe()}", name)
        return order[pos].astype(np.int32)

    def encode(self, classes):
        """Convert class indices ``(H, W)`` to stored values.

        Returns uint8 ``(H, W)``, or ``(H, W, 3)`` for colour (uint16 when a stored value is over
        255). ``ValueError`` on indices outside ``0..K-1``.
        """
        classes = np.asarray(classes)
        if classes.ndim != 2 or not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"classes must be an integer (H, W) array, got {classes.dtype} "
                             f"{classes.shape}")
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(f"class indices must be in 0..{self.num_classes - 1}, got "
                             f"{classes.min()}..{classes.max()}")
        table = np.asarray(self.colormap if self.kind == "color" else self.values)
        dtype = np.uint8 if table.max() <= 255 else np.uint16
        return table.astype(dtype)[classes]

    def _describe(self):
        if self.kind == "color":
            return f"colormap {self.colormap}"
        return f"{self.kind} encoding with values {self.values}"


def _as_mask(pixels):
    """Pixels picked with a boolean index, (N,) or (N, 3), as a mask for unique_values."""
    return pixels[None, :] if pixels.ndim == 1 else pixels[None, :, :]


def infer_encoding(found_values, num_classes, colormap=None):
    """Decide the mask format from the values found in all training masks.

    Parameters
    ----------
    found_values : iterable
        The union of :func:`unique_values` over the masks: ints for gray masks, ``(r, g, b)``
        tuples for colour masks (a gray value ``v`` counts as the colour ``(v, v, v)``).
    num_classes : int
        ``K``, at least 2.
    colormap : list of [r, g, b], optional
        The colours of classes ``0..K-1``. Without it, colour masks must show exactly ``K``
        colours, which are taken in sorted order.

    Returns
    -------
    MaskEncoding
        ``{0, 255}``, ``{0, 1}`` or ``{0, 65535}`` (or a subset) with ``K == 2`` is binary; values
        in ``0..K-1`` are index; colours give colour.

    Raises
    ------
    InputError
        Values that fit no format, or a colormap that does not fit ``num_classes``.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    found = {tuple(int(c) for c in v) if isinstance(v, (tuple, list, np.ndarray)) else int(v)
             for v in found_values}
    if not found:
        raise ValueError("found_values is empty: no mask values were collected")
    colours = {v for v in found if isinstance(v, tuple)}
    if colormap is not None or colours:
        return _infer_colour(found, num_classes, colormap)
    if num_classes == 2:
        for values in _BINARY_VALUES:
            if found <= set(values) and (found != {0} or values == [0, 255]):
                if found == {0}:
                    log.warning("every mask is all 0 (background only)")
                return MaskEncoding("binary", list(values))
    if found <= set(range(num_classes)):
        return MaskEncoding("index", list(range(num_classes)))
    candidates = [set(v) for v in _BINARY_VALUES] if num_classes == 2 else [set(range(num_classes))]
    closest = min(candidates, key=lambda c: (len(found - c), sorted(c)[-1]))
    if num_classes == 2:
        expected = f"0/255 or 0/1 (binary); closest: {'/'.join(map(str, sorted(closest)))}"
    else:
        expected = f"class indices 0..{num_classes - 1}"
    raise InputError(f"mask values {listing(found - closest)} fit no mask format for "
                     f"num_classes={num_classes}: expected {expected}, or RGB masks with a "
                     "colormap (masks must be saved losslessly, e.g. PNG, not JPEG)")


def _infer_colour(found, num_classes, colormap):
    colours = {v if isinstance(v, tuple) else (v, v, v) for v in found}
    if colormap is not None:
        try:
            encoding = MaskEncoding("color", [], [list(c) for c in colormap])
        except (TypeError, ValueError) as err:
            raise InputError(f"bad colormap: {err}") from None
        if encoding.num_classes != num_classes:
            raise InputError(f"colormap has {encoding.num_classes} colours but num_classes is "
                             f"{num_classes}")
        unknown = colours - {tuple(c) for c in encoding.colormap}
        if unknown:
            raise InputError(f"mask colours {listing(unknown)} are not in the colormap "
                             f"{encoding.colormap}")
        return encoding
    if len(colours) != num_classes:
        raise InputError(f"colour masks show {len(colours)} colours ({listing(colours)}) but "
                         f"num_classes is {num_classes}: each class needs one colour "
                         "(--num-classes sets the number of classes)")
    return MaskEncoding("color", [], [list(c) for c in sorted(colours)])
