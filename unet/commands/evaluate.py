"""Segment images with a trained U-Net checkpoint, score them, or export the network
(``evaluate.py``, ``unet-evaluate``).

    python evaluate.py --image ./input.png --network-param ./unet_best.params
    python evaluate.py --image ./stack.tif --mask ./labels.tif --network-param ./unet_best.params
    python evaluate.py --image ./images/ --network-param ./unet_best.params --tta
    python evaluate.py --data-dir ./data --network-param ./unet_best.params
    python evaluate.py --network-param ./unet_best.params --export ./deploy/unet
    python evaluate.py --image ./section.zarr --output ./section_mask.zarr \
        --network-param ./unet_best.params --workers 2
"""
import dataclasses
import os
import sys

from unet.core.cli import OneLineParser, int_list, run_guarded, setup_logging
from unet.core.errors import InputError
from unet.data.chunked_io import TIFF_SUFFIXES, is_zarr
from unet.data.stacks import is_stack, read_mask_slices, stack_shape
from unet.inference.chunked import DEFAULT_CHUNK, ChunkedJob, segment_chunked
from unet.inference.evaluation import check_samples, format_table, list_dataset, list_folder, \
    metrics_paths, score_row, segment_samples, write_metrics
from unet.model.export import export_network
from unet.core.held_logs import held_info_lines
from unet.inference.segmenter import Segmenter, contexts, default_mask_path, \
    output_files, refuse_replacing_inputs, segment_file, segment_stack
from unet.inference.postprocess import CellSplitting


def build_parser():
    parser = OneLineParser(
        description="Segment images with a trained U-Net. The network is rebuilt from the "
                    "checkpoint's own config: no architecture flags.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", metavar="PATH",
                        help="an image file, a multi-page TIFF stack (plain, ImageJ or OME: "
                             "every slice is segmented and the outputs are stacks of as many "
                             "pages), or a folder of images (a folder named 'image' is scored "
                             "against a sibling 'mask' folder where masks exist)")
    source.add_argument("--data-dir", metavar="DIR",
                        help="a dataset root: segments DIR/SPLIT/image and scores against "
                             "DIR/SPLIT/mask where masks exist")
    parser.add_argument("--split", default="test",
                        help="split of --data-dir to segment (default: test; e.g. validate)")
    parser.add_argument("--network-param", metavar="PATH", required=True, nargs="+",
                        action="extend",
                        help="checkpoint written by segmenter.py (its PATH.json must be beside "
                             "it); several checkpoints (after one flag or repeated flags) make an "
                             "ensemble: their probabilities are averaged, then thresholded (they "
                             "must share the classes and mask encoding; --export takes one)")
    parser.add_argument("--output", metavar="PATH",
                        help="mask file (or folder) for a single image (default: NAME_mask.png "
                             "beside it, NAME_mask.tif for a stack); "
                             "output folder in folder mode (default: FOLDER_masks beside the "
                             "folder, or ./predictions for --data-dir)")
    parser.add_argument("--mask", metavar="PATH",
                        help="with a single --image: its ground-truth mask (for a stack, a mask "
                             "stack of as many slices), in the training masks' values; prints "
                             "the scores of every slice and their mean, and writes metrics.csv "
                             "and metrics.json beside the mask output")
    parser.add_argument("--overlay", action="store_true",
                        help="also write NAME_overlay.png (a stack: NAME_overlay.tif): the input "
                             "with predicted boundaries")
    parser.add_argument("--probabilities", choices=("png16", "npy"),
                        help="also write the foreground probability map as NAME_prob.png "
                             "(16-bit, 0..65535; a stack: NAME_prob.tif) or NAME_prob.npy "
                             "(float32; a stack: Z x H x W)")
    parser.add_argument("--tta", action="store_true",
                        help="average over the 8 flips and 90-degree rotations of every tile")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="tiles per forward pass (default: 4)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="minimum overlap of neighbouring tiles in pixels "
                             "(default: a quarter of the tile size)")
    parser.add_argument("--gpu-id", metavar="IDS", type=int_list, default=(),
                        help="comma-separated GPU numbers, e.g. 0 or 0,1 (default: CPU)")
    parser.add_argument("--amp", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="bf16: run a bfloat16 copy of the network on the CPU, about 0.65x "
                             "the time on CPUs with avx512_bf16; probabilities within ~2e-4 of "
                             "fp32 on average. int8: an int8 copy (oneDNN), about 0.3-0.35x the "
                             "time on CPUs with avx512_vnni, calibrated on 4 tiles spread over up "
                             "to 4 of the images (evenly over a folder); costs a few seconds to a "
                             "minute to set up, so use it for folders (default: fp32)")
    parser.add_argument("--no-winograd", action="store_true",
                        help="fp32 on the CPU: run MXNet's own 3x3 convolutions instead of the "
                             "compiled Winograd kernel (unet/model/native, about 2x faster, the same "
                             "probabilities up to float rounding; compiled on first use, and "
                             "skipped with a warning where it cannot be)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="foreground probability threshold of a binary model (default: 0.5; "
                             "refused for a model of more classes, which takes the argmax)")
    defaults = CellSplitting()
    parser.add_argument("--split-cells", action="store_true",
                        help="separate touching cells of a binary model: a seeded watershed on "
                             "the cell probability draws a 1-pixel membrane where two cells meet "
                             "through a gap (lowers the Rand error; not in the reference)")
    parser.add_argument("--seed-threshold", type=float, default=None,
                        help="with --split-cells: cell probability of the cell cores that seed "
                             f"the watershed (default: {defaults.seed_threshold})")
    parser.add_argument("--min-seed-size", type=int, default=None,
                        help="with --split-cells: smallest core in pixels that seeds a cell "
                             f"(default: {defaults.min_seed_size})")
    parser.add_argument("--merge-threshold", type=float, default=None, metavar="P",
                        help="with --split-cells: before splitting, merge neighbouring seeds "
                             "whose common boundary has a mean membrane probability below P "
                             "(region adjacency graph agglomeration; not yet measured as a gain) "
                             "(default: no merging)")
    parser.add_argument("--min-hole-size", type=int, default=None,
                        help="with --split-cells: membrane specks inside a cell up to this many "
                             f"pixels become cell; 0 keeps them (default: {defaults.min_hole_size})")
    chunked = parser.add_argument_group(
        "chunked inference (a Zarr --image, a .zarr --output, or any flag of this group)",
        "The image (a Zarr v2 array, an OME-Zarr group: its full resolution, or a TIFF, e.g. one "
        "over the 100-megapixel limit of a whole image) is read and the outputs written chunk "
        "by chunk, in memory that does not grow with the image: a Zarr group (NAME_mask.zarr, "
        "the default for a Zarr input) or tiled TIFFs (NAME_mask.tif, the default for a TIFF; "
        "computed in NAME_mask.tif.chunks.zarr, removed once the TIFFs are written). A killed "
        "run continues where it stopped when the same command is run again")
    chunked.add_argument("--chunk", metavar="N", type=int, default=None,
                         help=f"side of the output chunks in pixels (default: {DEFAULT_CHUNK}; "
                              "a multiple of 16 for a TIFF output, whose tiles they are)")
    cluster = chunked.add_mutually_exclusive_group()
    cluster.add_argument("--workers", metavar="N", type=int, default=None,
                         help="segment the chunks on a local Dask cluster of N worker processes "
                              "(default: in this process)")
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="segment the chunks on the Dask cluster of this scheduler, e.g. "
                              "tcp://10.0.0.5:8786 (its workers must see the same paths)")
    parser.add_argument("--export", metavar="PREFIX",
                        help="write PREFIX-symbol.json, PREFIX-0000.params, PREFIX.json and "
                             "PREFIX.onnx (when the onnx package is installed)")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide the progress bars, which show on a terminal only (a "
                             "folder's images, a stack's slices, the chunks and TIFF tiles of "
                             "chunked inference; a single image's forward passes, once they "
                             "take over a second)")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def check_options(args):
    if args.export and len(args.network_param) > 1:
        raise InputError(f"--export writes one network; got {len(args.network_param)} "
                         f"checkpoints")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise InputError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.overlap is not None and args.overlap < 0:
        raise InputError(f"--overlap must be non-negative, got {args.overlap}")
    if args.mask and not (args.image and not os.path.isdir(args.image)):
        raise InputError("--mask scores a single --image file; folders and --data-dir pair "
                         "their images with the masks of a sibling 'mask' folder")


def _zarr_output(args):
    """Whether ``--output`` names a Zarr folder (``NAME.zarr``)."""
    return bool(args.output) and args.output.rstrip("/\\").lower().endswith(".zarr")


def is_chunked(args):
    """Whether the flags ask for chunked inference: a ``.zarr`` --output, a Zarr --image, or
    one of --chunk, --workers, --scheduler."""
    return _zarr_output(args) or bool(args.image and is_zarr(args.image)) or \
        any(value is not None for value in (args.chunk, args.workers, args.scheduler))


def check_chunked_options(args):
    """InputError for flags that chunked inference does not take."""
    if not is_chunked(args):
        return
    if not args.image or args.export:
        raise InputError("chunked inference segments one --image: a Zarr array, an OME-Zarr "
                         "group or a TIFF")
    if args.output and not (_zarr_output(args) or args.output.lower().endswith(TIFF_SUFFIXES)):
        raise InputError(f"{args.output}: chunked inference writes a Zarr group or a tiled "
                         "TIFF; give --output NAME.zarr or NAME.tif")
    refused = [flag for flag, value in (("--mask", args.mask), ("--split-cells",
                                                                 args.split_cells)) if value]
    if refused:
        raise InputError(f"{', '.join(refused)}: not available for chunked inference (a Zarr "
                         "input or output, or --chunk, --workers, --scheduler)")
    if args.chunk is not None and args.chunk < 1:
        raise InputError(f"--chunk must be at least 1, got {args.chunk}")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")


def _segment_chunked(args):
    """Segment the one --image chunk by chunk into the Zarr or tiled TIFF output; prints the
    paths written."""
    stem = os.path.splitext(os.path.basename(os.path.normpath(args.image)))[0]
    suffix = ".zarr" if is_zarr(args.image) else ".tif"
    output = args.output or os.path.join(os.path.dirname(os.path.normpath(args.image)),
                                         f"{stem}_mask{suffix}")
    options = (("batch_size", args.batch_size), ("tta", args.tta),
               ("threshold", args.threshold), ("overlap", args.overlap), ("amp", args.amp),
               ("winograd", not args.no_winograd))
    job = ChunkedJob(tuple(os.path.abspath(p) for p in args.network_param),
                     os.path.abspath(args.image), os.path.abspath(output),
                     args.chunk or DEFAULT_CHUNK, args.probabilities, options, tuple(args.gpu_id),
                     overlay=args.overlay)
    with held_info_lines() as release:  # until the input and output are checked
        written, _ = segment_chunked(job, _load_segmenter(args), progress=not args.no_progress,
                                     workers=args.workers or 0, scheduler=args.scheduler,
                                     checked=release)
    for path in written:
        print(os.path.join(os.path.dirname(output), os.path.basename(path)))
    return 0


def cell_splitting(args):
    """The CellSplitting of the flags, or None without --split-cells."""
    given = {name: getattr(args, name) for name in ("seed_threshold", "min_seed_size",
                                                      "min_hole_size", "merge_threshold")
             if getattr(args, name) is not None}
    if not args.split_cells:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise InputError(f"{flags} only apply with --split-cells")
        return None
    try:
        return dataclasses.replace(CellSplitting(), **given)
    except ValueError as err:
        raise InputError(f"--split-cells: {err}") from None


def _load_segmenter(args):
    """The Segmenter of the checkpoints and flags; with ``--export``, the network exported."""
    ctx = contexts(args.gpu_id)
    segmenter = Segmenter.from_checkpoints(
        args.network_param, ctx=ctx, batch_size=args.batch_size, tta=args.tta,
        threshold=args.threshold, overlap=args.overlap, cell_splitting=cell_splitting(args),
        amp=args.amp, winograd=not args.no_winograd)
    tile = min(s.tile_size for s in [segmenter] + segmenter.members)
    if args.overlap is not None and args.overlap >= tile:
        raise InputError(f"--overlap {args.overlap} must be smaller than the tile size {tile}")
    if args.export:
        for path in export_network(segmenter.net, segmenter.meta, args.export):
            print(path)
    return segmenter


def _segment_one(segmenter, args):
    """Segment the single image or TIFF stack ``--image``, score it against ``--mask``; prints
    the files written."""
    stack = is_stack(args.image)
    suffix = ".tif" if stack else ".png"
    mask_path = args.output or default_mask_path(args.image, suffix=suffix)
    if os.path.isdir(mask_path):
        mask_path = default_mask_path(args.image, mask_path, suffix)
    if stack and not mask_path.lower().endswith(TIFF_SUFFIXES):
        raise InputError(f"{mask_path}: the mask of a TIFF stack is a multi-page TIFF; give "
                         "--output a .tif name")
    folder = os.path.dirname(mask_path) or "."
    if args.mask:       # before any work: what would be scored, and what it would write over
        refuse_replacing_inputs(output_files(mask_path, args.overlay, args.probabilities, suffix)
                                + metrics_paths(folder), [args.image, args.mask])
        targets = read_mask_slices(args.mask, stack_shape(args.image), segmenter.encoding)
    segment = segment_stack if stack else segment_file
    predictions, written = segment(segmenter, args.image, mask_path, args.overlay,
                                   args.probabilities, progress=not args.no_progress)
    for path in written:
        print(path)
    if args.mask:
        stem = os.path.splitext(os.path.basename(args.image))[0]
        names = [f"{stem}[{z}]" for z in range(len(targets))] if stack else [stem]
        rows = [score_row(segmenter, name, prediction, target) for name, prediction, target
                in zip(names, predictions if stack else [predictions], targets)]
        _report(segmenter, args, folder, rows, len(rows))
    return 0


def _report(segmenter, args, folder, rows, num_images):
    """Write metrics.csv and metrics.json of ``rows`` (of ``num_images`` segmented) in
    ``folder``; print the table."""
    splitting = segmenter.cell_splitting
    checkpoints = [os.path.abspath(p) for p in args.network_param]
    info = {"checkpoint": checkpoints[0] if len(checkpoints) == 1 else checkpoints,
            "tta": args.tta, "num_images": num_images,
            "threshold": segmenter.threshold if segmenter.num_classes == 2 else None,
            "split_cells": splitting.to_dict() if splitting else None}
    paths = write_metrics(folder, rows, info)
    print(format_table(rows))
    print(f"metrics: {paths[0]} {paths[1]}")


def run(args):
    check_options(args)
    check_chunked_options(args)
    if is_chunked(args):
        return _segment_chunked(args)
    # Until the work on a folder starts (a single image: until it is done), a bad input is its
    # error line alone.
    with held_info_lines():
        segmenter = _load_segmenter(args)
        if args.image and os.path.isfile(args.image):
            return _segment_one(segmenter, args)    # short: held to its end
        if args.image:
            if not os.path.isdir(args.image):
                raise InputError(f"{args.image}: no such file or folder")
            samples = list_folder(args.image)
            output = args.output or os.path.normpath(args.image) + "_masks"
        elif args.data_dir:
            samples = list_dataset(args.data_dir, args.split)
            output = args.output or "predictions"
        else:
            return 0
        check_samples(samples, output, args.overlay, args.probabilities, segmenter.encoding)
    rows = segment_samples(segmenter, samples, output, args.overlay, args.probabilities,
                           progress=not args.no_progress, checked=True)
    print(f"{len(samples)} masks in {output}")
    if rows:
        _report(segmenter, args, output, rows, len(samples))
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.image or args.data_dir or args.export):
        parser.error("give --image, --data-dir or --export")
    setup_logging(args.verbose)
    return run_guarded(lambda: run(args))


def console_main():
    """``evaluate.py`` and ``unet-evaluate``: :func:`main`'s exit code, as the process's."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
