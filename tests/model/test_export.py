"""Export round trip: symbol + params through SymbolBlock.imports, config JSON, ONNX runtime."""
import json
import logging
import os

import mxnet as mx
import numpy as np
import pytest

from unet.model.config import ModelConfig
from unet.model.export import export_network, export_paths
from unet.model.network import build_unet, initializer


def tiny(norm):
    mx.random.seed(1)
    config = ModelConfig(in_channels=1, num_classes=2, base_channels=4, depth=2, norm=norm,
                         image_size=32)
    net = build_unet(config)
    net.initialize(initializer())
    meta = {"model": config.to_dict(),
            "data": {"channels": 1, "normalization": {"mean": [0.5], "std": [0.25]},
                     "encoding": {"kind": "binary", "values": [0, 255], "colormap": None}}}
    return net, meta


def batch(n=3, height=32, width=32):
    return np.random.RandomState(0).rand(n, 1, height, width).astype(np.float32)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_symbol_export_round_trip(tmp_path, norm):
    net, meta = tiny(norm)
    prefix = tmp_path / "net"
    written = export_network(net, meta, prefix, onnx=False)
    paths = export_paths(prefix)
    assert written == [paths["symbol"], paths["params"], paths["config"]]
    assert sorted(os.listdir(tmp_path)) == ["net-0000.params", "net-symbol.json", "net.json"]
    x = mx.nd.array(batch())
    imported = mx.gluon.SymbolBlock.imports(paths["symbol"], ["data"], paths["params"])
    np.testing.assert_array_equal(imported(x).asnumpy(), net(x).asnumpy())
    config = json.loads((tmp_path / "net.json").read_text())
    assert config["model"] == meta["model"] and config["data"] == meta["data"]
    assert config["input_shape"] == [1, 1, 32, 32] and config["input_name"] == "data"


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_onnx_runtime_matches_mxnet(tmp_path, norm):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx.defs
    original_opset = onnx.defs.onnx_opset_version
    net, meta = tiny(norm)
    written = export_network(net, meta, tmp_path / "net")
    assert onnx.defs.onnx_opset_version is original_opset       # the exporter patch is undone
    onnx_path = export_paths(tmp_path / "net")["onnx"]
    assert written[-1] == onnx_path
    assert json.loads((tmp_path / "net.json").read_text())["onnx"] == "net.onnx"
    options = ort.SessionOptions()
    options.log_severity_level = 3                               # "initializer in graph inputs"
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    shapes = [(3, 32, 32)] + ([(2, 48, 64)] if norm == "batch" else [])
    for n, height, width in shapes:                              # dynamic batch (and size)
        x = batch(n, height, width)
        (scores,) = session.run(None, {"data": x})
        np.testing.assert_allclose(scores, net(mx.nd.array(x)).asnumpy(), atol=1e-4, rtol=0)


def test_onnx_is_skipped_with_a_warning_when_missing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("unet.model.export._onnx_available", lambda: False)
    net, meta = tiny("layer")
    with caplog.at_level(logging.WARNING, logger="unet.model.export"):
        written = export_network(net, meta, tmp_path / "net")
    assert len(written) == 3 and not (tmp_path / "net.onnx").exists()
    assert "onnx is not installed" in caplog.text


def test_missing_folder_raises(tmp_path):
    net, meta = tiny("layer")
    with pytest.raises(ValueError, match="does not exist"):
        export_network(net, meta, tmp_path / "absent" / "net")
