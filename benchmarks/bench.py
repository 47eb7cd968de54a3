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
stream  chunked inference of a synthetic Zarr section of ``--stream-size`` (Zarr in, Zarr out,
        as ``evaluate.py --output NAME.zarr``), run once: its peak memory should not grow with
        the image (only when named: it takes minutes)

GFLOP/s counts the convolutions only (2*k*k*Cin*Cout*H*W per forward; a training step counts
3x the forward). Peak memory is the child process' ``ru_maxrss``.

This file is the command line; the measuring lives in the ``benchkit`` package beside it, and a
row's child process is this file again, run with ``--child SPEC``.
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]   # unet one folder up, benchkit beside this file
from unet.core.cli import OneLineParser  # noqa: E402  (imports unet, not mxnet: as the CLIs, first)
from benchkit.child import child  # noqa: E402
from benchkit.machine import machine_info, machine_line  # noqa: E402
from benchkit.runner import measure_row  # noqa: E402
from benchkit.specs import DEFAULT_TASKS, TASKS, row_specs, settle_arguments  # noqa: E402
from benchkit.table import format_table  # noqa: E402


def build_parser():
    """The command line: what to time, the variants (levers), the model and data.

    Returns
    -------
    OneLineParser
        A usage error is one line on stderr and exit code 2.
    """
    p = OneLineParser(description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", nargs="+", choices=TASKS, default=list(DEFAULT_TASKS),
                   help="what to time (default: all), except stream, which runs when named: "
                        "train (a training step), infer (a forward pass), data (the loader), "
                        "epoch (a short unet.training.loop run), tiled (overlap-tiled "
                        "inference), stream (chunked Zarr inference); a row per task, size and "
                        "channel count")
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
    _add_variant_flags(p.add_argument_group("variants (levers)"))
    _add_model_flags(p.add_argument_group("model and data"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def _add_variant_flags(g):
    """The levers: precision, normalization, kernels, fusion, memory, threads, environment."""
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
    g.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="training as segmenter.py: the step on MXNet's graph executor, the cheap "
                        "ops recomputed in backward (unet.training.mirror); default on in fp32 "
                        "without --recompute, as segmenter.py; --no-mirror: the hybridized "
                        "block's static CachedOp step")
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


def _add_model_flags(g):
    """The model's size, the loader's workers and images, the tiled image, the timeout."""
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
    g.add_argument("--stream-size", nargs="+", type=int, default=[4096, 16384],
                   help="stream: image sides, a row each (default 4096 16384)")
    g.add_argument("--stream-tile", type=int, default=128,
                   help="stream: the network's tile (image size) (default 128)")
    g.add_argument("--stream-chunk", type=int, default=1024,
                   help="stream: side of the Zarr chunks, input and output, >= 1 (default 1024)")
    g.add_argument("--stream-output", choices=("zarr", "tif"), default="zarr",
                   help="stream: the output, a Zarr group or tiled TIFFs (written from a Zarr "
                        "group by tiles of the chunk side, a multiple of 16) (default zarr)")
    g.add_argument("--timeout", type=int, default=1800,
                   help="seconds per row's process, >= 1 (default 1800)")


def main(argv=None):
    """Run the rows and print the machine line and the table, or the JSON list of rows.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 if every row is ``ok`` or ``not available``, else 1; a usage error exits 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    settle_arguments(parser, args)
    info = machine_info()
    rows = []
    if not args.json:
        print(machine_line(info), flush=True)
    for spec in row_specs(args):
        row = measure_row(spec, args.timeout)
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
