"""evaluate.py on broken, odd and oddly named images, and on ground truths that do not fit."""
import os

import numpy as np

from ..files import broken, encode, load, variants, write
from ..judge import error_case, ok_case, same_mask


def evaluate_image_cases(ws):
    valid = encode(ws.gray)
    for label, data in broken(valid).items():
        yield f"evaluate: image {label}", lambda f, d=data: error_case(
            "evaluate", ["--image", write(os.path.join(f, "in.png"), d),
                         "--network-param", ws.ckpt], "in.png")
    for label, data in variants(ws.gray).items():
        yield f"evaluate: image {label}", lambda f, d=data: ok_case(
            "evaluate", ["--image", write(os.path.join(f, "in.png"), d), "--network-param",
                         ws.ckpt], same_mask(os.path.join(f, "in_mask.png"), ws.reference_mask()))
    for label, name in (("name with spaces", "my cell image.png"),
                        ("non-UTF-8 name", os.fsdecode(b"z\xff\xfe cell.png"))):
        yield f"evaluate: {label}", lambda f, n=name: ok_case(
            "evaluate", ["--image", write(os.path.join(f, n), valid), "--network-param",
                         ws.ckpt], same_mask(os.path.join(f, os.path.splitext(n)[0] + "_mask.png"),
                                             ws.reference_mask()))

    def one_pixel(f):
        path = write(os.path.join(f, "dot.png"), encode(np.full((1, 1), 200, np.uint8)))
        out = os.path.join(f, "dot_mask.png")
        return ok_case("evaluate", ["--image", path, "--network-param", ws.ckpt],
                       lambda: None if os.path.isfile(out) and
                       load(out).shape == (1, 1)
                       else "no 1x1 mask for a 1x1 image")
    yield "evaluate: 1x1 image", one_pixel
    for label, mask in (("ground truth with unexpected values", np.full((64, 64), 77, np.uint8)),
                        ("ground truth of another size", np.zeros((32, 64), np.uint8))):
        def scored(f, m=mask):
            data = ws.copy_data(f)
            write(os.path.join(data, "test", "mask", "1.png"), encode(m))
            return error_case("evaluate", ["--data-dir", data, "--network-param", ws.ckpt,
                                           "--output", os.path.join(f, "out"),
                                           "--no-progress"], "1.png")
        yield f"evaluate: {label}", scored
