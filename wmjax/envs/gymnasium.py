"""Gymnasium vector envs (Atari via ale-py, DeepMind Control via shimmy, any gymnasium env) in
wmjax's record layout, stepped on the host by `wmjax.host_loop`.

Names: `gymnasium:ID`, e.g. `gymnasium:CartPole-v1`, builds `gymnasium.make_vec(ID, num_envs)`.
For an env that needs wrappers (Atari frames resized to 64x64, say), register a factory under a
`gymnasium:` name with `register_vector_env(name, factory)`, and every entry point (train, the
CLI, load_policy, evaluate) builds it by that name.

The vector env must auto-reset in gymnasium's NEXT_STEP mode (its default): the step after an
episode ends ignores the action and returns the next episode's first observation. That is the
layout the fused loop uses too (see wmjax.envs.core): the record after one with is_last has
is_first and reward 0, and is_terminal marks true termination only, never truncation.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from wmjax.envs.core import HOST_LOOP_PREFIXES, EnvSpec

# `gymnasium:ID`, and built-in recipes with DreamerV3's preprocessing: `atari:GAME` (extra
# [atari]) and `dmc:DOMAIN-TASK` (extra [dmc]); see atari() and dm_control() below.
PREFIX, ATARI, DMC = HOST_LOOP_PREFIXES

# name -> factory(num_envs) returning a gymnasium vector env; see register_vector_env.
VECTOR_ENVS: dict[str, Callable[[int], Any]] = {}


def is_gymnasium_name(name: str) -> bool:
    """Names of envs stepped by the host loop through gymnasium."""
    return name.startswith(HOST_LOOP_PREFIXES)


def register_vector_env(name: str, factory: Callable[[int], Any]) -> None:
    """Make `gymnasium:...` name `name` build `factory(num_envs)`, a gymnasium vector env."""
    if not name.startswith(PREFIX):
        raise ValueError(f"register_vector_env: name {name!r} must start with {PREFIX!r}")
    if not callable(factory):
        raise TypeError(f"register_vector_env: factory for {name!r} must be callable")
    VECTOR_ENVS[name] = factory


def make_vector_env(name: str, num_envs: int) -> Any:
    """A registered factory's vector env, or gymnasium.make_vec(ID, num_envs) for
    `gymnasium:ID`; stepped in this process."""
    if name in VECTOR_ENVS:
        return VECTOR_ENVS[name](num_envs)
    if name.startswith(ATARI):
        return atari(name[len(ATARI):], num_envs)
    if name.startswith(DMC):
        return dm_control(name[len(DMC):], num_envs)
    env_id = name[len(PREFIX):] if is_gymnasium_name(name) else name
    return _make_vec(env_id, num_envs, "gymnasium", f"gymnasium cannot make {env_id!r}")


def _make_vec(env_id: str, num_envs: int, extra: str, unknown: str, **kwargs) -> Any:
    """gymnasium.make_vec in this process with NEXT_STEP auto-resets; a missing dependency
    names the wmjax extra to install, any other gymnasium error is reported as `unknown`."""
    gym = _import_gymnasium()
    try:
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP},
                            **kwargs)
    except gym.error.DependencyNotInstalled as e:
        raise ImportError(f"{env_id} needs the extra: pip install 'wmjax[{extra}]' ({e})") from None
    except gym.error.Error as e:
        raise ValueError(f"{unknown} ({e})") from None


def atari(game: str, num_envs: int, size: int = 64, gray: bool = False, repeat: int = 4,
          sticky: float = 0.0, noops: int = 30) -> Any:
    """ALE `game` (e.g. "Pong") as DreamerV3's Atari100k config sees it: 64x64 RGB frames,
    action repeat 4 with max-pooling of the last two frames, no sticky actions, up to 30
    no-ops at reset, the minimal action set, no life-loss ends and no reward clipping.
    (DreamerV3's Atari-200M config: size=96, gray=True, sticky=0.25.) Needs `wmjax[atari]`."""
    gym = _import_gymnasium()
    try:
        import ale_py
    except ImportError:
        raise ImportError("Atari envs need the extra: pip install 'wmjax[atari]'") from None
    gym.register_envs(ale_py)
    from gymnasium.wrappers import AtariPreprocessing

    def preprocess(env):
        return AtariPreprocessing(env, noop_max=noops, frame_skip=repeat, screen_size=size,
                                  grayscale_obs=gray, grayscale_newaxis=True, scale_obs=False,
                                  terminal_on_life_loss=False)

    return _make_vec(f"ALE/{game}-v5", num_envs, "atari",
                     f"ale-py has no game {game!r}; e.g. atari:Pong, atari:Breakout",
                     frameskip=1, repeat_action_probability=sticky, full_action_space=False,
                     wrappers=[preprocess])


def dm_control(task: str, num_envs: int) -> Any:
    """DeepMind Control `task` ("walker-walk", "cheetah-run", ...) with proprioceptive dict
    observations, through shimmy, as DreamerV3's dmc_proprio config: action repeat 1, episodes
    of 1000 steps ending by time limit (truncation). Needs `wmjax[dmc]`."""
    gym = _import_gymnasium()
    try:
        import shimmy  # noqa: F401  (registers the dm_control/... ids)
    except ImportError:
        raise ImportError("DeepMind Control envs need the extra: pip install 'wmjax[dmc]'") from None
    gym.register_envs(shimmy)
    return _make_vec(f"dm_control/{task}-v0", num_envs, "dmc",
                     f"dm_control has no task {task!r}; e.g. dmc:walker-walk, dmc:cheetah-run")


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
        obs_shape = _obs_shape(envs.single_observation_space, gym)
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
        n = self.num_envs
        if not self.spec.is_dict:
            obs = _cast(obs)
        else:  # scalar keys (dm_control's "height", say) become (1,) vectors
            obs = {k: _cast(np.reshape(obs[k], (n,) + s)) for k, s in self.spec.obs_shape}
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


def _obs_shape(space: Any, gym: Any) -> Any:
    """The EnvSpec obs_shape of a Box or Dict-of-Box observation space."""
    def shape_of(key, box):
        if isinstance(box, gym.spaces.Box) and key and box.shape == ():
            return (1,)  # a scalar entry of a Dict space
        if not isinstance(box, gym.spaces.Box) or len(box.shape) not in (1, 3):
            raise ValueError(f"observation {key}{box}; allowed: a Box of shape (D,) or (H, W, C) "
                             f"(uint8 images), or a Dict of them")
        if len(box.shape) == 3 and box.dtype != np.uint8:
            raise ValueError(f"observation {key}{box}: images must be uint8 (H, W, C)")
        return tuple(int(d) for d in box.shape)

    if isinstance(space, gym.spaces.Dict):
        return {k: shape_of(f"{k!r}: ", box) for k, box in space.spaces.items()}
    return shape_of("", space)


def _import_gymnasium():
    try:
        import gymnasium
    except ImportError:
        raise ImportError("gymnasium envs need the extra: pip install 'wmjax[gymnasium]'") from None
    return gymnasium
