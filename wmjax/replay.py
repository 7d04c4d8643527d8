"""On-device sequence replay: one ring buffer per environment, uniform windows.

Why our own and not flashbax: Dreamer needs exactly one thing — uniformly sampled windows of
`length` consecutive steps from one env's stream, which may cross episode boundaries (the RSSM
resets on `is_first`) but must never cross the ring's write head. With all envs stepping in lock
step this is a (num_envs, capacity) array per field, one write index, and a gather: about 40 lines
that jit, vmap over seeds and donate cleanly, with no version pin to track.

All functions are pure: `init` builds the empty state from one example record, `add` writes one
record per env, `sample` draws (batch, length) windows. A field may be stored in float16 or
bfloat16 (`init`'s example decides); `sample` returns it as float32.

DreamerV3's online queue (`init(..., online=True)`, then `sample_online`): every env's stream is
cut into consecutive non-overlapping windows as it is written, and each such window is served
once, oldest first, in the first rows of a batch before the rest of the batch is drawn
uniformly; so fresh data is trained on soon after it is collected, not only by chance. The queue
is two counters (records written per env, windows served), with no copy of the data.
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


class OnlineReplayState(NamedTuple):
    """A ReplayState with DreamerV3's online queue (see the module docstring). A separate type,
    so that a replay without the queue keeps ReplayState's layout (and its checkpoints)."""
    data: Any
    pos: jax.Array
    count: jax.Array
    written: jax.Array  # records ever written per env (count stops at capacity; this does not)
    served: jax.Array  # online windows served so far; window w is env w % E's (w // E)-th


def init(example: Any, num_envs: int, capacity: int, online: bool = False
         ) -> ReplayState | OnlineReplayState:
    """Empty buffer shaped after `example`, a pytree of one env's record; with `online`, with
    DreamerV3's online queue (sample it with `sample_online`)."""
    data = jax.tree.map(
        lambda x: jnp.zeros((num_envs, capacity) + jnp.shape(x), jnp.asarray(x).dtype), example
    )
    zero = jnp.zeros((), jnp.int32)
    return OnlineReplayState(data, zero, zero, zero, zero) if online else ReplayState(data, zero, zero)


def capacity(state: ReplayState | OnlineReplayState) -> int:
    return jax.tree.leaves(state.data)[0].shape[1]


def add(state: ReplayState | OnlineReplayState, record: Any) -> ReplayState | OnlineReplayState:
    """Write one record per env (leaves shaped (num_envs, ...)) at the write index."""
    chex.assert_trees_all_equal_structs(state.data, record)
    cap = capacity(state)
    data = jax.tree.map(lambda buf, x: buf.at[:, state.pos].set(x.astype(buf.dtype)), state.data, record)
    state = state._replace(data=data, pos=(state.pos + 1) % cap,
                           count=jnp.minimum(state.count + 1, cap))
    if isinstance(state, OnlineReplayState):
        state = state._replace(written=state.written + 1)
    return state


def can_sample(state: ReplayState | OnlineReplayState, length: int) -> jax.Array:
    return state.count >= length


def sample(state: ReplayState | OnlineReplayState, key: jax.Array, batch: int, length: int) -> Any:
    """`batch` windows of `length` consecutive records, uniform over envs and valid starts.

    Valid starts are those whose window lies inside the written data and does not pass the
    write head, so a window never mixes the oldest and the newest data. Leaves come out
    (batch, length, ...).
    """
    env, idx = _uniform_windows(state, key, batch, length)
    return _gather(state, env, idx)


def sample_online(state: OnlineReplayState, key: jax.Array, batch: int, length: int
                  ) -> tuple[Any, OnlineReplayState]:
    """`sample`, with the online queue served first: rows 0..n-1 of the batch are the oldest n
    complete windows not yet served (n at most `batch`), the other rows uniform windows. Returns
    the windows and the state with those n marked served. A window overwritten before it was
    served is skipped."""
    if not isinstance(state, OnlineReplayState):
        raise TypeError("sample_online needs a replay made with init(..., online=True)")
    num_envs, cap = _num_envs(state), capacity(state)
    complete = num_envs * (state.written // length)  # windows ready, over all envs
    first_kept = (state.written - state.count + length - 1) // length  # per env, not overwritten
    served = jnp.maximum(state.served, num_envs * first_kept)
    n = jnp.clip(complete - served, 0, batch)
    window = served + jnp.arange(batch)
    start = (window // num_envs) * length % cap  # where each window begins in the ring
    online_idx = (start[:, None] + jnp.arange(length)[None, :]) % cap
    env, idx = _uniform_windows(state, key, batch, length)
    online = jnp.arange(batch) < n
    env = jnp.where(online, window % num_envs, env)
    idx = jnp.where(online[:, None], online_idx, idx)
    return _gather(state, env, idx), state._replace(served=served + n)


def _num_envs(state: ReplayState | OnlineReplayState) -> int:
    return jax.tree.leaves(state.data)[0].shape[0]


def _uniform_windows(state, key: jax.Array, batch: int, length: int):
    """Env and ring indices, (batch,) and (batch, length), of uniform valid windows."""
    cap = capacity(state)
    key_env, key_start = jax.random.split(key)
    env = jax.random.randint(key_env, (batch,), 0, _num_envs(state))
    num_starts = jnp.maximum(state.count - length + 1, 1)
    offset = jax.random.randint(key_start, (batch,), 0, num_starts)
    oldest = (state.pos - state.count) % cap
    idx = (oldest + offset[:, None] + jnp.arange(length)[None, :]) % cap
    return env, idx


def _gather(state, env: jax.Array, idx: jax.Array) -> Any:
    return jax.tree.map(lambda buf: _widen(buf[env[:, None], idx]), state.data)


def _widen(x: jax.Array) -> jax.Array:
    """Fields stored in a 16-bit float (to halve replay's memory) come out as float32."""
    return x.astype(jnp.float32) if x.dtype in (jnp.float16, jnp.bfloat16) else x
