"""Training configuration: command line -> :class:`TrainConfig` -> :func:`unet.training.loop.train`."""
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..data.augment import GEOMETRIES
from ..model.config import ModelConfig
from .losses import LOSSES, check_distance_term

OPTIMIZERS = ("sgd", "nag", "adam", "rmsprop", "adagrad", "adadelta")
AMP_MODES = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("step", "cosine")
KVSTORES = ("device", "local", "dist_sync", "dist_async", "dist_sync_device")
#: Validation scores that can choose the best checkpoint (all: higher is better).
SELECT_BY = ("dice", "v_rand", "v_info")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data itself.

    ``model.in_channels`` is replaced by the data's channel count unless ``channels`` is given.
    Defaults: Adam at 1e-3 (no decay: ``lr_schedule`` 'step' with no ``lr_decay_epoch``), batch 2,
    50 epochs, softmax cross-entropy, augmentation on (geometry 'elastic'), 2 loader workers, fp32,
    no recomputation, the CPU, no time limit (``time_limit`` in minutes: no epoch starts that would
    be expected to end past it). ``mirror``: the steps on MXNet's graph executor with the cheap ops
    recomputed in backward (:mod:`unet.training.mirror`); default None: on for CPU training in
    fp32 without ``recompute``, the same gradients as the hybridized block's step in less
    memory; False: the hybridized block's step (static CachedOp), as the reference. ``winograd``: in fp32 on CPUs, the 3x3 convolutions on the
    compiled Winograd kernel (:mod:`unet.model.winograd`) where it is available. ``select_by``:
    the validation score whose best epoch is the best checkpoint, one of :data:`SELECT_BY`
    (default 'dice', the reference's; 'v_rand' and 'v_info', the ISBI 2012 challenge's scores
    after border thinning, need two classes). ``ema``: the decay per update of a moving average of
    the weights that validation and the best checkpoint use (:mod:`unet.training.ema`; default
    0.0: off, the reference's).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    channels: Optional[int] = None
    data_dir: str = "./dataset"
    checkpoint_file: str = "./unet_best.params"
    checkpoint: str = "new"
    log_dir: str = "./logs"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_decay: float = 0.1
    lr_decay_epoch: Tuple[int, ...] = ()
    lr_schedule: str = "step"
    batch_size: int = 2
    num_epochs: int = 50
    epoch_size: Optional[int] = None
    seed: int = 0
    gpu_ids: Tuple[int, ...] = ()
    cpu_contexts: int = 1
    kvstore: str = "device"
    loss: str = "ce"
    class_weights: Optional[Tuple[float, ...]] = None
    weight_map: bool = False
    w0: float = 10.0
    sigma: float = 5.0
    boundary_weight: float = 0.0
    boundary_sigma: float = 2.0
    distance_weight: float = 0.0
    distance_clip: int = 8
    augment: bool = True
    geometry: str = "elastic"
    num_workers: int = 2
    amp: str = "fp32"
    fast_norm: bool = False
    winograd: bool = True
    recompute: bool = False
    mirror: Optional[bool] = None
    log_images: int = 3
    histograms: bool = True
    time_limit: Optional[float] = None
    select_by: str = "dice"
    ema: float = 0.0

    def __post_init__(self):
        if self.mirror is None:
            # Not yet on GPUs: the mirrored executor has run on CPU contexts only.
            self.mirror = self.amp == "fp32" and not self.recompute and not self.gpu_ids
        self.validate()

    def validate(self):
        """Raise ``ValueError`` naming the first bad value."""
        checks = [
            (self.checkpoint in ("new", "load"), "checkpoint must be 'new' or 'load'", self.checkpoint),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}", self.optimizer),
            (self.learning_rate > 0, "learning-rate must be positive", self.learning_rate),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)", self.momentum),
            (self.weight_decay >= 0, "weight decay must be >= 0", self.weight_decay),
            (0 < self.lr_decay <= 1, "lr-decay must be in (0, 1]", self.lr_decay),
            (all(e > 0 for e in self.lr_decay_epoch), "lr-decay-epoch must be positive epochs",
             self.lr_decay_epoch),
            (self.lr_schedule in LR_SCHEDULES, f"lr-schedule must be one of {LR_SCHEDULES}",
             self.lr_schedule),
            (self.lr_schedule == "step" or not self.lr_decay_epoch, "lr-decay-epoch is for "
             "--lr-schedule step; the cosine schedule has no decay epochs", self.lr_decay_epoch),
            (self.batch_size >= 1, "batch-size must be >= 1", self.batch_size),
            (self.num_epochs >= 1, "num-epochs must be >= 1", self.num_epochs),
            (self.epoch_size is None or self.epoch_size >= 1, "epoch-size must be >= 1",
             self.epoch_size),
            (self.cpu_contexts >= 1, "cpu-contexts must be >= 1", self.cpu_contexts),
            (self.batch_size >= (len(self.gpu_ids) or self.cpu_contexts), "batch-size must be at "
             "least the number of devices it is split over (--gpu-id, --cpu-contexts)",
             self.batch_size),
            (self.kvstore in KVSTORES, f"kvstore must be one of {KVSTORES}", self.kvstore),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}", self.loss),
            (self.class_weights is None or (len(self.class_weights) == self.model.num_classes
                                            and all(w >= 0 for w in self.class_weights)
                                            and any(w > 0 for w in self.class_weights)),
             f"class-weights needs {self.model.num_classes} non-negative values, not all 0",
             self.class_weights),
            (self.w0 >= 0 and self.sigma > 0, "weight map needs w0 >= 0 and sigma > 0",
             (self.w0, self.sigma)),
            (self.boundary_weight >= 0 and self.boundary_sigma > 0, "boundary band needs "
             "boundary-weight >= 0 and boundary-sigma > 0",
             (self.boundary_weight, self.boundary_sigma)),
            (self.geometry in GEOMETRIES, f"geometry must be one of {GEOMETRIES}", self.geometry),
            (self.num_workers >= 0, "num-workers must be >= 0", self.num_workers),
            (self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}", self.amp),
            (self.amp != "fp16" or self.gpu_ids, "amp fp16 needs a GPU (--gpu-id); use bf16 on "
             "a CPU", self.amp),
            (not (self.recompute and self.model.dropout > 0), "recompute cannot train a model "
             "with dropout: the recomputed pass would draw another dropout mask",
             self.model.dropout),
            (not (self.recompute and self.amp != "fp32"), "recompute runs in fp32 only (with "
             "mixed precision MXNet 1.9.1 fails the recomputed backward: 'Backward shape "
             "inconsistent')", self.amp),
            (not (self.mirror and self.recompute), "mirror and recompute are two ways to "
             "recompute in backward: choose one", self.mirror),
            (not (self.mirror and self.amp != "fp32"), "mirror runs in fp32 only (its executor "
             "takes no mixed-precision graph)", self.amp),
            (self.channels is None or self.channels in (1, 3), "channels must be 1 or 3",
             self.channels),
            (0.0 <= self.ema < 1.0, "ema must be in [0, 1) (0: off)", self.ema),
            (not (self.ema and self.kvstore == "dist_async"), "ema keeps the averages in the "
             "optimizer state of each worker; dist_async updates on the servers", self.kvstore),
            (self.select_by in SELECT_BY, f"select-by must be one of {SELECT_BY}",
             self.select_by),
            (self.select_by == "dice" or self.model.num_classes == 2, "select-by v_rand and "
             "v_info score the cells of a two-class model", self.select_by),
            (self.log_images >= 0, "log-images must be >= 0", self.log_images),
            (self.time_limit is None or self.time_limit > 0, "time-limit must be positive minutes",
             self.time_limit),
        ]
        for ok, message, value in checks:
            if not ok:
                raise ValueError(f"{message}, got {value!r}")
        check_distance_term(self.distance_weight, self.distance_clip, self.model.num_classes)

    def learning_rate_at(self, epoch):
        """Learning rate of 0-based ``epoch``.

        'step': ``learning_rate`` times ``lr_decay`` once for every decay epoch <= ``epoch``.
        'cosine': ``learning_rate * (1 + cos(pi * epoch / num_epochs)) / 2``, from the full rate at
        epoch 0 towards zero after the last epoch (not the reference's; SGDR without restarts).
        """
        if self.lr_schedule == "cosine":
            return self.learning_rate * (1 + math.cos(math.pi * epoch / self.num_epochs)) / 2
        decays = sum(1 for e in self.lr_decay_epoch if e <= epoch)
        return self.learning_rate * self.lr_decay ** decays

    def optimizer_params(self):
        params = {"learning_rate": self.learning_rate, "wd": self.weight_decay}
        if self.optimizer in ("sgd", "nag"):
            params["momentum"] = self.momentum
        return params
