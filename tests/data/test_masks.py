import cv2
import numpy as np
import pytest
from PIL import Image

from unet.core.errors import InputError
from unet.data.imageio import read_mask
from unet.data.masks import MaskEncoding, infer_encoding, unique_values

RNG = np.random.default_rng(0)
CLASSES = RNG.integers(0, 2, (33, 40)).astype(np.int32)
COLORMAP = [[0, 0, 0], [255, 0, 0], [0, 128, 255]]


def test_binary_0_255_file_decodes_to_classes_0_1(tmp_path):
    cv2.imwrite(str(tmp_path / "m.png"), (CLASSES * 255).astype(np.uint8))
    raw = read_mask(tmp_path / "m.png")
    encoding = infer_encoding(unique_values(raw), num_classes=2)
    assert encoding == MaskEncoding("binary", [0, 255])
    decoded = encoding.decode(raw)
    assert decoded.dtype == np.int32 and decoded.max() == 1
    np.testing.assert_array_equal(decoded, CLASSES)
    np.testing.assert_array_equal(encoding.encode(decoded), raw)


@pytest.mark.parametrize("found,num_classes,expected", [
    ({0, 1}, 2, MaskEncoding("binary", [0, 1])),
    ({255}, 2, MaskEncoding("binary", [0, 255])),
    ({0}, 2, MaskEncoding("binary", [0, 255])),
    ({1}, 2, MaskEncoding("binary", [0, 1])),
    ({0, 65535}, 2, MaskEncoding("binary", [0, 65535])),
    ({0, 2, 4}, 5, MaskEncoding("index", [0, 1, 2, 3, 4])),
    ({0, 1}, 3, MaskEncoding("index", [0, 1, 2])),
])
def test_infer_encoding_gray(found, num_classes, expected):
    assert infer_encoding(found, num_classes) == expected


@pytest.mark.parametrize("found,num_classes,words", [
    ({0, 255}, 3, "255"),        # 0/255 must never become class 255
    ({0, 1, 255}, 2, "255"),
    ({0, 3}, 3, "3"),
    ({0, 127, 128, 255}, 2, "127, 128"),  # a JPEG-damaged binary mask
])
def test_infer_encoding_rejects_values_that_fit_no_format(found, num_classes, words):
    with pytest.raises(InputError, match=f"mask values {words}.*fit no mask format"):
        infer_encoding(found, num_classes)


def test_index_palette_png(tmp_path):
    classes = RNG.integers(0, 3, (20, 24)).astype(np.uint8)
    image = Image.fromarray(classes, "P")
    image.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10])
    image.save(tmp_path / "p.png")
    raw = read_mask(tmp_path / "p.png")
    encoding = infer_encoding(unique_values(raw), num_classes=3)
    assert encoding.kind == "index" and encoding.num_classes == 3
    np.testing.assert_array_equal(encoding.decode(raw), classes)


def test_colour_masks_with_and_without_colormap(tmp_path):
    classes = RNG.integers(0, 3, (20, 24))
    rgb = np.asarray(COLORMAP, np.uint8)[classes]
    cv2.imwrite(str(tmp_path / "c.png"), rgb[:, :, ::-1])
    raw = read_mask(tmp_path / "c.png")
    given = infer_encoding(unique_values(raw), 3, colormap=COLORMAP)
    np.testing.assert_array_equal(given.decode(raw), classes)
    np.testing.assert_array_equal(given.encode(classes.astype(np.int32)), rgb)
    inferred = infer_encoding(unique_values(raw), 3)  # sorted colours: black, (0,128,255), red
    assert inferred.colormap == [[0, 0, 0], [0, 128, 255], [255, 0, 0]]
    # a colour mask holding only black and white is read as gray; it still decodes as colour
    bw = MaskEncoding("color", [], [[0, 0, 0], [255, 255, 255]])
    np.testing.assert_array_equal(bw.decode(np.array([[0, 255]], np.uint8)), [[0, 1]])


@pytest.mark.parametrize("found,colormap,words", [
    ({(0, 0, 0), (1, 2, 3)}, COLORMAP, r"mask colours \[1, 2, 3\] are not in the colormap"),
    ({(0, 0, 0), (1, 2, 3)}, None, "show 2 colours .* num_classes is 3"),
    ({(0, 0, 0)}, COLORMAP[:2], "colormap has 2 colours but num_classes is 3"),
    ({(0, 0, 0)}, [[0, 0]] * 3, "bad colormap"),
])
def test_colour_errors(found, colormap, words):
    with pytest.raises(InputError, match=words):
        infer_encoding(found, 3, colormap=colormap)


def test_decode_unexpected_values_value_error_or_input_error():
    encoding = MaskEncoding("binary", [0, 255])
    raw = np.array([[0, 255, 7], [7, 9, 0]], np.uint8)
    with pytest.raises(ValueError, match="unexpected mask values 7, 9"):
        encoding.decode(raw)
    with pytest.raises(InputError, match="^m.png: unexpected mask values 7, 9"):
        encoding.decode(raw, name="m.png")
    with pytest.raises(InputError, match="single-channel"):
        encoding.decode(np.zeros((2, 2, 3), np.uint8), name="m.png")
    colour = MaskEncoding("color", [], COLORMAP)
    with pytest.raises(ValueError, match=r"\[9, 9, 9\]"):
        colour.decode(np.full((2, 2, 3), 9, np.uint8))


def test_dict_roundtrip_and_bad_dicts():
    for encoding in (MaskEncoding("binary", [0, 1]), MaskEncoding("index", [0, 1, 2, 3]),
                     MaskEncoding("color", [], COLORMAP)):
        assert MaskEncoding.from_dict(encoding.to_dict()) == encoding
    assert MaskEncoding("color", [], COLORMAP).num_classes == 3
    for bad in (None, {}, {"kind": "rgb", "values": [0, 1]}, {"kind": "binary", "values": [0, 7]},
                {"kind": "index", "values": [1, 2]}, {"kind": "color", "colormap": [[0, 0, 0]]},
                {"kind": "binary", "values": [0, 1], "extra": 1},
                {"kind": "index", "values": [0, 1], "colormap": COLORMAP}):
        with pytest.raises(ValueError):
            MaskEncoding.from_dict(bad)


def test_encode_rejects_out_of_range_classes():
    with pytest.raises(ValueError, match="0..1"):
        MaskEncoding("binary", [0, 255]).encode(np.array([[0, 2]]))
    assert MaskEncoding("binary", [0, 255]).encode(np.array([[0, 1]])).dtype == np.uint8
