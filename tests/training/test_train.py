"""segmenter.py end to end: training, validation score, resume, kills, logs and bad input."""
import json
import os
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

import segmenter
from unet.checkpoints.files import last_path, read_meta
from unet.checkpoints.loading import load_for_inference
from unet.data.demo import generate_demo_dataset
from unet.training.config import TrainConfig
from project_paths import ROOT

TINY = ["--base-channels", "4", "--depth", "2", "--image-size", "32", "--norm", "batch",
        "--batch-size", "4", "--num-workers", "0", "--log-images", "1"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "dataset"
    generate_demo_dataset(root, seed=3, size=64, n_train=8, n_validate=2, n_test=2)
    return root


def run(args, tmp_path, data):
    ckpt = tmp_path / "ck" / "unet.params"
    argv = ["--data-dir", str(data), "--checkpoint-file", str(ckpt),
            "--log-dir", str(tmp_path / "logs")] + TINY + args
    return segmenter.main(argv), ckpt


def params_of(path):
    import mxnet as mx
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def test_trains_to_a_validation_score_above_the_trivial_floor(tmp_path, demo):
    # Predicting "cell" everywhere scores pixel error ~0.21 and dice ~0.88 on this data;
    # a network that learned the membranes must do clearly better on both.
    code, ckpt = run(["--num-epochs", "8", "--epoch-size", "32", "--learning-rate", "0.01",
                      "--image-size", "64", "--base-channels", "8"], tmp_path, demo)
    assert code == 0
    meta = read_meta(ckpt)
    assert meta["kind"] == "best" and meta["best_epoch"] >= 1
    assert meta["scores"]["pixel_error"] < 0.12, meta["scores"]
    assert meta["best_score"] > 0.93, meta["scores"]
    net, meta = load_for_inference(ckpt)
    assert meta["data"]["encoding"]["values"] == [0, 255]


def test_resume_equals_straight_run(tmp_path, demo):
    straight = tmp_path / "a"
    code, ck_a = run(["--num-epochs", "2", "--lr-decay-epoch", "1"], straight, demo)
    assert code == 0
    split = tmp_path / "b"
    code, ck_b = run(["--num-epochs", "1", "--lr-decay-epoch", "1"], split, demo)
    assert code == 0
    code, _ = run(["--num-epochs", "2", "--lr-decay-epoch", "1", "--checkpoint", "load"],
                  split, demo)
    assert code == 0
    meta_a, meta_b = read_meta(last_path(ck_a)), read_meta(last_path(ck_b))
    for key in ("epoch", "global_step", "learning_rate"):
        assert meta_a[key] == meta_b[key], key
    assert meta_a["epoch"] == 2 and meta_a["learning_rate"] == pytest.approx(1e-4)
    pa, pb = params_of(last_path(ck_a)), params_of(last_path(ck_b))
    assert pa.keys() == pb.keys()
    for key in pa:
        np.testing.assert_allclose(pa[key], pb[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # The TensorBoard curves continue in the same run folder.
    assert meta_a["run_name"] != meta_b["run_name"]
    assert len(os.listdir(split / "logs")) == 1


@pytest.mark.parametrize("flag", ["--recompute", "--mirror"])
def test_recomputing_trains_the_same_weights_as_a_plain_run(tmp_path, demo, flag):
    # One epoch with BatchNorm: the same updates, running statistics included, within float noise.
    # The plain run is the hybridized block's step (--no-mirror); mirroring is the default.
    code, plain = run(["--num-epochs", "1", "--no-mirror"], tmp_path / "plain", demo)
    assert code == 0
    assert read_meta(plain)["training"]["mirror"] is False
    code, recomputed = run(["--num-epochs", "1"] + ([flag] if flag == "--recompute" else []),
                           tmp_path / "rc", demo)
    assert code == 0
    assert read_meta(recomputed)["training"][flag[2:]] is True
    pa, pb = params_of(last_path(plain)), params_of(last_path(recomputed))
    assert pa.keys() == pb.keys()
    for key in pa:
        if key.endswith(("conv1.bias", "conv2.bias")):
            # A bias before a norm has a zero gradient up to rounding, which Adam's
            # normalization turns into steps of lr size: no two summation orders agree on it.
            continue
        np.testing.assert_allclose(pb[key], pa[key], rtol=1e-3, atol=1e-4, err_msg=key)
    assert read_meta(recomputed)["scores"]["dice"] == pytest.approx(
        read_meta(plain)["scores"]["dice"], abs=1e-3)


READ_EVENTS = """
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"histograms": 0, "scalars": 0, "images": 0})
acc.Reload()
tags = acc.Tags()
print(json.dumps({"scalars": tags["scalars"], "images": tags["images"],
                  "histograms": tags["histograms"],
                  "loss_steps": [e.step for e in acc.Scalars("train/loss")]}))
"""


def read_events(folder):
    """Tags and loss steps of a run folder; in a child process, because mxboard's and
    tensorboard's protobuf modules cannot be imported into one process."""
    out = subprocess.run([sys.executable, "-c", READ_EVENTS, str(folder)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out)


def test_event_files_hold_the_expected_tags(tmp_path, demo):
    code, _ = run(["--num-epochs", "2"], tmp_path, demo)
    assert code == 0
    (run_dir,) = os.listdir(tmp_path / "logs")
    tags = read_events(tmp_path / "logs" / run_dir)
    for tag in ("train/loss", "lr", "val/dice", "val/mean_iou", "val/pixel_error",
                "val/accuracy", "train/images_per_sec"):
        assert tag in tags["scalars"], tag
    assert tags["loss_steps"] == [1, 2, 3, 4]
    assert "val/panels" in tags["images"]
    assert any(t.startswith("weights/") for t in tags["histograms"])
    assert any(t.startswith("grads/") for t in tags["histograms"])


def _default_sigint():
    # A shell's background job starts with SIGINT ignored, an ignored signal stays ignored
    # across exec, and Python then never raises KeyboardInterrupt: give the child the default
    # disposition, however pytest was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _segmenter(args, env=None, new_session=False):
    return subprocess.run([sys.executable, os.path.join(ROOT, "segmenter.py")] + args,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=new_session, preexec_fn=_default_sigint)


def test_killed_mid_epoch_resumes_and_finishes(tmp_path, demo):
    ckpt = tmp_path / "unet.params"
    args = ["--data-dir", str(demo), "--checkpoint-file", str(ckpt), "--log-dir",
            str(tmp_path / "logs"), "--num-epochs", "3"] + TINY
    env = dict(os.environ, UNET_KILL_AT="train.step:3")   # epoch 2 of 2-step epochs, mid-way
    killed = _segmenter(args, env)
    assert killed.returncode == -signal.SIGKILL
    before = read_meta(last_path(ckpt))
    assert before["epoch"] == 1 and before["global_step"] == 2
    done = _segmenter(args + ["--checkpoint", "load"])
    assert done.returncode == 0, done.stderr
    after = read_meta(last_path(ckpt))
    assert after["epoch"] == 3 and after["global_step"] == 6


# Both kills hit epoch 2's last checkpoint: the 3rd checkpoint prepared is written on the writer
# thread while epoch 2 validates, the 3rd weights write is in its commit (pending JSON written,
# nothing renamed). Either way a temp file and the new states file are left behind.
@pytest.mark.parametrize("point", ["checkpoint.prepared:3", "checkpoint.params_written:3"])
def test_resume_removes_what_a_killed_write_left(tmp_path, demo, point):
    ckpt = tmp_path / "unet.params"
    args = ["--data-dir", str(demo), "--checkpoint-file", str(ckpt), "--log-dir",
            str(tmp_path / "logs"), "--num-epochs", "3"] + TINY
    killed = _segmenter(args, dict(os.environ, UNET_KILL_AT=point))
    assert killed.returncode == -signal.SIGKILL
    left = sorted(os.listdir(tmp_path))
    assert any(".tmp" in name for name in left) and "unet-last-step4.states" in left, left
    assert read_meta(last_path(ckpt))["epoch"] == 1
    done = _segmenter(args + ["--checkpoint", "load"])
    assert done.returncode == 0, done.stderr
    assert read_meta(last_path(ckpt))["epoch"] == 3
    left = sorted(os.listdir(tmp_path))
    assert not any(".tmp" in name or name.endswith(".pending") for name in left), left
    assert [n for n in left if n.endswith(".states")] == ["unet-last-step6.states"]


# TERM-GROUP: SIGTERM to the whole process group (pkill -f, a batch scheduler's cancel), which
# kills the loader's worker processes too; MXNet's DataLoader pool re-forked them and hung the save.
# INT-GROUP: Ctrl-C in a terminal, which the workers ignore.
@pytest.mark.parametrize("signal_name, workers", [("INT", "0"), ("TERM", "0"), ("TERM-GROUP", "2"),
                                                  ("INT-GROUP", "2")])
def test_ctrl_c_saves_the_state_and_exits_cleanly(tmp_path, demo, signal_name, workers):
    ckpt = tmp_path / "unet.params"
    args = ["--data-dir", str(demo), "--checkpoint-file", str(ckpt), "--log-dir",
            str(tmp_path / "logs"), "--num-epochs", "3"] + TINY + ["--num-workers", workers]
    env = dict(os.environ, UNET_KILL_AT="train.step:3", UNET_KILL_SIGNAL=signal_name)
    stopped = _segmenter(args, env, new_session=True)
    assert stopped.returncode == 130, stopped.stderr
    assert "state saved" in stopped.stderr and "Traceback" not in stopped.stderr
    meta = read_meta(last_path(ckpt))
    assert meta["epoch"] == 1 and meta["global_step"] == 3     # mid-epoch 2, saved on the way out
    done = _segmenter(args + ["--checkpoint", "load"])
    assert done.returncode == 0, done.stderr
    assert read_meta(last_path(ckpt))["epoch"] == 3


def test_a_second_sigterm_does_not_abort_the_state_save(tmp_path, demo):
    # SIGTERM at every weights write from the 2nd on: epoch 1's best save is stopped, and the
    # state save that follows gets one more SIGTERM half-way: it is ignored, the state written.
    ckpt = tmp_path / "unet.params"
    args = ["--data-dir", str(demo), "--checkpoint-file", str(ckpt), "--log-dir",
            str(tmp_path / "logs"), "--num-epochs", "3"] + TINY
    env = dict(os.environ, UNET_KILL_AT="checkpoint.params_written:2", UNET_KILL_SIGNAL="TERM")
    stopped = _segmenter(args, env)
    assert stopped.returncode == 130, stopped.stderr
    assert "state saved" in stopped.stderr and "Traceback" not in stopped.stderr
    meta = read_meta(last_path(ckpt))
    assert meta["epoch"] == 1 and meta["global_step"] == 2
    done = _segmenter(args + ["--checkpoint", "load"])
    assert done.returncode == 0, done.stderr


def test_a_killed_loader_worker_saves_the_state_and_exits_1(tmp_path, demo):
    # The OOM killer takes worker 0 after step 3. Step 4's batch came from worker 1, so epoch 2
    # ends and is saved; epoch 3's first batch is worker 0's: one line, the state saved again.
    ckpt = tmp_path / "unet.params"
    args = ["--data-dir", str(demo), "--checkpoint-file", str(ckpt), "--log-dir",
            str(tmp_path / "logs"), "--num-epochs", "3"] + TINY + ["--num-workers", "2"]
    env = dict(os.environ, UNET_KILL_AT="train.step:3", UNET_KILL_SIGNAL="KILL-WORKER")
    stopped = _segmenter(args, env, new_session=True)
    assert stopped.returncode == 1, stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "was killed by SIGKILL" in errors[0], stopped.stderr
    assert "state saved" in stopped.stderr and "Traceback" not in stopped.stderr
    meta = read_meta(last_path(ckpt))
    assert meta["epoch"] == 2 and meta["global_step"] == 4
    done = _segmenter(args + ["--checkpoint", "load"])
    assert done.returncode == 0, done.stderr
    assert read_meta(last_path(ckpt))["epoch"] == 3


@pytest.mark.parametrize("problem, expected", [
    ("missing_mask", "without a mask"),
    ("size_mismatch", "64x32"),
    ("bad_png", "1.png"),
    ("bad_mask_values", "values"),
    ("empty_split", "validate"),
])
def test_bad_dataset_gets_one_line_and_exit_2(tmp_path, demo, capsys, problem, expected):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(demo, data)
    if problem == "missing_mask":
        os.remove(data / "train" / "mask" / "1.png")
    elif problem == "size_mismatch":
        cv2.imwrite(str(data / "train" / "mask" / "1.png"), np.zeros((32, 64), np.uint8))
    elif problem == "bad_png":
        (data / "train" / "image" / "1.png").write_text("not a png")
    elif problem == "bad_mask_values":
        cv2.imwrite(str(data / "train" / "mask" / "1.png"),
                    np.full((64, 64), 77, np.uint8))
    elif problem == "empty_split":
        for name in os.listdir(data / "validate" / "image"):
            os.remove(data / "validate" / "image" / name)
        for name in os.listdir(data / "validate" / "mask"):
            os.remove(data / "validate" / "mask" / name)
    code, _ = run(["--num-epochs", "1"], tmp_path, data)
    # A progress bar clears itself with carriage returns: split on those too.
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert code == 2
    # The error alone: the quick data check draws no progress bar.
    assert len(err) == 1 and err[0].startswith("error:") and expected in err[0].lower(), err


def test_load_without_checkpoint_and_other_architecture(tmp_path, demo, capsys):
    code, ckpt = run(["--checkpoint", "load"], tmp_path, demo)
    assert code == 2 and "no checkpoint to resume" in capsys.readouterr().err
    assert run(["--num-epochs", "1"], tmp_path, demo)[0] == 0
    code, _ = run(["--checkpoint", "load", "--num-epochs", "2", "--base-channels", "8"],
                  tmp_path, demo)
    err = capsys.readouterr().err
    assert code == 2 and "base_channels" in err and "Traceback" not in err
    # In a process of its own, where the log lines reach stderr too: the error line alone,
    # none of the set-up's INFO lines (the data check ran before the architecture check).
    alone = _segmenter(["--data-dir", str(demo), "--checkpoint-file", str(ckpt), "--log-dir",
                        str(tmp_path / "logs"), "--checkpoint", "load", "--num-epochs", "2"]
                       + TINY + ["--base-channels", "8"])
    assert alone.returncode == 2
    assert alone.stderr.splitlines() == [f"error: checkpoint {last_path(ckpt)} was trained with "
                                         "another architecture (checkpoint != flags): "
                                         "base_channels: 4 != 8"], alone.stderr


def test_second_run_on_the_same_checkpoint_is_refused(tmp_path, demo, capsys):
    from unet.checkpoints.lock import RunLock
    ckpt = tmp_path / "ck" / "unet.params"
    os.makedirs(ckpt.parent)
    with RunLock(str(ckpt) + ".lock", "checkpoint"):
        code, _ = run(["--num-epochs", "1"], tmp_path, demo)
    err = capsys.readouterr().err
    assert code == 2 and "in use by another training run" in err


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, demo, capsys):
    assert run(["--num-epochs", "1"], tmp_path, demo)[0] == 0
    ckpt = tmp_path / "ck" / "unet.params"
    before = open(last_path(ckpt), "rb").read()
    code, _ = run(["--num-epochs", "3", "--checkpoint", "load", "--learning-rate", "1e30",
                   "--optimizer", "sgd"], tmp_path, demo)
    err = capsys.readouterr().err
    assert code == 3 and "loss became" in err and f"{last_path(ckpt)} is kept" in err
    assert open(last_path(ckpt), "rb").read() == before
    json.loads(open(str(last_path(ckpt)) + ".json").read())
    # A run that diverges before its first checkpoint does not claim one is kept.
    code, _ = run(["--num-epochs", "1", "--learning-rate", "1e30", "--optimizer", "sgd",
                   "--checkpoint-file", str(tmp_path / "other" / "u.params")], tmp_path, demo)
    err = capsys.readouterr().err
    assert code == 3 and "no checkpoint had been written yet" in err and "is kept" not in err


def test_geometry_flag_reaches_the_training_set(tmp_path, demo, monkeypatch):
    import unet.training.loop
    seen = []

    class Recording(unet.training.loop.SegmentationDataset):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("geometry"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(unet.training.loop, "SegmentationDataset", Recording)
    code, _ = run(["--num-epochs", "1", "--epoch-size", "4", "--geometry", "lossless"],
                  tmp_path, demo)
    assert code == 0 and seen == ["lossless"]
    with pytest.raises(ValueError, match="geometry"):
        TrainConfig(geometry="warp")
    with pytest.raises(SystemExit) as bad:
        segmenter.build_parser().parse_args(["--geometry", "warp"])
    assert bad.value.code == 2


def test_cosine_schedule_anneals_over_the_epochs(tmp_path, demo, capsys):
    cfg = TrainConfig(learning_rate=0.01, num_epochs=4, lr_schedule="cosine")
    rates = [cfg.learning_rate_at(e) for e in range(4)]
    assert rates == pytest.approx([0.01, 0.01 * (1 + 2 ** -0.5) / 2, 0.005,
                                   0.01 * (1 - 2 ** -0.5) / 2])
    step = TrainConfig(learning_rate=0.01, num_epochs=4, lr_decay=0.5,
                                 lr_decay_epoch=(1, 3))
    assert [step.learning_rate_at(e) for e in range(4)] == pytest.approx(
        [0.01, 0.005, 0.005, 0.0025])
    # The flag reaches the trainer: the last checkpoint records the rate of its epoch.
    code, ckpt = run(["--num-epochs", "2", "--epoch-size", "4", "--lr-schedule", "cosine"],
                     tmp_path, demo)
    assert code == 0 and read_meta(last_path(ckpt))["learning_rate"] == pytest.approx(5e-4)
    # Decay epochs belong to the step schedule: asking for both is bad input, not a silent pick.
    code, _ = run(["--num-epochs", "2", "--lr-schedule", "cosine", "--lr-decay-epoch", "1"],
                  tmp_path / "both", demo)
    assert code == 2 and "lr-decay-epoch is for --lr-schedule step" in capsys.readouterr().err


def test_boundary_band_flag_reaches_the_training_set(tmp_path, demo, caplog, capsys):
    caplog.set_level("INFO", logger="unet.data.loader")
    code, ckpt = run(["--num-epochs", "1", "--epoch-size", "4", "--boundary-weight", "3",
                      "--boundary-sigma", "1.5"], tmp_path, demo)
    assert code == 0
    assert "boundary band 3, sigma 1.5" in caplog.text
    assert read_meta(last_path(ckpt))["training"]["boundary_weight"] == 3.0
    code, _ = run(["--boundary-weight", "-1"], tmp_path / "bad", demo)
    assert code == 2 and "boundary-weight >= 0" in capsys.readouterr().err


def test_distance_flags_reach_the_loss(tmp_path, demo, caplog, capsys):
    caplog.set_level("INFO", logger="unet.training.loop")
    code, ckpt = run(["--num-epochs", "1", "--epoch-size", "4", "--distance-weight", "0.5",
                      "--distance-clip", "3"], tmp_path, demo)
    assert code == 0
    assert "ce + 0.5 x the Huber loss" in caplog.text and "clipped at 3 px" in caplog.text
    training = read_meta(last_path(ckpt))["training"]
    assert (training["distance_weight"], training["distance_clip"]) == (0.5, 3)
    code, _ = run(["--distance-weight", "1", "--num-classes", "3"], tmp_path / "bad", demo)
    assert code == 2 and "two classes" in capsys.readouterr().err


def test_validation_shows_a_bar_on_a_terminal_only(demo, monkeypatch):
    import io
    import mxnet as mx
    import unet.training.validation
    from unet.model.config import ModelConfig
    from unet.data.samples import prepare_data
    from unet.model.network import build_unet, initializer

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    config = ModelConfig(in_channels=1, num_classes=2, base_channels=4, depth=2, norm="batch",
                         image_size=32)
    net = build_unet(config)
    net.initialize(initializer())
    info = prepare_data(str(demo), 2)
    monkeypatch.setattr(unet.training.validation, "PROGRESS_DELAY_S", 0.0)
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        scores, _ = unet.training.validation.validate(net, info, config, [mx.cpu()])
        assert 0.0 <= scores["dice"] <= 1.0
        assert ("validating" in stream.getvalue()) == shown, stream.getvalue()
