"""Demo dataset generator: determinism, layout, mask values, membrane fraction, refusals, CLI."""
import os

import cv2
import numpy as np
import pytest

from unet.data.demo import dataset_is_empty, generate_demo_dataset, main, render_sample
from unet.core.errors import InputError


def _tree_bytes(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = handle.read()
    return out


def test_same_seed_same_bytes_and_layout(tmp_path):
    kwargs = dict(seed=3, size=64, n_train=3, n_validate=2, n_test=1)
    first = generate_demo_dataset(tmp_path / "a", **kwargs)
    generate_demo_dataset(tmp_path / "b", **kwargs)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    expected = {os.path.join(split, kind, f"{i}.png")
                for split, n in [("train", 3), ("validate", 2), ("test", 1)]
                for kind in ("image", "mask") for i in range(n)}
    assert set(a) == expected
    assert a == b
    assert first["counts"] == {"train": 3, "validate": 2, "test": 1}
    assert [os.path.exists(p) for pair in first["paths"]["train"] for p in pair] == [True] * 6
    other = generate_demo_dataset(tmp_path / "c", **dict(kwargs, seed=4))
    assert _tree_bytes(tmp_path / "c") != a
    assert other["counts"] == first["counts"]


def test_other_splits_do_not_depend_on_n_train(tmp_path):
    generate_demo_dataset(tmp_path / "a", size=48, n_train=1, n_validate=1, n_test=0)
    generate_demo_dataset(tmp_path / "b", size=48, n_train=2, n_validate=1, n_test=0)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a["validate/image/0.png"] == b["validate/image/0.png"]
    assert not (tmp_path / "a" / "test").exists()


@pytest.mark.parametrize("size", [32, 77, 128])
def test_images_and_masks(size):
    image, mask = render_sample(np.random.default_rng(size), size)
    assert image.shape == mask.shape == (size, size)
    assert image.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert image.std() > 20  # not a flat picture
    # membranes are darker than cells
    assert image[mask == 0].mean() < image[mask == 255].mean() - 30


def test_written_pngs_are_8bit_gray_and_membrane_fraction_like_isbi(tmp_path):
    result = generate_demo_dataset(tmp_path, size=128, n_train=4, n_validate=0, n_test=0)
    fractions = []
    for image_path, mask_path in result["paths"]["train"]:
        image = cv2.imread(image_path, cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (128, 128)
        assert set(np.unique(mask)) == {0, 255}
        fractions.append(np.mean(mask == 0))
    # ISBI 2012 masks are about 22% membrane
    assert 0.12 < np.mean(fractions) < 0.32
    assert result["membrane_fraction"] == pytest.approx(np.mean(fractions))


def test_refuses_to_overwrite_unless_asked(tmp_path):
    generate_demo_dataset(tmp_path, size=32, n_train=3, n_validate=1, n_test=1)
    before = _tree_bytes(tmp_path)
    with pytest.raises(InputError, match="already holds"):
        generate_demo_dataset(tmp_path, size=32, n_train=3, n_validate=1, n_test=1)
    assert _tree_bytes(tmp_path) == before
    generate_demo_dataset(tmp_path, seed=1, size=32, n_train=2, n_validate=1, n_test=1, overwrite=True)
    after = _tree_bytes(tmp_path)
    assert sorted(os.listdir(tmp_path / "train" / "image")) == ["0.png", "1.png"]  # no stale 2.png
    assert after["train/image/0.png"] != before["train/image/0.png"]


def test_dataset_is_empty(tmp_path):
    assert dataset_is_empty(tmp_path / "missing")
    (tmp_path / "train" / "image").mkdir(parents=True)
    (tmp_path / "train" / "image" / ".gitkeep").write_text("")
    (tmp_path / "notes.txt").write_text("not an image")
    assert dataset_is_empty(tmp_path)
    # a .gitkeep does not block generation either
    generate_demo_dataset(tmp_path, size=32, n_train=1, n_validate=0, n_test=0)
    assert not dataset_is_empty(tmp_path)


@pytest.mark.parametrize("kwargs", [dict(size=16), dict(size=64.0), dict(n_train=-1), dict(seed=True)])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_demo_dataset(tmp_path, **kwargs)


def test_root_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        generate_demo_dataset(target, size=32, n_train=1)


def test_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--size", "32", "--n-train", "2", "--n-validate", "1", "--n-test", "1"]
    assert main(argv + ["--quiet"]) == 0
    assert len(os.listdir(out / "train" / "mask")) == 2
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "already holds" in err
    assert main(argv + ["--overwrite", "--quiet"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), "--size", "8"])
    assert exit_info.value.code == 2


def test_cli_help_names_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--out", "--seed", "--size", "--n-train", "--n-validate", "--n-test", "--overwrite"]:
        assert flag in text
