"""Issue 8: whatever happens to a training run (a kill, a full disk, a removed folder, a second run
on the same files), at most the epoch in progress is lost, no checkpoint is, and the user gets
one line saying what happened."""
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

import segmenter
import unet.training.loop
from unet.checkpoints import files, loading, writing
from script_loader import load_reliability_script
from project_paths import ROOT

TINY = ["--base-channels", "4", "--depth", "2", "--image-size", "32", "--norm", "batch",
        "--batch-size", "4", "--num-workers", "0", "--log-images", "0", "--no-histograms"]


reliability = load_reliability_script()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return reliability.make_dataset(str(tmp_path_factory.mktemp("rel") / "data"))


def argv(data, folder, epochs, *extra):
    return ["--data-dir", data, "--checkpoint-file", str(folder / "ck" / "unet.params"),
            "--log-dir", str(folder / "logs"), "--num-epochs", str(epochs)] + TINY + list(extra)


def snapshot(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))
            if not n.endswith(".lock")}


def error_lines(capsys):
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_kill_campaign_loses_nothing(tmp_path):
    """Six SIGKILLs (a step, data loading with 2 workers, between the commit renames, before
    validation, inside the weights write, anywhere in an epoch), each resumed."""
    result = reliability.kill_campaign(str(tmp_path), kills=6, seed=0)
    table = reliability.report(result, None)
    assert result["tried"] == 6 and result["final_resume"], table
    assert result["failures"] == 0 and result["survived"] == 6, table
    points = {t["point"] for t in result["trials"]}
    assert {"train.step", "checkpoint.renamed", "random:data loading"} <= points
    assert "kills: 6 tried, 6 survived, 0 failures" in table


def test_kill_between_last_and_best_save_keeps_the_best_consistent(tmp_path, data, monkeypatch):
    """Killed after the last checkpoint of epoch 1 is committed, before the best one is written:
    the resumed run must still write a best checkpoint that matches what the last one says."""
    env = dict(os.environ, UNET_KILL_AT="checkpoint.committed:1")
    killed = subprocess.run([sys.executable, os.path.join(ROOT, "segmenter.py")]
                            + argv(data, tmp_path, 2), cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    best = str(tmp_path / "ck" / "unet.params")
    assert files.read_meta(files.last_path(best))["best_epoch"] == 1
    real = unet.training.loop.validate

    def worse(*args, **kwargs):  # epoch 2 scores below epoch 1: no new best of its own
        scores, panels = real(*args, **kwargs)
        return dict(scores, dice=0.0), panels
    monkeypatch.setattr(unet.training.loop, "validate", worse)
    assert segmenter.main(argv(data, tmp_path, 2, "--checkpoint", "load")) == 0
    last = files.read_meta(files.last_path(best))
    assert os.path.isfile(best), f"no best checkpoint, the last one names epoch {last['best_epoch']}"
    assert files.read_meta(best)["epoch"] == last["best_epoch"]


def test_full_disk_while_saving_says_so_and_keeps_the_checkpoint(tmp_path, data):
    """A real write failure (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) inside MXNet's own
    writer: one line, non-zero exit, the previous checkpoint byte for byte."""
    assert segmenter.main(argv(data, tmp_path, 1)) == 0
    folder = tmp_path / "ck"
    before = snapshot(folder)

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    run = subprocess.run([sys.executable, os.path.join(ROOT, "segmenter.py")]
                         + argv(data, tmp_path, 2, "--checkpoint", "load"), cwd=ROOT,
                         capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert "Traceback" not in run.stderr, run.stderr[-1500:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1, run.stderr[-1500:]
    assert "could not write checkpoint" in errors[0]
    assert snapshot(folder) == before


def fail_on(monkeypatch, predicate, error):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if predicate(os.fspath(dst)):
            raise error
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("target", ["-last.params", ".json", ".states"])
def test_no_space_left_keeps_the_previous_checkpoint(tmp_path, data, monkeypatch, capsys, target):
    assert segmenter.main(argv(data, tmp_path, 1)) == 0
    folder = tmp_path / "ck"
    before = snapshot(folder)
    capsys.readouterr()
    fail_on(monkeypatch, lambda dst: dst.endswith(target),
            OSError(errno.ENOSPC, "No space left on device"))
    assert segmenter.main(argv(data, tmp_path, 2, "--checkpoint", "load")) == 2
    monkeypatch.undo()
    (line,) = error_lines(capsys)
    assert "No space left on device" in line and "previous checkpoint is kept" in line
    after = snapshot(folder)
    assert all(n.endswith((".pending", ".states")) for n in set(after) - set(before)), sorted(after)
    last = files.last_path(folder / "unet.params")
    if target == ".json":
        # Failing between the two renames is the protocol's crash window: the new weights are
        # in place and their pending JSON describes them, so the new checkpoint is the whole one.
        assert files.read_meta(last)["epoch"] == 2
        loading.load_for_inference(last)
    else:
        assert {n: after.get(n) for n in before} == before
        assert files.read_meta(last)["epoch"] == 1


def test_checkpoint_folder_removed_mid_run(tmp_path, data, monkeypatch, capsys):
    real = writing.prepare_checkpoint
    calls = []

    def prepare(net, path, *args, **options):
        calls.append(path)
        if len(calls) == 3:  # epoch 2's last checkpoint: the folder is gone
            shutil.rmtree(os.path.dirname(path))
        return real(net, path, *args, **options)
    monkeypatch.setattr(writing, "prepare_checkpoint", prepare)
    assert segmenter.main(argv(data, tmp_path, 2)) == 2
    (line,) = error_lines(capsys)
    assert "could not write checkpoint" in line and "No such file or directory" in line


def test_second_run_on_the_same_files_is_refused_and_logs_go_beside(tmp_path, data, capsys):
    """Run A holds the checkpoint lock; B on the same checkpoint is refused with A's pid; C on the
    same log folder but its own checkpoint trains, in a run folder of its own."""
    first = reliability.Child(argv(data, tmp_path, 1000) + ["--log-images", "0"],
                              dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert first.wait_for("INFO epoch 1/", timeout=300), "".join(first.lines)
        assert segmenter.main(argv(data, tmp_path, 1)) == 2
        (line,) = error_lines(capsys)
        assert "in use by another training run" in line and f"pid {first.proc.pid}" in line
        other = tmp_path / "other"
        code = segmenter.main(["--data-dir", data, "--checkpoint-file",
                               str(other / "unet.params"), "--log-dir", str(tmp_path / "logs"),
                               "--num-epochs", "1"] + TINY)
        assert code == 0
    finally:
        first.kill_after(0)
        first.finish()
    runs = os.listdir(tmp_path / "logs")
    assert len(runs) == 2 and all(os.listdir(tmp_path / "logs" / r) for r in runs)
    assert files.read_meta(tmp_path / "ck" / "unet.params")["epoch"] >= 1
    assert files.read_meta(other / "unet.params")["epoch"] == 1
