"""The rows a command line asks for: one spec (a JSON-able dict) per row, its name, its checks.

A spec carries the task, size and channel count of its row and every flag of :data:`SPEC_FLAGS`;
it is all a child process is told (``bench.py --child SPEC``).
"""
TASKS = ("train", "infer", "data", "epoch", "tiled", "stream")
DEFAULT_TASKS = TASKS[:-1]      # stream rows take minutes: run when named
STEP_TASKS = ("train", "infer")
SPEC_FLAGS = (
    "amp", "norm", "fast_norm", "fused_norm", "winograd", "fuse", "mirror", "recompute", "static",
    "threads", "env",
    "batch", "warmup", "repeat", "base_channels", "depth", "workers", "epoch_images", "overlap",
    "tiled_image", "stream_tile", "stream_chunk", "stream_output")
MINIMUM = {"repeat": 1, "warmup": 0, "batch": 1, "threads": 0, "workers": 0, "epoch_images": 1,
           "tiled_image": 1, "timeout": 1, "stream_chunk": 1}
CONFIG_FLAGS = {"in_channels": "--channels", "image_size": "--size", "base_channels":
                "--base-channels", "depth": "--depth"}


def model_config(spec, size):
    """The ``ModelConfig`` of a row at image side ``size``; raises ``ValueError`` if invalid."""
    from unet.model.config import ModelConfig
    return ModelConfig(in_channels=spec["channels"], image_size=size, norm=spec["norm"],
                       base_channels=spec["base_channels"], depth=spec["depth"])


def variant_name(spec):
    """The row's ``variant``: precision, norm, then every lever that is off its default."""
    parts = [spec["amp"], spec["norm"] + ("-fast" if spec["fast_norm"] else "")]
    if not spec["fused_norm"] and spec["task"] in ("train", "epoch"):
        parts.append("unfused")
    if not spec["winograd"] or (spec["task"] == "epoch" and not spec["fused_norm"]):
        parts.append("direct-conv")     # an epoch row's --no-fused-norm turns both kernels off
    training = spec["task"] in ("train", "epoch")
    parts += [flag for flag in ("fuse", "recompute") if spec[flag]]
    # Mirroring is the default of fp32 training without --recompute, and changes training only.
    if training and not spec["mirror"] and spec["amp"] == "fp32" and not spec["recompute"]:
        parts.append("no-mirror")
    if not spec["static"] and not spec["recompute"] and not (spec["mirror"] and training):
        parts.append("dynamic")
    if spec["threads"]:
        parts.append(f"omp{spec['threads']}")
    parts += spec["env"]
    return " ".join(parts)


def row_specs(args):
    """One spec per task, size and channel count, in that order.

    Sizes and channels not given on the command line (``args.size_given``,
    ``args.channels_given``) default per task: the step tasks take ``args.size`` and
    ``args.channels``; data and epoch rows run at 256, tiled rows at a 512 tile, all with 1 channel.
    Stream rows run one per ``args.stream_size`` (the image side), with 1 channel.
    """
    base = {k: getattr(args, k) for k in SPEC_FLAGS}
    specs = []
    for task in args.task:
        sizes = args.size if task in STEP_TASKS or args.size_given else [256 if task in (
            "data", "epoch") else 512]
        if task == "stream":
            sizes = args.stream_size
        channels = args.channels if task in STEP_TASKS or args.channels_given else [1]
        for size in sizes:
            for ch in channels:
                specs.append(dict(base, task=task, size=size, channels=ch))
    return specs


def settle_arguments(parser, args):
    """Refuse the flag combinations no row runs, apply ``--quick`` and the default sizes and
    channels (setting ``args.size_given`` and ``args.channels_given``), then
    :func:`check_arguments`. An error is ``parser.error`` (one line, exit 2)."""
    if (args.recompute or args.mirror) and args.amp != "fp32":
        parser.error("--recompute and --mirror run in fp32 only (as in segmenter.py)")
    if args.recompute and args.mirror:
        parser.error("--recompute and --mirror: choose one (as in segmenter.py)")
    if args.mirror is None:     # as segmenter.py: on wherever it can run
        args.mirror = args.amp == "fp32" and not args.recompute
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
        _check_row(parser, spec)


def _check_row(parser, spec):
    """The checks of one row's size, channels and overlap (see :func:`check_arguments`)."""
    if spec["task"] == "data":      # crops only, no network: any positive size
        if spec["size"] < 1:
            parser.error(f"--size must be >= 1, got {spec['size']}")
    else:
        try:
            model_config(spec, spec["stream_tile"] if spec["task"] == "stream" else spec["size"])
        except ValueError as exc:   # "image_size 30 is not ..." -> "--size 30 is not ..."
            name, _, rest = str(exc).partition(" ")
            parser.error(f"{CONFIG_FLAGS.get(name, name)} {rest}")
    if spec["task"] in ("data", "epoch") and spec["channels"] not in (1, 3):
        parser.error(f"--channels must be 1 or 3 for the {spec['task']} task, "
                     f"got {spec['channels']}")
    if spec["task"] == "stream" and spec["size"] < 1:
        parser.error(f"--stream-size must be >= 1, got {spec['size']}")
    if spec["task"] == "stream" and spec["stream_output"] == "tif" and spec["stream_chunk"] % 16:
        parser.error(f"--stream-chunk must be a multiple of 16 for --stream-output tif (the "
                     f"TIFF's tiles), got {spec['stream_chunk']}")
    tile = spec["stream_tile"] if spec["task"] == "stream" else spec["size"]
    if spec["task"] in ("tiled", "stream") and not 0 <= (spec["overlap"] or 0) < tile:
        parser.error(f"--overlap must be in [0, tile size {tile}), "
                     f"got {spec['overlap']}")
