"""Return estimation and return normalisation for DreamerV3's actor-critic."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def lambda_return(
    last: jax.Array, term: jax.Array, rew: jax.Array, boot: jax.Array, disc: float, lam: float,
    axis: int = 1,
) -> jax.Array:
    """TD(lambda) returns along `axis` (time), as DreamerV3 computes them.

    Inputs are (B, T), or (T, B) with axis=0; shown here for axis=1. rew[:, t] is the reward
    for arriving at step t; term marks terminal steps (no bootstrapping past them); last marks
    episode ends (the recursion restarts from `boot` there). Returns R[:, t] for t < T-1:
        R_t = r_{t+1} + live_{t+1} * ((1 - c_{t+1}) * boot_{t+1} + c_{t+1} * R_{t+1}),
    with live = (1 - term) * disc, c = (1 - last) * lam and R_{T-1} = boot_{T-1}.
    """
    last, term, rew, boot = (jnp.moveaxis(x, axis, 0) for x in (last, term, rew, boot))
    live = (1.0 - term.astype(jnp.float32))[1:] * disc
    cont = (1.0 - last.astype(jnp.float32))[1:] * lam
    interm = rew[1:] + (1.0 - cont) * live * boot[1:]

    def step(ret, x):
        interm_t, live_t, cont_t = x
        ret = interm_t + live_t * cont_t * ret
        return ret, ret

    _, rets = jax.lax.scan(step, boot[-1], (interm, live, cont), reverse=True)
    return jnp.moveaxis(rets, 0, axis)


class RetNormState(NamedTuple):
    """EMAs of the low and high percentiles of lambda-returns."""

    low: jax.Array
    high: jax.Array

    @classmethod
    def create(cls) -> "RetNormState":
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def retnorm_update(
    state: RetNormState, ret: jax.Array, rate: float, low_q: float, high_q: float
) -> RetNormState:
    low = jnp.percentile(ret, low_q)
    high = jnp.percentile(ret, high_q)
    return RetNormState(
        (1.0 - rate) * state.low + rate * low, (1.0 - rate) * state.high + rate * high
    )


def retnorm_scale(state: RetNormState, limit: float) -> jax.Array:
    """max(limit, P_high - P_low): returns are divided by it, so small returns are not blown up."""
    return jnp.maximum(limit, state.high - state.low)
