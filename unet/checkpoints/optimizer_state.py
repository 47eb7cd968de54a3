"""Optimizer state saved without pickle.

``gluon.Trainer.save_states`` pickles the optimizer, and unpickling a file can execute code. Here
the per-parameter state arrays (momentum, Adam's mean and variance, ...) are written with MXNet's
own array format (``nd.save``) under keys ``"<param index>/<slot>"``, and the update counters go
into the checkpoint's JSON. The trainer must use ``update_on_kvstore=False`` so that the state
lives in the trainer's updaters.
"""
import mxnet as mx

from ..core.atomic import atomic_path


def _flatten(state, prefix, out):
    """Nested tuples of NDArrays (or None) -> ``{prefix/i/j: array}``; returns the layout."""
    if state is None:
        return None
    if isinstance(state, mx.nd.NDArray):
        out[prefix] = state
        return "array"
    return [_flatten(item, f"{prefix}/{i}", out) for i, item in enumerate(state)]


def _unflatten(layout, prefix, arrays):
    if layout is None:
        return None
    if layout == "array":
        return arrays[prefix]
    return tuple(_unflatten(item, f"{prefix}/{i}", arrays) for i, item in enumerate(layout))


def _copy(state):
    if state is None:
        return None
    if isinstance(state, mx.nd.NDArray):
        return state.copy()
    return tuple(_copy(item) for item in state)


def _first_array(state):
    """The first NDArray of a nested state, or None."""
    if state is None or isinstance(state, mx.nd.NDArray):
        return state
    return next((a for a in map(_first_array, state) if a is not None), None)


def optimizer_arrays(trainer):
    """The first updater's state, ready to write: ``(arrays, counters)``.

    ``arrays``: ``{"<param index>/<slot>": NDArray on the CPU}`` (the live arrays where they
    are on the CPU, copies of those on a GPU); ``counters``: ``{'layout': {...}, 'num_update':
    int, 'index_update_count': {...}}``, JSON-able. Take it on the thread that trains; writing
    it (:func:`save_optimizer_state`) may happen on another while the optimizer does not step.
    """
    updater = trainer._updaters[0]
    optimizer = trainer._optimizer
    arrays, layout = {}, {}
    for index, state in updater.states.items():
        layout[str(index)] = _flatten(state, str(index), arrays)
    counters = {
        "layout": layout,
        "num_update": int(optimizer.num_update),
        "index_update_count": {str(k): int(v) for k, v in optimizer._index_update_count.items()},
    }
    return {k: v.as_in_context(mx.cpu()) for k, v in arrays.items()}, counters


def save_optimizer_state(trainer, path):
    """Write a trainer's first updater's state (or its :func:`optimizer_arrays`) to ``path``
    atomically; return the JSON-able counters."""
    arrays, counters = trainer if isinstance(trainer, tuple) else optimizer_arrays(trainer)
    with atomic_path(path) as tmp:
        mx.nd.save(tmp, arrays)
    return counters


def load_optimizer_state(trainer, path, counters):
    """Restore what :func:`save_optimizer_state` wrote into every updater of ``trainer``.

    Raises ``ValueError`` when the state does not fit the trainer's parameters.
    """
    arrays = mx.nd.load(path) if counters["layout"] else {}
    params = trainer._params
    states = {}
    for key, layout in counters["layout"].items():
        index = int(key)
        if index >= len(params):
            raise ValueError(f"optimizer state has parameter #{index}, the model has {len(params)}")
        state = _unflatten(layout, key, arrays)
        first = _first_array(state)
        if first is not None and first.shape != params[index].shape:
            raise ValueError(f"optimizer state of {params[index].name} has shape {first.shape}, "
                             f"the parameter {params[index].shape}")
        states[index] = state
    for updater in trainer._updaters:
        # states_synced False makes the updater copy each state to its weight's device.
        # Each updater needs arrays of its own: they are updated in place, once per device.
        updater.states = {index: _copy(state) for index, state in states.items()}
        updater.states_synced = {index: False for index in states}
    optimizer = trainer._optimizer
    optimizer.num_update = counters["num_update"]
    counts = {int(k): v for k, v in counters["index_update_count"].items()}
    # The optimizer keeps one counter dict per device; every device has done the same updates.
    devices = set(optimizer._all_index_update_counts) | set(range(len(trainer._updaters)))
    optimizer._all_index_update_counts = {device: dict(counts) for device in devices}
    optimizer._index_update_count = optimizer._all_index_update_counts[0]
