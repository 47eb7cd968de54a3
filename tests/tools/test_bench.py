"""benchmarks/bench.py: JSON rows from fresh processes, subsets, the FLOP count, the table."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from project_paths import ROOT as PROJECT_ROOT

ROOT = Path(PROJECT_ROOT)
SCRIPT = ROOT / "benchmarks" / "bench.py"
TINY = ["--base-channels", "4", "--depth", "2", "--repeat", "1", "--warmup", "0"]


@pytest.fixture(scope="module")
def bench():
    # Loading bench.py also puts benchkit, the package beside it, on sys.path for the tests below.
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, cwd=str(ROOT))


def test_json_rows_for_a_selected_subset():
    done = run_script("--json", "--task", "infer", "train", "--size", "64", "--channels", "1",
                      *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert [(r["task"], r["size"], r["channels"]) for r in rows] == [("infer", 64, 1),
                                                                      ("train", 64, 1)]
    for row in rows:
        assert row["status"] == "ok"
        assert row["ms_median"] > 0 and row["peak_rss_mb"] > 50   # the child's own, mxnet loaded
        assert row["images_per_s"] > 0 and row["gflops_achieved"] > 0
        assert row["variant"] == "fp32 layer"
        assert row["machine"]["cores"] >= 1 and isinstance(row["machine"]["flags"], list)
    assert rows[1]["gflop"] == pytest.approx(3 * rows[0]["gflop"], rel=1e-3)


def test_training_rows_mirror_by_default_as_segmenter(bench):
    done = run_script("--json", "--task", "train", "--size", "64", "--channels", "1", *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    row, = json.loads(done.stdout)
    assert row["status"] == "ok" and row["variant"] == "fp32 layer", row
    assert row["step"] == "mirror" and row["peak_rss_mb"] > 50 and 0 < row["last_loss"] < 10
    if row["conv_kernel"] == "winograd":        # what the kernel holds beside MXNet's arrays
        buffers = row["winograd_buffers_mb"]
        assert buffers["layouts"] > 0 and buffers["transformed_weights"] == 0, buffers
    done = run_script("--json", "--task", "train", "--size", "64", "--channels", "1",
                      "--no-mirror", *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    plain, = json.loads(done.stdout)
    assert plain["variant"] == "fp32 layer no-mirror" and plain["step"] == "cachedop", plain
    # The same updates either way (the same random batch and initialization).
    assert plain["last_loss"] == pytest.approx(row["last_loss"], rel=1e-4)
    from benchkit.specs import variant_name
    infer = dict(task="infer", amp="fp32", norm="layer", fast_norm=False, fused_norm=True,
                 winograd=True, fuse=False, mirror=True, recompute=False, static=True,
                 threads=0, env=[])
    assert variant_name(infer) == "fp32 layer"      # inference rows are the default's
    assert variant_name(dict(infer, mirror=False)) == "fp32 layer"
    both = run_script("--task", "train", "--mirror", "--recompute", *TINY)
    assert both.returncode == 2 and "choose one" in both.stderr
    bf16 = run_script("--task", "train", "--mirror", "--amp", "bf16", *TINY)
    assert bf16.returncode == 2 and "fp32 only" in bf16.stderr


def test_data_epoch_and_tiled_rows():
    done = run_script("--json", "--task", "data", "epoch", "tiled", "--size", "32",
                      "--epoch-images", "2", "--workers", "0", "--tiled-image", "64", *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    data, epoch, tiled = json.loads(done.stdout)
    assert [r["status"] for r in (data, epoch, tiled)] == ["ok"] * 3
    assert data["images"] == 2 and data["images_per_s"] > 0
    assert epoch["steps"] == 2 and epoch["reference_step_ms"] > 0
    assert epoch["pure_steps_ms"] == pytest.approx(2 * epoch["reference_step_ms"], abs=0.1)
    assert epoch["overhead"] == pytest.approx(
        epoch["ms_median"] / epoch["pure_steps_ms"] - 1, abs=1e-3)
    assert set(epoch["parts_ms"]) == {"steps", "validation", "checkpoint", "histograms"}
    assert 0 < epoch["parts_ms"]["steps"] < epoch["ms_median"]
    # 4 epochs of 2 steps: one interval each, between the starts of the two steps (epoch 1's
    # includes building the graph, so it is not compared with a whole epoch).
    assert len(epoch["step_ms_by_epoch"]) == 4
    assert all(ms > 0 for ms in epoch["step_ms_by_epoch"])
    assert all(ms < epoch["ms_median"] for ms in epoch["step_ms_by_epoch"][1:])
    assert tiled["image"] == 64 and tiled["tile"] == 32 and tiled["per_pixel_vs_single"] > 0


def test_table_has_machine_line_and_a_row():
    done = run_script("--task", "infer", "--size", "32", "--channels", "3", "--norm", "batch",
                      *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "cores" in lines[0]
    assert "OMP_NUM_THREADS=" in lines[0] and "DNNL_MAX_CPU_ISA=" in lines[0]
    assert any(line.startswith("| infer | 32") and "fp32 batch" in line for line in lines)


# Each is checked before any child starts; without the check most ran a tiny row (exit 0 or 1).
BAD_ARGUMENTS = [["--size", "30"], ["--size", "0"], ["--size", "x"], ["--timeout", "0"],
                 ["--task", "tiled", "--overlap", "-5"], ["--task", "tiled", "--overlap", "32"],
                 ["--task", "tiled", "--tiled-image", "0"], ["--task", "data", "--workers", "-1"],
                 ["--task", "data", "--channels", "2"], ["--task", "data", "--epoch-images", "0"],
                 ["--warmup", "-1"], ["--threads", "-1"], ["--env", "=x"], ["--env", "NOEQUALS"],
                 ["--depth", "0"], ["--depth", "11"], ["--base-channels", "0"], ["--channels", "0"],
                 ["--batch", "0"], ["--repeat", "0"], ["--task", "foo"]]


@pytest.mark.parametrize("bad", BAD_ARGUMENTS, ids=" ".join)
def test_bad_arguments_give_one_line_and_exit_2(bad):
    done = run_script("--task", "infer", "--size", "32", "--tiled-image", "64",
                      "--epoch-images", "2", "--workers", "0", *TINY, *bad)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.py: error: "), lines
    assert lines[0].endswith("(see --help)")


def test_help_explains_every_flag(bench):
    done = run_script("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for action in bench.build_parser()._actions:
        if action.help == bench.argparse.SUPPRESS:      # --child, internal
            continue
        assert action.help, action.option_strings
        assert action.nargs == 0 or "default" in action.help, action.option_strings
        assert any(flag in text for flag in action.option_strings)
    for help_text in ("what to time (default: all)", "the model's normalization (default layer",
                      "channels of the first stage", "down-sampling stages, 1 to 10 (default 4)"):
        assert help_text in text


def test_conv_flops_of_the_default_model(bench):
    from benchkit.flops import conv_gflop
    from unet.model.config import ModelConfig
    # 2*k*k*Cin*Cout*H*W summed over the default model's convolutions at 3x512x512.
    assert conv_gflop(ModelConfig(), 512, 512) == pytest.approx(544.387, abs=1e-3)
    tiny = ModelConfig(in_channels=1, base_channels=4, depth=2, image_size=64)
    assert conv_gflop(tiny, 128, 128) == pytest.approx(4 * conv_gflop(tiny, 64, 64))


def test_row_selection_defaults(bench):
    args = bench.build_parser().parse_args(["--task", "train", "tiled", "data"])
    args.size_given = args.channels_given = False
    args.size, args.channels = [256, 512], [1, 3]
    keys = [(s["task"], s["size"], s["channels"]) for s in bench.row_specs(args)]
    assert keys == [("train", 256, 1), ("train", 256, 3), ("train", 512, 1), ("train", 512, 3),
                    ("tiled", 512, 1), ("data", 256, 1)]


def test_missing_module_gives_a_not_available_row(bench, monkeypatch):
    from benchkit.child import NEEDS
    monkeypatch.setitem(NEEDS, "data", "unet.no_such_module")
    spec = dict(task="data", size=32, channels=1, batch=1, amp="fp32", norm="layer",
                fast_norm=False, fused_norm=True, winograd=True, fuse=False, mirror=False,
                recompute=False, static=True, threads=0, env=[])
    row = bench.child(spec)
    assert row["status"].startswith("not available: unet.no_such_module")
    assert "not available" in bench.format_table([row])


def test_variant_environment(bench):
    from benchkit.runner import child_env
    from benchkit.specs import variant_name
    spec = dict(task="train", amp="bf16", norm="layer", fast_norm=True, fused_norm=False,
                winograd=False, fuse=True, mirror=False, recompute=False, static=False, threads=2,
                env=["MALLOC_ARENA_MAX=2"])
    env = child_env(spec)
    assert "MXNET_BACKWARD_DO_MIRROR" not in env and env["OMP_NUM_THREADS"] == "2"
    assert env["MALLOC_ARENA_MAX"] == "2" and env["MXNET_DISABLE_MKLDNN_FUSE_CONV_SUM"] == "1"
    assert "UNET_NATIVE" not in env        # training rows pass the switches to build_unet
    assert variant_name(spec) == \
        "bf16 layer-fast unfused direct-conv fuse dynamic omp2 MALLOC_ARENA_MAX=2"
    # Epoch rows train through unet.training.loop, which builds with the kernels: the switch is global.
    assert child_env(dict(spec, task="epoch"))["UNET_NATIVE"] == "0"
    assert "UNET_NATIVE" not in child_env(dict(spec, task="epoch", fused_norm=True))
    # Inference rows: the layer-norm kernel does not apply, the Winograd one does.
    infer = dict(spec, task="infer", amp="fp32", fuse=False, mirror=False, static=True,
                 threads=0, env=[])
    assert "UNET_NATIVE" not in child_env(infer)
    assert variant_name(infer) == "fp32 layer-fast direct-conv"
    assert variant_name(dict(infer, winograd=True)) == "fp32 layer-fast"


def test_epoch_overhead_is_against_both_reference_processes(bench):
    from benchkit.epoch import add_epoch_reference
    row = dict(status="ok", steps=4, ms_median=1100.0)
    refs = [dict(status="ok", times_ms=[240.0, 250.0]), dict(status="ok", times_ms=[260.0, 300.0])]
    done = add_epoch_reference(row, refs)
    assert done["reference_step_ms"] == 255.0 and done["pure_steps_ms"] == 1020.0
    assert done["overhead"] == pytest.approx(1100 / 1020 - 1, abs=1e-4)
    failed = add_epoch_reference(row, [refs[0], dict(status="error: rc 1: boom")])
    assert failed["status"] == "error: reference steps: error: rc 1: boom"
    assert "overhead" not in failed


def test_data_rows_take_any_positive_crop_size():
    # The data task builds no network, so the 2**depth rule is not its (found in review).
    done = run_script("--json", "--task", "data", "--size", "100", "--channels", "1",
                      "--repeat", "1", "--warmup", "0", "--epoch-images", "2", "--workers", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(done.stdout)
    assert row["task"] == "data" and row["size"] == 100
