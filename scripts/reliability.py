#!/usr/bin/env python
"""The reliability campaign of issue 8: kill training at many moments, feed both CLIs hostile input.

    python scripts/reliability.py --kills 30 --seed 0          # the figures in docs/reliability.md
    python scripts/reliability.py --kills 6 --json             # what tests/test_reliability.py runs

Kills: a tiny model trains on generated data in a child ``segmenter.py``; each trial resumes the
same run with ``--checkpoint load`` and is SIGKILLed either at an injected point
(``UNET_KILL_AT``: a step, before validation, inside the checkpoint commit) or after a random delay
(during start-up and resume, during data loading with 2 worker processes, or anywhere in an
epoch). After each kill the best and last checkpoints must pass ``read_meta``, load, and give the
same predictions as the same files gave before (a ledger keyed by the weights' sha256), the last
checkpoint must hold every epoch the run had reported (at most the epoch in progress is lost), and
the next trial must resume from it. A last resume runs to completion.

Hostile inputs: the cases of :data:`HOSTILE` against ``segmenter.py`` and ``evaluate.py``
(in-process ``main``): an error must be one ``error:`` line and a non-zero exit code, never a
traceback; valid odd inputs (16-bit, RGBA, palette, odd names) must work and give the same mask
as the plain 8-bit file.
"""
import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: the project's modules live one folder up
    sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

TINY = ["--base-channels", "4", "--depth", "2", "--image-size", "32", "--norm", "batch",
        "--batch-size", "4", "--log-images", "1"]
STEPS_PER_EPOCH = 2  # 8 training images, batch 4
POINTS = ["train.step", "train.validation", "checkpoint.prepared", "checkpoint.params_written",
          "checkpoint.renamed", "checkpoint.committed"]
RANDOM = ["random:start-up", "random:data loading", "random:in an epoch"]
# The first trials take every kind once, the slow start-up kill last (a short campaign skips it).
FIRST = ["train.step", "random:data loading", "checkpoint.renamed", "train.validation",
         "checkpoint.params_written", "random:in an epoch", "checkpoint.committed",
         "random:start-up", "checkpoint.prepared"]
EPOCH_LINE = re.compile(r"INFO epoch (\d+)/")


def make_dataset(root):
    from unet.data.demo import generate_demo_dataset
    generate_demo_dataset(root, seed=3, size=64, n_train=8, n_validate=2, n_test=2)
    return root


# ---- kills ---------------------------------------------------------------------------------

class Child:
    """A ``segmenter.py`` child in its own session, its stderr lines collected by a thread."""

    def __init__(self, argv, env=None):
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "segmenter.py")] + argv,
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace",
                                     start_new_session=True)
        self.lines, self.seen = [], threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self.seen:
                self.lines.append(line)
                self.seen.notify_all()

    def wait_for(self, text, timeout):
        """Block until a stderr line contains ``text`` (True) or the child ends (False)."""
        with self.seen:
            return self.seen.wait_for(lambda: any(text in l for l in self.lines)
                                      or self.proc.poll() is not None, timeout) and \
                any(text in l for l in self.lines)

    def kill_after(self, delay):
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)

    def finish(self, timeout=300):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # loader workers left behind, if any
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.reader.join(timeout=30)
        return code, "".join(self.lines)


class Ledger:
    """Predictions of every checkpoint seen, keyed by the sha256 of its weights."""

    def __init__(self, image):
        self.image, self.hashes = image, {}

    def check(self, path):
        """Load ``path`` as evaluate.py does; return (meta, problem or None)."""
        from unet.checkpoints.checkpoint import sha256_file
        from unet.core.errors import InputError
        from unet.inference.segmenter import Segmenter
        try:
            segmenter = Segmenter.from_checkpoint(path)
        except InputError as err:
            return None, f"{os.path.basename(path)} does not load: {err}"
        prediction = segmenter.predict(self.image)
        digest = hashlib.sha256(prediction.probabilities.tobytes()).hexdigest()
        key = sha256_file(path)
        seen = self.hashes.setdefault(key, digest)
        if seen != digest:
            return segmenter.meta, f"{os.path.basename(path)} predicts differently than before"
        return segmenter.meta, None


def plan_trials(kills, seed):
    """``kills`` trial specs, every injected point and random kind in turn, then at random."""
    rng = random.Random(seed)
    counts = {"train.step": range(1, 6), "train.validation": range(1, 4),
              "checkpoint.params_written": range(1, 4), "checkpoint.renamed": range(1, 4),
              "checkpoint.committed": range(1, 4), "checkpoint.prepared": range(1, 4)}
    trials = []
    for i in range(kills):
        kind = FIRST[i] if i < len(FIRST) else rng.choice(FIRST)
        if kind in counts:
            trials.append({"point": kind, "count": rng.choice(list(counts[kind]))})
        else:
            delay = {"random:start-up": (0.3, 6.0), "random:data loading": (0.0, 0.8),
                     "random:in an epoch": (0.0, 1.0)}[kind]
            trials.append({"point": kind, "delay": round(rng.uniform(*delay), 3)})
    return trials


def run_trial(trial, args, env):
    """Start a resuming child, kill it as ``trial`` says; return (exit code, stderr)."""
    point = trial["point"]
    workers = ["--num-workers", "2" if point == "random:data loading" else "0"]
    if "count" in trial:
        child = Child(args + workers, dict(env, UNET_KILL_AT=f"{point}:{trial['count']}"))
        return child.finish()
    child = Child(args + workers, env)
    trigger = {"random:data loading": "TensorBoard run folder", "random:in an epoch": "INFO epoch"}
    if point in trigger and not child.wait_for(trigger[point], timeout=300):
        return child.finish(timeout=1)
    child.kill_after(trial["delay"])
    return child.finish()


def check_after_kill(trial, before, code, stderr, paths, ledger):
    """Problems (strings) found after one kill; fills ``trial`` with what was seen."""
    problems = []
    if code != -signal.SIGKILL:
        tail = stderr.strip().splitlines()[-1:] or ["(no output)"]
        return [f"child was not killed: exit code {code}: {tail[0]}"]
    metas = {}
    for kind, path in paths.items():
        meta, problem = ledger.check(path)
        metas[kind] = meta
        if problem:
            problems.append(problem)
    if problems:
        return problems
    last, best = metas["last"], metas["best"]
    reported = [int(m) for m in EPOCH_LINE.findall(stderr)]
    floor = max(reported, default=before)
    trial.update(epoch_before=before, epoch_after=last["epoch"], reported=floor)
    if not floor <= last["epoch"] <= floor + 1:
        problems.append(f"last checkpoint at epoch {last['epoch']}, the run had reported {floor}")
    if last["global_step"] != last["epoch"] * STEPS_PER_EPOCH:
        problems.append(f"last checkpoint: step {last['global_step']} at epoch {last['epoch']}")
    if "count" in trial and trial["point"] in ("train.step", "train.validation"):
        done = (trial["count"] - 1) // STEPS_PER_EPOCH if trial["point"] == "train.step" \
            else trial["count"] - 1
        if last["epoch"] != before + done:
            problems.append(f"expected epoch {before + done} after the kill, got {last['epoch']}")
    if best["epoch"] != best["best_epoch"] or best["epoch"] > last["epoch"]:
        problems.append(f"best checkpoint epoch {best['epoch']} (best_epoch "
                        f"{best['best_epoch']}, last {last['epoch']})")
    return problems


def leftovers(path):
    """Temporary and pending files beside checkpoint ``path`` (what a kill can leave)."""
    folder = os.path.dirname(path)
    return {n for n in os.listdir(folder) if ".tmp" in n or n.endswith(".pending")}


def kill_campaign(root, kills, seed=0, log=None):
    """Run the kill trials under ``root``; returns a dict of counts and per-trial records."""
    from unet.checkpoints.checkpoint import last_path
    from unet.data.imageio import read_image
    log = log or (lambda text: None)
    data = make_dataset(os.path.join(root, "data"))
    ckpt = os.path.join(root, "ck", "unet.params")
    args = ["--data-dir", data, "--checkpoint-file", ckpt, "--log-dir",
            os.path.join(root, "logs"), "--seed", str(seed)] + TINY
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("UNET_KILL_AT", None)
    code, err = Child(args + ["--num-epochs", "1", "--num-workers", "0"], env).finish()
    if code != 0:
        raise RuntimeError(f"the first training run failed ({code}): {err[-2000:]}")
    paths = {"last": last_path(ckpt), "best": ckpt}
    ledger = Ledger(read_image(os.path.join(data, "test", "image", "0.png")))
    for path in paths.values():
        ledger.check(path)
    resume = args + ["--checkpoint", "load", "--num-epochs", "1000"]
    trials = plan_trials(kills, seed)
    for number, trial in enumerate(trials, 1):
        from unet.checkpoints.checkpoint import read_meta
        before = read_meta(paths["last"])["epoch"]
        left = leftovers(paths["last"])
        start = time.perf_counter()
        code, stderr = run_trial(trial, resume, env)
        trial["problems"] = check_after_kill(trial, before, code, stderr, paths, ledger)
        trial["left"] = sorted(leftovers(paths["last"]) - left)
        trial["seconds"] = round(time.perf_counter() - start, 1)
        log(f"kill {number}/{len(trials)} {describe(trial)}: "
            f"{'; '.join(trial['problems']) or 'survived'}")
    final = read_meta(paths["last"])["epoch"] + 1
    code, stderr = Child(args + ["--checkpoint", "load", "--num-epochs", str(final),
                                 "--num-workers", "0"], env).finish()
    end, best = read_meta(paths["last"]), read_meta(paths["best"])
    resumed = code == 0 and end["epoch"] == final and \
        end["global_step"] == final * STEPS_PER_EPOCH
    # A kill between the last and the best save leaves the last one naming a best epoch that
    # was never written; the resumed run must not go on believing it.
    consistent = (end["best_epoch"], end["best_score"]) == (best["epoch"], best["best_score"])
    failures = sum(1 for t in trials if t["problems"]) + (not resumed) + (not consistent)
    return {"tried": len(trials), "survived": sum(1 for t in trials if not t["problems"]),
            "failures": failures, "final_resume": resumed, "final_epoch": end["epoch"],
            "best_consistent": consistent,
            "best": [end["best_epoch"], best["epoch"]],
            "trials": trials, "final_stderr": "" if resumed else stderr[-2000:]}


def describe(trial):
    if "count" in trial:
        return f"{trial['point']}:{trial['count']}"
    return f"{trial['point']} after {trial['delay']} s"


def kill_table(result):
    rows = {}
    for trial in result["trials"]:
        row = rows.setdefault(trial["point"], [0, 0, 0])
        row[0] += 1
        row[1] += not trial["problems"]
        row[2] += bool(trial.get("left"))
    lines = [f"{'kill point':<28}{'tried':>6}{'survived':>10}{'left .tmp/.pending':>20}"]
    for point in POINTS + RANDOM:
        if point in rows:
            tried, survived, left = rows[point]
            lines.append(f"{point:<28}{tried:>6}{survived:>10}{left:>20}")
    return "\n".join(lines)


# ---- hostile inputs ------------------------------------------------------------------------

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


class Workspace:
    """A dataset, a trained tiny checkpoint and a test image, and fresh copies of them."""

    def __init__(self, root):
        self.root = root
        self.data = make_dataset(os.path.join(root, "data"))
        self.image = os.path.join(self.data, "test", "image", "0.png")
        self.gray = load(self.image)
        self.ckpt = os.path.join(root, "ck", "unet.params")
        code, err = call_cli("segmenter", self.train_args(self.data, self.ckpt))
        if code != 0:
            raise RuntimeError(f"training the workspace checkpoint failed: {err}")
        self.count = 0

    def fresh(self, name):
        self.count += 1
        folder = os.path.join(self.root, f"{self.count:02d}-{re.sub(r'[^a-z0-9]+', '-', name)}")
        os.makedirs(folder)
        return folder

    def train_args(self, data, ckpt, epochs=1):
        return ["--data-dir", data, "--checkpoint-file", ckpt, "--log-dir",
                os.path.join(os.path.dirname(ckpt), "logs"), "--num-epochs", str(epochs),
                "--num-workers", "0", "--no-histograms"] + TINY

    def copy_data(self, folder):
        return shutil.copytree(self.data, os.path.join(folder, "data"))

    def copy_checkpoint(self, folder):
        from unet.checkpoints.checkpoint import meta_path
        target = os.path.join(folder, "unet.params")
        shutil.copy(self.ckpt, target)
        shutil.copy(meta_path(self.ckpt), meta_path(target))
        return target

    def reference_mask(self):
        if not hasattr(self, "_reference"):
            folder = self.fresh("reference")
            out = os.path.join(folder, "ref_mask.png")
            code, err = call_cli("evaluate", ["--image", self.image, "--network-param",
                                              self.ckpt, "--output", out])
            if code != 0:
                raise RuntimeError(f"evaluate on the plain image failed: {err}")
            self._reference = load(out)
        return self._reference


def call_cli(name, argv):
    """``name.main(argv)`` in this process; returns (exit code, stderr text), the log lines
    included, as a process of its own would print them: the log handler that the first call's
    ``logging.basicConfig`` bound to its own stderr is pointed at this call's, and where there
    is none (under pytest, whose handlers make ``basicConfig`` do nothing) one is added, with the
    INFO level that ``unet.core.cli.setup_logging`` sets."""
    module = __import__(name)
    err, out = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    # Plain StreamHandlers only: pytest's capture handlers are subclasses and stay as they are.
    handlers = [h for h in root.handlers if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(err)
    added, level = None, root.level
    if not handlers:
        added = logging.StreamHandler(err)
        root.addHandler(added)
        root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = module.main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)
        if added is not None:
            root.removeHandler(added)
            root.setLevel(level)
    return code, err.getvalue()


def load(path):
    """cv2.imread for any path (cv2.imread crashes on a str path holding non-UTF-8 bytes)."""
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)


def write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def fix_sha(params, change=None):
    """Rewrite ``params``' JSON so that its sha256 matches the file (an edited checkpoint)."""
    from unet.checkpoints.checkpoint import meta_path, sha256_file
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


def error_case(cli, argv, *words, marker=None, also=None):
    """Expect stderr to be one ``error:`` line holding ``words`` (no progress bar or other line
    beside it) and a non-zero exit code; ``also()``, when given, returns what else is wrong
    (files the failed run touched) or None."""
    def check(code, err):
        lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip()]
        if code == 0:
            return "silent: exit code 0 instead of an error"
        if len(lines) != 1 or "error:" not in lines[0]:
            errors = sum("error:" in l for l in lines)
            return (f"{len(lines)} stderr lines, {errors} of them errors, instead of one error "
                    f"line (exit code {code})")
        missing = [w for w in words if w not in lines[0]]
        if missing:
            return f"error line lacks {missing}: {lines[0]}"
        if marker and os.path.exists(marker):
            return "a pickle in the checkpoint was executed"
        return also() if also else None
    return cli, argv, check


def ok_case(cli, argv, verify):
    """Expect exit code 0 and ``verify()`` to return None (else the wrong result)."""
    def check(code, err):
        if code != 0:
            lines = [l for l in err.splitlines() if "error:" in l] or err.splitlines()[-1:]
            return f"valid input refused (exit code {code}): {lines[0] if lines else ''}"
        return verify()
    return cli, argv, check


def same_mask(path, reference):
    def verify():
        if not os.path.isfile(path):
            return f"no mask written at {path}"
        mask = load(path)
        if mask is None or mask.shape != reference.shape:
            return f"mask shape {None if mask is None else mask.shape}, expected {reference.shape}"
        if not np.array_equal(mask, reference):
            return f"mask differs from the 8-bit result in {int((mask != reference).sum())} pixels"
        return None
    return verify


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


def evaluate_checkpoint_cases(ws):
    def params_file(label, make, *words, marker=None):
        def case(f):
            target = ws.copy_checkpoint(f)
            make(target, f)
            return error_case("evaluate", ["--image", ws.image, "--network-param", target,
                                           "--output", os.path.join(f, "m.png")], *words,
                              marker=marker)
        return f"evaluate: checkpoint {label}", case

    def truncate(target, f):
        with open(target, "rb+") as handle:
            handle.truncate(os.path.getsize(target) // 2)
    yield params_file("zero-byte params", lambda t, f: write(t, b""), "unet.params")
    yield params_file("truncated params", truncate, "sha256")
    yield params_file("params that is a PNG", lambda t, f: (write(t, encode(ws.gray)),
                                                           fix_sha(t)), "does not fit")
    marker = os.path.join(ws.root, "pwned-evaluate")
    yield params_file("params that is a pickle", lambda t, f: (
        write(t, pickle.dumps(Payload(marker))), fix_sha(t)), "does not fit", marker=marker)

    def other_architecture(t, f):
        code, err = call_cli("segmenter", ws.train_args(
            ws.data, os.path.join(f, "wide", "w.params")) + ["--base-channels", "8"])
        assert code == 0, err
        shutil.copy(os.path.join(f, "wide", "w.params"), t)
        fix_sha(t)
    yield params_file("of another architecture", other_architecture, "does not fit")

    def json_edit(label, change, *words):
        def make(target, f):
            from unet.checkpoints.checkpoint import meta_path
            if callable(change):
                fix_sha(target, change)
            elif change is None:
                os.remove(meta_path(target))
            else:
                write(meta_path(target), change)
        return params_file(f"JSON {label}", make, *words)
    yield json_edit("missing", None, "no config")
    yield json_edit("not JSON", b"{\"format\": \"unet-checkpoint\", ", "JSON")
    yield json_edit("a list", b"[1, 2, 3]", "JSON object")
    yield json_edit("without model", lambda m: m.pop("model"), "model")
    yield json_edit("epoch a string", lambda m: m.update(epoch="3"), "epoch")
    yield json_edit("depth 0", lambda m: m["model"].update(depth=0), "depth")
    yield json_edit("unknown norm", lambda m: m["model"].update(norm="group"), "group")
    yield json_edit("more classes than the weights", lambda m: m["model"].update(num_classes=3),
                    "does not fit")
    yield json_edit("encoding garbage", lambda m: m["data"].update(encoding={"kind": 7}),
                    "encoding")
    yield json_edit("normalization std 0", lambda m: m["data"]["normalization"].update(std=[0]),
                    "normalization")
    yield json_edit("normalization std infinite",
                    lambda m: m["data"]["normalization"].update(std=[float("inf")]),
                    "normalization")
    yield json_edit("image_size 2**20", lambda m: m["model"].update(image_size=2 ** 20))

    def states_pickle(f):
        """evaluate.py on a last checkpoint whose optimizer state is a pickle: never read."""
        from unet.checkpoints.checkpoint import last_path
        run = shutil.copytree(os.path.dirname(ws.ckpt), os.path.join(f, "ck"))
        last = last_path(os.path.join(run, "unet.params"))
        with open(last + ".json", encoding="utf-8") as handle:
            states = os.path.join(run, json.load(handle)["optimizer_state"]["file"])
        sentinel = os.path.join(f, "pwned-states")
        write(states, pickle.dumps(Payload(sentinel)))
        return ok_case("evaluate", ["--image", ws.image, "--network-param", last, "--output",
                                    os.path.join(f, "m.png")],
                       lambda: "evaluate.py unpickled the optimizer state"
                       if os.path.exists(sentinel) else None)
    yield "evaluate: optimizer state replaced by a pickle", states_pickle


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def training_data_cases(ws):
    valid = encode(ws.gray)

    def dataset(f, edit):
        data = ws.copy_data(f)
        edit(data)
        return data

    def bad_file(label, kind, data_bytes):
        def case(f):
            data = dataset(f, lambda d: write(os.path.join(d, "train", kind, "1.png"), data_bytes))
            return error_case("segmenter", ws.train_args(data, os.path.join(f, "ck", "u.params")),
                              "1.png")
        return f"segmenter: {kind} {label}", case
    for label, data_bytes in broken(valid).items():
        yield bad_file(label, "image", data_bytes)
    for label in ("zero-byte", "truncated", "huge header"):
        yield bad_file(label, "mask", broken(valid)[label])
    yield bad_file("with values 0, 128, 255 for 2 classes", "mask",
                   encode(np.repeat(np.array([0, 128, 255], np.uint8), [22, 21, 21])[None]
                          .repeat(64, 0)))
    yield bad_file("of another size", "mask", encode(np.zeros((32, 64), np.uint8)))
    yield bad_file("1x1 beside a 64x64 image", "mask", encode(np.zeros((1, 1), np.uint8)))

    baseline = {}

    def normalization_of(f):
        return read_json(os.path.join(f, "ck", "u.params.json"))["data"]

    def same_training(f, channels):
        def verify():
            if not baseline:
                from unet.checkpoints.checkpoint import meta_path
                baseline.update(read_json(meta_path(ws.ckpt))["data"])
            got = normalization_of(f)
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

    def converted(label, channels, convert):
        def case(f):
            def edit(data):
                for split in ("train", "validate"):
                    folder = os.path.join(data, split, "image")
                    for name in os.listdir(folder):
                        gray = load(os.path.join(folder, name))
                        write(os.path.join(folder, name), convert(gray))
            data = dataset(f, edit)
            return ok_case("segmenter", ws.train_args(data, os.path.join(f, "ck", "u.params")),
                           same_training(f, channels))
        return f"segmenter: all images {label}", case
    yield converted("16-bit", 1, lambda g: variants(g)["16-bit"])
    yield converted("RGBA", 3, lambda g: variants(g)["RGBA"])
    yield converted("palette", 1, lambda g: variants(g)["palette"])

    def renamed(label, name):
        def case(f):
            def edit(data):
                for kind in ("image", "mask"):
                    folder = os.path.join(data, "train", kind)
                    os.rename(os.path.join(folder, "1.png"), os.path.join(folder, name))
            data = dataset(f, edit)
            return ok_case("segmenter", ws.train_args(data, os.path.join(f, "ck", "u.params")),
                           same_training(f, 1))
        return f"segmenter: {label}", case
    yield renamed("pair with spaces in the name", "cell one.png")
    yield renamed("pair with a non-UTF-8 name", os.fsdecode(b"c\xe9ll\xff.png"))


def resume_cases(ws):
    def resume(label, edit, *words, flags=(), marker=None):
        def case(f):
            from unet.checkpoints.checkpoint import last_path
            run = shutil.copytree(os.path.dirname(ws.ckpt), os.path.join(f, "ck"))
            ckpt = os.path.join(run, "unet.params")
            edit(last_path(ckpt), run)
            argv = ws.train_args(ws.data, ckpt, epochs=2) + ["--checkpoint", "load"] + list(flags)
            return error_case("segmenter", argv, *words, marker=marker)
        return f"segmenter: resume from {label}", case

    def truncate(last, run):
        with open(last, "rb+") as handle:
            handle.truncate(100)
    yield resume("truncated last params", truncate, "sha256")
    yield resume("another architecture", lambda l, r: None, "base_channels",
                 flags=["--base-channels", "8"])
    yield resume("a JSON without 'data'", lambda l, r: fix_sha(l, lambda m: m.pop("data")),
                 "data")
    yield resume("a JSON that is not JSON", lambda l, r: write(l + ".json", b"\xff\xfe{"), "JSON")

    def without_json(f):
        """Refused, and the optimizer state stays for a restored JSON to name again."""
        from unet.checkpoints.checkpoint import last_path
        run = shutil.copytree(os.path.dirname(ws.ckpt), os.path.join(f, "ck"))
        last = last_path(os.path.join(run, "unet.params"))
        states = os.path.join(run, read_json(last + ".json")["optimizer_state"]["file"])
        os.remove(last + ".json")
        argv = ws.train_args(ws.data, os.path.join(run, "unet.params"), epochs=2) \
            + ["--checkpoint", "load"]
        return error_case("segmenter", argv, also=lambda: None if os.path.exists(states)
                          else "the optimizer state was deleted")
    yield "segmenter: resume from a last checkpoint without its JSON", without_json

    def states(last, run, payload):
        name = read_json(last + ".json")["optimizer_state"]["file"]
        write(os.path.join(run, name), payload)
    yield resume("an optimizer state that was removed",
                 lambda l, r: os.remove(os.path.join(r, read_json(l + ".json")
                                                     ["optimizer_state"]["file"])), "states")
    marker = os.path.join(ws.root, "pwned-resume")

    def malicious(last, run):
        states(last, run, pickle.dumps(Payload(marker)))
        name = read_json(last + ".json")["optimizer_state"]["file"]
        from unet.checkpoints.checkpoint import sha256_file
        fix_sha(last, lambda m: m["optimizer_state"].update(
            sha256=sha256_file(os.path.join(run, name))))
    yield resume("an optimizer state that is a pickle (hashes fixed)", malicious, "states",
                 marker=marker)


class _Names:
    """Enough of a :class:`Workspace` to list the case names (for pytest ids)."""

    gray = np.zeros((8, 8), np.uint8)
    root = data = image = ckpt = ""


def case_names():
    return [name for name, _ in hostile_cases(_Names())]


def output_path_cases(ws):
    """Outputs that cannot be written, or would replace an input: refused before any work."""
    def left_empty(folder, *keep):
        def check():
            extra = sorted(set(os.listdir(folder)) - set(keep))
            return f"the failed run left {extra}" if extra else None
        return check

    def checkpoint_folder(f):
        folder = os.path.join(f, "ck")
        os.makedirs(folder)
        return error_case("segmenter", ws.train_args(ws.data, folder), "ck' is a folder",
                          also=left_empty(f, "ck"))
    yield "segmenter: checkpoint file that is a folder", checkpoint_folder

    def under_a_file(f):
        plain = write(os.path.join(f, "plain"), b"x")
        return error_case("segmenter", ws.train_args(ws.data, os.path.join(plain, "u.params")),
                          "plain", also=left_empty(f, "plain"))
    yield "segmenter: checkpoint file under a regular file", under_a_file

    def log_dir_a_file(f):
        plain = write(os.path.join(f, "plain"), b"x")
        argv = ws.train_args(ws.data, os.path.join(f, "ck", "u.params")) + ["--log-dir", plain]
        return error_case("segmenter", argv, "log", "plain")
    yield "segmenter: log folder that is a regular file", log_dir_a_file

    def onto_the_input(f):
        image = shutil.copy(ws.image, os.path.join(f, "in.png"))
        with open(image, "rb") as handle:
            before = handle.read()

        def unchanged():
            with open(image, "rb") as handle:
                return None if handle.read() == before else "the input image was overwritten"
        return error_case("evaluate", ["--image", image, "--network-param", ws.ckpt,
                                       "--output", image], "in.png", "input",
                          also=unchanged)
    yield "evaluate: output that is the input image", onto_the_input

    def export_under_a_file(f):
        plain = write(os.path.join(f, "plain"), b"x")
        return error_case("evaluate", ["--network-param", ws.ckpt, "--export",
                                       os.path.join(plain, "net")], "plain",
                          also=left_empty(f, "plain"))
    yield "evaluate: export under a regular file", export_under_a_file


def hostile_cases(ws):
    """``[(name, build)]``; ``build(folder) -> (cli, argv, check)``."""
    return [case for group in (evaluate_image_cases, evaluate_checkpoint_cases,
                               training_data_cases, resume_cases, output_path_cases)
            for case in group(ws)]


def run_case(ws, name, build):
    """Run one hostile case; returns ``(outcome, detail)``, outcome in
    ``{'ok', 'traceback', 'wrong'}``."""
    folder = ws.fresh(name)
    try:
        cli, argv, check = build(folder)
        code, err = call_cli(cli, argv)
    except Exception:  # noqa: BLE001 - an exception out of main() is what we count
        return "traceback", traceback.format_exc(limit=-3).strip().splitlines()[-1]
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1]
    problem = check(code, err)
    return ("wrong", problem) if problem else ("ok", None)


def hostile_campaign(root, log=None):
    log = log or (lambda text: None)
    ws = Workspace(root)
    results = []
    for name, build in hostile_cases(ws):
        outcome, detail = run_case(ws, name, build)
        results.append({"case": name, "outcome": outcome, "detail": detail})
        log(f"{name}: {outcome}{': ' + detail if detail else ''}")
    return {"tried": len(results),
            "tracebacks": sum(r["outcome"] == "traceback" for r in results),
            "wrong": sum(r["outcome"] == "wrong" for r in results), "cases": results}


# ---- report --------------------------------------------------------------------------------

def report(kills, hostile):
    lines = []
    if kills is not None:
        lines += [f"kills: {kills['tried']} tried, {kills['survived']} survived, "
                  f"{kills['failures']} failures (final resume to epoch {kills['final_epoch']}: "
                  f"{'ok' if kills['final_resume'] else 'FAILED'})", kill_table(kills)]
        lines += [f"  {describe(t)}: {'; '.join(t['problems'])}"
                  for t in kills["trials"] if t["problems"]]
        if not kills["best_consistent"]:
            lines.append("  after the final resume the last checkpoint names epoch %d as the "
                         "best, the best checkpoint holds epoch %d" % tuple(kills["best"]))
    if hostile is not None:
        lines.append(f"hostile inputs: {hostile['tried']} tried, {hostile['tracebacks']} "
                     f"tracebacks, {hostile['wrong']} silent wrong results")
        lines += [f"  {c['case']}: {c['outcome']}: {c['detail']}" for c in hostile["cases"]
                  if c["outcome"] != "ok"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24, help="kill trials (default 24; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trial plan (default 0)")
    parser.add_argument("--no-hostile", action="store_true", help="skip the hostile inputs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--verbose", action="store_true", help="one line per trial on stderr")
    args = parser.parse_args(argv)
    log = (lambda text: print(text, file=sys.stderr, flush=True)) if args.verbose else None
    with tempfile.TemporaryDirectory(prefix="unet-reliability-") as root:
        kills = kill_campaign(os.path.join(root, "kills"), args.kills, args.seed, log) \
            if args.kills else None
        hostile = None if args.no_hostile else hostile_campaign(os.path.join(root, "hostile"), log)
    print(json.dumps({"kills": kills, "hostile": hostile}, indent=1) if args.json
          else report(kills, hostile))
    bad = (kills or {}).get("failures", 0) + sum((hostile or {}).get(k, 0)
                                                  for k in ("tracebacks", "wrong"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
