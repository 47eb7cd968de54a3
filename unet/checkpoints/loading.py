"""Loading a checkpoint into a network: for inference from its files alone, for training with
its optimizer state; MXNet's errors become one :class:`~unet.core.errors.InputError` line."""
import logging
import os

import mxnet as mx

from ..core.errors import InputError
from ..model.network import build_unet
from .files import meta_path, read_meta, sha256_file
from .optimizer_state import load_optimizer_state

log = logging.getLogger(__name__)


def load_parameters(net, path, ctx):
    """``net.load_parameters`` with MXNet's errors turned into one :class:`InputError` line."""
    try:
        net.load_parameters(os.fspath(path), ctx=ctx)
    except (AssertionError, ValueError, mx.base.MXNetError) as exc:
        raise InputError(f"checkpoint {path} does not fit the network: {error_reason(exc)}") from None


def error_reason(exc):
    """One line for ``exc``: an OSError's strerror, else the last line of its message (MXNet's
    errors carry a C++ traceback; the last line is the one that says what)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def load_for_inference(path, ctx=None):
    """Rebuild the network from checkpoint ``path`` alone; returns ``(net, meta)``.

    Never reads the optimizer state (the only file of a run that MXNet could have pickled).
    """
    meta = read_meta(path)
    net = build_unet(meta["model_config"])
    load_parameters(net, path, ctx or mx.cpu())
    return net, meta


def load_training_state(net, trainer, path, optimizer=None, ema=0.0):
    """Load weights and optimizer state of a last checkpoint into ``net`` and ``trainer``.

    Returns the checkpoint's meta. The optimizer state is read with MXNet's array loader, after
    its sha256 is checked against the JSON. When ``optimizer`` (a name) or ``ema`` (the decay of
    the weights' moving average, :mod:`unet.training.ema`, kept in that state) differs from the
    checkpoint's training, the optimizer state starts fresh.
    """
    meta = read_meta(path)
    load_parameters(net, path, trainer._contexts if trainer is not None else mx.cpu())
    state = meta.get("optimizer_state")
    training = meta.get("training", {})
    saved_optimizer, saved_ema = training.get("optimizer"), training.get("ema", 0.0)
    if state and optimizer is not None and saved_optimizer != optimizer:
        log.warning("optimizer changed from %s to %s: its state starts fresh",
                    saved_optimizer, optimizer)
        state = None
    elif state and bool(saved_ema) != bool(ema):
        log.warning("--ema changed from %g to %g: the optimizer state (and the weights' "
                    "average) starts fresh", saved_ema, ema)
        state = None
    if trainer is not None and state:
        states_path = os.path.join(os.path.dirname(os.path.abspath(path)), state["file"])
        if not os.path.isfile(states_path) or sha256_file(states_path) != state.get("sha256"):
            raise InputError(f"optimizer state {states_path} is missing or does not match "
                             f"{meta_path(path)}")
        try:
            load_optimizer_state(trainer, states_path, state)
        except (KeyError, ValueError, mx.base.MXNetError) as exc:
            raise InputError(f"optimizer state {states_path} does not fit: "
                             f"{error_reason(exc)}") from None
    return meta
