"""Dense, block-diagonal dense, RMSNorm and MLP blocks with DreamerV3's initialisation.

DreamerV3 initialises every weight from a truncated normal whose standard deviation is
1/sqrt(fan_in) (its `trunc_normal_in`), multiplies output layers by a per-head `outscale`
(0 for reward and value, 0.01 for the policy) and computes norms in float32.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


def dreamer_init(outscale: float = 1.0, batch_axis: tuple[int, ...] = ()) -> nn.initializers.Initializer:
    """Truncated-normal fan-in init (std 1/sqrt(fan_in)) times `outscale`; zeros when outscale is 0.

    `batch_axis` names leading axes of independent blocks, which must not count into fan_in.
    """
    if outscale == 0.0:
        return nn.initializers.zeros_init()
    return nn.initializers.variance_scaling(
        outscale**2, "fan_in", "truncated_normal", batch_axis=batch_axis
    )


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: Any) -> jax.Array:
    """x @ kernel + bias in `dtype`, as one 2-D matmul over x's flattened leading axes: for
    inputs of rank 3 and more, the weight gradient XLA derives from a batched dot transposes
    the output gradient first (a copy, on CPU)."""
    y = x.reshape(-1, x.shape[-1]).astype(dtype) @ kernel.astype(dtype)
    return y.reshape(x.shape[:-1] + kernel.shape[-1:]) + bias.astype(dtype)


@jax.custom_vjp
def dense_given(y: jax.Array, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """`y`, already computed as `dense(x, kernel, bias)` (e.g. inside a scan with the same
    parameters), differentiated as that layer: kernel and bias get their gradients from x, x
    gets its gradient through the kernel, and `y` itself is taken as a constant. Saves the
    layer's forward matmul where only its gradient is still needed."""
    return y


def _dense_given_fwd(y, x, kernel, bias):
    return y, (x, kernel, bias)


def _dense_given_bwd(res, g):
    x, kernel, bias = res
    g2 = g.reshape(-1, g.shape[-1])
    dx = (g2 @ kernel.T.astype(g.dtype)).reshape(x.shape).astype(x.dtype)
    dkernel = (x.reshape(-1, x.shape[-1]).astype(g.dtype).T @ g2).astype(kernel.dtype)
    return jnp.zeros_like(g), dx, dkernel, g2.sum(0).astype(bias.dtype)


dense_given.defvjp(_dense_given_fwd, _dense_given_bwd)


class Linear(nn.Module):
    """Dense layer computing in `dtype` with float32 parameters. `given` is its output already
    computed from `x` with these parameters (`dense_given`): used, not recomputed."""

    features: int
    outscale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, given: jax.Array | None = None) -> jax.Array:
        kernel = self.param(
            "kernel", dreamer_init(self.outscale), (x.shape[-1], self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        if given is not None:
            chex.assert_shape(given, x.shape[:-1] + (self.features,))
            return dense_given(given.astype(self.dtype), x.astype(self.dtype), kernel, bias)
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
    def __call__(self, x: jax.Array, given: jax.Array | None = None) -> jax.Array:
        """`given`: the dense layer's output, already computed (see `Linear`)."""
        return nn.silu(RMSNorm()(Linear(self.features, dtype=self.dtype)(x, given)))


class MLP(nn.Module):
    """`layers` NormAct blocks of width `units`, optionally followed by a linear output layer."""

    layers: int
    units: int
    out: int | None = None
    outscale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, first: jax.Array | None = None) -> jax.Array:
        """`first`: the first dense layer's output from `x`, already computed with these
        parameters (`first_layer`); it is used instead of recomputing that matmul, and the
        gradients are the same."""
        x = x.astype(self.dtype)
        for i in range(self.layers):
            x = NormAct(self.units, dtype=self.dtype)(x, first if i == 0 else None)
        if self.out is not None:
            given = first if self.layers == 0 else None
            x = Linear(self.out, outscale=self.outscale, dtype=self.dtype)(x, given)
        return x.astype(jnp.float32)

    def first_layer(self, params: dict, x: jax.Array) -> jax.Array:
        """The first dense layer's output from `x`, read from this MLP's `params` without
        applying the module (so a scan can emit it for a later `__call__(x, first=...)`)."""
        layer = params["NormAct_0"]["Linear_0"] if self.layers else params["Linear_0"]
        return dense(x.astype(self.dtype), layer["kernel"], layer["bias"], self.dtype)


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
