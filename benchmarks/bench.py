"""Speed and memory of the U-Net on this machine: ``python benchmarks/bench.py [--json] ...``.

Every row runs in a fresh Python process (so peak memory and one-time costs belong to that row
alone): a few warm-up calls, then the median of ``--repeat`` timed calls.

Tasks
-----
train   one training step: forward, loss, backward, optimizer update (batch ``--batch``)
infer   one forward pass
data    the data pipeline alone: load + augment, images/s with ``--workers`` loader workers
epoch   a short real epoch of ``unet.training.loop.train`` against the same number of pure steps
tiled   overlap-tiled inference of a 2048x2048 image against one 512x512 pass, per pixel
        (``--batch`` tiles per forward pass)

GFLOP/s counts the convolutions only (2*k*k*Cin*Cout*H*W per forward; a training step counts
3x the forward). Peak memory is the child process' ``ru_maxrss``.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from unet.core.cli import OneLineParser  # noqa: E402  (imports unet, not mxnet: as the CLIs, first)

TASKS = ("train", "infer", "data", "epoch", "tiled")
STEP_TASKS = ("train", "infer")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


# ----------------------------------------------------------------------------- machine

def machine_info():
    """CPU model, usable cores, selected ISA flags and library versions, as a dict."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from unet.core import amx  # as the CLIs: unet's defaults (threads, AMX) reach the rows
    from unet.core import threads
    try:
        from importlib.metadata import version
        mxnet = version("mxnet")
    except Exception:                  # not installed as a distribution: leave it out
        mxnet = None
    return {"cpu": model, "cores": cores, "flags": [f for f in CPU_FLAGS if f in flags],
            "python": platform.python_version(), "mxnet": mxnet,
            "omp_num_threads": _setting(threads.USER_OMP_THREADS, "OMP_NUM_THREADS",
                                        "one per physical core"),
            "dnnl_max_cpu_isa": _setting(amx.USER_ISA, amx.ISA_VARIABLE, "on this CPU with AMX")}


def _setting(user_value, name, why):
    """What the rows run with for the variable ``name``: the user's value, else the default
    that ``import unet`` filled in (said so, with ``why``), else ``-``."""
    value = user_value or os.environ.get(name)
    if not value:
        return "-"
    return value if user_value else f"{value} (unset: unet's default, {why})"


def machine_line(info):
    return (f"machine: {info['cpu']}, {info['cores']} cores, flags {' '.join(info['flags']) or '-'}"
            f", OMP_NUM_THREADS={info['omp_num_threads']}"
            f", DNNL_MAX_CPU_ISA={info.get('dnnl_max_cpu_isa', '-')}, Python {info['python']}"
            + (f", mxnet {info['mxnet']}" if info.get("mxnet") else ""))


# ----------------------------------------------------------------------------- child side

def peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


CPU_MS = []   # process CPU ms of each timed call of the row: steadier than wall time on a busy machine


def timed(fn, warmup, repeat):
    """(first call ms, list of timed ms): ``warmup`` untimed calls after the first, then ``repeat``.

    The process CPU time of each timed call goes to ``CPU_MS``.
    """
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * 1e3
    for _ in range(max(warmup - 1, 0)):
        fn()
    times = []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        CPU_MS.append((time.process_time() - cpu) * 1e3)
    return first, times


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def model_config(spec, size):
    from unet.model.config import ModelConfig
    return ModelConfig(in_channels=spec["channels"], image_size=size, norm=spec["norm"],
                       base_channels=spec["base_channels"], depth=spec["depth"])


def conv_gflop(cfg, height, width):
    """Convolution GFLOP of one forward pass of one ``height x width`` image.

    Counted on a batch-norm twin of ``cfg`` at the smallest valid size and scaled by area: every
    convolution keeps the stage's resolution, so the count is exactly proportional to H*W.
    """
    import dataclasses
    import mxnet as mx
    from mxnet.gluon import nn
    from unet.model.network import build_unet
    small = cfg.size_multiple
    twin = build_unet(dataclasses.replace(cfg, norm="batch", image_size=small))
    twin.initialize()
    total = [0]

    def hook(block, inputs, output):
        cout, cin, kh, kw = block.weight.shape
        if isinstance(block, nn.Conv2DTranspose):            # weight (Cin, Cout, k, k), input grid
            cout, cin = cin, cout
            area = inputs[0].shape[2] * inputs[0].shape[3]
        else:
            area = output.shape[2] * output.shape[3]
        total[0] += 2 * kh * kw * cin * cout * area

    def attach(block):
        if isinstance(block, (nn.Conv2D, nn.Conv2DTranspose)):
            block.register_forward_hook(hook)
        for child in block._children.values():
            attach(child)

    attach(twin)
    twin(mx.nd.zeros((1, cfg.in_channels, small, small)))
    return total[0] * (height * width) / (small * small) / 1e9


def build_net(spec, size, amp_init, training=False):
    """The network of a row. ``training``: as ``segmenter.py`` builds it, with the compiled layer
    norm (unless ``--no-fused-norm``) and, in fp32, the Winograd convolutions (unless
    ``--no-winograd``) of ``unet.model.native``; else as ``evaluate.py`` builds its float32 network,
    on MXNet's operators (:func:`prepare_infer_net` makes the Winograd copy)."""
    import mxnet as mx
    from unet.model.network import build_unet, initializer
    if amp_init:
        from unet.model.precision import init_amp
        init_amp("bf16")
    if spec["recompute"]:   # as segmenter.py --recompute: before the first array
        from unet.training.recompute import use_lean_allocator
        use_lean_allocator()
    cfg = model_config(spec, size)
    net = build_unet(cfg, fast_norm=spec["fast_norm"], fused_norm=training and spec["fused_norm"],
                     winograd=training and spec["winograd"] and spec["amp"] == "fp32")
    spec["conv_kernel"] = net.conv_kernel
    spec["norm_kernel"] = _norm_kernel(net) if spec["norm"] == "layer" else "batch"
    net.initialize(initializer(), ctx=mx.cpu())
    if spec["static"] and not spec["recompute"]:
        net.hybridize(static_alloc=True, static_shape=True)
    else:
        net.hybridize()
    return cfg, net


def _norm_kernel(net):
    """The layer-norm implementation ``net`` was built with: mxnet, gemv or fused."""
    from unet.model import fastnorm
    norm = net.stem.norm1
    if isinstance(norm, fastnorm.LayerNorm):
        return "fused" if norm._fused else "gemv"
    return "mxnet"


def inputs(spec, cfg, size, seed=0):
    import mxnet as mx
    mx.random.seed(seed)
    shape = (spec["batch"], cfg.in_channels, size, size)
    x = mx.nd.random.uniform(-1, 1, shape=shape)
    y = mx.nd.random.randint(0, cfg.num_classes, shape=(spec["batch"], size, size)).astype("float32")
    return x, y, mx.nd.ones((spec["batch"], size, size))


def run_train(spec):
    import mxnet as mx
    from mxnet import autograd, gluon
    from unet.training.losses import SegmentationLoss
    bf16 = spec["amp"] == "bf16"
    cfg, net = build_net(spec, spec["size"], amp_init=bf16, training=True)
    x, y, w = inputs(spec, cfg, spec["size"])
    loss_fn = SegmentationLoss("ce", cfg.num_classes)
    loss_fn.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-4})
    # As unet.training.loop: bfloat16 needs no loss scaling (unet.model.precision.uses_loss_scaling).
    losses = []

    def step():
        if spec["recompute"]:
            from unet.training.recompute import forward_backward
            loss = forward_backward(net, loss_fn, x, y, w)
            trainer.step(spec["batch"])
            losses.append(float(loss.mean().asscalar()))
            mx.nd.waitall()
            return
        with autograd.record():
            loss = loss_fn(net(x), y, w)
        loss.backward()
        trainer.step(spec["batch"])
        losses.append(float(loss.mean().asscalar()))
        mx.nd.waitall()

    first, times = timed(step, spec["warmup"], spec["repeat"])
    return dict(first_ms=first, times_ms=times, gflop=3 * spec["batch"] * conv_gflop(
        cfg, spec["size"], spec["size"]), last_loss=losses[-1])


def prepare_infer_net(spec, size):
    """A ready inference net for the spec (bf16 conversion, oneDNN fusion, the Winograd copy),
    its input, and a function that returns the fp32 output of MXNet's own convolutions."""
    cfg, net = build_net(spec, size, amp_init=False)
    x, _, _ = inputs(spec, cfg, size)
    winograd = spec["amp"] == "fp32" and spec["winograd"] and not spec["fuse"]
    # With the Winograd copy, the reference runs last: a pass of MXNet's convolutions moves the
    # shared weights into its oneDNN layout (the kernel would then be handed a converted copy on
    # every call, which evaluate.py never pays) and keeps its own buffers.
    reference = None if winograd else net(x)
    plain = net
    if spec["amp"] == "bf16":   # as evaluate.py --amp bf16 does
        from unet.model.precision import bf16_inference_network
        net = bf16_inference_network(net, cfg.in_channels, size)
    elif spec["amp"] == "int8":  # as evaluate.py --amp int8 does, on 4 random tiles
        import numpy as np
        from unet.model.precision import int8_inference_network
        tiles = np.random.default_rng(1).uniform(-1, 1, (4, cfg.in_channels, size, size))
        net = int8_inference_network(net, tiles.astype(np.float32))
    elif winograd:                  # as evaluate.py does in fp32
        from unet.model.network import inference_copy
        net = inference_copy(net)
        if spec["static"]:
            net.hybridize(static_alloc=True, static_shape=True)
        else:
            net.hybridize()
    spec["conv_kernel"] = getattr(net, "conv_kernel", "mxnet")
    if spec["fuse"]:
        net.optimize_for(x, backend="MKLDNN", static_alloc=spec["static"],
                         static_shape=spec["static"])
        graph = json.loads(net._cached_graph[1].tojson())
        spec["fused_nodes"] = sum(n["op"].startswith("_sg_mkldnn") for n in graph["nodes"])
    return cfg, net, x, (lambda: plain(x)) if reference is None else (lambda: reference)


def run_infer(spec):
    import mxnet as mx
    cfg, net, x, reference = prepare_infer_net(spec, spec["size"])

    def forward():
        net(x).wait_to_read()

    first, times = timed(forward, spec["warmup"], spec["repeat"])
    peak = peak_rss_mb()            # before a late reference pass adds its own buffers
    probs = mx.nd.softmax(net(x).astype("float32"), axis=1)
    ref_probs = mx.nd.softmax(reference(), axis=1)
    diff = mx.nd.abs(probs - ref_probs)
    agree = mx.nd.mean(probs.argmax(axis=1) == ref_probs.argmax(axis=1))
    return dict(first_ms=first, times_ms=times, max_prob_diff_vs_fp32=float(diff.max().asscalar()),
                mean_prob_diff_vs_fp32=float(diff.mean().asscalar()),
                argmax_agreement_vs_fp32=float(agree.asscalar()),
                fused_nodes=spec.get("fused_nodes"), conv_kernel=spec["conv_kernel"],
                peak_rss_mb=round(peak, 1),
                gflop=spec["batch"] * conv_gflop(cfg, spec["size"], spec["size"]))


def run_tiled(spec):
    import numpy as np
    from unet.inference.tiling import predict_probabilities
    tile = spec["size"]
    cfg, net, x, _ = prepare_infer_net(dict(spec, batch=1), tile)
    side = spec["tiled_image"]
    image = np.random.default_rng(0).uniform(-1, 1, (cfg.in_channels, side, side)).astype(np.float32)

    def single():
        net(x).wait_to_read()

    def tiled():
        predict_probabilities(net, image, tile, batch_size=spec["batch"], overlap=spec["overlap"])

    _, single_times = timed(single, spec["warmup"], spec["repeat"])
    first, times = timed(tiled, 1, max(1, spec["repeat"] // 3))
    per_pixel = median(times) / side ** 2 / (median(single_times) / tile ** 2)
    return dict(first_ms=first, times_ms=times, single_ms_median=median(single_times),
                per_pixel_vs_single=per_pixel, image=side, tile=tile,
                gflop=conv_gflop(cfg, side, side))


def demo_dataset(folder, size, count):
    from unet.data.demo import generate_demo_dataset
    generate_demo_dataset(folder, seed=0, size=size, n_train=count, n_validate=2, n_test=1)
    return folder


def run_data(spec):
    from unet.data.samples import prepare_data
    from unet.data.loader import EpochLoader, SegmentationDataset
    size, count = spec["size"], spec["epoch_images"]
    with tempfile.TemporaryDirectory() as folder:
        info = prepare_data(demo_dataset(folder, size, count), 2, channels=spec["channels"])
        dataset = SegmentationDataset(info.train, info, size, augment=True, seed=0)
        loader = EpochLoader(dataset, spec["batch"], shuffle=True, num_workers=spec["workers"])
        state = {"epoch": 0}

        def one_epoch():        # as in training: the workers live across epochs
            for _ in loader.epoch(state["epoch"]):
                pass
            state["epoch"] += 1

        try:
            first, times = timed(one_epoch, spec["warmup"], spec["repeat"])
        finally:
            loader.close()
        images = len(dataset)
    return dict(first_ms=first, times_ms=times, images=images, workers=spec["workers"])


# The epoch row's run: the first epoch builds and compiles; the second's checkpoint is the run's
# second, whose 432 MB of new file pages cost this VM up to 1 s of system time more than any
# later save (the first two saves of a run took 1.3-1.4 s, the later ones 0.5-0.7 s: from the
# third on, the pages a save frees are reused). Steady state is what a long training run pays.
WARMUP_EPOCHS, TIMED_EPOCHS = 2, 2


def run_epoch(spec):
    """The last ``TIMED_EPOCHS`` epochs of one ``unet.training.loop.train`` run of
    ``WARMUP_EPOCHS + TIMED_EPOCHS``, each from the end of the previous epoch to the end of its
    own (steps, validation, logging, checkpoints); ``parts_ms``: the mean time per epoch of its
    steps (with the waits for data), validation, checkpoint (what the epoch waits for: the copy of
    the weights, the files' write beyond validation, the commit) and histograms; ``step_ms_by_epoch``:
    for every epoch of the run, the median time from the start of one step's forward pass to the
    next's (the whole step: data, forward, backward, update, loss readout, logging). The pure
    steps to compare with are measured by the parent, in fresh processes
    (:func:`add_epoch_reference`)."""
    from unet.training import steps as step_loop
    from unet.training import loop as training
    from unet.checkpoints.saver import CheckpointSaver
    from unet.training.tensorboard import TrainingLog
    from unet.training.config import TrainConfig
    size, count = spec["size"], spec["epoch_images"]
    ends, real_end_epoch = [], training._Run._end_epoch
    parts = {"steps": 0.0, "validation": 0.0, "checkpoint": 0.0, "histograms": 0.0}

    step_starts = [[]]        # per epoch: when each step's forward pass began
    real_batch_gradients = step_loop.batch_gradients

    def end_epoch(run, *args, **kwargs):
        real_end_epoch(run, *args, **kwargs)
        ends.append(time.perf_counter())
        step_starts.append([])

    def batch_gradients(*args, **kwargs):
        step_starts[-1].append(time.perf_counter())
        return real_batch_gradients(*args, **kwargs)

    def timed_part(owner, name, part):
        real = getattr(owner, name)

        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                if len(ends) >= WARMUP_EPOCHS:
                    parts[part] += (time.perf_counter() - start) * 1e3 / TIMED_EPOCHS
        setattr(owner, name, call)

    training._Run._end_epoch = end_epoch
    step_loop.batch_gradients = batch_gradients
    timed_part(training, "train_epoch", "steps")
    timed_part(training, "validate", "validation")
    timed_part(CheckpointSaver, "begin", "checkpoint")     # the weights' copy; the files are
    timed_part(CheckpointSaver, "save", "checkpoint")      # written beside validation
    timed_part(TrainingLog, "histograms", "histograms")
    with tempfile.TemporaryDirectory() as folder:
        data = demo_dataset(os.path.join(folder, "data"), size, count)
        cfg = TrainConfig(model=model_config(spec, size), channels=spec["channels"],
                          data_dir=data, checkpoint_file=os.path.join(folder, "c", "u.params"),
                          log_dir=os.path.join(folder, "logs"), batch_size=spec["batch"],
                          num_epochs=WARMUP_EPOCHS + TIMED_EPOCHS, epoch_size=count,
                          num_workers=spec["workers"],
                          amp=spec["amp"], fast_norm=spec["fast_norm"],
                          winograd=spec["winograd"], recompute=spec["recompute"], seed=0)
        start = time.perf_counter()
        training.train(cfg)
    timed = ends[WARMUP_EPOCHS - 1:]
    epochs_ms = [(b - a) * 1e3 for a, b in zip(timed, timed[1:])]
    steps = max(count // spec["batch"], 1)          # the loader drops an incomplete last batch
    # A step lasts until the next one starts; an epoch's last step until the epoch's end, after
    # which validation and the checkpoint follow, so the last step of each epoch is left out.
    by_epoch = [round(median([b - a for a, b in zip(t, t[1:])]) * 1e3, 1) if len(t) > 1 else None
                for t in step_starts[:len(ends)]]
    return dict(first_ms=(ends[0] - start) * 1e3, times_ms=epochs_ms, steps=steps, images=count,
                parts_ms=parts, step_ms_by_epoch=by_epoch)


def epoch_reference_spec(spec):
    """The isolated training steps an epoch row is compared with: 8 (or ``--repeat``) after 2
    of warm-up, with the epoch's kernels (its ``--no-fused-norm`` turns off both)."""
    return dict(spec, task="train", warmup=2, repeat=max(8, spec["repeat"]),
                winograd=spec["winograd"] and spec["fused_norm"])


def add_epoch_reference(row, references):
    """Add ``reference_step_ms`` (the median step of the ``references``, train rows measured in
    fresh processes just before and after the epoch's), ``pure_steps_ms`` (``steps`` times it)
    and ``overhead`` to an epoch row. Fresh processes, because a step measured in the epoch's
    own process after training was up to 30% slower; two, because this machine's speed drifts
    by several percent from one minute to the next."""
    if row.get("status") != "ok":
        return row
    failed = [r for r in references if r.get("status") != "ok"]
    if failed:
        return dict(row, status=f"error: reference steps: {failed[0].get('status')}")
    times = [t for r in references for t in r["times_ms"]]
    row = dict(row, reference_step_ms=round(median(times), 2))
    row["pure_steps_ms"] = round(row["steps"] * row["reference_step_ms"], 1)
    row["overhead"] = round(row["ms_median"] / row["pure_steps_ms"] - 1.0, 4)
    return row


RUNNERS = {"train": run_train, "infer": run_infer, "data": run_data, "epoch": run_epoch,
           "tiled": run_tiled}
NEEDS = {"data": "unet.data.loader", "epoch": "unet.training.loop", "tiled": "unet.inference.tiling"}


def child(spec):
    """Measure one row in this (fresh) process; returns the row dict."""
    import importlib
    import unet      # noqa: F401  (before mxnet, as the CLIs: threads and AMX, unet.core.amx)
    import cv2
    cv2.setNumThreads(0)
    row = {k: spec[k] for k in ("task", "size", "channels", "batch")}
    row["variant"] = variant_name(spec)
    needed = NEEDS.get(spec["task"])
    if needed:
        try:
            importlib.import_module(needed)
        except ImportError as exc:
            return dict(row, status=f"not available: {needed} ({exc})")
    result = RUNNERS[spec["task"]](spec)
    times = result.pop("times_ms")
    ms = median(times)
    for kernel in ("norm_kernel", "conv_kernel"):
        if kernel in spec:
            row[kernel] = spec[kernel]
    row.update(ms_median=round(ms, 2), ms_min=round(min(times), 2), ms_max=round(max(times), 2),
               repeat=len(times), times_ms=[round(t, 2) for t in times],
               peak_rss_mb=round(peak_rss_mb(), 1), status="ok")
    if CPU_MS and spec["task"] in STEP_TASKS:
        row["cpu_ms_median"] = round(median(CPU_MS), 2)
    if "gflop" in result:
        row["gflops_achieved"] = float(f"{result['gflop'] / (ms / 1e3):.4g}")  # tiny models too
    images = result.get("images", spec["batch"])
    row["images_per_s"] = round(images / (ms / 1e3), 3)
    row.update({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in result.items()})
    return row


# ----------------------------------------------------------------------------- parent side

def variant_name(spec):
    parts = [spec["amp"], spec["norm"] + ("-fast" if spec["fast_norm"] else "")]
    if not spec["fused_norm"] and spec["task"] in ("train", "epoch"):
        parts.append("unfused")
    if not spec["winograd"] or (spec["task"] == "epoch" and not spec["fused_norm"]):
        parts.append("direct-conv")     # an epoch row's --no-fused-norm turns both kernels off
    parts += [flag for flag in ("fuse", "mirror", "recompute") if spec[flag]]
    if not spec["static"] and not spec["recompute"]:
        parts.append("dynamic")
    if spec["threads"]:
        parts.append(f"omp{spec['threads']}")
    parts += spec["env"]
    return " ".join(parts)


def child_env(spec):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if spec["mirror"]:
        env["MXNET_BACKWARD_DO_MIRROR"] = "1"
    if not spec["fused_norm"] and spec["task"] == "epoch":
        env["UNET_NATIVE"] = "0"        # unet.training.loop builds with the kernels: turn them all off
    if spec["fuse"] and spec["norm"] == "layer":
        # MXNet 1.9.1 wires the wrong inputs into a conv+sum fusion next to a LayerNorm
        # ("Shape inconsistent, Provided = [64]"): keep the other fusions, skip that one.
        env["MXNET_DISABLE_MKLDNN_FUSE_CONV_SUM"] = "1"
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    # Otherwise the child's first import, unet, sets what segmenter.py and evaluate.py run with.
    for item in spec["env"]:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def run_row(spec, timeout):
    """Run one row in a fresh interpreter; a failure becomes a row with ``status='error: ...'``."""
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        done = subprocess.run(command, env=child_env(spec), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(task=spec["task"], size=spec["size"], channels=spec["channels"],
                    variant=variant_name(spec), status=f"error: timed out after {timeout} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return dict(task=spec["task"], size=spec["size"], channels=spec["channels"],
                variant=variant_name(spec), status=f"error: rc {done.returncode}: {tail[:300]}")


def row_specs(args):
    base = {k: getattr(args, k) for k in (
        "amp", "norm", "fast_norm", "fused_norm", "winograd", "fuse", "mirror", "recompute", "static",
        "threads", "env",
        "batch", "warmup", "repeat", "base_channels", "depth", "workers", "epoch_images", "overlap",
        "tiled_image")}
    specs = []
    for task in args.task:
        sizes = args.size if task in STEP_TASKS or args.size_given else [256 if task in (
            "data", "epoch") else 512]
        channels = args.channels if task in STEP_TASKS or args.channels_given else [1]
        for size in sizes:
            for ch in channels:
                specs.append(dict(base, task=task, size=size, channels=ch))
    return specs


def format_table(rows):
    head = ("task", "size", "ch", "variant", "ms median", "min-max", "img/s", "GFLOP/s",
            "peak MB", "note")
    lines = [head]
    for r in rows:
        if r.get("status") != "ok":
            lines.append((r["task"], str(r["size"]), str(r["channels"]), r.get("variant", ""),
                          "-", "-", "-", "-", "-", r.get("status", "")))
            continue
        note = ""
        if r["task"] == "tiled":
            note = f"per pixel {r['per_pixel_vs_single']:.2f}x one {r['tile']} pass"
        elif r["task"] == "epoch":
            note = (f"epoch vs {r['steps']} pure steps of {r['reference_step_ms']:.0f} ms: "
                    f"{100 * r['overhead']:+.1f}%; per epoch "
                    + ", ".join(f"{k} {v / 1e3:.2f} s" for k, v in r["parts_ms"].items())
                    + "; median step by epoch "
                    + " / ".join("-" if ms is None else f"{ms:.0f}" for ms in r["step_ms_by_epoch"])
                    + " ms")
        elif r["task"] == "data":
            note = f"{r['workers']} workers"
        elif r.get("max_prob_diff_vs_fp32"):
            note = (f"prob diff to fp32 max {r['max_prob_diff_vs_fp32']:.2g} mean "
                    f"{r['mean_prob_diff_vs_fp32']:.2g}, same class "
                    f"{100 * r['argmax_agreement_vs_fp32']:.2f}%")
        if str(r.get("conv_kernel", "")).startswith("winograd"):
            note = "3x3 convs: Winograd kernel" + (f"; {note}" if note else "")
        lines.append((r["task"], str(r["size"]), str(r["channels"]), r["variant"],
                      f"{r['ms_median']:.0f}", f"{r['ms_min']:.0f}-{r['ms_max']:.0f}",
                      f"{r['images_per_s']:.2f}", str(r.get("gflops_achieved", "-")),
                      f"{r['peak_rss_mb']:.0f}", note))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    return "\n".join([out[0], rule] + out[1:])


def build_parser():
    p = OneLineParser(description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", nargs="+", choices=TASKS, default=list(TASKS),
                   help="what to time (default: all): train (a training step), infer (a "
                        "forward pass), data (the loader), epoch (a short unet.training.loop run), tiled "
                        "(overlap-tiled inference); a row per task, size and channel count")
    p.add_argument("--size", nargs="+", type=int, default=None,
                   help="image side, a multiple of 2**depth (default 256 512; data/epoch 256; "
                        "tiled: the tile, 512)")
    p.add_argument("--channels", nargs="+", type=int, default=None,
                   help="input channels (default 1 3; data/epoch/tiled 1); data/epoch: 1 or 3")
    p.add_argument("--batch", type=int, default=1,
                   help="images per step (tiled: tiles per pass), >= 1 (default 1)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per row, >= 1 (default 5)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed calls first, >= 0 (default 2; the first call is always one)")
    p.add_argument("--quick", action="store_true",
                   help="repeat 3, warmup 1, 256x256 only, 1 channel: a fast look")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows instead")
    g = p.add_argument_group("variants (levers)")
    g.add_argument("--amp", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="precision (default fp32); bf16: mxnet.contrib.amp (train: amp.init; "
                        "infer: convert_hybrid_block); int8: inference only, as evaluate.py "
                        "--amp int8 (quantize_net_v2, calibrated on 4 random tiles)")
    g.add_argument("--norm", choices=("layer", "batch"), default="layer",
                   help="the model's normalization (default layer: nn.LayerNorm over the width, "
                        "as the reference; batch: BatchNorm)")
    g.add_argument("--fast-norm", action="store_true",
                   help="unet.model.fastnorm.LayerNorm: the same function as nn.LayerNorm, faster backward")
    g.add_argument("--no-fused-norm", dest="fused_norm", action="store_false",
                   help="training: MXNet's layer norms (or --fast-norm's) instead of the compiled "
                        "kernel of unet.model.native that segmenter.py uses on CPUs")
    g.add_argument("--no-winograd", dest="winograd", action="store_false",
                   help="fp32 rows, training and inference: MXNet's own 3x3 convolutions "
                        "instead of the compiled Winograd kernels of unet.model.native, the default "
                        "of segmenter.py and evaluate.py on CPUs")
    g.add_argument("--fuse", action="store_true",
                   help="inference: oneDNN subgraph fusion (optimize_for backend MKLDNN)")
    g.add_argument("--mirror", action="store_true", help="MXNET_BACKWARD_DO_MIRROR=1")
    g.add_argument("--recompute", action="store_true",
                   help="training as segmenter.py --recompute: keep a few activations, "
                        "recompute the rest in backward, no static_alloc, lean allocator "
                        "(unet.training.recompute)")
    g.add_argument("--no-static", dest="static", action="store_false",
                   help="hybridize without static_alloc/static_shape")
    g.add_argument("--threads", type=int, default=0,
                   help="OMP_NUM_THREADS, >= 0 (default 0: the environment's, else one per "
                        "physical core as segmenter.py and evaluate.py use)")
    g.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the child processes, e.g. MALLOC_ARENA_MAX=2; "
                        "repeatable (default none)")
    g = p.add_argument_group("model and data")
    g.add_argument("--base-channels", type=int, default=64,
                   help="channels of the first stage, doubled by each down-sampling (default 64)")
    g.add_argument("--depth", type=int, default=4,
                   help="down-sampling stages, 1 to 10 (default 4)")
    g.add_argument("--workers", type=int, default=2,
                   help="data/epoch loader worker processes, >= 0 (default 2)")
    g.add_argument("--epoch-images", type=int, default=16,
                   help="data/epoch training images, >= 1 (default 16)")
    g.add_argument("--overlap", type=int, default=None,
                   help="tiled: overlap of the tiles in pixels, in [0, tile) (default tile/4)")
    g.add_argument("--tiled-image", type=int, default=2048,
                   help="tiled: image side, >= 1 (default 2048)")
    g.add_argument("--timeout", type=int, default=1800,
                   help="seconds per row's process, >= 1 (default 1800)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


MINIMUM = {"repeat": 1, "warmup": 0, "batch": 1, "threads": 0, "workers": 0, "epoch_images": 1,
           "tiled_image": 1, "timeout": 1}
CONFIG_FLAGS = {"in_channels": "--channels", "image_size": "--size", "base_channels":
                "--base-channels", "depth": "--depth"}


def check_arguments(parser, args):
    """Every value in range before any child starts; else ``parser.error`` (one line, exit 2).
    Sizes, channels, base channels and depth: the rows' own ``ModelConfig``."""
    for name, low in MINIMUM.items():
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    for item in args.env:
        key, equals, _ = item.partition("=")
        if not (key and equals):
            parser.error(f"--env takes KEY=VALUE, got {item!r}")
    for spec in row_specs(args):
        if spec["task"] == "data":      # crops only, no network: any positive size
            if spec["size"] < 1:
                parser.error(f"--size must be >= 1, got {spec['size']}")
        else:
            try:
                model_config(spec, spec["size"])
            except ValueError as exc:   # "image_size 30 is not ..." -> "--size 30 is not ..."
                name, _, rest = str(exc).partition(" ")
                parser.error(f"{CONFIG_FLAGS.get(name, name)} {rest}")
        if spec["task"] in ("data", "epoch") and spec["channels"] not in (1, 3):
            parser.error(f"--channels must be 1 or 3 for the {spec['task']} task, "
                         f"got {spec['channels']}")
        if spec["task"] == "tiled" and not 0 <= (spec["overlap"] or 0) < spec["size"]:
            parser.error(f"--overlap must be in [0, tile size {spec['size']}), "
                         f"got {spec['overlap']}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.recompute and args.amp != "fp32":
        parser.error("--recompute runs in fp32 only (as segmenter.py --recompute)")
    if args.amp == "int8" and set(args.task) - {"infer", "tiled"}:
        parser.error("--amp int8 is for inference only: --task infer or tiled")
    if args.quick:
        args.repeat, args.warmup = 3, 1
        args.size = args.size or [256]
        args.channels = args.channels or [1]
    args.size_given, args.channels_given = args.size is not None, args.channels is not None
    args.size = args.size or [256, 512]
    args.channels = args.channels or [1, 3]
    check_arguments(parser, args)
    info = machine_info()
    rows = []
    if not args.json:
        print(machine_line(info), flush=True)
    for spec in row_specs(args):
        if spec["task"] == "epoch":
            before = run_row(epoch_reference_spec(spec), args.timeout)
            row = run_row(spec, args.timeout)
            after = run_row(epoch_reference_spec(spec), args.timeout)
            row = add_epoch_reference(row, [before, after])
        else:
            row = run_row(spec, args.timeout)
        row["machine"] = info
        rows.append(row)
        if not args.json:
            print(f"  {row['task']} {row['size']} ch{row['channels']} {row.get('variant', '')}: "
                  f"{row.get('ms_median', '-')} ms, {row.get('status')}", file=sys.stderr,
                  flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows))
    return 0 if all(r.get("status", "").startswith(("ok", "not available")) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
