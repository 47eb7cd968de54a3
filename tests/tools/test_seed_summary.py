"""scripts/isbi_seeds.sh and scripts/seed_summary.py: a recipe run per seed, then the mean,
spread and worst seed of its scores (issue 32)."""
import json
import os
import subprocess
import sys

import pytest

from project_paths import ROOT

SUMMARY = os.path.join(ROOT, "scripts", "seed_summary.py")


def write_metrics(path, **mean):
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"v_rand": 0.9, "v_info": 0.95, "pixel_error": 0.07, "rand_error_thinned": 0.1,
           "dice": 0.9}
    path.write_text(json.dumps({"images": [], "mean": dict(row, **mean)}))
    return path


def summary(*args):
    return subprocess.run([sys.executable, SUMMARY, *map(str, args)], capture_output=True,
                          text=True, timeout=60)


def test_mean_spread_and_worst_seed(tmp_path):
    files = [write_metrics(tmp_path / f"seed-{s}" / "predictions" / "metrics.json",
                           v_rand=v, pixel_error=e)
             for s, v, e in ((0, 0.97, 0.07), (1, 0.99, 0.06), (2, 0.98, 0.08))]
    result = summary(*files, "--json", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("| score | mean | std | worst | worst - mean | seed-0 | seed-1 | "
                        "seed-2 |")
    assert lines[2] == ("| v_rand | 0.9800 | 0.0100 | 0.9700 | -0.0100 | 0.9700 | 0.9900 | "
                        "0.9800 |")
    assert lines[4].startswith("| pixel_error | 0.0700 | 0.0100 | 0.0800 | +0.0100 |")
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["summary"]["v_info"]["std"] == 0.0 and len(saved["runs"]) == 3


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"), ("{", "not a metrics.json"),
    (json.dumps({"mean": {"dice": 0.9}}), "no v_rand, v_info, pixel_error, rand_error_thinned")])
def test_a_bad_metrics_file_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    result = summary(path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def run_seeds(tmp_path, data, seeds, **env_extra):
    tiny = ["--image-size", "32", "--base-channels", "4", "--depth", "2", "--num-epochs", "1",
            "--epoch-size", "4", "--num-workers", "0"]
    env = dict(os.environ, DATA_DIR=str(data), OUT_DIR=str(tmp_path / "out"),
               PYTHON=sys.executable, TTA="0", OVERLAP="8", SEEDS=seeds, OMP_NUM_THREADS="1",
               **env_extra)
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "isbi_seeds.sh"), *tiny],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_recipe_per_seed_then_its_summary(tmp_path):
    from unet.data.demo import generate_demo_dataset
    data = tmp_path / "data"
    generate_demo_dataset(data, seed=3, size=64, n_train=4, n_validate=2, n_test=1)
    result = run_seeds(tmp_path, data, "0 1")
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (0, 1):
        meta = json.loads((tmp_path / "out" / f"seed-{seed}" / "unet.params.json").read_text())
        assert meta["seed"] == seed
    table = (tmp_path / "out" / "seeds.md").read_text()
    assert table.splitlines()[0].endswith("| seed-0 | seed-1 |") and "| v_rand |" in table
    # Again: the seeds done are not trained again, the summary is written again.
    again = run_seeds(tmp_path, data, "0 1")
    assert again.returncode == 0 and "into" not in again.stderr, again.stderr[-2000:]
    assert again.stdout.strip() == table.strip()
    bad = run_seeds(tmp_path, data, "0 x")
    assert bad.returncode == 2 and "seeds must be non-negative integers" in bad.stderr


def test_a_lever_of_the_evaluation_on_the_seeds_already_trained(tmp_path):
    from unet.data.demo import generate_demo_dataset
    data = tmp_path / "data"
    generate_demo_dataset(data, seed=3, size=64, n_train=4, n_validate=2, n_test=1)
    assert run_seeds(tmp_path, data, "0 1").returncode == 0
    out = tmp_path / "out"
    trained = {s: (out / f"seed-{s}" / "unet.params").stat().st_mtime_ns for s in (0, 1)}
    # The best and the last checkpoint averaged, at another threshold: evaluated, not trained.
    lever = run_seeds(tmp_path, data, "0 1", EVAL_ONLY="both-0.3",
                      CHECKPOINTS="unet.params unet-last.params", EVAL_FLAGS="--threshold 0.3")
    assert lever.returncode == 0, lever.stderr[-3000:]
    assert "evaluated again" in lever.stderr and "seed 0 into" not in lever.stderr
    for seed in (0, 1):
        assert (out / f"seed-{seed}" / "unet.params").stat().st_mtime_ns == trained[seed]
        metrics = json.loads((out / f"seed-{seed}" / "predictions-both-0.3" / "metrics.json")
                             .read_text())
        assert metrics["mean"]["v_rand"] >= 0
    table = (out / "seeds-both-0.3.md").read_text()
    assert table.splitlines()[0].endswith("| seed-0 | seed-1 |")
    assert json.loads((out / "seeds-both-0.3.json").read_text())["runs"][0].endswith(
        os.path.join("seed-0", "predictions-both-0.3", "metrics.json"))
    # The original predictions and summary are untouched.
    assert (out / "seeds.md").read_text() != "" and (out / "seed-0" / "predictions").is_dir()
    missing = run_seeds(tmp_path, data, "0", EVAL_ONLY="none", CHECKPOINTS="nothing.params")
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and "no checkpoint" in lines[-1], missing.stderr
    bad = run_seeds(tmp_path, data, "0", EVAL_ONLY="a/b")
    assert bad.returncode == 2 and "EVAL_ONLY must be a plain name" in bad.stderr
