"""Training steps that recompute the cheap ops during backward (``segmenter.py --mirror``).

A plain step keeps, for the backward pass, the output of every op of the network: per block the
convolution's output, the normalization's, the activation's, and the decoder's concatenations.
Only the convolutions are expensive to compute again. MXNet's graph executor can run a node's
forward a second time during backward instead of keeping its output ("mirroring", Chen et al.
2016, "Training deep nets with sublinear memory cost"), but MXNet 1.9.1 does so only in the
executor of a bound Symbol, never in the CachedOp of a hybridized Gluon block, and
``MXNET_BACKWARD_DO_MIRROR=1`` would also recompute the compiled convolutions of
:mod:`unet.model.native`. Here the network and its loss are bound as one Symbol whose cheap nodes
(:data:`CHEAP_OPS`) carry MXNet's ``__force_mirroring__`` attribute: the step keeps the
convolutions' outputs and recomputes the compiled layer norm, activation, pooling and
concatenation from them. The executor also plans the memory of forward and backward as one (a
static CachedOp plans them apart).

The executor's arguments are the Gluon parameters' own arrays: ``trainer.step``, checkpoints and
validation (the hybridized block, unchanged) see the same weights; BatchNorm's running statistics
are bound as the executor's auxiliary states and move as in a plain step (BatchNorm is not
recomputed, so they move once). Gradients equal a plain step's up to float rounding
(``tests/training/test_recompute.py``). Dropout is never recomputed (MXNet excludes it), so its mask
is drawn once.

Measured at 512x512 with the default model (``benchmarks/bench.py --task train --mirror``, AMD
EPYC, 2 cores): see docs/records/speed.md.
"""
import json
import os

import mxnet as mx

from ..model.network import finish_deferred_init

#: The ops recomputed during backward: the compiled layer norm, the activation, pooling and the
#: decoder's concatenation. Not BatchNorm (its running statistics would move twice), nor MXNet's
#: own LayerNorm: MXNet 1.9.1's mirroring gives it wrong gradients (NaN in
#: ``tests/training/test_recompute.py``), so without the compiled kernel the layer norm's output is
#: kept. Marking the convolutions too costs time and, measured, memory.
CHEAP_OPS = frozenset({"LeakyReLU", "unet_width_norm", "Pooling", "Concat"})
DATA, LABEL, WEIGHT = "data", "label", "pixel_weight"


def mark_for_recompute(symbol, ops=CHEAP_OPS):
    """``symbol`` with MXNet's ``__force_mirroring__`` attribute on every node whose op is in
    ``ops``."""
    graph = json.loads(symbol.tojson())
    for node in graph["nodes"]:
        if node["op"] in ops:
            node.setdefault("attrs", {})["__force_mirroring__"] = "True"
    return mx.sym.load_json(json.dumps(graph))


def loss_symbol(net, loss_fn):
    """The per-sample loss ``(N,)`` of ``net`` as a Symbol of ``DATA`` ``(N, C, H, W)``,
    ``LABEL`` and ``WEIGHT`` ``(N, H, W)``, its gradient one per sample (as ``loss.backward()``),
    with the cheap ops marked for recomputation."""
    data, label, weight = (mx.sym.var(name) for name in (DATA, LABEL, WEIGHT))
    loss = mx.sym.MakeLoss(loss_fn(net(data), label, weight))
    return mark_for_recompute(loss)


class MirroredSteps:
    """Forward and backward of ``net`` and ``loss_fn`` on MXNet's graph executor with the cheap
    ops recomputed; the gradients land in the parameters' ``grad()`` arrays.

    Parameters
    ----------
    net : unet.model.network.UNet
        Initialized (deferred shapes are completed on the first batch).
    loss_fn : mxnet.gluon.HybridBlock
        ``loss_fn(scores, label, weight)`` -> per-sample loss ``(N,)``.

    One executor per context and batch shape, bound on first use and reused; the executors of one
    context share their memory. Call it as ``steps(images, labels, weights)`` with one array of
    each per context, as :func:`unet.training.steps.batch_gradients` holds them.
    """

    def __init__(self, net, loss_fn):
        self.net = net
        self.symbol = loss_symbol(net, loss_fn)
        self.params = {p.name: p for p in net.collect_params().values()}
        self._executors = {}

    def __call__(self, images, labels, weights):
        """Gradients of one batch; returns the per-context losses ``(N,)``."""
        losses = []
        for x, y, w in zip(images, labels, weights):
            inputs = {DATA: x, LABEL: y, WEIGHT: w}
            executor = self._executor(inputs)
            for name, array in inputs.items():
                array.copyto(executor.arg_dict[name])
            executor.forward(is_train=True)
            executor.backward()
            losses.append(executor.outputs[0])
        for param in self.params.values():
            if param.grad_req != "null":
                for data in param.list_data():
                    # What loss.backward() flags: trainer.step refuses gradients not flagged fresh.
                    data._fresh_grad = True
        return losses

    def _executor(self, inputs):
        """The executor of this batch's context and shapes, bound on first use."""
        ctx = inputs[DATA].context
        key = (ctx,) + tuple(array.shape for array in inputs.values())
        if key not in self._executors:
            finish_deferred_init(self.net, (1,) + inputs[DATA].shape[1:])
            args, grads, reqs = {}, {}, {}
            for name in self.symbol.list_arguments():
                if name in inputs:
                    args[name] = mx.nd.zeros(inputs[name].shape, ctx)
                    reqs[name] = "null"
                    continue
                param = self.params[name]
                args[name] = param.data(ctx)
                reqs[name] = param.grad_req
                if param.grad_req != "null":
                    grads[name] = param.grad(ctx)
            aux = {name: self.params[name].data(ctx)
                   for name in self.symbol.list_auxiliary_states()}
            # Binding logs "Subgraph backend MKLDNN is activated" on every call unless told not to.
            os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
            # Another batch shape on this context shares the first executor's memory.
            shared = next((e for k, e in self._executors.items() if k[0] == ctx), None)
            self._executors[key] = self.symbol.bind(ctx, args, args_grad=grads, grad_req=reqs,
                                                    aux_states=aux, shared_exec=shared)
        return self._executors[key]
