"""Dense, block-diagonal dense, RMSNorm and MLP blocks with DreamerV3's initialisation.

DreamerV3 initialises every weight from a truncated normal whose standard deviation is
1/sqrt(fan_in) (its `trunc_normal_in`), multiplies output layers by a per-head `outscale`
(0 for reward and value, 0.01 for the policy) and computes norms in float32.
"""
from __future__ import annotations

import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name


def dreamer_init(outscale: float = 1.0, batch_axis: tuple[int, ...] = ()) -> nn.initializers.Initializer:
    """Truncated-normal fan-in init (std 1/sqrt(fan_in)) times `outscale`; zeros when outscale is 0.

    `batch_axis` names leading axes of independent blocks, which must not count into fan_in.
    """
    if outscale == 0.0:
        return nn.initializers.zeros_init()
    return nn.initializers.variance_scaling(
        outscale**2, "fan_in", "truncated_normal", batch_axis=batch_axis
    )


def matmul_dtype(dtype: Any) -> Any:
    """The dtype `contract` multiplies in when computing in `dtype`: bfloat16 when `dtype` is, or
    when JAX's default matmul precision is "bfloat16" (`jax.default_matmul_precision`, which
    `DreamerConfig.matmul_precision` sets around the agent's functions); else `dtype`."""
    if jax.config.jax_default_matmul_precision == "bfloat16":
        return jnp.bfloat16
    return dtype


# The name of `contract`'s bfloat16 products for remat policies (`SAVE_MATMULS`).
CONTRACT_NAME = "wmjax_contract"
# A remat policy that saves every matmul's output, `contract`'s bfloat16 ones included.
SAVE_MATMULS = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_saveable,
    jax.checkpoint_policies.save_only_these_names(CONTRACT_NAME))


def contract(spec: str, a: jax.Array, b: jax.Array, dtype: Any) -> jax.Array:
    """`jnp.einsum(spec, a, b)` with the operands in `matmul_dtype(dtype)`, summed in float32 and
    returned in `dtype`. In float32 that is the plain einsum. bfloat16 operands take the CPU's
    fast path (a Xeon with AMX: 2,048-square matmuls at 1,231 GFLOP/s, against 238 with a
    bfloat16 result and 268 in float32) and their sums round once, not at every step; the
    gradient's two matmuls are given bfloat16 operands as well (`_bf16_contract`)."""
    if jnp.dtype(matmul_dtype(dtype)) != jnp.bfloat16:
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype),
                          preferred_element_type=jnp.float32).astype(dtype)
    spec = _explicit_spec(spec, a.ndim, b.ndim)
    out = _bf16_contract(spec, (jnp.dtype(a.dtype), jnp.dtype(b.dtype)), a, b)
    # A custom_vjp is no dot to a remat policy (`dots_saveable`): named, it can be saved as one.
    return checkpoint_name(out, CONTRACT_NAME).astype(dtype)


def bits_dtype(dtype: Any) -> Any:
    """The dtype an array of `dtype` is best moved around in on XLA's CPU backend: uint16 for
    bfloat16 (the same bits, `jax.lax.bitcast_convert_type`), else `dtype`. That backend
    concatenates bfloat16 arrays, and writes a slice into one, by converting all of them to
    float32 and back; on their bits both are plain copies."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.uint16) if dtype == jnp.bfloat16 else dtype


def concat_bits(parts: list[jax.Array], axis: int = -1) -> jax.Array:
    """`jnp.concatenate(parts, axis)`, for bfloat16 parts through their bits (`bits_dtype`)."""
    dtype = jnp.result_type(*parts)
    bits = bits_dtype(dtype)
    if bits == dtype:
        return jnp.concatenate(parts, axis)
    joined = jnp.concatenate([jax.lax.bitcast_convert_type(p.astype(dtype), bits)
                              for p in parts], axis)
    return jax.lax.bitcast_convert_type(joined, dtype)


def _explicit_spec(spec: str, a_ndim: int, b_ndim: int) -> tuple[str, str, str]:
    """`spec`'s operand and output subscripts with any `...` spelled out in unused letters (the
    ellipsis's axes aligned from the right, as numpy broadcasts), so that the gradient's
    products can be written by exchanging them."""
    inputs, out = spec.replace(" ", "").split("->")
    a, b = inputs.split(",")
    unused = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in spec]
    ranks = [n - len(t) + 3 for t, n in ((a, a_ndim), (b, b_ndim)) if "..." in t]
    width = max(ranks, default=0)
    fill = lambda t, n: t.replace("...", "".join(unused[width - (n - len(t) + 3):width]))
    a, b, out = fill(a, a_ndim), fill(b, b_ndim), out.replace("...", "".join(unused[:width]))
    for x, others in ((a, b + out), (b, a + out)):
        if not set(x) <= set(others):
            raise ValueError(f"contract: {spec!r} sums an index over one operand alone")
    return a, b, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _bf16_contract(spec, dtypes, a, b):
    """The product `spec` of `a` and `b` rounded to bfloat16, summed in float32. JAX would derive
    its gradient's matmuls from the float32 output gradient, which XLA then multiplies in
    float32 (off AMX); here they take the output gradient in bfloat16 too. `dtypes`: a's and
    b's own, for their gradients."""
    return _batched_matmul(*spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))


def _bf16_contract_fwd(spec, dtypes, a, b):
    return _bf16_contract(spec, dtypes, a, b), (a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))


def _bf16_contract_bwd(spec, dtypes, res, g):
    (sa, sb, so), (a, b), g = spec, res, g.astype(jnp.bfloat16)
    da, db = _batched_matmul(so, sb, sa, g, b), _batched_matmul(sa, so, sb, a, g)
    return da.astype(dtypes[0]), db.astype(dtypes[1])


_bf16_contract.defvjp(_bf16_contract_fwd, _bf16_contract_bwd)


def _batched_matmul(sx: str, sy: str, so: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """The einsum `sx,sy->so` summed in float32, written as one (batch, m, k) x (batch, k, n)
    matmul between transposes and reshapes. XLA's CPU backend runs low-precision dots in any
    other arrangement (e.g. a summed axis first) on a generic kernel that has no bfloat16 x
    bfloat16 -> float32 case and fails at run time. Of x @ y and (y @ x) transposed, the one
    that moves fewer elements is taken: a weight gradient over 16,384 imagined rows transposes
    the narrow output gradient, not the 640-wide features."""
    size = dict(zip(sx, x.shape)) | dict(zip(sy, y.shape))
    count = lambda cs: int(np.prod([size[c] for c in cs], dtype=np.int64))
    batch = [c for c in so if c in sx and c in sy]
    summed = [c for c in sx if c in sy and c not in so]

    def plan(sl, sr):  # the transposes for sl @ sr, and the elements they move
        free_l, free_r = [c for c in sl if c not in sr], [c for c in sr if c not in sl]
        order = batch + free_l + free_r
        perms = ([sl.index(c) for c in batch + free_l + summed],
                 [sr.index(c) for c in batch + summed + free_r],
                 [order.index(c) for c in so])
        moved = sum(n for p, n in zip(perms, (count(sl), count(sr), count(so))) if p != sorted(p))
        return moved, perms, (free_l, free_r, order)

    swap = plan(sy, sx)[0] < plan(sx, sy)[0]
    (l, sl), (r, sr) = ((y, sy), (x, sx)) if swap else ((x, sx), (y, sy))
    _, (perm_l, perm_r, perm_out), (free_l, free_r, order) = plan(sl, sr)
    # A transpose is copied behind a barrier, which keeps XLA from folding it into the dot.
    transposed = lambda a, perm: a if perm == sorted(perm) else jax.lax.optimization_barrier(
        a.transpose(perm))
    l = transposed(l, perm_l).reshape(count(batch), count(free_l), count(summed))
    r = transposed(r, perm_r).reshape(count(batch), count(summed), count(free_r))
    out = jax.lax.dot_general(l, r, (((2,), (1,)), ((0,), (0,))),
                              preferred_element_type=jnp.float32)
    out = out.reshape([size[c] for c in order])
    return out if perm_out == sorted(perm_out) else jax.lax.optimization_barrier(out).transpose(
        perm_out)


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: Any) -> jax.Array:
    """x @ kernel + bias in `dtype` (summed in float32, see `contract`), as one 2-D matmul over
    x's flattened leading axes: for inputs of rank 3 and more, the weight gradient XLA derives
    from a batched dot transposes the output gradient first (a copy, on CPU)."""
    y = contract("ni,io->no", x.reshape(-1, x.shape[-1]), kernel, dtype)
    return y.reshape(x.shape[:-1] + kernel.shape[-1:]) + bias.astype(dtype)


def shared_dense(x: jax.Array, layers: list[tuple[jax.Array, jax.Array]],
                 given: list[jax.Array | None] | None = None, dtype: Any = None) -> list[jax.Array]:
    """Several dense layers (kernel, bias) reading the same `x`, computed and differentiated as
    one: a single matmul for the outputs not `given`, a single one for all kernels' gradients
    and a single one for x's. On CPU the weight gradient of a narrow layer over many rows (a
    640 x 64 kernel over 17,408 imagined states) ran at a third of the matmul peak; two of them
    side by side as one matmul took 14.9 ms against 11.1 for one alone. A `given` output is
    one already computed from `x` with these parameters (e.g. inside a scan): it is used, not
    recomputed, and still differentiated as the layer. Computes in `dtype` (default x's): x
    may come in the matmul's operand dtype already (e.g. bfloat16 features) while the layers
    compute in float32."""
    given = [None] * len(layers) if given is None else list(given)
    if len(given) != len(layers):
        raise ValueError(f"shared_dense: {len(layers)} layers but {len(given)} given outputs")
    for (kernel, _), y in zip(layers, given):
        chex.assert_shape(kernel, (x.shape[-1], None))
        if y is not None:
            chex.assert_shape(y, x.shape[:-1] + kernel.shape[-1:])
    dtype = jnp.dtype(x.dtype if dtype is None else dtype)
    return list(_shared_dense(dtype, x, tuple(layers), tuple(given)))


def _split_columns(y: jax.Array, widths: list[int]) -> list[jax.Array]:
    return jnp.split(y, list(np.cumsum(widths)[:-1]), -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _shared_dense(dtype, x, layers, given):
    todo = [i for i, y in enumerate(given) if y is None]
    outs = [None if y is None else y.astype(dtype) for y in given]
    if todo:
        kernel = jnp.concatenate([layers[i][0] for i in todo], -1)
        bias = jnp.concatenate([layers[i][1] for i in todo], -1)
        y = dense(x, kernel, bias, dtype)
        for i, part in zip(todo, _split_columns(y, [layers[i][0].shape[-1] for i in todo])):
            outs[i] = part
    return tuple(outs)


def _shared_dense_fwd(dtype, x, layers, given):
    return _shared_dense(dtype, x, layers, given), (x, layers, given)


def _shared_dense_bwd(dtype, res, gs):
    x, layers, given = res
    g = jnp.concatenate(gs, -1).astype(dtype)
    g = g.reshape(-1, g.shape[-1])
    kernel = jnp.concatenate([k for k, _ in layers], -1)
    dx = contract("no,io->ni", g, kernel, dtype).reshape(x.shape).astype(x.dtype)
    dkernel = contract("ni,no->io", x.reshape(-1, x.shape[-1]), g, dtype)
    widths = [k.shape[-1] for k, _ in layers]
    dlayers = tuple((dk.astype(k.dtype), db.astype(b.dtype)) for (k, b), dk, db in
                    zip(layers, _split_columns(dkernel, widths), _split_columns(g.sum(0), widths)))
    dgiven = tuple(None if y is None else jnp.zeros_like(y) for y in given)
    return dx, dlayers, dgiven


_shared_dense.defvjp(_shared_dense_fwd, _shared_dense_bwd)


class Linear(nn.Module):
    """Dense layer computing in `dtype` with float32 parameters."""

    features: int
    outscale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", dreamer_init(self.outscale), (x.shape[-1], self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return dense(x, kernel, bias, self.dtype)


class RMSNorm(nn.Module):
    """RMS normalisation with a learnable scale, computed in float32 (eps 1e-4 as in DreamerV3)."""

    eps: float = 1e-4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        scale = self.param("scale", nn.initializers.ones_init(), (x.shape[-1],), jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + self.eps)
        return (x * scale).astype(dtype)


class NormAct(nn.Module):
    """Dense -> RMSNorm -> SiLU, the unit every DreamerV3 MLP is made of."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, dense_out: jax.Array | None = None) -> jax.Array:
        """`dense_out`: the dense layer's output from `x`, computed by the caller (who then
        also carries its gradient); the dense layer is then not applied."""
        if dense_out is None:
            dense_out = Linear(self.features, dtype=self.dtype)(x)
        return nn.silu(RMSNorm()(dense_out))


class MLP(nn.Module):
    """`layers` NormAct blocks of width `units`, optionally followed by a linear output layer."""

    layers: int
    units: int
    out: int | None = None
    outscale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, first: jax.Array | None = None) -> jax.Array:
        """`first`: the first dense layer's output from `x` with these parameters, computed by
        the caller, e.g. with `shared_dense` and `first_params`, which then carries that
        layer's gradient; the layer is then not applied here."""
        x = x.astype(self.dtype)
        if first is not None:
            if not self.layers and self.out is None:
                raise ValueError("MLP: `first` given to an MLP with no layers and no output layer")
            chex.assert_shape(first, x.shape[:-1] + (self.units if self.layers else self.out,))
            first = first.astype(self.dtype)
        for i in range(self.layers):
            x = NormAct(self.units, dtype=self.dtype)(x, first if i == 0 else None)
        if self.out is not None:
            if self.layers == 0 and first is not None:
                x = first
            else:
                x = Linear(self.out, outscale=self.outscale, dtype=self.dtype)(x)
        return x.astype(jnp.float32)

    def first_params(self, params: dict) -> tuple[jax.Array, jax.Array]:
        """The first dense layer's (kernel, bias) in this MLP's `params`."""
        layer = params["NormAct_0"]["Linear_0"] if self.layers else params["Linear_0"]
        return layer["kernel"], layer["bias"]

    def first_layer(self, params: dict, x: jax.Array) -> jax.Array:
        """The first dense layer's output from `x`, as `__call__` computes it."""
        return dense(x.astype(self.dtype), *self.first_params(params), self.dtype)


def _conv_nhwc(x: jax.Array, w: jax.Array, padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _same_pad(kernel_hw: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(k // 2, k // 2) for k in kernel_hw]


@jax.custom_vjp
def conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
    """Stride-1 'SAME' convolution of NHWC images with an odd HWIO kernel.

    Its gradients are written out as two more convolutions in the same NHWC/HWIO layout. What
    autodiff derives instead puts batch and feature axes in other places, and XLA's CPU backend
    runs such convolutions with a slow generic loop when they sit inside a `while` (the fused
    training loop's scan): a size1m update on 7x9x21 images took 461 ms there, 135 ms with these."""
    return _conv_nhwc(x, w, _same_pad(w.shape[:2]))


def _conv_same_fwd(x, w):
    return conv_same(x, w), (x, w)


def _conv_same_bwd(res, g):
    x, w = res
    pad = _same_pad(w.shape[:2])
    # d/dx: the output gradient convolved with the kernel flipped in space, in <-> out.
    dx = _conv_nhwc(g, jnp.flip(w, (0, 1)).swapaxes(2, 3), pad)
    # d/dw: a convolution over the batch, with input channels as the batch axis and the output
    # gradient as a kernel the size of the image: (I, H, W, N) * (H, W, N, O) -> (I, kh, kw, O).
    dw = _conv_nhwc(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), pad)
    return dx.astype(x.dtype), dw.transpose(1, 2, 0, 3).astype(w.dtype)


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


class Conv(nn.Module):
    """Stride-1 'SAME' convolution (odd kernel, 5x5 by default) of NHWC images in `dtype`, with
    DreamerV3's init and float32 parameters named as flax's `nn.Conv` names them (so checkpoints
    made with `nn.Conv` load); gradients through `conv_same`."""

    features: int
    kernel_size: tuple[int, int] = (5, 5)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"Conv: kernel_size {self.kernel_size}; allowed: odd sizes")
        kernel = self.param("kernel", dreamer_init(), (*self.kernel_size, x.shape[-1], self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        lead = x.shape[:-3]
        y = conv_same(x.reshape((-1,) + x.shape[-3:]).astype(self.dtype), kernel.astype(self.dtype))
        return (y + bias.astype(self.dtype)).reshape(lead + y.shape[-3:])
