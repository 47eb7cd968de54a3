"""Fuzzing the readers of user files: images and masks (random and mutated PNG bytes), checkpoints
(mutated weights, with and without a matching sha256, and mutated JSON). Only InputError may come
out: no other exception, no crash, no huge allocation."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unet.checkpoints import files, loading, writing
from unet.core.errors import InputError
from unet.data.imageio import read_image, read_mask

FUZZ = settings(max_examples=50, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def png(array):
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


SEEDS = [png(np.random.RandomState(0).randint(0, 256, (9, 7), np.uint8)),
         png(np.random.RandomState(1).randint(0, 65536, (5, 6, 3)).astype(np.uint16)),
         png(np.random.RandomState(2).randint(0, 256, (4, 4, 4), np.uint8))]


OPS = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete", "cut", "big"]),
                         st.integers(0, 2 ** 20), st.binary(min_size=4, max_size=8)),
               min_size=1, max_size=4)


def mutate(seed, ops):
    """A valid file with a few bytes overwritten, inserted, deleted, the tail cut, or a length
    or size field set huge."""
    data = bytearray(seed)
    for op, where, payload in ops:
        pos = where % max(len(data), 1)
        if op == "set":
            data[pos:pos + 1] = payload[:1]
        elif op == "insert":
            data[pos:pos] = payload
        elif op == "delete":
            del data[pos:pos + 1 + payload[0] % 8]
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos + 4] = [b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                                 b"\x00\x01\x00\x00"][payload[0] % 3]
    return bytes(data)


def only_input_error(read, path):
    try:
        return read(path)
    except InputError as err:
        assert "\n" not in str(err) and str(err)
        return None


def check_image(result):
    if result is not None:
        assert result.dtype == np.float32 and result.ndim == 3 and result.shape[2] in (1, 3)
        assert np.all(np.isfinite(result)) and result.min() >= 0 and result.max() <= 1


def check_mask(result):
    if result is not None:
        assert np.issubdtype(result.dtype, np.integer)
        assert result.ndim == 2 or (result.ndim == 3 and result.shape[2] == 3)


# Each decodable image may be as large as MAX_PIXELS allows: fewer examples keep these quick.
IMAGES = settings(FUZZ, max_examples=25)


@IMAGES
@given(data=st.one_of(st.binary(max_size=600), st.binary(max_size=40).map(
    lambda tail: b"\x89PNG\r\n\x1a\n" + tail)))
def test_random_bytes_into_the_image_readers(tmp_path, data):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    check_image(only_input_error(read_image, str(path)))
    check_mask(only_input_error(read_mask, str(path)))


@IMAGES
@given(seed=st.integers(0, len(SEEDS) - 1), ops=OPS)
def test_mutated_pngs_into_the_image_readers(tmp_path, seed, ops):
    data = mutate(SEEDS[seed], ops)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    check_image(only_input_error(read_image, str(path)))
    check_mask(only_input_error(read_mask, str(path)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from unet.model.config import ModelConfig
    from unet.model.network import build_unet, initializer
    import mxnet as mx
    folder = tmp_path_factory.mktemp("fuzz-ck")
    config = ModelConfig(in_channels=1, num_classes=2, base_channels=4, depth=2, image_size=32,
                         norm="batch")
    net = build_unet(config)
    net.initialize(initializer())
    net(mx.nd.zeros((1, 1, 32, 32)))
    path = str(folder / "unet.params")
    writing.save_checkpoint(net, path, {
        "model": config.to_dict(), "epoch": 1, "global_step": 2, "best_score": 0.5,
        "best_epoch": 1, "data": {"channels": 1, "normalization": {"mean": [0.5], "std": [0.2]},
                                  "encoding": {"kind": "binary", "values": [0, 255],
                                               "colormap": None}}})
    with open(path, "rb") as handle:
        params = handle.read()
    with open(files.meta_path(path), encoding="utf-8") as handle:
        meta = json.load(handle)
    return params, meta


def write_checkpoint(folder, params, meta, fix_sha):
    path = os.path.join(folder, "unet.params")
    with open(path, "wb") as handle:
        handle.write(params)
    if fix_sha:
        meta = dict(meta, params_sha256=files.sha256_file(path))
    with open(files.meta_path(path), "w", encoding="utf-8") as handle:
        handle.write(meta if isinstance(meta, str) else json.dumps(meta))
    return path


@FUZZ
@given(ops=OPS, fix_sha=st.booleans())
def test_mutated_params_into_the_checkpoint_loader(tmp_path, checkpoint, ops, fix_sha):
    """With the stale sha256 the damage is caught before MXNet reads a byte; with a matching one
    (an edited checkpoint) MXNet's own loader must still fail cleanly or load."""
    params, meta = checkpoint
    data = mutate(params, ops)
    folder = tmp_path / f"c{abs(hash(data)) % 10 ** 8}"
    folder.mkdir()
    path = write_checkpoint(str(folder), data, meta, fix_sha)
    result = only_input_error(loading.load_for_inference, path)
    if not fix_sha and data != params:
        assert result is None
    shutil.rmtree(folder)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 2 ** 40)
                           | st.floats(allow_nan=True) | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=6)


@st.composite
def mutated_meta(draw, meta):
    """The checkpoint JSON with fields removed, replaced by random JSON, or the text cut."""
    meta = json.loads(json.dumps(meta))
    for _ in range(draw(st.integers(1, 3))):
        section = meta
        if draw(st.booleans()) and isinstance(meta.get("model"), dict):
            section = meta[draw(st.sampled_from(["model", "data"]))]
        if not isinstance(section, dict) or not section:
            continue
        key = draw(st.sampled_from(sorted(section)))
        if draw(st.booleans()):
            section.pop(key)
        else:
            section[key] = draw(JSON_VALUES)
    text = json.dumps(meta)
    if draw(st.integers(0, 4)) == 0:
        text = text[:draw(st.integers(0, len(text)))]
    return text


@FUZZ
@given(mutation=st.data())
def test_mutated_json_into_the_checkpoint_loader(tmp_path, checkpoint, mutation):
    from unet.inference.segmenter import Segmenter
    params, meta = checkpoint
    text = mutation.draw(mutated_meta(meta))
    folder = tmp_path / f"j{abs(hash(text)) % 10 ** 8}"
    folder.mkdir()
    path = write_checkpoint(str(folder), params, text, fix_sha=False)
    segmenter = only_input_error(Segmenter.from_checkpoint, path)
    if segmenter is not None:
        out = segmenter.predict(np.full((40, 24, 1), 0.5, np.float32))
        assert out.mask.shape[:2] == (40, 24)
    shutil.rmtree(folder)
