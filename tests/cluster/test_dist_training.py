"""segmenter.py under the parameter server: 2 workers on 127.0.0.1, rank 0 checkpoints, resume."""
import os
import subprocess
import sys

import pytest

from unet.checkpoints.files import last_path, read_meta
from unet.data.demo import generate_demo_dataset
from project_paths import ROOT


def launch(tmp_path, data, epochs, *extra):
    command = [sys.executable, "-m", "unet.launch", "-n", "2", "-s", "1", "--timeout", "5",
               sys.executable, "segmenter.py", "--kvstore", "dist_sync", "--data-dir", str(data),
               "--checkpoint-file", str(tmp_path / "ck" / "u.params"),
               "--log-dir", str(tmp_path / "logs"), "--base-channels", "4", "--depth", "2",
               "--image-size", "32", "--norm", "batch", "--batch-size", "2",
               "--num-workers", "0", "--num-epochs", str(epochs), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)


def test_two_workers_train_checkpoint_on_rank_0_and_resume(tmp_path):
    data = tmp_path / "data"
    generate_demo_dataset(data, seed=5, size=32, n_train=8, n_validate=2, n_test=0)
    first = launch(tmp_path, data, 2)
    assert first.returncode == 0, first.stderr[-2000:]
    meta = read_meta(last_path(tmp_path / "ck" / "u.params"))
    # 8 images in 2 shards of 4, batches of 2: 2 steps an epoch on every worker.
    assert (meta["epoch"], meta["global_step"]) == (2, 4)
    assert len(os.listdir(tmp_path / "logs")) == 1          # one writer: rank 0
    again = launch(tmp_path, data, 3, "--checkpoint", "load")
    assert again.returncode == 0, again.stderr[-2000:]
    meta = read_meta(last_path(tmp_path / "ck" / "u.params"))
    assert (meta["epoch"], meta["global_step"]) == (3, 6)
    assert "resuming" in again.stdout + again.stderr
