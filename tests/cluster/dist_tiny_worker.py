"""A tiny dist_sync training run for tests/cluster/test_launch.py: ``python dist_tiny_worker.py OUT_DIR``.

Under ``python -m unet.launch`` each worker trains a tiny conv net for ``--steps`` SGD steps on its
own shard of 16 generated samples (local batch 2), then writes to OUT_DIR ``rank<R>.json``
(rank, workers, shard indices, sha256 of the params and of the trainer states) and
``rank<R>.params``. The workers are seeded differently on purpose: ``kv.init`` must broadcast
rank 0's weights.

Rank 0 runs an inference forward after every step, as a validation would, and the workers
first run a shape-inference forward in training mode (unet.training.loop now infers the shapes
without a forward pass: unet.model.network.finish_deferred_init).

``--reference N`` runs without a cluster what N workers together compute: rank 0's seed, at each
step the union of the N shards' batches, ``trainer.step`` on the global batch. It writes
``reference.json`` and ``reference.params``.

With ``DIST_TINY_KILL_RANK=R`` the worker of rank R kills itself with SIGKILL before step
``DIST_TINY_KILL_STEP`` (default 2).
"""
import argparse
import hashlib
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from unet.core import atomic  # noqa: E402
from unet.cluster import distributed

NUM_SAMPLES, LOCAL_BATCH = 16, 2


def tiny_net():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, padding=1, in_channels=1, activation="relu"),
            nn.GlobalAvgPool2D(), nn.Dense(2, in_units=4))
    return net


def data():
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (NUM_SAMPLES, 1, 8, 8)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("float32")
    return x, y


def train(out_dir, steps, reference_workers):
    if reference_workers:
        kv, rank, num_workers = None, 0, reference_workers
        name = "reference"
    else:
        kv, rank, num_workers, _ = distributed.create_kvstore("dist_sync", 1)
        name = f"rank{rank}"
    mx.random.seed(1 + rank)
    net = tiny_net()
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5, "momentum": 0.9},
                            kvstore=kv, **distributed.trainer_kwargs("dist_sync"))
    with autograd.record():  # as a training loop infers deferred shapes: in training mode
        net(mx.nd.zeros((1, 1, 8, 8)))
    distributed.sync_initial_params(trainer)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    x, y = data()
    shards = [distributed.shard_indices(NUM_SAMPLES, r, num_workers) for r in range(num_workers)]
    mine = [r for r in range(num_workers) if reference_workers or r == rank]
    kill_rank = os.environ.get("DIST_TINY_KILL_RANK")
    for step in range(steps):
        if kill_rank == str(rank) and step == int(os.environ.get("DIST_TINY_KILL_STEP", "2")):
            os.kill(os.getpid(), signal.SIGKILL)
        batch = [i for r in mine for i in shards[r][step * LOCAL_BATCH:(step + 1) * LOCAL_BATCH]]
        with autograd.record():
            loss = loss_fn(net(mx.nd.array(x[batch])), mx.nd.array(y[batch]))
        loss.backward()
        trainer.step(distributed.global_batch_size(LOCAL_BATCH, num_workers))
        if rank == 0:  # "validation" by rank 0 only: an inference forward between steps
            net(mx.nd.array(x[:4])).asnumpy()
    distributed.finish(not reference_workers)
    states = os.path.join(out_dir, f"{name}.states")
    trainer.save_states(states)
    with open(states, "rb") as handle:
        states_sha = hashlib.sha256(handle.read()).hexdigest()
    params = net.collect_params()
    digest = hashlib.sha256()
    for key in sorted(params.keys()):
        digest.update(params[key].data().asnumpy().tobytes())
    with atomic.atomic_path(os.path.join(out_dir, f"{name}.params")) as tmp:
        net.save_parameters(tmp)
    atomic.write_json(os.path.join(out_dir, f"{name}.json"), {
        "rank": rank, "num_workers": num_workers, "indices": shards[rank],
        "params_sha256": digest.hexdigest(), "states_sha256": states_sha})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reference", type=int, default=0, metavar="N")
    args = parser.parse_args()
    train(args.out_dir, args.steps, args.reference)


if __name__ == "__main__":
    main()
