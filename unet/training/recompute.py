"""A training step that keeps a few activations and recomputes the rest during backward.

Gradient checkpointing (Chen et al., 2016, "Training deep nets with sublinear memory cost"),
written for the U-Net's topology because MXNet 1.9.1 does not apply ``MXNET_BACKWARD_DO_MIRROR``
to hybridized Gluon blocks. The network is cut into segments: each half of every
``BaseConvBlock`` (its first convolution, and its second with the residual projection) and each
up-sampling layer. The forward pass runs once without recording and keeps only the segments'
outputs; backward walks the segments in reverse, runs each one again under
``autograd.record()`` from its kept inputs and back-propagates the gradient that arrived at its
output. One segment's intermediate tensors are alive at a time: at 512x512 the default model
needs about half the memory of a plain step, for one more forward pass of time.

Gradients equal a plain step's (``tests/training/test_recompute.py``), and BatchNorm's running statistics
move once per step as usual (MXNet updates them only in recorded passes, and every norm layer
runs in exactly one recorded segment). Dropout is refused (``TrainConfig`` checks it): the
second pass would draw another mask.
"""
import ctypes
import os

import mxnet as mx
from mxnet import autograd

INPUT = "input"
_M_MMAP_THRESHOLD = -3      # glibc's mallopt parameter number


def use_lean_allocator():
    """Allocator settings under which recomputing saves what it should; call it before MXNet
    allocates its first array (later, the MXNet settings have no effect).

    Measured at 512x512 with the default model (``benchmarks/bench.py --recompute``): a
    recomputing step peaks at 3.6-4.0 GB with MXNet's defaults, growing over the first steps,
    and at 2.7 GB with these three: one temporary workspace instead of four
    (``MXNET_CPU_TEMP_COPY=1``), freed arrays returned to the allocator instead of MXNet's pool
    (``MXNET_CPU_MEM_POOL_TYPE=Unpooled``), and blocks from 128 KiB up mapped on their own, so
    that freeing them returns the memory to the system (glibc ``mallopt``). Values the user set
    in the environment are kept.
    """
    os.environ.setdefault("MXNET_CPU_TEMP_COPY", "1")
    os.environ.setdefault("MXNET_CPU_MEM_POOL_TYPE", "Unpooled")
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        except (OSError, AttributeError):    # not glibc: keep its defaults
            pass


def segment_plan(net):
    """The segments of :class:`unet.model.network.UNet` ``net`` in forward order.

    A list of ``(function, input names, output name)``; the network input is named ``INPUT``
    and the last output (before the 1x1 head) is the last entry's.
    """
    plan = []

    def conv_block(block, prepare, inputs, out):
        # ``prepare`` (pooling, concatenation) is cheap: each half runs it again rather than
        # keeping its result.
        mid = out + "/mid"
        plan.append((lambda *xs: block.first_half(mx.nd, prepare(*xs)), inputs, mid))
        if block.residual:
            plan.append((lambda y, *xs: block.second_half(mx.nd, y, block.proj(prepare(*xs))),
                         [mid] + inputs, out))
        else:
            plan.append((lambda y: block.second_half(mx.nd, y, None), [mid], out))

    conv_block(net.stem, lambda x: x, [INPUT], "enc0")
    for level, down in enumerate(net.down):
        conv_block(down.conv, down.pool, [f"enc{level}"], f"enc{level + 1}")
    deepest = len(net.down)
    below = f"enc{deepest}"
    for up, fuse, level in zip(net.up, net.fuse, reversed(range(deepest))):
        plan.append((up, [below], f"up{level}"))
        conv_block(fuse, lambda u, skip: mx.nd.concat(u, skip, dim=1),
                   [f"up{level}", f"enc{level}"], f"dec{level}")
        below = f"dec{level}"
    return plan


def forward_backward(net, loss_fn, x, y, w):
    """One recomputing forward + backward of :class:`unet.model.network.UNet` ``net`` on a batch.

    Parameters
    ----------
    net : unet.model.network.UNet
        Initialized and hybridized without ``static_alloc`` (a static CachedOp would keep every
        segment's memory); its parameter gradients are written as by ``loss.backward()``.
    loss_fn : callable
        ``loss_fn(scores, y, w)`` -> per-sample loss ``(N,)``.
    x, y, w : mxnet.nd.NDArray
        Images ``(N, C, H, W)``, labels and pixel weights ``(N, H, W)`` on one context.

    Returns the per-sample loss ``(N,)``. fp32 only: under bf16 AMP, MXNet 1.9.1 fails the
    recomputed backward ("Backward shape inconsistent with the forward shape").
    """
    plan = segment_plan(net)
    values = {INPUT: x}
    with autograd.pause(train_mode=True):
        for function, inputs, out in plan:
            values[out] = function(*(values[name] for name in inputs))
            values[out].wait_to_read()      # one segment at a time (see below)

    top = values.pop(plan[-1][2])
    top.attach_grad()
    with autograd.record():
        loss = loss_fn(net.head(top), y, w)
    loss.backward()
    grads = {plan[-1][2]: top.grad}

    for function, inputs, out in reversed(plan):
        arrays = [values[name] for name in inputs]
        for name, array in zip(inputs, arrays):
            if name != INPUT:
                array.attach_grad()
        with autograd.record():
            result = function(*arrays)
        result.backward(grads.pop(out))
        for name, array in zip(inputs, arrays):
            if name != INPUT:
                grads[name] = grads[name] + array.grad if name in grads else array.grad
        values.pop(out, None)               # its consumers are done: free it
        # MXNet runs ops asynchronously: without a wait, Python queues every segment at once
        # and their tensors are all alive together, which is what recomputing should avoid.
        mx.nd.waitall()
    return loss
