"""ISBI 2012 converter: multi-page TIFFs -> dataset layout, error cases, CLI."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from unet.core.errors import InputError
from unet.data.isbi import convert_isbi, main
from project_paths import ISBI as SHARED_ISBI

SHARED = Path(SHARED_ISBI)


def _stacks(pages=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    volume = rng.integers(0, 256, size=(pages, size, size), dtype=np.uint8)
    labels = np.where(rng.random((pages, size, size)) < 0.2, 0, 255).astype(np.uint8)
    labels[labels == 255] -= rng.integers(0, 3, size=int((labels == 255).sum()), dtype=np.uint8)
    labels[labels == 0] += 1  # almost binary, as the challenge's labels
    return volume, labels


@pytest.fixture
def tiffs(tmp_path):
    volume, labels = _stacks()
    paths = {name: tmp_path / f"{name}.tif" for name in ("volume", "labels", "test")}
    _write(paths["volume"], volume)
    _write(paths["labels"], labels)
    _write(paths["test"], volume[:4, :, :16])
    return paths, volume, labels


def _write(path, stack, **kwargs):
    tifffile.imwrite(path, stack, **dict(dict(photometric="minisblack"), **kwargs))


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_convert_layout_and_values(tmp_path, tiffs):
    paths, volume, labels = tiffs
    out = tmp_path / "out"
    result = convert_isbi(paths["volume"], paths["labels"], out, test_volume=paths["test"], n_validate=2)
    assert result["counts"] == {"train": 4, "validate": 2, "test": 4}
    assert sorted(os.listdir(out / "train" / "image")) == ["0.png", "1.png", "2.png", "3.png"]
    assert sorted(os.listdir(out / "validate" / "mask")) == ["4.png", "5.png"]
    assert sorted(os.listdir(out / "test")) == ["image"]
    for i in range(6):
        split = "train" if i < 4 else "validate"
        np.testing.assert_array_equal(_read(out / split / "image" / f"{i}.png"), volume[i])
        mask = _read(out / split / "mask" / f"{i}.png")
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
        np.testing.assert_array_equal(mask, np.where(labels[i] > 127, 255, 0))
    np.testing.assert_array_equal(_read(out / "test" / "image" / "3.png"), volume[3, :, :16])
    assert result["membrane_fraction"] == pytest.approx(np.mean(labels < 128))


def test_zero_validate_and_16bit_volume(tmp_path):
    volume = np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32) * 7
    _write(tmp_path / "v.tif", volume)
    _write(tmp_path / "l.tif", (volume % 2 == 0).astype(np.uint8))  # labels in {0, 1}
    result = convert_isbi(tmp_path / "v.tif", tmp_path / "l.tif", tmp_path / "out", n_validate=0)
    assert result["counts"] == {"train": 3}
    assert not (tmp_path / "out" / "validate").exists()
    image = _read(tmp_path / "out" / "train" / "image" / "2.png")
    assert image.dtype == np.uint8 and image.max() == 255
    assert set(np.unique(_read(tmp_path / "out" / "train" / "mask" / "0.png"))) == {0, 255}


def test_refuses_to_overwrite_unless_asked(tmp_path, tiffs):
    paths, _, _ = tiffs
    convert_isbi(paths["volume"], paths["labels"], tmp_path / "out", n_validate=1)
    with pytest.raises(InputError, match="already holds"):
        convert_isbi(paths["volume"], paths["labels"], tmp_path / "out", n_validate=1)
    convert_isbi(paths["volume"], paths["labels"], tmp_path / "out", n_validate=3, overwrite=True)
    assert sorted(os.listdir(tmp_path / "out" / "train" / "image")) == ["0.png", "1.png", "2.png"]


def test_errors_name_the_file(tmp_path, tiffs):
    paths, volume, labels = tiffs
    with pytest.raises(InputError, match="missing.tif: no such file"):
        convert_isbi(tmp_path / "missing.tif", paths["labels"], tmp_path / "out")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="junk.tif: cannot read"):
        convert_isbi(paths["volume"], tmp_path / "junk.tif", tmp_path / "out")
    _write(tmp_path / "short.tif", labels[:5])
    with pytest.raises(InputError, match="short.tif: 5 slices"):
        convert_isbi(paths["volume"], tmp_path / "short.tif", tmp_path / "out")
    _write(tmp_path / "small.tif", labels[:, :16, :16])
    with pytest.raises(InputError, match="small.tif: slices are 16x16"):
        convert_isbi(paths["volume"], tmp_path / "small.tif", tmp_path / "out")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((6, 32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="rgb.tif: expected grayscale"):
        convert_isbi(tmp_path / "rgb.tif", paths["labels"], tmp_path / "out")
    _write(tmp_path / "planar.tif", volume[:3], photometric="rgb", planarconfig="separate")
    with pytest.raises(InputError, match="planar.tif: expected grayscale slices, got colour"):
        convert_isbi(tmp_path / "planar.tif", paths["labels"], tmp_path / "out")
    for n in (6, -1):
        with pytest.raises(InputError, match="validation slices"):
            convert_isbi(paths["volume"], paths["labels"], tmp_path / "out", n_validate=n)
    with pytest.raises(ValueError):
        convert_isbi(paths["volume"], paths["labels"], tmp_path / "out", n_validate=2.0)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_cli(tmp_path, tiffs, capsys):
    paths, _, _ = tiffs
    out = tmp_path / "out"
    argv = ["--train-volume", str(paths["volume"]), "--train-labels", str(paths["labels"]),
            "--out", str(out), "--validate", "2", "--quiet"]
    assert main(argv + ["--test-volume", str(paths["test"])]) == 0
    assert len(os.listdir(out / "test" / "image")) == 4
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert main(["--train-volume", str(tmp_path / "nope.tif"), "--train-labels", str(paths["labels"]),
                 "--out", str(out)]) == 2
    assert "nope.tif" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--train-volume", "--train-labels", "--test-volume", "--out", "--validate", "--overwrite"]:
        assert flag in text


@pytest.mark.skipif(not (SHARED / "validate" / "mask").is_dir(), reason="shared ISBI 2012 copy absent")
def test_reproduces_shared_copy(tmp_path):
    # Stacking the shared copy's 25 labelled slices and converting them must give back its split.
    slices = [("train", i) for i in range(20)] + [("validate", i) for i in range(20, 25)]
    for kind in ("image", "mask"):
        stack = np.stack([_read(SHARED / split / kind / f"{i}.png") for split, i in slices])
        _write(tmp_path / f"{kind}.tif", stack)
    convert_isbi(tmp_path / "image.tif", tmp_path / "mask.tif", tmp_path / "out")
    for split, i in (slices[0], slices[19], slices[20], slices[24]):
        for kind in ("image", "mask"):
            np.testing.assert_array_equal(_read(tmp_path / "out" / split / kind / f"{i}.png"),
                                          _read(SHARED / split / kind / f"{i}.png"))
