"""Multi-page TIFF stacks: reading them (unet.data.stacks) and evaluate.py --image on a stack,
with --probabilities, --overlay and --mask, each slice as its own PNG would be."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

import unet.data.imageio
from unet.core.errors import InputError
from unet.data.stacks import is_stack, read_mask_stack, read_stack, stack_shape, write_stack
from unet.inference.evaluation import SCORES
from test_evaluate import blobs, checkpoint, dataset, one_line_error, run, write  # noqa: F401
from project_paths import ROOT

H, W = 40, 36       # more than one 32-pixel tile, odd in both


def slices(count=3, height=H, width=W):
    """``(count, H, W)`` uint8 images and their 0/255 masks."""
    images, masks = zip(*(blobs(height, width, seed=300 + z) for z in range(count)))
    return np.stack(images), np.stack(masks)


def write_tiff(path, array, kind):
    """``array`` ``(Z, H, W)`` as a plain multi-page TIFF, an ImageJ hyperstack (TZCYX, T and C
    of 1) or an OME-TIFF."""
    if kind == "plain":
        tifffile.imwrite(path, array, photometric="minisblack", metadata=None)
    elif kind == "imagej":
        tifffile.imwrite(path, array[None, :, None], imagej=True, metadata={"axes": "TZCYX"})
    else:
        tifffile.imwrite(path, array, ome=True, metadata={"axes": "ZYX"})
    return str(path)


def pages(path):
    with tifffile.TiffFile(path) as tif:
        return [page.asarray() for page in tif.pages]


@pytest.fixture(scope="module")
def png_outputs(tmp_path_factory, checkpoint):
    """What ``evaluate.py --image`` writes for every slice saved as its own PNG:
    ``{kind: [array per slice]}`` for the mask, overlay and png16 probabilities."""
    folder = tmp_path_factory.mktemp("pngs")
    outputs = {"mask": [], "overlay": [], "png16": []}
    for z, image in enumerate(slices()[0]):
        path = write(folder / f"slice{z}.png", image)
        assert evaluate_main(["--image", path, "--network-param", checkpoint, "--overlay",
                              "--probabilities", "png16"]) == 0
        for kind, suffix in (("mask", "mask"), ("overlay", "overlay"), ("png16", "prob")):
            outputs[kind].append(np.asarray(Image.open(folder / f"slice{z}_{suffix}.png")))
    return outputs


def evaluate_main(argv):
    import evaluate
    return evaluate.main(["--no-progress", *map(str, argv)])


@pytest.mark.parametrize("kind", ["plain", "imagej", "ome"])
def test_a_stack_gives_a_mask_page_per_slice_equal_to_its_png(tmp_path, capsys, checkpoint,
                                                                 png_outputs, kind):
    stack = write_tiff(tmp_path / "stack.tif", slices()[0], kind)
    code, out, err = run(capsys, "--image", stack, "--network-param", checkpoint)
    assert code == 0, err
    mask = tmp_path / "stack_mask.tif"
    assert out.split() == [str(mask)]
    written = pages(mask)
    assert len(written) == 3 and all(page.dtype == np.uint8 for page in written)
    for page, expected in zip(written, png_outputs["mask"]):
        np.testing.assert_array_equal(page, expected)
    assert sorted(os.listdir(tmp_path)) == ["stack.tif", "stack_mask.tif"]   # no temp left


def test_probabilities_and_overlay_are_stacks_of_as_many_pages(tmp_path, capsys, checkpoint,
                                                               png_outputs):
    stack = write_tiff(tmp_path / "in.tif", slices()[0], "imagej")
    target = tmp_path / "out" / "seg.tif"
    os.makedirs(target.parent)
    for probabilities in ("png16", "npy"):
        code, out, err = run(capsys, "--image", stack, "--network-param", checkpoint, "--output",
                             target, "--overlay", "--probabilities", probabilities)
        assert code == 0, err
    folder = tmp_path / "out"
    assert sorted(os.listdir(folder)) == ["seg.tif", "seg_overlay.tif", "seg_prob.npy",
                                          "seg_prob.tif"]
    overlay, png16 = pages(folder / "seg_overlay.tif"), pages(folder / "seg_prob.tif")
    npy = np.load(folder / "seg_prob.npy")
    assert len(overlay) == len(png16) == 3 and npy.shape == (3, H, W) and npy.dtype == np.float32
    assert all(page.shape == (H, W, 3) and page.dtype == np.uint8 for page in overlay)
    assert all(page.dtype == np.uint16 for page in png16)
    np.testing.assert_allclose(np.stack(png16) / 65535.0, npy, atol=1e-4)
    assert ((npy >= 0.5) == (np.stack(pages(target)) == 255)).all()
    for kind, written in (("overlay", overlay), ("png16", png16)):
        for page, expected in zip(written, png_outputs[kind]):
            np.testing.assert_array_equal(page, expected)


def test_a_mask_stack_scores_every_slice_as_folder_mode_does(tmp_path, capsys, checkpoint):
    images, masks = slices()
    stack = write_tiff(tmp_path / "stack.tif", images, "ome")
    truth = write_tiff(tmp_path / "truth.tif", masks, "plain")
    os.makedirs(tmp_path / "out")
    code, out, err = run(capsys, "--image", stack, "--mask", truth, "--network-param",
                         checkpoint, "--output", tmp_path / "out")
    assert code == 0, err
    with open(tmp_path / "out" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == ["stack[0]", "stack[1]", "stack[2]", "mean"]
    assert list(rows[0]) == ["image", *SCORES]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["num_images"] == 3 and len(report["images"]) == 3
    for key in SCORES:
        assert report["mean"][key] == pytest.approx(np.mean([r[key] for r in report["images"]]))
    assert report["mean"]["dice"] > 0.7 and "rand_error" in out and "stack[2]" in out
    # The same slices as PNGs of a dataset folder: the same scores.
    for z in range(3):
        write(tmp_path / "data" / "test" / "image" / f"s{z}.png", images[z])
        write(tmp_path / "data" / "test" / "mask" / f"s{z}.png", masks[z])
    code, _, err = run(capsys, "--data-dir", tmp_path / "data", "--network-param", checkpoint,
                       "--output", tmp_path / "pred")
    assert code == 0, err
    folder = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    for row, expected in zip(report["images"], folder["images"]):
        assert {k: row[k] for k in SCORES} == pytest.approx({k: expected[k] for k in SCORES})


def test_a_single_image_is_scored_against_its_mask(tmp_path, capsys, checkpoint):
    image, mask = blobs(H, W, seed=5)
    code, out, err = run(capsys, "--image", write(tmp_path / "x.png", image), "--mask",
                         write(tmp_path / "truth" / "x.png", mask), "--network-param", checkpoint)
    assert code == 0, err
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["image"] for row in report["images"]] == ["x"] and report["num_images"] == 1
    assert (tmp_path / "x_mask.png").exists() and (tmp_path / "metrics.csv").exists()


def test_mask_is_refused_outside_a_single_image(tmp_path, capsys, checkpoint):
    dataset(tmp_path / "d", [(40, 40)], masked={0})
    mask = tmp_path / "d" / "test" / "mask" / "img0.png"
    for argv in (["--data-dir", tmp_path / "d"], ["--image", tmp_path / "d" / "test" / "image"],
                 ["--export", tmp_path / "deploy"]):
        line = one_line_error(capsys, *argv, "--mask", mask, "--network-param", checkpoint)
        assert "--mask scores a single --image file" in line
    image, truth = blobs(H, W, 1)
    image, truth = write(tmp_path / "x.png", image), write(tmp_path / "x_mask.png", truth)
    stack = write_tiff(tmp_path / "s.tif", slices()[0], "plain")
    for argv, expected in ((["--image", image, "--mask", truth], "replace this input"),
                           (["--image", stack, "--output", tmp_path / "m.png"], ".tif name")):
        assert expected in one_line_error(capsys, *argv, "--network-param", checkpoint)


def bad_stacks(folder):
    """(argv, words of the error line) of stacks that must each be one line and exit code 2."""
    images, masks = slices()
    with tifffile.TiffWriter(folder / "sizes.tif") as tif:
        for page in (images[0], images[1][:, :30]):
            tif.write(page, photometric="minisblack", metadata=None)
    channels = np.zeros((2, 5, H, W), np.uint8)
    tifffile.imwrite(folder / "channels.tif", channels, imagej=True, metadata={"axes": "TCYX"})
    stack = write_tiff(folder / "stack.tif", images, "imagej")
    two = write_tiff(folder / "two.tif", masks[:2], "plain")
    narrow = write_tiff(folder / "narrow.tif", masks[:, :, :30], "plain")
    (folder / "cut.tif").write_bytes((folder / "stack.tif").read_bytes()[:2000])
    return [(["--image", folder / "sizes.tif"], "page 2 is 30x40, page 1 36x40"),
            (["--image", folder / "channels.tif"], "5 channels"),
            (["--image", folder / "cut.tif"], "cut.tif"),
            (["--image", stack, "--mask", two], "2 mask slice(s) for an image of 3"),
            (["--image", stack, "--mask", narrow], "mask is 30x40, its image 36x40")]


def test_bad_stacks_in_a_process_of_their_own_are_one_line(tmp_path, checkpoint):
    for argv, expected in bad_stacks(tmp_path):
        before = sorted(os.listdir(tmp_path))
        done = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"),
                               "--network-param", checkpoint, *map(str, argv)],
                              capture_output=True, text=True, timeout=120)
        lines = [line for line in done.stderr.replace("\r", "\n").split("\n") if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("error: ") and expected in lines[0], done.stderr
        assert sorted(os.listdir(tmp_path)) == before       # no output, no temporary file


@pytest.mark.parametrize("kind", ["plain", "imagej", "ome"])
def test_read_stack_scales_as_read_image(tmp_path, kind):
    images = (slices()[0].astype(np.uint16) * 257)                 # 16-bit
    stack = read_stack(write_tiff(tmp_path / "s.tif", images, kind))
    assert stack.shape == (3, H, W, 1) and stack.dtype == np.float32
    np.testing.assert_allclose(stack[..., 0], images / 65535.0, atol=1e-7)
    assert stack_shape(tmp_path / "s.tif") == (3, H, W)


def test_rgb_and_lzw_stacks_and_masks(tmp_path):
    rgb = np.random.RandomState(0).randint(0, 256, (2, H, W, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_allclose(read_stack(tmp_path / "rgb.tif"), rgb / 255.0, atol=1e-7)
    masks = slices()[1]
    frames = [Image.fromarray(mask) for mask in masks]          # LZW: PIL decodes it
    frames[0].save(tmp_path / "lzw.tif", save_all=True, append_images=frames[1:],
                   compression="tiff_lzw")
    np.testing.assert_array_equal(read_mask_stack(tmp_path / "lzw.tif"), masks)
    write_stack(tmp_path / "out.tif", masks)
    np.testing.assert_array_equal(read_mask_stack(tmp_path / "out.tif"), masks)


def test_what_is_not_a_stack(tmp_path, monkeypatch):
    images = slices()[0]
    tifffile.imwrite(tmp_path / "one.tif", images[0])
    write(tmp_path / "x.png", images[0])
    (tmp_path / "bad.tif").write_bytes(b"II*\0" + b"\xff" * 40)
    assert not any(is_stack(tmp_path / name) for name in ("one.tif", "x.png", "bad.tif",
                                                          "absent.tif"))
    assert stack_shape(tmp_path / "one.tif") == (1, H, W)
    write_tiff(tmp_path / "s.tif", images, "plain")
    monkeypatch.setattr(unet.data.imageio, "MAX_PIXELS", H * W - 1)     # per slice
    with pytest.raises(InputError, match="s.tif: image too large"):
        read_stack(tmp_path / "s.tif")
