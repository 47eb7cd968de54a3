"""Outputs that cannot be written, or would replace an input: refused before any work."""
import os
import shutil

from ..files import write
from ..judge import error_case


def left_empty(folder, *keep):
    """A check: the failed run left nothing in ``folder`` but ``keep``."""
    def check():
        extra = sorted(set(os.listdir(folder)) - set(keep))
        return f"the failed run left {extra}" if extra else None
    return check


def plain_file(f):
    """A regular file ``f/plain``, where a folder is wanted."""
    return write(os.path.join(f, "plain"), b"x")


def onto_the_input(ws, f):
    image = shutil.copy(ws.image, os.path.join(f, "in.png"))
    with open(image, "rb") as handle:
        before = handle.read()

    def unchanged():
        with open(image, "rb") as handle:
            return None if handle.read() == before else "the input image was overwritten"
    return error_case("evaluate", ["--image", image, "--network-param", ws.ckpt,
                                   "--output", image], "in.png", "input",
                      also=unchanged)


def output_path_cases(ws):
    def checkpoint_folder(f):
        folder = os.path.join(f, "ck")
        os.makedirs(folder)
        return error_case("segmenter", ws.train_args(ws.data, folder), "ck' is a folder",
                          also=left_empty(f, "ck"))
    yield "segmenter: checkpoint file that is a folder", checkpoint_folder

    def under_a_file(f):
        plain = plain_file(f)
        return error_case("segmenter", ws.train_args(ws.data, os.path.join(plain, "u.params")),
                          "plain", also=left_empty(f, "plain"))
    yield "segmenter: checkpoint file under a regular file", under_a_file

    def log_dir_a_file(f):
        plain = plain_file(f)
        argv = ws.train_args(ws.data, os.path.join(f, "ck", "u.params")) + ["--log-dir", plain]
        return error_case("segmenter", argv, "log", "plain")
    yield "segmenter: log folder that is a regular file", log_dir_a_file
    yield "evaluate: output that is the input image", lambda f: onto_the_input(ws, f)

    def export_under_a_file(f):
        plain = plain_file(f)
        return error_case("evaluate", ["--network-param", ws.ckpt, "--export",
                                       os.path.join(plain, "net")], "plain",
                          also=left_empty(f, "plain"))
    yield "evaluate: export under a regular file", export_under_a_file
