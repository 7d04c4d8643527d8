"""On-device sequence replay: one ring buffer per environment, uniform windows.

Why our own and not flashbax: Dreamer needs exactly one thing — uniformly sampled windows of
`length` consecutive steps from one env's stream, which may cross episode boundaries (the RSSM
resets on `is_first`) but must never cross the ring's write head. With all envs stepping in lock
step this is a (num_envs, capacity) array per field, one write index, and a gather: about 40 lines
that jit, vmap over seeds and donate cleanly, with no version pin to track.

All functions are pure: `init` builds the empty state from one example record, `add` writes one
record per env, `sample` draws (batch, length) windows. A field may be stored in float16 or
bfloat16 (`init`'s example decides); `sample` returns it as float32.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp


class ReplayState(NamedTuple):
    data: Any  # pytree, every leaf (num_envs, capacity, ...)
    pos: jax.Array  # next write index along capacity
    count: jax.Array  # valid records per env (<= capacity)


def init(example: Any, num_envs: int, capacity: int) -> ReplayState:
    """Empty buffer shaped after `example`, a pytree of one env's record."""
    data = jax.tree.map(
        lambda x: jnp.zeros((num_envs, capacity) + jnp.shape(x), jnp.asarray(x).dtype), example
    )
    return ReplayState(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def capacity(state: ReplayState) -> int:
    return jax.tree.leaves(state.data)[0].shape[1]


def add(state: ReplayState, record: Any) -> ReplayState:
    """Write one record per env (leaves shaped (num_envs, ...)) at the write index."""
    chex.assert_trees_all_equal_structs(state.data, record)
    cap = capacity(state)
    data = jax.tree.map(lambda buf, x: buf.at[:, state.pos].set(x.astype(buf.dtype)), state.data, record)
    return ReplayState(data, (state.pos + 1) % cap, jnp.minimum(state.count + 1, cap))


def can_sample(state: ReplayState, length: int) -> jax.Array:
    return state.count >= length


def sample(state: ReplayState, key: jax.Array, batch: int, length: int) -> Any:
    """`batch` windows of `length` consecutive records, uniform over envs and valid starts.

    Valid starts are those whose window lies inside the written data and does not pass the
    write head, so a window never mixes the oldest and the newest data. Leaves come out
    (batch, length, ...).
    """
    cap = capacity(state)
    num_envs = jax.tree.leaves(state.data)[0].shape[0]
    key_env, key_start = jax.random.split(key)
    env = jax.random.randint(key_env, (batch,), 0, num_envs)
    num_starts = jnp.maximum(state.count - length + 1, 1)
    offset = jax.random.randint(key_start, (batch,), 0, num_starts)
    oldest = (state.pos - state.count) % cap
    idx = (oldest + offset[:, None] + jnp.arange(length)[None, :]) % cap
    return jax.tree.map(lambda buf: _widen(buf[env[:, None], idx]), state.data)


def _widen(x: jax.Array) -> jax.Array:
    """Fields stored in a 16-bit float (to halve replay's memory) come out as float32."""
    return x.astype(jnp.float32) if x.dtype in (jnp.float16, jnp.bfloat16) else x
