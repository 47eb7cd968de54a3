"""Model configuration: the one place where the network's defaults live.

Configuration flows one way: command line -> these dataclasses -> library functions. The model
config is stored in every checkpoint so that a network can be rebuilt from the checkpoint alone.
"""
from dataclasses import asdict, dataclass, fields

NORMS = ("layer", "batch")
UPSAMPLE_MODES = ("upsample", "transpose")
MAX_IMAGE_SIZE = 8192  # a training crop / inference tile side; far above what fits in memory


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a U-Net.

    The defaults reproduce the reference implementation (35,916,994 parameters at 3x512x512).

    Parameters
    ----------
    in_channels : int, default 3
        Channels of the input image.
    num_classes : int, default 2
        Output classes; the network returns ``(N, num_classes, H, W)`` scores.
    base_channels : int, default 64
        Channels of the first stage; each of the ``depth`` down-sampling stages doubles them.
    depth : int, default 4
        Number of 2x2 max-pooling stages; inputs must have H and W divisible by ``2**depth``.
    norm : {'layer', 'batch'}, default 'layer'
        ``'layer'`` is the reference's ``nn.LayerNorm()`` with its default axis, the last one:
        on NCHW it normalizes over the image *width*, so its parameters are ``2 x W`` and the model
        only accepts inputs of width ``image_size``. ``'batch'`` normalizes over channels and
        accepts any valid size.
    residual : bool, default True
        Residual 1x1 projection in every ``BaseConvBlock`` (the reference). False gives the
        paper's plain double convolution.
    dropout : float, default 0.0
        Dropout probability inside each ``BaseConvBlock``; 0 adds no Dropout block at all.
    upsample : {'upsample', 'transpose'}, default 'upsample'
        Decoder up-sampling: nearest up-sampling then a 3x3 convolution (the reference), or a
        2x2 ``Conv2DTranspose`` with stride 2.
    image_size : int, default 512
        Side of the square training input. A layer-norm model is bound to this width.
    """

    in_channels: int = 3
    num_classes: int = 2
    base_channels: int = 64
    depth: int = 4
    norm: str = "layer"
    residual: bool = True
    dropout: float = 0.0
    upsample: str = "upsample"
    image_size: int = 512

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raise ``ValueError`` naming the first bad value."""
        for name in ("in_channels", "num_classes", "base_channels", "depth", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if not isinstance(self.residual, bool):
            raise ValueError(f"residual must be True or False, got {self.residual!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be at most {MAX_IMAGE_SIZE}, got {self.image_size!r}")
        if self.depth > 10:
            raise ValueError(f"depth must be at most 10, got {self.depth!r}")
        if self.image_size % (2 ** self.depth):
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of 2**depth = {2 ** self.depth}; "
                f"nearest valid sizes: {nearest_valid_sizes(self.image_size, self.depth)}")

    @property
    def size_multiple(self):
        """H and W of an input must be multiples of this (``2**depth``)."""
        return 2 ** self.depth

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Build from a checkpoint's dict; raises ``ValueError`` on missing or unknown keys."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data))
        unknown = sorted(set(data) - names)
        if missing:
            raise ValueError(f"model config lacks {', '.join(missing)}")
        if unknown:
            raise ValueError(f"model config has unknown keys {', '.join(unknown)}")
        return cls(**data)

    def differences(self, other):
        """``['depth: 4 != 3', ...]`` for every field that differs from ``other``."""
        return [f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def nearest_valid_sizes(size, depth):
    """The multiples of ``2**depth`` just below and above ``size`` (below omitted if 0)."""
    multiple = 2 ** depth
    below = (size // multiple) * multiple
    above = below + multiple
    return [s for s in (below, above) if s > 0 and s != size]
