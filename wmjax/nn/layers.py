"""Dense, block-diagonal dense, RMSNorm and MLP blocks with DreamerV3's initialisation.

DreamerV3 initialises every weight from a truncated normal whose standard deviation is
1/sqrt(fan_in) (its `trunc_normal_in`), multiplies output layers by a per-head `outscale`
(0 for reward and value, 0.01 for the policy) and computes norms in float32.
"""
from __future__ import annotations

from typing import Any

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
        return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


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
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.silu(RMSNorm()(Linear(self.features, dtype=self.dtype)(x)))


class MLP(nn.Module):
    """`layers` NormAct blocks of width `units`, optionally followed by a linear output layer."""

    layers: int
    units: int
    out: int | None = None
    outscale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        for _ in range(self.layers):
            x = NormAct(self.units, dtype=self.dtype)(x)
        if self.out is not None:
            x = Linear(self.out, outscale=self.outscale, dtype=self.dtype)(x)
        return x.astype(jnp.float32)
