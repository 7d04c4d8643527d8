"""DreamerV3's optimizer: per-tensor adaptive gradient clipping, then LaProp, then warm-up lr.

LaProp normalises the gradient by the RMS of past gradients first and applies momentum to the
normalised update second (Adam does the reverse); DreamerV3 uses eps 1e-20 outside the sqrt.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def clip_by_param_norm(ratio: float, floor: float = 1e-3) -> optax.GradientTransformation:
    """Scale each tensor's update so that its norm is at most ratio * max(floor, ||param||).

    This is DreamerV3's AGC; optax.adaptive_grad_clip differs (it clips per output unit).
    """

    def init_fn(params):
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("clip_by_param_norm needs params")

        def clip(g, p):
            limit = ratio * jnp.maximum(floor, jnp.linalg.norm(p.astype(jnp.float32)))
            norm = jnp.linalg.norm(g.astype(jnp.float32))
            return g * jnp.where(norm > limit, limit / jnp.maximum(norm, 1e-30), 1.0)

        return jax.tree.map(clip, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)


def dreamer_optimizer(
    lr: float, warmup: int, agc: float, beta1: float, beta2: float, eps: float
) -> optax.GradientTransformation:
    schedule = optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else lr
    return optax.chain(
        clip_by_param_norm(agc),
        optax.scale_by_rms(decay=beta2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        optax.ema(decay=beta1, debias=True),
        optax.scale_by_learning_rate(schedule),
    )
