"""segmenter.py on training data with one broken file (refused, naming it), and on data that is
odd but valid (16-bit, RGBA, palette, odd names: trained as the 8-bit data is)."""
import os

import numpy as np

from ..files import broken, encode, load, read_json, variants, write
from ..judge import error_case, ok_case


def edited_data(ws, f, edit):
    """A copy of the dataset in ``f``, changed by ``edit(data folder)``."""
    data = ws.copy_data(f)
    edit(data)
    return data


def train_into(ws, data, f):
    """segmenter.py's argv for one epoch on ``data``, its checkpoint in ``f``."""
    return ws.train_args(data, os.path.join(f, "ck", "u.params"))


def bad_file(ws, label, kind, data_bytes):
    """Training file ``train/<kind>/1.png`` replaced by ``data_bytes``: refused, naming it."""
    def case(f):
        data = edited_data(ws, f, lambda d: write(os.path.join(d, "train", kind, "1.png"),
                                                  data_bytes))
        return error_case("segmenter", train_into(ws, data, f), "1.png")
    return f"segmenter: {kind} {label}", case


def bad_file_cases(ws):
    valid = encode(ws.gray)
    for label, data_bytes in broken(valid).items():
        yield bad_file(ws, label, "image", data_bytes)
    for label in ("zero-byte", "truncated", "huge header"):
        yield bad_file(ws, label, "mask", broken(valid)[label])
    yield bad_file(ws, "with values 0, 128, 255 for 2 classes", "mask",
                   encode(np.repeat(np.array([0, 128, 255], np.uint8), [22, 21, 21])[None]
                          .repeat(64, 0)))
    yield bad_file(ws, "of another size", "mask", encode(np.zeros((32, 64), np.uint8)))
    yield bad_file(ws, "1x1 beside a 64x64 image", "mask", encode(np.zeros((1, 1), np.uint8)))


def same_training(ws, f, channels):
    """The run in ``f`` saw ``channels`` channels, the mask encoding and the normalization of
    the workspace's run on the 8-bit data."""
    def verify():
        from unet.checkpoints.files import meta_path
        baseline = read_json(meta_path(ws.ckpt))["data"]
        got = read_json(os.path.join(f, "ck", "u.params.json"))["data"]
        if got["channels"] != channels:
            return f"trained with {got['channels']} channels, expected {channels}"
        if got["encoding"] != baseline["encoding"]:
            return f"mask encoding {got['encoding']} != {baseline['encoding']}"
        for key in ("mean", "std"):
            if not np.allclose(got["normalization"][key],
                               baseline["normalization"][key][:1] * channels, atol=1e-5):
                return f"normalization {key} {got['normalization'][key]} differs from the " \
                       f"8-bit data's {baseline['normalization'][key]}"
        return None
    return verify


def trains_alike(ws, label, channels, edit):
    """Training on the data changed by ``edit`` works, as on the 8-bit data."""
    def case(f):
        data = edited_data(ws, f, edit)
        return ok_case("segmenter", train_into(ws, data, f), same_training(ws, f, channels))
    return f"segmenter: {label}", case


def convert_all(convert):
    """An edit: every training and validation image replaced by ``convert(gray)``."""
    def edit(data):
        for split in ("train", "validate"):
            folder = os.path.join(data, split, "image")
            for name in os.listdir(folder):
                gray = load(os.path.join(folder, name))
                write(os.path.join(folder, name), convert(gray))
    return edit


def rename_pair(name):
    """An edit: the training pair ``1.png`` renamed ``name``."""
    def edit(data):
        for kind in ("image", "mask"):
            folder = os.path.join(data, "train", kind)
            os.rename(os.path.join(folder, "1.png"), os.path.join(folder, name))
    return edit


def odd_data_cases(ws):
    yield trains_alike(ws, "all images 16-bit", 1, convert_all(lambda g: variants(g)["16-bit"]))
    yield trains_alike(ws, "all images RGBA", 3, convert_all(lambda g: variants(g)["RGBA"]))
    yield trains_alike(ws, "all images palette", 1,
                       convert_all(lambda g: variants(g)["palette"]))
    yield trains_alike(ws, "pair with spaces in the name", 1, rename_pair("cell one.png"))
    yield trains_alike(ws, "pair with a non-UTF-8 name", 1,
                       rename_pair(os.fsdecode(b"c\xe9ll\xff.png")))


def training_data_cases(ws):
    yield from bad_file_cases(ws)
    yield from odd_data_cases(ws)
