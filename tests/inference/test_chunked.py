"""Chunked inference (evaluate.py with a .zarr output): equal to the in-memory path, for Zarr
sections and stacks, OME-Zarr groups and tiled TIFFs; bad inputs in one line; killed runs that
continue to the uninterrupted output with no chunk half-written; a 2-process Dask cluster, one
of whose workers is killed mid-run."""
import os
import random
import signal
import subprocess
import sys

import cloudpickle
import cv2
import numpy as np
import pytest
import tifffile
import zarr

import evaluate
from project_paths import ROOT
from test_evaluate import blobs, one_line_error, run, train_checkpoint
from unet.inference.segmenter import Segmenter

CHUNK = 32          # the tiny model's tile is 32: tiles and their overlaps cross chunk borders
cloudpickle.register_pickle_by_value(sys.modules[__name__])   # functions sent to Dask workers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=0)


@pytest.fixture(scope="module")
def stack():
    """Two 96x128 uint8 slices of bright discs."""
    return np.stack([blobs(96, 128, seed)[0] for seed in (11, 12)])


@pytest.fixture(scope="module")
def expected(checkpoint, stack):
    """Per slice of ``stack``: the in-memory prediction."""
    segmenter = Segmenter.from_checkpoint(checkpoint)
    return [segmenter.predict(image[:, :, None].astype(np.float32) / 255.0) for image in stack]


def chunked(capsys, checkpoint, image, output, *extra):
    return run(capsys, "--image", image, "--output", output, "--network-param", checkpoint,
               "--chunk", CHUNK, "--probabilities", "npy", *extra)


def assert_same(output, predictions):
    """The chunked ``output`` holds the masks and foreground probabilities of ``predictions``."""
    group = zarr.open_group(str(output), mode="r")
    masks, probs = group["mask"][:], group["probabilities"][:]
    if masks.ndim == 2:
        masks, probs = masks[None], probs[None]
    assert masks.shape == (len(predictions),) + predictions[0].mask.shape
    for mask, prob, prediction in zip(masks, probs, predictions):
        np.testing.assert_allclose(prob, 1.0 - prediction.probabilities[0], atol=1e-5)
        undecided = np.abs(prediction.probabilities[1] - 0.5) < 1e-5
        assert ((mask == prediction.mask) | undecided).all()


def test_zarr_section_equals_what_the_in_memory_path_writes(tmp_path, capsys, checkpoint):
    image, _ = blobs(150, 131, seed=5)
    assert cv2.imwrite(str(tmp_path / "in.png"), image)
    zarr.save_array(str(tmp_path / "in.zarr"), image, chunks=(50, 40))
    code, _, err = run(capsys, "--image", tmp_path / "in.png", "--network-param", checkpoint,
                       "--probabilities", "npy")
    assert code == 0, err
    code, out, err = chunked(capsys, checkpoint, tmp_path / "in.zarr", tmp_path / "out.zarr")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "out.zarr")
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert group["mask"].shape == (150, 131) and group["mask"].chunks == (CHUNK, CHUNK)
    np.testing.assert_array_equal(group["mask"][:], cv2.imread(str(tmp_path / "in_mask.png"),
                                                              cv2.IMREAD_UNCHANGED))
    np.testing.assert_allclose(group["probabilities"][:], np.load(tmp_path / "in_prob.npy"),
                               atol=1e-5)
    # The same command again: every chunk is there, nothing is redone.
    before = os.stat(tmp_path / "out.zarr" / "mask" / "0.0").st_mtime_ns
    assert chunked(capsys, checkpoint, tmp_path / "in.zarr", tmp_path / "out.zarr")[0] == 0
    assert os.stat(tmp_path / "out.zarr" / "mask" / "0.0").st_mtime_ns == before


def write_ome_zarr(path, stack):
    """A two-level OME-Zarr multiscale group (c, z, y, x), level 1 at half resolution."""
    group = zarr.open_group(str(path), mode="w")
    group.create_dataset("0", data=stack[None], chunks=(1, 1, 40, 40))
    group.create_dataset("1", data=stack[None, :, ::2, ::2])
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space"} for n in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes,
                                   "datasets": [{"path": "0"}, {"path": "1"}]}]


@pytest.mark.parametrize("kind", ["zarr-stack", "ome-zarr", "tiled-tiff"])
def test_stacks_equal_the_in_memory_prediction_of_every_slice(tmp_path, capsys, checkpoint,
                                                              stack, expected, kind):
    source = tmp_path / {"zarr-stack": "in.zarr", "ome-zarr": "ome.zarr",
                         "tiled-tiff": "in.tif"}[kind]
    if kind == "zarr-stack":
        zarr.save_array(str(source), stack, chunks=(1, 33, 50))
    elif kind == "ome-zarr":
        write_ome_zarr(source, stack)
    else:
        tifffile.imwrite(source, stack, tile=(48, 32), photometric="minisblack",
                         compression="zlib")
    code, _, err = chunked(capsys, checkpoint, source, tmp_path / "out.zarr")
    assert code == 0, err
    assert_same(tmp_path / "out.zarr", expected)


def _rank_4(path):
    zarr.save_array(str(path / "in.zarr"), np.zeros((1, 2, 40, 40), np.uint8))
    return path / "in.zarr"


def _int32(path):
    zarr.save_array(str(path / "in.zarr"), np.zeros((40, 40), np.int32))
    return path / "in.zarr"


def _tiff(path):
    tifffile.imwrite(path / "in.tif", np.zeros((40, 40), np.uint8))
    return path / "in.tif"


def _pages_differ(path):
    tifffile.imwrite(path / "in.tif", np.zeros((40, 40), np.uint8), tile=(16, 16))
    tifffile.imwrite(path / "in.tif", np.zeros((48, 40), np.uint8), tile=(16, 16), append=True)
    return path / "in.tif"


def _channel_pages(path):
    tifffile.imwrite(path / "in.tif", np.zeros((2, 3, 40, 40), np.uint8), imagej=True,
                     metadata={"axes": "ZCYX"})
    return path / "in.tif"


def _foreign_output(path):
    zarr.save_array(str(path / "out.zarr"), np.zeros((40, 40), np.uint8))
    zarr.save_array(str(path / "in.zarr"), np.zeros((40, 40), np.uint8))
    return path / "in.zarr"


BAD = [("rank", _rank_4, [], "a Zarr array of rank 4"),
       ("dtype", _int32, [], "pixel type int32"),
       ("pages", _pages_differ, [], "must all be one size"),
       ("channel pages", _channel_pages, [], "store the channels as separate pages"),
       ("foreign", _foreign_output, [], "is not an output of evaluate.py"),
       ("mask", _tiff, ["--mask", "x.png"], "--mask: not available for chunked inference"),
       ("png output", _int32, ["--output", "x.png"], "give --output NAME.zarr or NAME.tif"),
       ("tiff tile", _int32, ["--output", "x.tif", "--chunk", "40"], "a multiple of 16"),
       ("tiff npy", _int32, ["--output", "x.tif", "--probabilities", "npy"],
        "a TIFF output takes png16")]


@pytest.mark.parametrize("make, extra, message", [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, checkpoint, make, extra, message):
    line = one_line_error(capsys, "--image", make(tmp_path), "--network-param", checkpoint,
                          "--output", tmp_path / "out.zarr", *extra)
    assert message in line


def test_an_output_of_another_run_is_refused(tmp_path, capsys, checkpoint, stack):
    zarr.save_array(str(tmp_path / "in.zarr"), stack[0])
    assert chunked(capsys, checkpoint, tmp_path / "in.zarr", tmp_path / "out.zarr")[0] == 0
    line = one_line_error(capsys, "--image", tmp_path / "in.zarr", "--output",
                          tmp_path / "out.zarr", "--network-param", checkpoint, "--chunk", 64,
                          "--probabilities", "npy")
    assert "belongs to another run (options.chunk differs: 32 there, 64 now)" in line
    assert "a chunked input is a Zarr array or group or a TIFF" in one_line_error(
        capsys, "--image", tmp_path / "in.zarr" / "0.0", "--network-param", checkpoint,
        "--workers", 2)


def chunk_files(output):
    """``{array: [chunk file names]}`` of a chunked output, each checked to decode whole."""
    found = {}
    for name in ("mask", "probabilities"):
        array = zarr.open_array(str(output / name), mode="r")
        files = [f for f in os.listdir(output / name) if not f.startswith(".")]
        for key in files:
            if key.endswith(".partial"):
                continue
            with open(output / name / key, "rb") as handle:
                raw = array.compressor.decode(handle.read())
            assert len(raw) == np.prod(array.chunks) * array.dtype.itemsize, (name, key)
        found[name] = files
    return found


def test_killed_runs_continue_to_the_uninterrupted_output(tmp_path, capsys, checkpoint, stack,
                                                          expected):
    zarr.save_array(str(tmp_path / "in.zarr"), stack, chunks=(1, 50, 50))
    output = tmp_path / "out.zarr"
    command = [sys.executable, os.path.join(ROOT, "evaluate.py"), "--image",
               str(tmp_path / "in.zarr"), "--output", str(output), "--network-param", checkpoint,
               "--chunk", str(CHUNK), "--probabilities", "npy", "--no-progress"]
    seed = random.randrange(1 << 16)
    rng = random.Random(seed)
    done = 0
    # Killed with a chunk file half-written (its temporary file), or after a whole chunk.
    for point in ("chunked.partial", "chunked.chunk", "chunked.partial"):
        kill_at = f"{point}:{rng.randint(1, 6)}"
        killed = subprocess.run(command, env=dict(os.environ, UNET_KILL_AT=kill_at), cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, (seed, kill_at, killed.stderr[-2000:])
        files = chunk_files(output)
        masks = [f for f in files["mask"] if not f.endswith(".partial")]
        assert len(masks) >= done, (seed, kill_at)
        done = len(masks)
        if point == "chunked.partial":
            assert any(f.endswith(".partial") for f in sum(files.values(), [])), (seed, kill_at)
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    files = chunk_files(output)
    assert len(files["mask"]) == len(files["probabilities"]) == 2 * 3 * 4   # no .partial left
    assert_same(output, expected)


def test_two_dask_workers_give_the_output_of_one_process(tmp_path, capsys, checkpoint, stack,
                                                         expected):
    zarr.save_array(str(tmp_path / "in.zarr"), stack, chunks=(1, 50, 50))
    code, _, err = chunked(capsys, checkpoint, tmp_path / "in.zarr", tmp_path / "out.zarr",
                           "--workers", 2)
    assert code == 0, err
    assert_same(tmp_path / "out.zarr", expected)


def _arm_kill():
    os.environ["UNET_KILL_AT"] = "chunked.chunk:1"    # SIGKILL after its first chunk is written


def _checkpoint_loads():
    from unet.inference.chunked import worker_state
    return worker_state.cache_info().misses


def test_a_killed_dask_worker_is_replaced_and_the_output_is_whole(tmp_path, capsys, checkpoint,
                                                                  stack, expected):
    from distributed import Client, LocalCluster
    zarr.save_array(str(tmp_path / "in.zarr"), stack, chunks=(1, 50, 50))
    loopback = "127.0.0.1:0"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=loopback, worker_dashboard_address=loopback,
                      scheduler_kwargs={"dashboard": False},
                      env={"OMP_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
        victim = sorted(client.scheduler_info()["workers"])[0]
        pid = client.run(os.getpid, workers=[victim])[victim]
        client.run(_arm_kill, workers=[victim])
        code, _, err = chunked(capsys, checkpoint, tmp_path / "in.zarr", tmp_path / "out.zarr",
                               "--scheduler", cluster.scheduler_address)
        assert code == 0, err
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)                                  # the victim is gone
        assert all(loads <= 1 for loads in client.run(_checkpoint_loads).values())
    assert len(chunk_files(tmp_path / "out.zarr")["mask"]) == 2 * 3 * 4
    assert_same(tmp_path / "out.zarr", expected)


def test_a_tiff_stack_gives_tiled_tiffs_equal_to_the_in_memory_stack_outputs(tmp_path, capsys,
                                                                             checkpoint, stack):
    """--chunk on a TIFF stack: the mask, 16-bit probability and overlay stacks that the
    in-memory stack path writes, as tiled TIFFs of one page per slice (a tile is a chunk); the
    working store is gone. A killed run (in the chunks, then in the TIFF writing) continues."""
    tifffile.imwrite(tmp_path / "in.tif", stack, photometric="minisblack")
    memory = tmp_path / "memory"
    memory.mkdir()
    code, _, err = run(capsys, "--image", tmp_path / "in.tif", "--output",
                       memory / "in_mask.tif", "--network-param", checkpoint,
                       "--probabilities", "png16", "--overlay")
    assert code == 0, err
    command = [sys.executable, os.path.join(ROOT, "evaluate.py"), "--image",
               str(tmp_path / "in.tif"), "--network-param", checkpoint, "--chunk", str(CHUNK),
               "--probabilities", "png16", "--overlay", "--no-progress"]
    # Killed among the chunks, in the middle of a TIFF (its temporary file left), after two.
    for kill_at in ("chunked.chunk:3", "tiff.tile:5", "chunked.tiff:2"):
        killed = subprocess.run(command, env=dict(os.environ, UNET_KILL_AT=kill_at), cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-2000:])
        assert (tmp_path / "in_mask.tif.chunks.zarr").is_dir()
        assert not (tmp_path / "in_mask.tif").exists()
    assert (tmp_path / "in_prob.tif").exists()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    names = ["in_overlay.tif", "in_prob.tif", "in_mask.tif"]
    assert finished.stdout.split() == [str(tmp_path / name) for name in names]
    assert not (tmp_path / "in_mask.tif.chunks.zarr").exists()
    assert sorted(os.listdir(tmp_path)) == sorted(names + ["in.tif", "memory"])
    for name in names:
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert len(tif.pages) == len(stack)
            assert all(page.is_tiled and page.tilelength == page.tilewidth == CHUNK
                       for page in tif.pages)
            chunked_pixels = tif.asarray()
        in_memory = tifffile.imread(memory / name)
        assert chunked_pixels.shape == in_memory.shape
        if name == "in_prob.tif":
            assert np.abs(chunked_pixels.astype(int) - in_memory).max() <= 1
        else:
            assert (chunked_pixels != in_memory).mean() < 1e-3, name
