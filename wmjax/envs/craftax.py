"""Craftax-Classic (the `craftax` package's JAX Crafter) in the Dreamer record layout.

Three things differ from the gymnax adapter:

- Craftax 1.6 keeps gymnax's old five-tuple `step_env` and counts the 10,000-step time limit as
  `done`. Here the time limit is truncation (is_last, not is_terminal); death is termination.
- Generating a world is far dearer than a step, and a reset that generates one for every env on
  every step (what a per-env auto-reset does under vmap) dominates the run on a CPU. `step_batch`
  resets *optimistically*: each step it generates ceil(num_envs / reset_ratio) worlds and hands
  them to the envs whose episode just ended, in order; if more envs end at once than there are
  worlds, some start the same world (their play then diverges under their own actions and keys).
- Per episode it records which of the 22 achievements were unlocked; per chunk the loop logs their
  success rates (`episode/achievement/<name>`, in %), the Crafter score (the geometric mean of the
  success rates, `crafter/score`, in %) and the return as a share of the 22 achievable reward
  points (`crafter/reward_percent`). `achievement_rates` and `crafter_score` recompute the rates
  and the score over a whole run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from wmjax.envs.core import EPISODE_PREFIX, EnvAdapter, EnvSpec, EnvState, Timestep

ACHIEVEMENT_PREFIX = "achievement/"
GRID = "Craftax-Classic-Symbolic-Grid-v1"
MAX_REWARD = 22.0  # one point per achievement; health changes add and remove 0.1 per point


def achievement_names() -> list[str]:
    from craftax.craftax_classic.constants import Achievement

    return [a.name.lower() for a in sorted(Achievement, key=lambda a: a.value)]


def score_from_rates(rates_percent) -> Any:
    """The Crafter score (Hafner 2021): exp(mean(ln(1 + s_i))) - 1 over success rates s_i in %."""
    xp = jnp if isinstance(rates_percent, jax.Array) else np
    return xp.exp(xp.mean(xp.log1p(rates_percent), axis=-1)) - 1.0


def achievement_rates(rows: Iterable[dict], seed: int | None = None) -> dict[str, float] | None:
    """Each achievement's success rate (%) over every episode in metrics rows (one seed, or all
    if None): the share of all finished episodes that unlocked it, as the Crafter paper reports
    them. None if no episode finished."""
    names = achievement_names()
    unlocked, episodes = np.zeros(len(names)), 0.0
    for r in rows:
        if (seed is not None and r.get("seed") != seed) or not r.get("episodes"):
            continue
        episodes += r["episodes"]
        unlocked += [r[EPISODE_PREFIX + ACHIEVEMENT_PREFIX + n] / 100.0 * r["episodes"] for n in names]
    if episodes == 0:
        return None
    return {n: float(v) for n, v in zip(names, 100.0 * unlocked / episodes)}


def crafter_score(rows: Iterable[dict], seed: int | None = None) -> float | None:
    """The Crafter score (%) over every episode in metrics rows (one seed, or all if None): the
    geometric mean of `achievement_rates`."""
    rates = achievement_rates(rows, seed)
    return None if rates is None else float(score_from_rates(np.array(list(rates.values()))))


# The symbolic observation: the 7x9 local view with 21 channels per cell (17 block types one-hot,
# then zombie, cow, skeleton, arrow), flattened, followed by 22 values (inventory, vitals,
# direction, light, sleeping).
VIEW_SHAPE = (7, 9, 21)
VIEW_SIZE = VIEW_SHAPE[0] * VIEW_SHAPE[1] * VIEW_SHAPE[2]
MOB_CHANNELS = {"zombie": 17, "cow": 18, "skeleton": 19, "arrow": 20}


def split_symbolic(obs: Any) -> dict[str, jax.Array]:
    """A flat symbolic observation as {"map": (7, 9, 21) grid in [0, 1], "state": (22,)}; an
    observation already split (the Grid variant's) is returned as it is."""
    if isinstance(obs, dict):
        return obs
    lead = obs.shape[:-1]
    return {"map": obs[..., :VIEW_SIZE].reshape(lead + VIEW_SHAPE), "state": obs[..., VIEW_SIZE:]}


@dataclass(frozen=True)
class CraftaxAdapter(EnvAdapter):
    reset_ratio: int = 16  # envs per freshly generated world each step (optimistic resets)

    def _obs(self, obs: Any) -> Any:
        if self.spec.is_dict:  # the Grid variant: the map as an image for the CNN
            obs = split_symbolic(obs)
        return super()._obs(obs)

    def transition(self, key: jax.Array, inner: Any, action: jax.Array):
        obs, inner, reward, done, _ = self.env.step_env(key, inner, self._env_action(action), self.params)
        time_up = inner.timestep >= self.params.max_timesteps
        dead = inner.player_health <= 0
        terminated = jnp.logical_and(done, jnp.logical_or(dead, ~time_up))  # died or in lava
        truncated = jnp.logical_and(done, ~terminated)
        return obs, inner, reward, terminated, truncated

    def step_batch(self, key: jax.Array, state: EnvState, action: jax.Array) -> tuple[EnvState, Timestep]:
        n = action.shape[0]
        worlds = -(-n // self.reset_ratio)
        key_step, key_reset = jax.random.split(key)
        stepped = jax.vmap(self.transition)(jax.random.split(key_step, n), state.inner, action)
        obs_r, inner_r = jax.vmap(self.env.reset_env, in_axes=(0, None))(
            jax.random.split(key_reset, worlds), self.params)
        # The k-th env to reset this step takes world k (mod the number generated).
        slot = (jnp.cumsum(state.needs_reset) - 1) % worlds
        fresh = jax.tree.map(lambda x: x[slot], (obs_r, inner_r))
        return jax.vmap(self.assemble)(state, fresh, stepped)

    def episode_stats(self, inner: Any) -> dict[str, jax.Array]:
        names = achievement_names()
        return {ACHIEVEMENT_PREFIX + n: 100.0 * inner.achievements[i].astype(jnp.float32)
                for i, n in enumerate(names)}

    def chunk_metrics(self, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
        rates = jnp.stack([metrics[EPISODE_PREFIX + ACHIEVEMENT_PREFIX + n] for n in achievement_names()])
        return {"crafter/score": score_from_rates(rates),
                "crafter/reward_percent": 100.0 * metrics["episode_return"] / MAX_REWARD}


def make_craftax(name: str, reset_ratio: int = 16) -> CraftaxAdapter:
    """`Craftax-Classic-Symbolic-v1` (a 1345-vector in [0, 1]), `Craftax-Classic-Pixels-v1`
    (63x63x3 frames, stored as uint8), or `Craftax-Classic-Symbolic-Grid-v1`: the symbolic
    observation with its map laid out as the 7x9x21 grid it is (0/1 cells stored as uint8 0/255,
    so the world model reads it with its CNN) beside the 22 other values as a vector."""
    try:
        from craftax.craftax_classic.envs.craftax_pixels_env import CraftaxClassicPixelsEnvNoAutoReset
        from craftax.craftax_classic.envs.craftax_symbolic_env import CraftaxClassicSymbolicEnvNoAutoReset
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"{name} needs the craftax package: pip install 'wmjax[craftax]' ({e})") from e

    pixels = "Pixels" in name
    env = CraftaxClassicPixelsEnvNoAutoReset() if pixels else CraftaxClassicSymbolicEnvNoAutoReset()
    params = env.default_params
    shape = tuple(int(d) for d in env.observation_space(params).shape)
    if name == GRID:
        shape = {"map": VIEW_SHAPE, "state": (shape[0] - VIEW_SIZE,)}
    return CraftaxAdapter(env, params, EnvSpec(name, shape, True, env.num_actions), reset_ratio=reset_ratio)
