"""Encoder, decoder and output heads for vector observations (DreamerV3's MLP versions)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wmjax.nn.dists import symlog
from wmjax.nn.layers import MLP


class VectorEncoder(nn.Module):
    """symlog(obs) -> `layers` x `units` MLP (RMSNorm, SiLU)."""

    layers: int = 3
    units: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return MLP(self.layers, self.units, dtype=self.dtype)(symlog(obs.astype(jnp.float32)))


class VectorDecoder(nn.Module):
    """Features -> prediction of symlog(obs); trained with squared error summed over dims."""

    obs_size: int
    layers: int = 3
    units: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feat: jax.Array) -> jax.Array:
        return MLP(self.layers, self.units, out=self.obs_size, dtype=self.dtype)(feat)

    @staticmethod
    def loss(pred: jax.Array, obs: jax.Array) -> jax.Array:
        return jnp.square(pred - symlog(obs.astype(jnp.float32))).sum(-1)
