"""unet.training.tensorboard: histograms are taken over at most HISTOGRAM_SAMPLES strided values and written as
TensorBoard reads them."""
import json
import subprocess
import sys

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from unet.training import tensorboard as tb

READ_HISTOGRAMS = """
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"histograms": 0})
acc.Reload()
out = {}
for tag in acc.Tags()["histograms"]:
    (event,) = acc.Histograms(tag)
    h = event.histogram_value
    out[tag] = {"step": event.step, "min": h.min, "max": h.max, "num": h.num, "sum": h.sum,
                "sum_squares": h.sum_squares, "limits": list(h.bucket_limit),
                "counts": list(h.bucket)}
print(json.dumps(out))
"""


def read_histograms(folder):
    """In a child process: mxboard's and tensorboard's protobuf modules cannot share one."""
    out = subprocess.run([sys.executable, "-c", READ_HISTOGRAMS, str(folder)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)


def test_histograms_subsample_large_tensors_and_skip_frozen_and_non_finite(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(tb, "HISTOGRAM_SAMPLES", 1000)
    net = nn.HybridSequential()
    net.add(nn.Dense(50, in_units=100), nn.Dense(3, in_units=50))
    net.initialize()
    params = list(net.collect_params().values())
    params[0].set_data(mx.nd.arange(5000).reshape((50, 100)))
    params[1].set_data(mx.nd.arange(50) / 10)
    params[1].grad_req = "null"                      # the first bias: no gradient
    params[2].list_grad()[0][:] = np.nan             # a diverged gradient: not logged
    log = tb.TrainingLog(str(tmp_path), "run")
    log.histograms(net, step=7)
    log.close()
    got = read_histograms(tmp_path / "run")

    assert set(got) == {f"weights/{p.name}" for p in params} \
        | {f"grads/{params[0].name}", f"grads/{params[3].name}"}
    strided = np.arange(0, 5000, 5, dtype=np.float64)            # evenly strided, 1000 values
    weights = got[f"weights/{params[0].name}"]
    assert weights["step"] == 7 and weights["num"] == 1000
    assert (weights["min"], weights["max"]) == (0, 4995)
    assert weights["sum"] == strided.sum() and weights["sum_squares"] == strided.dot(strided)
    counts, edges = np.histogram(strided, bins=64)
    assert weights["counts"] == counts.tolist()
    np.testing.assert_allclose(weights["limits"], edges[1:])
    bias = got[f"weights/{params[1].name}"]                        # small: every value
    assert bias["num"] == 50 and sum(bias["counts"]) == 50
    assert bias["max"] == np.float32(4.9)


def test_histograms_of_a_disabled_log_do_nothing():
    net = nn.Dense(3, in_units=4)
    net.initialize()
    tb.TrainingLog("unused", "run", enabled=False).histograms(net, step=1)
