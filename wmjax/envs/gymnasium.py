"""Gymnasium vector envs (Atari via ale-py, DeepMind Control via shimmy, any gymnasium env) in
wmjax's record layout, stepped on the host by `wmjax.host_loop`.

Names: `gymnasium:ID`, e.g. `gymnasium:CartPole-v1`, builds `gymnasium.make_vec(ID, num_envs)`.
Or wrap a vector env you built yourself with `GymnasiumEnv(envs)`.

The vector env must auto-reset in gymnasium's NEXT_STEP mode (its default): the step after an
episode ends ignores the action and returns the next episode's first observation. That is the
layout the fused loop uses too (see wmjax.envs.core): the record after one with is_last has
is_first and reward 0, and is_terminal marks true termination only, never truncation.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from wmjax.envs.core import EnvSpec

PREFIX = "gymnasium:"


def is_gymnasium_name(name: str) -> bool:
    return name.startswith(PREFIX)


def make_vector_env(name: str, num_envs: int) -> Any:
    """`gymnasium:ID` -> gymnasium.make_vec(ID, num_envs), stepped in this process."""
    gym = _import_gymnasium()
    env_id = name[len(PREFIX):] if is_gymnasium_name(name) else name
    try:
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP})
    except gym.error.Error as e:  # unknown id, missing extra (ale-py, shimmy[dm-control]) ...
        raise ValueError(f"gymnasium cannot make {env_id!r}: {e}") from None


class GymnasiumEnv:
    """A gymnasium vector env, seen as batches of Dreamer records (numpy, on the host)."""

    def __init__(self, envs: Any, name: str | None = None):
        gym = _import_gymnasium()
        missing = [a for a in ("num_envs", "single_observation_space", "single_action_space",
                               "reset", "step") if not hasattr(envs, a)]
        if missing:
            raise TypeError(f"the host loop needs a gymnasium vector env (gymnasium.make_vec or "
                            f"gymnasium.vector.SyncVectorEnv); {type(envs).__name__} lacks "
                            f"{', '.join(missing)}")
        mode = getattr(envs, "metadata", {}).get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
        if mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError(f"the vector env auto-resets in mode {mode}; allowed: NEXT_STEP "
                             f"(gymnasium's default; pass vector_kwargs={{'autoreset_mode': "
                             f"AutoresetMode.NEXT_STEP}} to make_vec)")
        self.envs = envs
        self.num_envs = int(envs.num_envs)
        name = name or PREFIX + str(getattr(getattr(envs, "spec", None), "id", type(envs).__name__))
        self.obs_keys, obs_shape = _obs_layout(envs.single_observation_space, gym)
        act = envs.single_action_space
        if isinstance(act, gym.spaces.Discrete):
            self.spec = EnvSpec(name, obs_shape, discrete=True, num_actions=int(act.n))
            self._start = int(act.start)
        elif isinstance(act, gym.spaces.Box) and len(act.shape) == 1 and \
                np.all(np.isfinite(act.low)) and np.all(np.isfinite(act.high)):
            self.spec = EnvSpec(name, obs_shape, discrete=False, num_actions=int(act.shape[0]))
            self._low, self._high = act.low.astype(np.float32), act.high.astype(np.float32)
        else:
            raise ValueError(f"{name}: action space {act}; allowed: Discrete, or a bounded 1-D Box")
        self._is_last = np.zeros(self.num_envs, bool)
        self.episode_return = np.zeros(self.num_envs, np.float64)
        self.episode_length = np.zeros(self.num_envs, np.int64)

    def reset(self, seed: int) -> dict[str, Any]:
        """Start every env afresh (env i seeded with seed + i); all records have is_first."""
        obs, _ = self.envs.reset(seed=int(seed))
        n = self.num_envs
        self._is_last = np.zeros(n, bool)
        self.episode_return[:] = 0
        self.episode_length[:] = 0
        return self._record(obs, np.zeros(n), np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool))

    def step(self, action: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """Step with the agent's actions (int indices, or [-1, 1] vectors rescaled to the
        bounds). Returns the next records and the (return, length) of episodes that just ended
        (zero where none did)."""
        action = np.asarray(action)
        if self.spec.discrete:
            env_action = action.astype(np.int64) + self._start
        else:
            env_action = self._low + (np.clip(action, -1, 1) + 1) / 2 * (self._high - self._low)
        obs, reward, terminated, truncated, _ = self.envs.step(env_action)
        is_first = self._is_last  # NEXT_STEP: the step after an end returned a reset
        reward = np.where(is_first, 0.0, np.asarray(reward, np.float64))
        is_last = np.logical_and(~is_first, np.logical_or(terminated, truncated))
        is_terminal = np.logical_and(~is_first, terminated)
        self.episode_return = np.where(is_first, 0.0, self.episode_return + reward)
        self.episode_length = np.where(is_first, 0, self.episode_length + 1)
        finished_return = np.where(is_last, self.episode_return, 0.0)
        finished_length = np.where(is_last, self.episode_length, 0)
        self._is_last = is_last
        return self._record(obs, reward, is_first, is_last, is_terminal), finished_return, finished_length

    def _record(self, obs, reward, is_first, is_last, is_terminal) -> dict[str, Any]:
        if self.obs_keys is None:
            obs = _cast(obs)
        else:
            obs = {k: _cast(obs[k]) for k in self.obs_keys}
        return dict(obs=obs, reward=np.asarray(reward, np.float32), is_first=is_first,
                    is_last=is_last, is_terminal=is_terminal)

    def chunk_metrics(self, metrics: dict) -> dict:
        """No env-specific chunk metrics (the fused adapters' hook, e.g. Craftax's score)."""
        return {}

    def close(self) -> None:
        self.envs.close()


def _cast(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.uint8) if x.ndim == 4 else x.astype(np.float32)  # (N, H, W, C) images


def _obs_layout(space: Any, gym: Any) -> tuple[list[str] | None, Any]:
    """(dict keys or None, the EnvSpec obs_shape) of a Box or Dict-of-Box observation space."""
    def shape_of(key, box):
        if not isinstance(box, gym.spaces.Box) or len(box.shape) not in (1, 3):
            raise ValueError(f"observation {key}{box}; allowed: a Box of shape (D,) or (H, W, C) "
                             f"(uint8 images), or a Dict of them")
        if len(box.shape) == 3 and box.dtype != np.uint8:
            raise ValueError(f"observation {key}{box}: images must be uint8 (H, W, C)")
        return tuple(int(d) for d in box.shape)

    if isinstance(space, gym.spaces.Dict):
        keys = sorted(space.spaces)
        return keys, {k: shape_of(f"{k!r}: ", space.spaces[k]) for k in keys}
    return None, shape_of("", space)


def _import_gymnasium():
    try:
        import gymnasium
    except ImportError:
        raise ImportError("gymnasium envs need the extra: pip install 'wmjax[gymnasium]'") from None
    return gymnasium
