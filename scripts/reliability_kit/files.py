"""Files made for the hostile cases: PNGs that are broken or odd but valid, pickles that leave a
mark when executed, and checkpoint JSONs edited with their sha256 fixed."""
import io
import json
import os
import struct
import zlib

import cv2
import numpy as np


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(side=20000):
    """A valid-looking PNG header declaring ``side`` x ``side`` 8-bit gray, with a tiny body."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + \
        png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def encode(array):
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def palette_png(gray):
    """A palette PNG whose palette is the gray ramp, so index == gray value."""
    from PIL import Image
    image = Image.fromarray(gray, mode="L").convert("P")
    image.putpalette([v for i in range(256) for v in (i, i, i)])
    image.putdata(list(gray.reshape(-1)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def variants(gray):
    """Valid encodings of an 8-bit gray image that must read back as the same picture."""
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 77)])
    return {"16-bit": encode(gray.astype(np.uint16) * 257), "RGBA": encode(rgba),
            "palette": palette_png(gray)}


def broken(valid):
    """Files that are not usable images, by name."""
    return {"zero-byte": b"", "truncated": valid[: len(valid) // 2],
            "text named .png": b"this is not a PNG\n", "huge header": huge_png(),
            "random bytes": np.random.RandomState(1).bytes(300),
            "garbled after the PNG signature": valid[:8] + np.random.RandomState(2).bytes(200)}


def load(path):
    """cv2.imread for any path (cv2.imread crashes on a str path holding non-UTF-8 bytes)."""
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)


def write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def states_of(params):
    """The optimizer-state file that the JSON of checkpoint ``params`` names."""
    name = read_json(params + ".json")["optimizer_state"]["file"]
    return os.path.join(os.path.dirname(params), name)


def fix_sha(params, change=None):
    """Rewrite ``params``' JSON so that its sha256 matches the file (an edited checkpoint)."""
    from unet.checkpoints.files import meta_path, sha256_file
    with open(meta_path(params), encoding="utf-8") as handle:
        meta = json.load(handle)
    if change:
        change(meta)
    meta["params_sha256"] = sha256_file(params)
    with open(meta_path(params), "w", encoding="utf-8") as handle:
        json.dump(meta, handle)


class Payload:
    """Unpickling this writes a marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
