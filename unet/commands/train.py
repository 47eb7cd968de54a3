"""Train the U-Net on a dataset folder, or print its summary (``segmenter.py``, ``unet-train``).

    python segmenter.py --checkpoint-file ./unet_best.params          # train on ./dataset
    python segmenter.py --checkpoint=load --checkpoint-file ./unet_best.params   # resume
    python segmenter.py --summary --channels 3 --image-size 512      # the reference table
"""
import argparse
import sys

from unet.data.augment import GEOMETRIES
from unet.core.cli import OneLineParser, float_list, int_list, run_guarded, setup_logging
from unet.model.config import NORMS, UPSAMPLE_MODES, ModelConfig
from unet.training.losses import LOSSES
from unet.training.config import AMP_MODES, KVSTORES, LR_SCHEDULES, OPTIMIZERS, SELECT_BY, \
    TrainConfig


def build_parser():
    p = OneLineParser(description="Train a U-Net on DATA_DIR/{train,validate}/{image,mask}/*.png, "
                      "or print its summary. Defaults reproduce the reference model.")
    m = p.add_argument_group("model (the same flags describe the model for --summary)")
    m.add_argument("--summary", action="store_true",
                   help="print the network summary of the model the flags describe and exit")
    m.add_argument("--num-classes", type=int, default=2, help="output classes (default 2)")
    m.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="input channels; default: from the training images (3 for --summary)")
    m.add_argument("--image-size", type=int, default=512,
                   help="side of the square training crop and of the inference tiles; a layer-norm "
                        "model is bound to this width (default 512)")
    m.add_argument("--norm", choices=NORMS, default="layer",
                   help="normalization: 'layer' = the reference's LayerNorm over the width, "
                        "'batch' = BatchNorm over channels (default layer)")
    m.add_argument("--no-residual", action="store_true",
                   help="plain double convolution (the paper) instead of residual blocks")
    m.add_argument("--dropout", type=float, default=0.0,
                   help="dropout probability in every conv block; 0 adds none (default 0)")
    m.add_argument("--upsample", choices=UPSAMPLE_MODES, default="upsample",
                   help="decoder: nearest upsampling + 3x3 conv (reference) or Conv2DTranspose")
    m.add_argument("--base-channels", type=int, default=64, help="first-stage width (default 64)")
    m.add_argument("--depth", type=int, default=4, help="number of down-sampling stages (default 4)")

    d = p.add_argument_group("data")
    d.add_argument("--data-dir", default="./dataset",
                   help="dataset root with train/ and validate/ (default ./dataset)")
    d.add_argument("--demo", action="store_true",
                   help="first write the built-in synthetic EM dataset into --data-dir if it "
                        "holds no images")
    d.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    d.add_argument("--geometry", choices=GEOMETRIES, default="elastic",
                   help="geometric augmentation: 'lossless' = random crop, flips and 90-degree "
                        "turns, which resample nothing; 'affine' adds a rotation by up to 10 "
                        "degrees and a scale of 0.9-1.1 on half the crops; 'elastic' adds the "
                        "paper's elastic grid on half the crops too (default elastic)")
    d.add_argument("--num-workers", type=int, default=2,
                   help="loader worker processes; 0 loads in the main process (default 2)")
    d.add_argument("--epoch-size", type=int, default=None,
                   help="random crops per epoch (default: one per training image)")

    t = p.add_argument_group("training")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="the Gluon optimizer that updates the weights (default adam, as the "
                        "reference)")
    t.add_argument("--learning-rate", type=float, default=1e-3,
                   help="the optimizer's initial step size; --lr-schedule changes it per epoch "
                        "(default 0.001)")
    t.add_argument("--momentum", type=float, default=0.9, help="for sgd and nag (default 0.9)")
    t.add_argument("--wd", type=float, default=0.0, help="weight decay (default 0)")
    t.add_argument("--lr-decay", type=float, default=0.1,
                   help="learning-rate factor at each --lr-decay-epoch (default 0.1)")
    t.add_argument("--lr-decay-epoch", type=int_list, default=(),
                   help="comma list of epochs at which to decay, e.g. '5,10,15' (default none)")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="step",
                   help="step: multiply by --lr-decay at each --lr-decay-epoch (default; the "
                        "reference's); cosine: anneal from --learning-rate towards 0 over "
                        "--num-epochs (half a cosine, per epoch; with --time-limit, set "
                        "--num-epochs to the epochs that fit)")
    t.add_argument("--batch-size", type=int, default=2,
                   help="crops per training step, split over the devices (at least one each); "
                        "also the tiles per pass at validation (default 2)")
    t.add_argument("--num-epochs", type=int, default=50,
                   help="epochs to train, counted from the first when resuming; each ends with "
                        "validation and a checkpoint (default 50)")
    t.add_argument("--loss", choices=LOSSES, default="ce",
                   help="softmax cross-entropy, soft Dice, or their sum (default ce)")
    t.add_argument("--class-weights", type=float_list, default=None,
                   help="comma list, one weight per class, multiplying the cross-entropy")
    t.add_argument("--weight-map", action="store_true",
                   help="the paper's border weight map, to separate touching cells")
    t.add_argument("--w0", type=float, default=10.0, help="weight-map border weight (default 10)")
    t.add_argument("--sigma", type=float, default=5.0,
                   help="weight-map border width in pixels (default 5)")
    t.add_argument("--boundary-weight", type=float, default=0.0,
                   help="extra loss weight on the pixels at every class boundary, on both "
                        "sides, falling off over --boundary-sigma pixels; added to the weights "
                        "(ones, or the --weight-map) (not the reference's; default 0: off)")
    t.add_argument("--boundary-sigma", type=float, default=2.0,
                   help="width of the boundary band in pixels (default 2)")
    t.add_argument("--distance-weight", type=float, default=0.0,
                   help="add this times a regression of the score margin (class 1 minus class "
                        "0) on the signed distance to the class boundary, +d pixels inside class "
                        "1, -d inside class 0 (Huber loss; two classes only) (not the "
                        "reference's; default 0: off)")
    t.add_argument("--distance-clip", type=int, default=8,
                   help="the distance target's ceiling in pixels (default 8)")
    t.add_argument("--amp", choices=AMP_MODES, default="fp32",
                   help="mixed precision, float32 master weights: bf16 on CPUs with "
                        "avx512_bf16 (no loss scaling; the convolutions then run in bfloat16 on "
                        "MXNet's kernels: about as fast as the fp32 default with its Winograd "
                        "kernel, 0.5-0.6x the fp32 step time without it), fp16 on GPUs (with "
                        "AMP's dynamic loss scaling) (default fp32)")
    t.add_argument("--fast-norm", action="store_true",
                   help="where the compiled layer-norm kernel is not available (no C++ "
                        "compiler; GPUs), a layer norm with a faster backward pass made of GEMV "
                        "products: the same function and checkpoints, about 10%% faster training "
                        "steps, more memory. On CPUs the compiled kernel (unet/model/native, built on "
                        "first use; UNET_NATIVE=0 turns it off) is used either way and is faster")
    t.add_argument("--no-winograd", action="store_true",
                   help="fp32 on CPUs: train with MXNet's own 3x3 convolutions instead of the "
                        "compiled Winograd kernel (unet/model/native, built on first use against the "
                        "onednn-cpu-gomp wheel; about 0.5x the step time of the default model, "
                        "the same function up to float rounding). With --amp bf16 MXNet's "
                        "convolutions run in bfloat16 either way")
    t.add_argument("--recompute", action="store_true",
                   help="keep only a few activations and recompute the rest during backward: "
                        "less training memory than the mirrored default, for more time "
                        "(default model at 512x512: 3.3 GB at 2.6x the step time of "
                        "--no-mirror's 5.3 GB, measured before mirroring was the default; with "
                        "--no-winograd 2.6 GB); fp32 only, not with --dropout")
    t.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the convolutions' outputs and recompute the cheap ops "
                        "(normalization, activation, pooling, concatenation) during backward, "
                        "on MXNet's graph executor with one memory plan for forward and backward "
                        "(unet/training/mirror.py): the same gradients in less memory (default "
                        "model at 512x512: 3.6 instead of 5.2 GB) for 5-30%% more step time; "
                        "not the reference's. Default: on for CPU training in fp32 without "
                        "--recompute (not yet on GPUs); --no-mirror trains on the hybridized "
                        "block's static memory plan, as the reference does")
    t.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep an exponential moving average of the weights, moving by 1 - DECAY "
                        "toward them at every update (e.g. 0.99: about the last 100 updates); "
                        "validation and the best checkpoint use the average, training goes on "
                        "from the raw weights, and the last checkpoint carries both (not the "
                        "reference's; default 0: off)")
    t.add_argument("--select-by", choices=SELECT_BY, default="dice",
                   help="the validation score whose best epoch is kept as the best checkpoint: "
                        "dice (the reference's), v_rand or v_info (the ISBI 2012 challenge's "
                        "adapted Rand and information F-scores of the cells after border "
                        "thinning, averaged over the validation images; two classes only) "
                        "(default dice)")
    t.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop before an epoch that would end after this many minutes (default: none)")
    t.add_argument("--seed", type=int, default=0, help="seed of every random generator (default 0)")
    t.add_argument("--gpu-id", type=int_list, default=(),
                   help="comma list of GPUs, e.g. '0,1'; the CPU when absent")
    t.add_argument("--cpu-contexts", type=int, default=1,
                   help="split each batch over this many CPU contexts (the multi-device path "
                        "without GPUs; default 1)")
    t.add_argument("--kvstore", choices=KVSTORES, default="device",
                   help="gradient reduction; dist_* need python -m unet.launch (default device)")

    c = p.add_argument_group("checkpoints and logs")
    c.add_argument("--checkpoint", choices=("new", "load"), default="new",
                   help="'new' starts from scratch, 'load' resumes from the last checkpoint "
                        "(default new)")
    c.add_argument("--checkpoint-file", default="./unet_best.params",
                   help="best checkpoint; the last one is written beside it as NAME-last.params "
                        "(default ./unet_best.params)")
    c.add_argument("--log-dir", default="./logs",
                   help="TensorBoard folder; each run writes a subfolder (default ./logs)")
    c.add_argument("--log-images", type=int, default=3,
                   help="validation panels logged per epoch (default 3)")
    c.add_argument("--no-histograms", action="store_true",
                   help="skip weight and gradient histograms")
    c.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def model_config(args, channels):
    return ModelConfig(in_channels=channels, num_classes=args.num_classes,
                       base_channels=args.base_channels, depth=args.depth, norm=args.norm,
                       residual=not args.no_residual, dropout=args.dropout,
                       upsample=args.upsample, image_size=args.image_size)


def print_summary(config):
    import mxnet as mx
    from unet.model.network import build_unet, initializer
    net = build_unet(config)
    net.initialize(initializer())
    net.summary(mx.nd.ones((1, config.in_channels, config.image_size, config.image_size)))


def train_config(args):
    return TrainConfig(
        model=model_config(args, args.channels or 3), channels=args.channels,
        data_dir=args.data_dir, checkpoint_file=args.checkpoint_file, checkpoint=args.checkpoint,
        log_dir=args.log_dir, optimizer=args.optimizer, learning_rate=args.learning_rate,
        momentum=args.momentum, weight_decay=args.wd, lr_decay=args.lr_decay,
        lr_decay_epoch=args.lr_decay_epoch, lr_schedule=args.lr_schedule,
        batch_size=args.batch_size, num_epochs=args.num_epochs, epoch_size=args.epoch_size,
        seed=args.seed, gpu_ids=args.gpu_id, cpu_contexts=args.cpu_contexts, kvstore=args.kvstore,
        loss=args.loss, class_weights=args.class_weights, weight_map=args.weight_map,
        w0=args.w0, sigma=args.sigma, boundary_weight=args.boundary_weight,
        boundary_sigma=args.boundary_sigma, distance_weight=args.distance_weight,
        distance_clip=args.distance_clip, augment=not args.no_augment,
        geometry=args.geometry,
        num_workers=args.num_workers, amp=args.amp, fast_norm=args.fast_norm,
        winograd=not args.no_winograd, recompute=args.recompute, mirror=args.mirror,
        log_images=args.log_images,
        histograms=not args.no_histograms, time_limit=args.time_limit,
        select_by=args.select_by, ema=args.ema)


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body():
        if args.summary:
            print_summary(model_config(args, args.channels or 3))
            return 0
        config = train_config(args)
        if args.demo:
            from unet.data.demo import dataset_is_empty, generate_demo_dataset
            if dataset_is_empty(config.data_dir):
                generate_demo_dataset(config.data_dir)
        from unet.training.loop import train
        meta = train(config)
        if meta is not None:
            print(f"best validation {config.select_by} {meta['best_score']:.4f} "
                  f"(epoch {meta['best_epoch']}); "
                  f"best checkpoint: {config.checkpoint_file}")
        return 0

    return run_guarded(body)


def console_main():
    """``segmenter.py`` and ``unet-train``: :func:`main`'s exit code, as the process's."""
    code = main()
    from unet.cluster.distributed import hard_exit, in_cluster
    if code and in_cluster():
        hard_exit(code)     # a failed cluster worker would otherwise wait in ps-lite forever
    sys.exit(code)


if __name__ == "__main__":
    console_main()
