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

from dataclasses import dataclass
from typing import Any, NamedTuple

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
    """What an agent needs to know about an env: observation shape and action space."""

    name: str
    obs_shape: tuple[int, ...]  # (D,) vectors, float32; or (H, W, C) images, uint8
    discrete: bool
    num_actions: int  # number of choices (discrete) or action dimensions (continuous)

    @property
    def obs_dtype(self):
        return jnp.uint8 if len(self.obs_shape) == 3 else jnp.float32

    @property
    def action_size(self) -> int:
        """Width of the action vector the world model sees (one-hot for discrete)."""
        return self.num_actions


@dataclass(frozen=True)
class EnvAdapter:
    """Wraps a gymnax environment into the Dreamer record layout described in the module doc."""

    env: Any
    params: Any
    spec: EnvSpec
    action_low: Any = None
    action_high: Any = None

    def _obs(self, obs: jax.Array) -> jax.Array:
        """Vectors as float32; images as uint8 pixels (MinAtar's 0/1 channels become 0/255)."""
        if self.spec.obs_dtype == jnp.uint8 and obs.dtype != jnp.uint8:
            return jnp.round(jnp.clip(obs, 0.0, 1.0) * 255.0).astype(jnp.uint8)
        return obs.astype(self.spec.obs_dtype)

    def reset(self, key: jax.Array) -> tuple[EnvState, Timestep]:
        obs, inner = self.env.reset_env(key, self.params)
        zero = jnp.zeros((), jnp.float32)
        state = EnvState(inner, jnp.zeros((), bool), zero, jnp.zeros((), jnp.int32))
        step = Timestep(self._obs(obs), zero, jnp.ones((), bool),
                        jnp.zeros((), bool), jnp.zeros((), bool))
        return state, step

    def _env_action(self, action: jax.Array) -> jax.Array:
        if self.spec.discrete:
            return action.astype(jnp.int32)
        a = jnp.clip(action, -1.0, 1.0)
        return self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)

    def step(self, key: jax.Array, state: EnvState, action: jax.Array) -> tuple[EnvState, Timestep]:
        """Step one env (vmap for many). Resets instead if the previous step was the last."""
        key_step, key_reset = jax.random.split(key)
        obs_s, inner_s, reward, terminated, _ = self.env.step_env(
            key_step, state.inner, self._env_action(action), self.params
        )
        truncated = self.env.is_truncated(inner_s, self.params)
        obs_r, inner_r = self.env.reset_env(key_reset, self.params)
        reset = state.needs_reset
        pick = lambda r, s: jax.tree.map(lambda a, b: jnp.where(reset, a, b), r, s)
        inner = pick(inner_r, inner_s)
        obs = self._obs(pick(obs_r, obs_s))
        reward = jnp.where(reset, 0.0, reward.astype(jnp.float32))
        terminated = jnp.logical_and(~reset, terminated.astype(bool))
        last = jnp.logical_and(~reset, jnp.logical_or(terminated, truncated.astype(bool)))
        ep_return = jnp.where(reset, 0.0, state.episode_return + reward)
        ep_length = jnp.where(reset, 0, state.episode_length + 1)
        new_state = EnvState(inner, last, ep_return, ep_length)
        return new_state, Timestep(obs, reward, reset, last, terminated)


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


# name -> factory. MinAtar games are gymnax's 10x10xC frames (channels 0/1, stored as uint8).
REGISTRY = {
    "CartPole-v1": _gymnax,
    "Acrobot-v1": _gymnax,
    "Pendulum-v1": _gymnax,
    "Breakout-MinAtar": _gymnax,
    "SpaceInvaders-MinAtar": _gymnax,
    "Asterix-MinAtar": _gymnax,
    "Freeway-MinAtar": _gymnax,
}


def check_env_name(name: str) -> None:
    """Raise ValueError naming the known envs if `name` is not one of them."""
    if name not in REGISTRY:
        raise ValueError(f"unknown env {name!r}; known envs: {', '.join(sorted(REGISTRY))}")


def make_env(name: str) -> EnvAdapter:
    """Build an environment by name; an unknown name raises with the list of known ones."""
    check_env_name(name)
    adapter = REGISTRY[name](name)
    chex.assert_equal(len(adapter.spec.obs_shape) in (1, 3), True)
    return adapter
