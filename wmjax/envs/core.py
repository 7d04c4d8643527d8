"""The environment protocol wmjax trains on, and the gymnax adapter.

Every env is stepped through `EnvAdapter.step(key, state, action) -> (state, Timestep)`, where a
`Timestep` carries what Dreamer stores: obs, reward, is_first, is_last, is_terminal. Episodes are
laid out the way DreamerV3's driver records them: after a step with is_last, the next call resets
the env (the action is ignored) and returns the first observation with is_first and reward 0. So an
episode of L transitions takes L + 1 records and the final observation is never lost, while
is_terminal (true termination only, not time-limit truncation) is what the continue head learns.

Actions: discrete envs take an int index; continuous envs take an array in [-1, 1] that the adapter
clips and rescales to the env's bounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp


class Timestep(NamedTuple):
    obs: jax.Array
    reward: jax.Array
    is_first: jax.Array
    is_last: jax.Array
    is_terminal: jax.Array


class EnvState(NamedTuple):
    inner: Any  # the wrapped env's state
    needs_reset: jax.Array  # the previous step ended the episode
    episode_return: jax.Array
    episode_length: jax.Array


@dataclass(frozen=True)
class EnvSpec:
    """What an agent needs to know about an env: observation shape and action space.

    `obs_shape` is (D,) for vectors (float32) or (H, W, C) for images (uint8); for dict
    observations pass a dict {key: shape} mixing both, kept as sorted (key, shape) pairs.
    """

    name: str
    obs_shape: Any  # (D,), (H, W, C), or ((key, shape), ...) for dict observations
    discrete: bool
    num_actions: int  # number of choices (discrete) or action dimensions (continuous)

    def __post_init__(self):
        if isinstance(self.obs_shape, dict):
            pairs = tuple(sorted((str(k), tuple(int(d) for d in v)) for k, v in self.obs_shape.items()))
            object.__setattr__(self, "obs_shape", pairs)
        shapes = self.obs_shapes.values() if self.is_dict else [self.obs_shape]
        bad = [s for s in shapes if len(s) not in (1, 3)]
        if bad or (self.is_dict and not self.obs_shape):
            raise ValueError(f"{self.name}: observation shape {self.obs_shape}; allowed: (D,) "
                             f"vectors, (H, W, C) images, or a non-empty dict of them")

    @property
    def is_dict(self) -> bool:
        return bool(self.obs_shape) and isinstance(self.obs_shape[0], tuple)

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        """{key: shape} of dict observations."""
        return dict(self.obs_shape) if self.is_dict else {}

    @property
    def obs_dtype(self):
        """uint8 for images, float32 for vectors; a dict of them for dict observations."""
        if self.is_dict:
            return {k: _dtype_of(s) for k, s in self.obs_shape}
        return _dtype_of(self.obs_shape)

    def zeros(self, lead: tuple[int, ...]) -> Any:
        """An all-zero observation with leading dims `lead`."""
        if self.is_dict:
            return {k: jnp.zeros(lead + s, _dtype_of(s)) for k, s in self.obs_shape}
        return jnp.zeros(lead + self.obs_shape, self.obs_dtype)

    def check_obs(self, obs: Any, lead: tuple[int, ...]) -> None:
        """Assert (at trace time) that `obs` has this spec's shapes after leading dims `lead`."""
        if self.is_dict:
            if not isinstance(obs, dict) or set(obs) != set(self.obs_shapes):
                got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
                raise AssertionError(f"observation keys {got}; expected {sorted(self.obs_shapes)}")
            for k, s in self.obs_shape:
                chex.assert_shape(obs[k], lead + s)
        else:
            chex.assert_shape(obs, lead + self.obs_shape)

    @property
    def action_size(self) -> int:
        """Width of the action vector the world model sees (one-hot for discrete)."""
        return self.num_actions


# Metrics key prefix of an env's per-episode statistics (EnvAdapter.episode_stats).
EPISODE_PREFIX = "episode/"


def _dtype_of(shape: tuple[int, ...]):
    return jnp.uint8 if len(shape) == 3 else jnp.float32


@dataclass(frozen=True)
class EnvAdapter:
    """Wraps a gymnax environment into the Dreamer record layout described in the module doc."""

    env: Any
    params: Any
    spec: EnvSpec
    action_low: Any = None
    action_high: Any = None

    def _obs(self, obs: Any) -> Any:
        """Vectors as float32; images as uint8 pixels (MinAtar's 0/1 channels become 0/255)."""
        if self.spec.is_dict:
            return {k: _convert(obs[k], _dtype_of(s)) for k, s in self.spec.obs_shape}
        return _convert(obs, self.spec.obs_dtype)

    def reset(self, key: jax.Array) -> tuple[EnvState, Timestep]:
        obs, inner = self.env.reset_env(key, self.params)
        zero = jnp.zeros((), jnp.float32)
        state = EnvState(strong_types(inner), jnp.zeros((), bool), zero, jnp.zeros((), jnp.int32))
        step = Timestep(self._obs(obs), zero, jnp.ones((), bool),
                        jnp.zeros((), bool), jnp.zeros((), bool))
        return state, step

    def _env_action(self, action: jax.Array) -> jax.Array:
        if self.spec.discrete:
            return action.astype(jnp.int32)
        a = jnp.clip(action, -1.0, 1.0)
        return self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)

    def transition(self, key: jax.Array, inner: Any, action: jax.Array):
        """One step of the wrapped env, no resets: (obs, inner, reward, terminated, truncated)."""
        obs, inner, reward, terminated, _ = self.env.step_env(
            key, inner, self._env_action(action), self.params
        )
        return obs, inner, reward, terminated, self.env.is_truncated(inner, self.params)

    def step(self, key: jax.Array, state: EnvState, action: jax.Array) -> tuple[EnvState, Timestep]:
        """Step one env (vmap for many). Resets instead if the previous step was the last."""
        key_step, key_reset = jax.random.split(key)
        stepped = self.transition(key_step, state.inner, action)
        return self.assemble(state, self.env.reset_env(key_reset, self.params), stepped)

    def assemble(self, state: EnvState, fresh: tuple, stepped: tuple) -> tuple[EnvState, Timestep]:
        """The record of one env: the fresh episode `(obs, inner)` if the previous step was the
        last, else the `transition` result."""
        obs_r, inner_r = fresh
        obs_s, inner_s, reward, terminated, truncated = stepped
        reset = state.needs_reset
        pick = lambda r, s: jax.tree.map(lambda a, b: jnp.where(reset, a, b), r, s)
        inner = pick(inner_r, inner_s)
        obs = self._obs(pick(obs_r, obs_s))
        reward = jnp.where(reset, 0.0, reward.astype(jnp.float32))
        terminated = jnp.logical_and(~reset, terminated.astype(bool))
        last = jnp.logical_and(~reset, jnp.logical_or(terminated, truncated.astype(bool)))
        ep_return = jnp.where(reset, 0.0, state.episode_return + reward)
        ep_length = jnp.where(reset, 0, state.episode_length + 1)
        new_state = EnvState(strong_types(inner), last, ep_return, ep_length)
        return new_state, Timestep(obs, reward, reset, last, terminated)

    # Batched entry points, used by the training loop and evaluation. An adapter whose reset is
    # expensive overrides `step_batch` (see envs/craftax.py: optimistic resets).
    def reset_batch(self, key: jax.Array, n: int) -> tuple[EnvState, Timestep]:
        return jax.vmap(self.reset)(jax.random.split(key, n))

    def step_batch(self, key: jax.Array, state: EnvState, action: jax.Array) -> tuple[EnvState, Timestep]:
        return jax.vmap(self.step)(jax.random.split(key, action.shape[0]), state, action)

    def episode_stats(self, inner: Any) -> dict[str, jax.Array]:
        """Scalars of one env's episode, read from its `inner` state after its last step; the
        loop logs their mean over the episodes that end in a chunk as EPISODE_PREFIX + name."""
        return {}

    def chunk_metrics(self, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Metrics derived from a chunk's metrics (inside the compiled program). None by default."""
        return {}


def strong_types(tree: Any) -> Any:
    """`tree` with no weakly typed leaves. gymnax and craftax fill some state fields from Python
    numbers (Freeway's `pos=9`), which JAX types weakly, while a step computes them strongly; a
    state whose types change from one chunk to the next compiles the chunk program twice."""
    def strong(x):  # jax.typeof: concrete PRNG key arrays (Craftax's) have no .weak_type
        x = jnp.asarray(x)
        return jax.lax.convert_element_type(x, x.dtype) if jax.typeof(x).weak_type else x
    return jax.tree.map(strong, tree)


def _convert(obs: jax.Array, dtype) -> jax.Array:
    if dtype == jnp.uint8 and obs.dtype != jnp.uint8:  # floats in [0, 1] -> pixels
        return jnp.round(jnp.clip(obs, 0.0, 1.0) * 255.0).astype(jnp.uint8)
    return obs.astype(dtype)


def _gymnax(name: str) -> EnvAdapter:
    import gymnax

    env, params = gymnax.make(name)
    obs_shape = tuple(int(d) for d in env.observation_space(params).shape)
    space = env.action_space(params)
    if hasattr(space, "n"):
        spec = EnvSpec(name, obs_shape, True, int(space.n))
        return EnvAdapter(env, params, spec)
    low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape)
    high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape)
    spec = EnvSpec(name, obs_shape, False, int(space.shape[0]))
    return EnvAdapter(env, params, spec, low, high)


@dataclass(frozen=True)
class FlatAdapter(EnvAdapter):
    """An image env whose frames reach the agent as one float32 vector of their cells.

    For MinAtar's 10x10xC frames of 0/1 channels: the world model reads and draws them with
    its MLP encoder and vector decoder (best with `vector_loss="bce"`), which see every cell
    on its own, where size1m's CNN pools 2x2 cells together before the RSSM sees them. (On
    Freeway it placed fewer cars than the CNN on new episodes: see benchmarks/README.md.)
    """

    def _obs(self, obs: Any) -> Any:
        return jnp.asarray(obs, jnp.float32).reshape(-1)


FLAT_SUFFIX = "-Flat"


def _gymnax_flat(name: str) -> EnvAdapter:
    base = _gymnax(name.removesuffix(FLAT_SUFFIX))
    spec = EnvSpec(name, (math.prod(base.spec.obs_shape),), base.spec.discrete, base.spec.num_actions)
    return FlatAdapter(base.env, base.params, spec)


def _craftax(name: str) -> EnvAdapter:
    from wmjax.envs.craftax import make_craftax

    return make_craftax(name)


# name -> factory. MinAtar games are gymnax's 10x10xC frames (channels 0/1, stored as uint8);
# their `-Flat` names give the same frames as one 0/1 float vector (FlatAdapter);
# Craftax-Classic needs the optional `craftax` package (see envs/craftax.py).
REGISTRY = {
    "CartPole-v1": _gymnax,
    "Acrobot-v1": _gymnax,
    "Pendulum-v1": _gymnax,
    "Breakout-MinAtar": _gymnax,
    "SpaceInvaders-MinAtar": _gymnax,
    "Asterix-MinAtar": _gymnax,
    "Freeway-MinAtar": _gymnax,
    "Breakout-MinAtar-Flat": _gymnax_flat,
    "SpaceInvaders-MinAtar-Flat": _gymnax_flat,
    "Asterix-MinAtar-Flat": _gymnax_flat,
    "Freeway-MinAtar-Flat": _gymnax_flat,
    "Craftax-Classic-Symbolic-v1": _craftax,
    "Craftax-Classic-Pixels-v1": _craftax,
    "Craftax-Classic-Symbolic-Grid-v1": _craftax,
}


# Env names stepped from Python by the host loop (wmjax/envs/gymnasium.py), not by make_env.
HOST_LOOP_PREFIXES = ("gymnasium:", "atari:", "dmc:")


def register_env(name: str, factory: Callable[[str], EnvAdapter]) -> None:
    """Make `make_env(name)` (and so `train`, sweeps, `load_policy`) build `factory(name)`: how
    your own env, e.g. one with dict observations, joins wmjax. Registering a known name again
    replaces it."""
    if not callable(factory):
        raise TypeError(f"register_env: factory for {name!r} must be callable, got {factory!r}")
    REGISTRY[name] = factory


def check_env_name(name: str) -> None:
    """Raise ValueError naming the known envs if `name` is not one of them (names
    `gymnasium:ID` are gymnasium envs for the host loop, checked when they are made)."""
    if name not in REGISTRY and not name.startswith(HOST_LOOP_PREFIXES):
        raise ValueError(f"unknown env {name!r}; known envs: {', '.join(sorted(REGISTRY))}; or, "
                         f"stepped by the host loop, gymnasium:ID, atari:GAME, dmc:DOMAIN-TASK")


def make_env(name: str) -> EnvAdapter:
    """Build an environment by name; an unknown name raises with the list of known ones."""
    check_env_name(name)
    return REGISTRY[name](name)
