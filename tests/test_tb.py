"""unet.tb: histograms are taken over at most HISTOGRAM_SAMPLES strided values."""
import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from unet import tb


class RecordingWriter:
    def __init__(self):
        self.histograms = {}

    def add_histogram(self, tag, values, bins, global_step):
        self.histograms[tag] = values


def test_histograms_subsample_large_tensors_and_skip_frozen_and_non_finite(monkeypatch):
    monkeypatch.setattr(tb, "HISTOGRAM_SAMPLES", 1000)
    net = nn.HybridSequential()
    net.add(nn.Dense(50, in_units=100), nn.Dense(3, in_units=50))
    net.initialize()
    params = list(net.collect_params().values())
    params[0].set_data(mx.nd.arange(5000).reshape((50, 100)))
    params[1].grad_req = "null"                      # the first bias: no gradient
    params[2].list_grad()[0][:] = np.nan             # a diverged gradient: not logged
    log = tb.TrainingLog("unused", "run", enabled=False)
    log.writer = RecordingWriter()
    log.histograms(net, step=1)
    got = log.writer.histograms
    weights = got[f"weights/{params[0].name}"]
    assert weights.size == 1000 and weights.dtype == np.float32
    np.testing.assert_array_equal(weights, np.arange(0, 5000, 5))   # evenly strided
    assert got[f"weights/{params[1].name}"].size == 50                # small: every value
    assert f"grads/{params[1].name}" not in got
    assert f"grads/{params[2].name}" not in got
    assert f"grads/{params[0].name}" in got
