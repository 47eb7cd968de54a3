import hashlib
import os
import pickle

import cv2
import numpy as np
import pytest
from scipy import ndimage

from unet.data.samples import (DataInfo, Normalization, compute_normalization, list_split,
                       match_channels, prepare_data)
from unet.data.loader import (EpochLoader, SegmentationDataset, epoch_order, sample_seed,
                          stack_numpy)
from unet.core.errors import InputError
from unet.data.masks import MaskEncoding
from unet.data.weightmap import boundary_band_weights
from project_paths import ISBI


def blob_pair(size, seed, rgb=False):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(size), 3)
    image = (255 * (smooth - smooth.min()) / (np.ptp(smooth) + 1e-9)).astype(np.uint8)
    mask = np.where(image > 127, 255, 0).astype(np.uint8)
    if rgb:
        image = np.dstack([image, 255 - image, image // 2])
    return image, mask


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def make_dataset(root, train=4, validate=2, size=(40, 36), rgb=False):
    for split, count in (("train", train), ("validate", validate)):
        for i in range(count):
            image, mask = blob_pair(size, seed=i + 100 * (split == "validate"), rgb=rgb)
            write(root / split / "image" / f"s{i}.png", image)
            write(root / split / "mask" / f"s{i}.png", mask)
    return root


def test_list_split_pairs_by_stem_sorted(tmp_path):
    write(tmp_path / "train" / "image" / "b.tif", np.zeros((8, 8), np.uint8))
    write(tmp_path / "train" / "image" / "a b.png", np.zeros((8, 8), np.uint8))
    write(tmp_path / "train" / "mask" / "b.png", np.zeros((8, 8), np.uint8))
    write(tmp_path / "train" / "mask" / "a b.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "train" / "image" / "notes.txt").write_text("x")
    samples = list_split(str(tmp_path), "train")
    assert [s.name for s in samples] == ["a b", "b"]
    assert samples[1].image_path.endswith("b.tif") and samples[1].mask_path.endswith("b.png")
    os.remove(tmp_path / "train" / "mask" / "b.png")
    assert list_split(str(tmp_path), "train", require_masks=False)[1].mask_path is None
    os.rename(tmp_path / "train" / "image", tmp_path / "train" / "images")
    os.rename(tmp_path / "train" / "mask", tmp_path / "train" / "masks")
    assert [s.name for s in list_split(str(tmp_path), "train", require_masks=False)] == ["a b", "b"]


@pytest.mark.parametrize("case,words", [
    ("no_folder", "image: folder not found"), ("empty", "no images in the train split"),
    ("no_mask", "a.png: image without a mask"), ("orphan_mask", "z.png: mask without an image"),
    ("no_mask_folder", "mask: folder not found"), ("same_stem", "two files named 'a'")])
def test_list_split_errors(tmp_path, case, words):
    image_dir, mask_dir = tmp_path / "train" / "image", tmp_path / "train" / "mask"
    if case != "no_folder":
        image_dir.mkdir(parents=True)
    if case in ("no_mask", "orphan_mask", "same_stem"):
        write(image_dir / "a.png", np.zeros((8, 8), np.uint8))
        mask_dir.mkdir()
    if case == "orphan_mask":
        write(mask_dir / "a.png", np.zeros((8, 8), np.uint8))
        write(mask_dir / "z.png", np.zeros((8, 8), np.uint8))
    if case == "same_stem":
        write(image_dir / "a.tif", np.zeros((8, 8), np.uint8))
    if case == "no_mask_folder":
        write(image_dir / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match=words):
        list_split(str(tmp_path), "train")


def test_prepare_data_infers_channels_encoding_and_normalization(tmp_path):
    root = make_dataset(tmp_path)
    info = prepare_data(str(root), num_classes=2)
    assert isinstance(info, DataInfo) and len(info.train) == 4 and len(info.validate) == 2
    assert info.channels == 1 and info.encoding == MaskEncoding("binary", [0, 255])
    pixels = np.concatenate([cv2.imread(s.image_path, 0).ravel() / 255.0 for s in info.train])
    assert info.normalization.mean[0] == pytest.approx(pixels.mean(), abs=1e-6)
    assert info.normalization.std[0] == pytest.approx(pixels.std(), abs=1e-6)
    assert compute_normalization(info.train, 1) == info.normalization
    assert prepare_data(str(root), 2, channels=3).channels == 3


def test_prepare_data_rgb_to_gray_by_luminance(tmp_path):
    root = make_dataset(tmp_path, rgb=True)
    assert prepare_data(str(root), 2).channels == 3
    info = prepare_data(str(root), 2, channels=1)
    assert info.channels == 1 and len(info.normalization.mean) == 1
    image = np.array([[[1.0, 0.0, 0.0]]], np.float32)
    assert match_channels(image, 1)[0, 0, 0] == pytest.approx(0.299)


def break_dataset(root, case):
    t_img, t_mask = root / "train" / "image", root / "train" / "mask"
    v_mask = root / "validate" / "mask"
    if case == "size_mismatch":
        write(t_mask / "s1.png", np.zeros((20, 20), np.uint8))
        return "train/mask/s1.png", "mask is 20x20 but its image"
    if case == "text_image":
        (t_img / "s2.png").write_text("not a png")
        return "train/image/s2.png", "not an image"
    if case == "truncated_mask":
        data = (t_mask / "s0.png").read_bytes()
        (t_mask / "s0.png").write_bytes(data[: len(data) // 2])
        return "train/mask/s0.png", "truncated"
    if case == "bad_values":
        _, mask = blob_pair((40, 36), 3)
        mask[:5, :5] = 128
        write(t_mask / "s3.png", mask)
        return "train/mask/s3.png", "mask values 128 fit no mask format"
    if case == "mixed_binary":
        write(t_mask / "s2.png", (blob_pair((40, 36), 2)[1] > 0).astype(np.uint8))
        return "train/mask/s2.png", "mask values 0, 1 do not fit one format with the masks before"
    if case == "channels":
        write(t_img / "s1.png", blob_pair((40, 36), 1, rgb=True)[0])
        return "train/image/s1.png", "has 3 channel(s) but"
    if case == "validate_values":
        write(v_mask / "s1.png", np.full((40, 36), 7, np.uint8))
        return "validate/mask/s1.png", "unexpected mask values 7"
    if case == "empty_validate":
        for path in (root / "validate" / "image").iterdir():
            path.unlink()
        for path in v_mask.iterdir():
            path.unlink()
        return "validate/image", "no images"
    if case == "folder_as_image":
        (t_img / "s1.png").unlink()
        (t_img / "s1.png").mkdir()
        return "train/image/s1.png", "a folder named like an image"
    if case in ("one_colour_mask", "first_colour_mask"):
        name = "s2.png" if case == "one_colour_mask" else "s0.png"    # s0: listed first
        mask = blob_pair((40, 36), 2)[1]
        write(t_mask / name, np.dstack([mask, np.zeros_like(mask), np.zeros_like(mask)]))
        return f"train/mask/{name}", "a colour mask among gray ones"
    if case == "too_small":
        write(t_img / "s0.png", np.zeros((40, 10), np.uint8))
        write(t_mask / "s0.png", np.zeros((40, 10), np.uint8))
        return "train/image/s0.png", "smaller than the minimum side 16"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["size_mismatch", "text_image", "truncated_mask", "bad_values",
                                  "mixed_binary", "channels", "validate_values", "empty_validate",
                                  "too_small", "folder_as_image", "one_colour_mask",
                                  "first_colour_mask"])
def test_prepare_data_errors_name_the_file(tmp_path, case):
    root = make_dataset(tmp_path / "data")
    where, words = break_dataset(root, case)
    with pytest.raises(InputError) as info:
        prepare_data(str(root), num_classes=2, min_size=16)
    message = str(info.value)
    assert where in message and words in message and "\n" not in message


def test_normalization_apply_and_dicts():
    norm = Normalization([0.5, 0.25, 0.0], [0.5, 0.25, 1.0])
    out = norm.apply(np.ones((4, 5, 3), np.float32))
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 3.0, 1.0])
    assert Normalization.from_dict(norm.to_dict()) == norm
    for bad in ({"mean": [0.5]}, {"mean": [0.5], "std": [0.0]}, {"mean": [0.1, 0.2], "std": [1]},
                {"mean": "a", "std": "b"}, None):
        with pytest.raises(ValueError):
            Normalization.from_dict(bad)
    with pytest.raises(ValueError, match="channels"):
        norm.apply(np.ones((4, 5, 1), np.float32))


def dataset_info(root, **kwargs):
    return prepare_data(str(root), num_classes=2, **kwargs)


def test_dataset_items_with_and_without_augmentation(tmp_path):
    root = make_dataset(tmp_path, train=2, validate=1, size=(20, 28))
    info = dataset_info(root)
    plain = SegmentationDataset(info.train, info, 32, augment=False, weight_map=True)
    image, label, weight = plain[0]
    assert image.shape == (1, 32, 32) and label.shape == (32, 32) and weight.shape == (32, 32)
    assert image.dtype == label.dtype == weight.dtype == np.float32
    assert set(np.unique(label)) <= {0.0, 1.0}
    again = plain[0]
    assert all(np.array_equal(a, b) for a, b in zip((image, label, weight), again))
    # the centre of the mirror-padded crop is the original image
    raw = cv2.imread(info.train[0].image_path, 0) / 255.0
    np.testing.assert_allclose(image[0, 6:26, 2:30] * info.normalization.std[0]
                               + info.normalization.mean[0], raw, atol=1e-5)
    assert weight.max() > 1.0 or (label == 1).all() or (label == 0).all()
    augmented = SegmentationDataset(info.train, info, 16, augment=True)
    image, label, weight = augmented[1]
    assert image.shape == (1, 16, 16) and np.array_equal(weight, np.ones((16, 16), np.float32))
    assert set(np.unique(label)) <= {0.0, 1.0}
    with pytest.raises(IndexError):
        augmented[2]
    lossless = SegmentationDataset(info.train, info, 16, augment=True, geometry="lossless")
    assert [type(child).__name__ for step in lossless.augmenter
            for child in getattr(step, "then_list", [])] == []
    # spawn-started workers (macOS, Windows) receive the dataset pickled
    clone = pickle.loads(pickle.dumps(augmented))
    assert all(np.array_equal(a, b) for a, b in zip(clone[1], augmented[1]))


def test_dataset_adds_the_boundary_band_to_the_weights(tmp_path):
    root = make_dataset(tmp_path, train=2, validate=1, size=(32, 32))
    info = dataset_info(root)

    def weights(**kwargs):
        return SegmentationDataset(info.train, info, 32, augment=False, **kwargs)[0][2]

    classes = info.encoding.decode(cv2.imread(info.train[0].mask_path, 0))
    band = boundary_band_weights(classes, 3.0, 1.5)
    assert band.max() == pytest.approx(3.0)
    np.testing.assert_allclose(weights(boundary_weight=3.0, boundary_sigma=1.5), 1.0 + band)
    np.testing.assert_allclose(weights(boundary_weight=3.0, boundary_sigma=1.5, weight_map=True),
                               weights(weight_map=True) + band)
    np.testing.assert_array_equal(weights(boundary_weight=0.0), 1.0)


def batches_digest(batches):
    sha, sizes = hashlib.sha256(), []
    for image, label, weight in batches:
        sizes.append(image.shape[0])
        for array in (image, label, weight):
            sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest(), sizes


def digest(dataset, num_workers, epoch):
    loader = EpochLoader(dataset, batch_size=2, shuffle=True, num_workers=num_workers, seed=5)
    try:
        return batches_digest(loader.epoch(epoch))
    finally:
        loader.close()


def test_loader_identical_for_0_and_2_workers_and_epochs_differ(tmp_path):
    root = make_dataset(tmp_path, train=5, validate=1, size=(32, 32))
    info = dataset_info(root)
    dataset = SegmentationDataset(info.train, info, 24, augment=True, seed=3, weight_map=True)
    serial, sizes = digest(dataset, 0, epoch=1)
    assert sizes == [2, 2]  # 5 samples, batch 2: the incomplete last batch is discarded
    assert digest(dataset, 2, epoch=1)[0] == serial
    assert digest(dataset, 0, epoch=2)[0] != serial


def test_epoch_loader_serves_each_epochs_samples_from_the_same_workers(tmp_path):
    root = make_dataset(tmp_path, train=5, validate=1, size=(32, 32))
    info = dataset_info(root)
    dataset = SegmentationDataset(info.train, info, 24, augment=True, seed=3, weight_map=True)

    def expected(epoch):        # batch 2 in the epoch's order, the last incomplete one dropped
        order = epoch_order(len(dataset), True, epoch, seed=5)
        return batches_digest(stack_numpy([dataset.item(epoch, i) for i in order[k:k + 2]])
                              for k in (0, 2))

    loader = EpochLoader(dataset, batch_size=2, shuffle=True, num_workers=2, seed=5)
    try:
        assert len(loader) == 2
        pids = loader.workers.pids
        for epoch in (2, 0, 1):     # any order: the epoch travels with the indices
            assert batches_digest(loader.epoch(epoch)) == expected(epoch)
        assert loader.workers.pids == pids      # the same worker processes
    finally:
        loader.close()
    for pid in pids:                # killed and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    dataset.set_epoch(3)        # __getitem__ follows set_epoch, the same samples
    assert all(np.array_equal(a, b) for a, b in zip(dataset[4], dataset.item(3, 4)))


def test_epoch_loader_order_and_small_dataset():
    class Numbers:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def item(self, epoch, i):
            return (np.array([i], np.float32),)

    def order(n, batch, epoch, shuffle=True):
        loader = EpochLoader(Numbers(n), batch, shuffle=shuffle, num_workers=0)
        return [int(x) for (batch,) in loader.epoch(epoch) for x in batch.ravel()]

    assert order(3, 4, 0) and sorted(order(3, 4, 0)) == [0, 1, 2]  # kept: smaller than a batch
    assert order(10, 4, 0) == order(10, 4, 0) and len(order(10, 4, 0)) == 8
    assert order(10, 4, 0) != order(10, 4, 1)
    assert order(6, 3, 0, shuffle=False) == list(range(6))
    assert sample_seed(0, 1, 2) != sample_seed(0, 2, 1)
    with pytest.raises(ValueError):
        EpochLoader(Numbers(3), 0, shuffle=True, num_workers=0)


def test_isbi_prepare_data():
    if not os.path.isdir(os.path.join(ISBI, "train", "mask")):
        pytest.skip("ISBI 2012 data not present")
    info = prepare_data(ISBI, num_classes=2)
    assert info.channels == 1 and info.encoding == MaskEncoding("binary", [0, 255])
    assert len(info.train) >= 10 and 0.3 < info.normalization.mean[0] < 0.7
