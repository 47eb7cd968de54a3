"""Exporting a trained network for deployment: MXNet symbol + params, its config, and ONNX.

``PREFIX-symbol.json`` + ``PREFIX-0000.params`` load with ``gluon.SymbolBlock.imports`` (no
Python class needed); ``PREFIX.json`` carries the model and data config (tile size, channels,
normalization, mask encoding) that a deployment needs to prepare inputs and decode outputs.
``PREFIX.onnx`` is written when the ``onnx`` package is installed. Every network output is raw
class scores ``(N, K, T, T)``: apply a softmax over axis 1 for probabilities.
"""
import contextlib
import logging
import os
import shutil
import tempfile

import mxnet as mx
import numpy as np

from ..core.atomic import atomic_path, write_json

logger = logging.getLogger(__name__)

#: The opset MXNet 1.9.1's ONNX translation tables are written for (notes, section 3).
ONNX_OPSET = 13


def export_paths(prefix):
    """``{'symbol', 'params', 'config', 'onnx'}`` file paths for an export ``prefix``."""
    prefix = os.fspath(prefix)
    return {"symbol": f"{prefix}-symbol.json", "params": f"{prefix}-0000.params",
            "config": f"{prefix}.json", "onnx": f"{prefix}.onnx"}


def _input_shape(meta):
    model = meta["model"]
    return (1, int(model["in_channels"]), int(model["image_size"]), int(model["image_size"]))


def export_network(net, meta, prefix, onnx=True):
    """Write the hybridized network, its config and (optionally) ONNX under ``prefix``.

    Parameters
    ----------
    net : mxnet.gluon.HybridBlock
        Initialized network (on any context); it is hybridized here and run once at the tile size.
    meta : dict
        The checkpoint's metadata: ``meta['model']`` is a ``ModelConfig.to_dict()`` and
        ``meta.get('data')`` the data config; both are copied into ``PREFIX.json``.
    prefix : str or os.PathLike
        Path prefix; its folder must exist.
    onnx : bool, default True
        Also write ``PREFIX.onnx`` when the ``onnx`` package imports; otherwise a warning is logged.

    Returns
    -------
    list of str
        The paths written, in the order symbol, params, config[, onnx].
    """
    paths = export_paths(prefix)
    folder = os.path.dirname(os.path.abspath(paths["config"]))
    if not os.path.isdir(folder):
        raise ValueError(f"export folder {folder} does not exist")
    shape = _input_shape(meta)
    ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    net.hybridize()
    net(mx.nd.zeros(shape, ctx=ctx))
    # net.export names its files after the prefix: export into a scratch folder beside the
    # destination, then move each file onto an atomic temporary path.
    scratch = tempfile.mkdtemp(prefix=".export.", dir=folder)
    try:
        net.export(os.path.join(scratch, "net"), epoch=0)
        with atomic_path(paths["symbol"]) as symbol, atomic_path(paths["params"]) as params:
            os.replace(os.path.join(scratch, "net-symbol.json"), symbol)
            os.replace(os.path.join(scratch, "net-0000.params"), params)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    written = [paths["symbol"], paths["params"]]
    config = {"model": meta["model"], "data": meta.get("data"), "input_name": "data",
              "input_shape": list(shape),
              "output": "class scores (N, K, H, W); softmax over axis 1",
              "symbol": os.path.basename(paths["symbol"]),
              "params": os.path.basename(paths["params"])}
    if onnx and _onnx_available():
        export_onnx(paths["symbol"], paths["params"], meta, paths["onnx"])
        config["onnx"] = os.path.basename(paths["onnx"])
        written.append(paths["onnx"])
    elif onnx:
        logger.warning("onnx is not installed: skipped %s (pip install onnx==1.14.1)",
                       paths["onnx"])
    write_json(paths["config"], config)
    written.insert(2, paths["config"])
    logger.info("exported %s", ", ".join(written))
    return written


def _onnx_available():
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _opset_patch():
    """MXNet 1.9.1 translates with its opset 12/13 tables but stamps and checks the graph with
    the newest opset of the installed onnx, which rejects its LayerNorm (ReduceMean ``axes``).
    Force opset 13 and skip the internal check for the duration of the export only."""
    import onnx.checker
    import onnx.defs
    saved = onnx.defs.onnx_opset_version, onnx.checker.check_graph
    onnx.defs.onnx_opset_version = lambda: ONNX_OPSET
    onnx.checker.check_graph = lambda *args, **kwargs: None
    try:
        yield
    finally:
        onnx.defs.onnx_opset_version, onnx.checker.check_graph = saved


def export_onnx(symbol_path, params_path, meta, onnx_path):
    """Convert an exported symbol + params to ONNX opset 13 at ``onnx_path`` and check it.

    The batch dimension is dynamic; height and width too for a batch-norm model (a layer-norm
    model only accepts its tile width). Requires the ``onnx`` package.
    """
    import onnx
    shape = _input_shape(meta)
    spatial = shape[2:] if meta["model"].get("norm") == "layer" else (None, None)
    with _opset_patch(), atomic_path(onnx_path) as tmp:
        mx.onnx.export_model(symbol_path, params_path, in_shapes=[shape], in_types=[np.float32],
                             onnx_file_path=tmp, dynamic=True,
                             dynamic_input_shapes=[(None, shape[1]) + tuple(spatial)])
        onnx.checker.check_model(tmp)
    return onnx_path
