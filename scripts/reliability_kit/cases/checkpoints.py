"""Damaged checkpoints: evaluate.py loading them, segmenter.py resuming from them. None of them
may load, and no pickle in one may ever be executed."""
import os
import pickle
import shutil

from ..files import Payload, encode, fix_sha, states_of, write
from ..judge import error_case, ok_case
from ..runs import call_cli


def params_case(ws, label, make, *words, marker=None):
    """evaluate.py on a copy of the checkpoint that ``make(target, folder)`` damaged."""
    def case(f):
        target = ws.copy_checkpoint(f)
        make(target, f)
        return error_case("evaluate", ["--image", ws.image, "--network-param", target,
                                       "--output", os.path.join(f, "m.png")], *words,
                          marker=marker)
    return f"evaluate: checkpoint {label}", case


def json_case(ws, label, change, *words):
    """``change``: a function of the JSON (the sha256 fixed after), None (no JSON) or bytes."""
    def make(target, f):
        from unet.checkpoints.files import meta_path
        if callable(change):
            fix_sha(target, change)
        elif change is None:
            os.remove(meta_path(target))
        else:
            write(meta_path(target), change)
    return params_case(ws, f"JSON {label}", make, *words)


def damaged_params_cases(ws):
    def truncate(target, f):
        with open(target, "rb+") as handle:
            handle.truncate(os.path.getsize(target) // 2)
    yield params_case(ws, "zero-byte params", lambda t, f: write(t, b""), "unet.params")
    yield params_case(ws, "truncated params", truncate, "sha256")
    yield params_case(ws, "params that is a PNG", lambda t, f: (write(t, encode(ws.gray)),
                                                               fix_sha(t)), "does not fit")
    marker = os.path.join(ws.root, "pwned-evaluate")
    yield params_case(ws, "params that is a pickle", lambda t, f: (
        write(t, pickle.dumps(Payload(marker))), fix_sha(t)), "does not fit", marker=marker)

    def other_architecture(t, f):
        code, err = call_cli("segmenter", ws.train_args(
            ws.data, os.path.join(f, "wide", "w.params")) + ["--base-channels", "8"])
        assert code == 0, err
        shutil.copy(os.path.join(f, "wide", "w.params"), t)
        fix_sha(t)
    yield params_case(ws, "of another architecture", other_architecture, "does not fit")


def edited_json_cases(ws):
    yield json_case(ws, "missing", None, "no config")
    yield json_case(ws, "not JSON", b"{\"format\": \"unet-checkpoint\", ", "JSON")
    yield json_case(ws, "a list", b"[1, 2, 3]", "JSON object")
    yield json_case(ws, "without model", lambda m: m.pop("model"), "model")
    yield json_case(ws, "epoch a string", lambda m: m.update(epoch="3"), "epoch")
    yield json_case(ws, "depth 0", lambda m: m["model"].update(depth=0), "depth")
    yield json_case(ws, "unknown norm", lambda m: m["model"].update(norm="group"), "group")
    yield json_case(ws, "more classes than the weights",
                    lambda m: m["model"].update(num_classes=3), "does not fit")
    yield json_case(ws, "encoding garbage", lambda m: m["data"].update(encoding={"kind": 7}),
                    "encoding")
    yield json_case(ws, "normalization std 0",
                    lambda m: m["data"]["normalization"].update(std=[0]), "normalization")
    yield json_case(ws, "normalization std infinite",
                    lambda m: m["data"]["normalization"].update(std=[float("inf")]),
                    "normalization")
    yield json_case(ws, "image_size 2**20", lambda m: m["model"].update(image_size=2 ** 20))


def states_pickle(ws, f):
    """evaluate.py on a last checkpoint whose optimizer state is a pickle: never read."""
    from unet.checkpoints.files import last_path
    last = last_path(ws.copy_run(f))
    sentinel = os.path.join(f, "pwned-states")
    write(states_of(last), pickle.dumps(Payload(sentinel)))
    return ok_case("evaluate", ["--image", ws.image, "--network-param", last, "--output",
                                os.path.join(f, "m.png")],
                   lambda: "evaluate.py unpickled the optimizer state"
                   if os.path.exists(sentinel) else None)


def evaluate_checkpoint_cases(ws):
    yield from damaged_params_cases(ws)
    yield from edited_json_cases(ws)
    yield "evaluate: optimizer state replaced by a pickle", lambda f: states_pickle(ws, f)


def resume_case(ws, label, edit, *words, flags=(), marker=None):
    """segmenter.py resuming from a copy of the run whose last checkpoint ``edit(last)`` damaged."""
    def case(f):
        from unet.checkpoints.files import last_path
        ckpt = ws.copy_run(f)
        edit(last_path(ckpt))
        argv = ws.train_args(ws.data, ckpt, epochs=2) + ["--checkpoint", "load"] + list(flags)
        return error_case("segmenter", argv, *words, marker=marker)
    return f"segmenter: resume from {label}", case


def without_json(ws, f):
    """Refused, and the optimizer state stays for a restored JSON to name again."""
    from unet.checkpoints.files import last_path
    ckpt = ws.copy_run(f)
    last = last_path(ckpt)
    states = states_of(last)
    os.remove(last + ".json")
    argv = ws.train_args(ws.data, ckpt, epochs=2) + ["--checkpoint", "load"]
    return error_case("segmenter", argv, also=lambda: None if os.path.exists(states)
                      else "the optimizer state was deleted")


def resume_cases(ws):
    def truncate(last):
        with open(last, "rb+") as handle:
            handle.truncate(100)
    yield resume_case(ws, "truncated last params", truncate, "sha256")
    yield resume_case(ws, "another architecture", lambda l: None, "base_channels",
                      flags=["--base-channels", "8"])
    yield resume_case(ws, "a JSON without 'data'", lambda l: fix_sha(l, lambda m: m.pop("data")),
                      "data")
    yield resume_case(ws, "a JSON that is not JSON", lambda l: write(l + ".json", b"\xff\xfe{"),
                      "JSON")
    yield "segmenter: resume from a last checkpoint without its JSON", \
        lambda f: without_json(ws, f)
    yield resume_case(ws, "an optimizer state that was removed",
                      lambda l: os.remove(states_of(l)), "states")
    marker = os.path.join(ws.root, "pwned-resume")

    def malicious(last):
        from unet.checkpoints.files import sha256_file
        states = write(states_of(last), pickle.dumps(Payload(marker)))
        fix_sha(last, lambda m: m["optimizer_state"].update(sha256=sha256_file(states)))
    yield resume_case(ws, "an optimizer state that is a pickle (hashes fixed)", malicious,
                      "states", marker=marker)
