"""An exponential moving average of the weights (``--ema DECAY``), kept in the optimizer state.

After every update each trained parameter's average moves toward it,
``average = decay * average + (1 - decay) * weight``: a smoother model than the last step's,
without the epoch-to-epoch swings. Validation and the best checkpoint use the averages
(:func:`averaged_weights`); training goes on from the raw weights.

The average (float32) is a second slot of each parameter's optimizer state, ``(optimizer's own
state, average)``: the last checkpoint's state file then carries it and a resumed run continues it
(:mod:`unet.checkpoints.optimizer_state`), with no file of its own. Parameters without a gradient
(BatchNorm's running statistics) have no state and keep their current values.
"""
import contextlib

import mxnet as mx
import numpy as np


def averaging_optimizer(name, decay, **params):
    """An instance of the MXNet optimizer ``name`` (``'adam'``, ``'sgd'``, ...) with ``params``
    that also keeps the moving average of every weight it updates, ``decay`` in (0, 1)."""
    base = mx.optimizer.Optimizer.opt_registry[name.lower()]

    class Averaging(base):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.ema_decay = decay
            # One parameter per update() call: the fused multi-parameter updates (SGD's
            # aggregation) would bypass the averaging.
            self.aggregate_num = 0

        # The outermost calls of MXNet's Updater, which some optimizers (SGD) take over
        # without calling create_state() or update(): wrapped here, the average is kept for all.
        def create_state_multi_precision(self, index, weight):
            return (super().create_state_multi_precision(index, weight),
                    weight.astype(np.float32, copy=True))

        def update_multi_precision(self, index, weight, grad, state):
            inner, average = state
            super().update_multi_precision(index, weight, grad, inner)
            mx.nd.elemwise_add(average * self.ema_decay,
                               weight.astype(np.float32, copy=False) * (1.0 - self.ema_decay),
                               out=average)

    Averaging.__name__ = f"Averaging{base.__name__}"
    return Averaging(**params)


@contextlib.contextmanager
def averaged_weights(trainer):
    """Within the block, the parameters of ``trainer`` (made with :func:`averaging_optimizer`)
    hold their moving averages; their raw values come back after it, even on an error."""
    states = trainer._updaters[0].states
    raw = []
    try:
        for index, param in enumerate(trainer._params):
            if index not in states:         # no gradient, no update: its current value
                continue
            raw.append((param, param.data().copy()))
            param.set_data(states[index][1].astype(param.dtype, copy=False))
        yield
    finally:
        for param, values in raw:
            param.set_data(values)
