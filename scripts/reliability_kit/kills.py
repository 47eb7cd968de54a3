"""The kill campaign: SIGKILL a resuming training run at many moments, then judge what is left.

Each trial resumes the same run with ``--checkpoint load`` and is killed either at an injected
point (``UNET_KILL_AT``) or after a random delay. After each kill the best and last checkpoints
must load and predict as the same files did before (:class:`Ledger`), and the last one must hold
every epoch the run had reported; a final resume runs to completion.
"""
import hashlib
import os
import random
import re
import signal
import time

from .runs import TINY, Child, make_dataset

STEPS_PER_EPOCH = 2  # 8 training images, batch 4
POINTS = ["train.step", "train.validation", "checkpoint.prepared", "checkpoint.params_written",
          "checkpoint.renamed", "checkpoint.committed"]
RANDOM = ["random:start-up", "random:data loading", "random:in an epoch"]
# The first trials take every kind once, the slow start-up kill last (a short campaign skips it).
FIRST = ["train.step", "random:data loading", "checkpoint.renamed", "train.validation",
         "checkpoint.params_written", "random:in an epoch", "checkpoint.committed",
         "random:start-up", "checkpoint.prepared"]
EPOCH_LINE = re.compile(r"INFO epoch (\d+)/")


class Ledger:
    """Predictions of every checkpoint seen, keyed by the sha256 of its weights."""

    def __init__(self, image):
        self.image, self.hashes = image, {}

    def check(self, path):
        """Load ``path`` as evaluate.py does; return (meta, problem or None)."""
        from unet.checkpoints.files import sha256_file
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


def describe(trial):
    if "count" in trial:
        return f"{trial['point']}:{trial['count']}"
    return f"{trial['point']} after {trial['delay']} s"


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


def start_run(root, seed):
    """Train the run's first epoch under ``root``; returns (argv, env, {'last', 'best'} paths)."""
    from unet.checkpoints.files import last_path
    data = make_dataset(os.path.join(root, "data"))
    ckpt = os.path.join(root, "ck", "unet.params")
    args = ["--data-dir", data, "--checkpoint-file", ckpt, "--log-dir",
            os.path.join(root, "logs"), "--seed", str(seed)] + TINY
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("UNET_KILL_AT", None)
    code, err = Child(args + ["--num-epochs", "1", "--num-workers", "0"], env).finish()
    if code != 0:
        raise RuntimeError(f"the first training run failed ({code}): {err[-2000:]}")
    return args, env, {"last": last_path(ckpt), "best": ckpt}


def kill_once(trial, resume, env, paths, ledger):
    """Run and judge one trial; fills ``trial`` with its problems, leftovers and duration."""
    from unet.checkpoints.files import read_meta
    before = read_meta(paths["last"])["epoch"]
    left = leftovers(paths["last"])
    start = time.perf_counter()
    code, stderr = run_trial(trial, resume, env)
    trial["problems"] = check_after_kill(trial, before, code, stderr, paths, ledger)
    trial["left"] = sorted(leftovers(paths["last"]) - left)
    trial["seconds"] = round(time.perf_counter() - start, 1)


def final_resume(args, env, paths):
    """Resume once more, to the end of the next epoch; returns (resumed, consistent, end, best,
    stderr)."""
    from unet.checkpoints.files import read_meta
    final = read_meta(paths["last"])["epoch"] + 1
    code, stderr = Child(args + ["--checkpoint", "load", "--num-epochs", str(final),
                                 "--num-workers", "0"], env).finish()
    end, best = read_meta(paths["last"]), read_meta(paths["best"])
    resumed = code == 0 and end["epoch"] == final and \
        end["global_step"] == final * STEPS_PER_EPOCH
    # A kill between the last and the best save leaves the last one naming a best epoch that
    # was never written; the resumed run must not go on believing it.
    consistent = (end["best_epoch"], end["best_score"]) == (best["epoch"], best["best_score"])
    return resumed, consistent, end, best, stderr


def kill_campaign(root, kills, seed=0, log=None):
    """Run the kill trials under ``root``; returns a dict of counts and per-trial records."""
    from unet.data.imageio import read_image
    log = log or (lambda text: None)
    args, env, paths = start_run(root, seed)
    ledger = Ledger(read_image(os.path.join(root, "data", "test", "image", "0.png")))
    for path in paths.values():
        ledger.check(path)
    resume = args + ["--checkpoint", "load", "--num-epochs", "1000"]
    trials = plan_trials(kills, seed)
    for number, trial in enumerate(trials, 1):
        kill_once(trial, resume, env, paths, ledger)
        log(f"kill {number}/{len(trials)} {describe(trial)}: "
            f"{'; '.join(trial['problems']) or 'survived'}")
    resumed, consistent, end, best, stderr = final_resume(args, env, paths)
    failures = sum(1 for t in trials if t["problems"]) + (not resumed) + (not consistent)
    return {"tried": len(trials), "survived": sum(1 for t in trials if not t["problems"]),
            "failures": failures, "final_resume": resumed, "final_epoch": end["epoch"],
            "best_consistent": consistent,
            "best": [end["best_epoch"], best["epoch"]],
            "trials": trials, "final_stderr": "" if resumed else stderr[-2000:]}
