"""Using a trained agent from other code: load it from a run folder, act, evaluate.

    policy = wmjax.load_policy("runs/cartpole")               # newest checkpoint, seed 0
    carry = policy.initial_carry(num_envs)
    action, carry = policy.act(carry, obs, is_first, key)     # jitted; eval mode takes the mode
    returns = wmjax.evaluate(policy, episodes=10, key=key)    # one episode per vmapped env
"""
from __future__ import annotations

import functools
import json
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wmjax.agents.dreamer.agent import AgentState, Carry, Dreamer
from wmjax.config import TrainConfig
from wmjax.envs.core import EnvAdapter
from wmjax.envs.gymnasium import GymnasiumEnv, make_vector_env
from wmjax.loop import TrainState
from wmjax.run import cached_trainer, load_config, load_hyper, read_state


class Policy(NamedTuple):
    """A trained agent ready to act. `act(carry, obs, is_first, key) -> (action, carry)`."""

    act: Callable[[Carry, jax.Array, jax.Array, jax.Array], tuple[jax.Array, Carry]]
    initial_carry: Callable[[int], Carry]
    agent: Dreamer
    state: AgentState  # one seed's agent state
    env: EnvAdapter
    config: TrainConfig
    chunk: int  # the checkpoint it was loaded from (chunks trained)
    mode: str = "eval"  # "eval" takes the policy's mode, "train" samples


def load_train_state(run_dir: str, chunk: int | None = None) -> tuple[TrainConfig, int, TrainState]:
    """The whole batched TrainState of a run folder's checkpoint (default: the newest)."""
    config = load_config(run_dir)
    chunk, state = read_state(run_dir, config, load_hyper(run_dir), chunk)
    return config, chunk, state


def resolve_member(run_dir: str, seed: int) -> tuple[str, int]:
    """A sweep point's folder (see wmjax.sweep.train_grid) names the program that trained it and
    which of its members are this point's seeds; other folders are their own program."""
    program, members = _program(run_dir)
    if members is None:
        return run_dir, seed
    if not 0 <= seed < len(members):
        raise ValueError(f"seed={seed}; this sweep point has seeds 0..{len(members) - 1}")
    return program, members[seed]


def _program(run_dir: str) -> tuple[str, list[int] | None]:
    """The folder of the program that trained `run_dir`, and the members that are its seeds
    (None: a plain run, its own program, every member its own)."""
    path = os.path.join(run_dir, "members.json")
    if not os.path.exists(path):
        return run_dir, None
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    return os.path.normpath(os.path.join(run_dir, info["program"])), info["members"]


def load_policy(run_dir: str, seed: int = 0, mode: str = "eval", chunk: int | None = None) -> Policy:
    """Load seed `seed` of the run (or sweep point) in `run_dir`, return a jitted act function.

    mode "eval" acts with the policy's mode, "train" samples as during training.
    """
    _check_mode(mode)
    run_dir, seed = resolve_member(run_dir, seed)
    config, chunk, state = load_train_state(run_dir, chunk)
    return _member_policy(config, chunk, state, seed, mode)


def seed_returns(run_dir: str, episodes: int = 32, mode: str = "train",
                 chunk: int | None = None) -> list[float]:
    """Every seed of a run (or sweep point) played frozen from one checkpoint (default: the
    newest): the mean return of `episodes` episodes per seed, seed i played with key i.

    Training returns come from a policy that changes every few env steps, so a regression in
    the last chunks does not show in them until its episodes end; this reads the policy as saved.
    The checkpoint is loaded once for all seeds."""
    _check_mode(mode)
    program, members = _program(run_dir)
    config, chunk, state = load_train_state(program, chunk)
    members = list(range(config.seeds)) if members is None else members
    return [float(np.mean(evaluate(_member_policy(config, chunk, state, m, mode), episodes,
                                   jax.random.key(i))))
            for i, m in enumerate(members)]


def _check_mode(mode: str) -> None:
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")


def _member_policy(config: TrainConfig, chunk: int, state: TrainState, seed: int,
                   mode: str) -> Policy:
    """Seed `seed` of a loaded batched TrainState as a Policy."""
    if not 0 <= seed < config.seeds:
        raise ValueError(f"seed={seed}; this run has seeds 0..{config.seeds - 1}")
    trainer = cached_trainer(config)
    agent_state = jax.tree.map(lambda x: x[seed], state.agent)
    agent = trainer.agent
    act = functools.partial(_act_fn(agent, mode), agent_state)
    return Policy(act, agent.initial_carry, agent, agent_state, trainer.env, config, chunk, mode)


def evaluate(policy: Policy, episodes: int = 10, key: jax.Array | None = None,
             max_steps: int = 100_000) -> jax.Array:
    """Returns of `episodes` episodes, one per vmapped env, run in one jitted loop.

    On JAX envs it compiles `policy.agent` with `policy.state` in `policy.mode` (once per agent
    and mode) rather than calling `policy.act`, so a Policy whose `act` was replaced is
    evaluated as loaded; gymnasium envs are stepped on the host with `policy.act`."""
    if episodes < 1:
        raise ValueError(f"episodes={episodes}; allowed: >= 1")
    key = jax.random.key(0) if key is None else key
    if isinstance(policy.env, GymnasiumEnv):
        return _evaluate_on_host(policy, episodes, key, max_steps)
    run = _rollout_fn(policy.env, policy.agent, policy.mode, episodes, max_steps)
    returns, finished = run(policy.state, key)
    if not bool(finished.all()):
        raise RuntimeError(f"evaluate: episodes did not finish within max_steps={max_steps}")
    return returns


def _evaluate_on_host(policy: Policy, episodes: int, key: jax.Array, max_steps: int) -> jax.Array:
    """evaluate() for gymnasium envs: a fresh vector env of `episodes` envs, stepped on the host."""
    env = GymnasiumEnv(make_vector_env(policy.config.env, episodes), policy.config.env)
    try:
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        rec = env.reset(seed)
        carry = policy.initial_carry(episodes)
        returns = np.zeros(episodes, np.float32)
        finished = np.zeros(episodes, bool)
        for _ in range(max_steps):
            key, k_act = jax.random.split(key)
            action, carry = policy.act(carry, rec["obs"], rec["is_first"], k_act)
            rec, ret, _ = env.step(np.asarray(action))
            returns = np.where(rec["is_last"] & ~finished, ret, returns)
            finished |= rec["is_last"]
            if finished.all():
                return jnp.asarray(returns)
    finally:
        env.close()
    raise RuntimeError(f"evaluate: episodes did not finish within max_steps={max_steps}")


# Compiled once per (agent, mode[, episodes]): the agent object is shared by every run with the
# same program (see run.cached_trainer), and the agent state is an argument, not a constant, so
# loading another checkpoint or seed does not recompile.
@functools.lru_cache(maxsize=16)
def _act_fn(agent: Dreamer, mode: str):
    return jax.jit(functools.partial(agent.act, mode=mode))


_ROLLOUTS: dict[tuple, tuple] = {}


def _rollout_fn(env: EnvAdapter, agent: Dreamer, mode: str, n: int, max_steps: int):
    # Keyed by identity: some gymnax env params hold arrays and cannot be hashed.
    key = (id(env), id(agent), mode, n, max_steps)
    if key not in _ROLLOUTS:
        if len(_ROLLOUTS) >= 16:
            _ROLLOUTS.pop(next(iter(_ROLLOUTS)))
        _ROLLOUTS[key] = (env, agent, _make_rollout(env, agent, mode, n, max_steps))
    return _ROLLOUTS[key][2]


def _make_rollout(env: EnvAdapter, agent: Dreamer, mode: str, n: int, max_steps: int):
    @jax.jit
    def run(state, key):
        act = functools.partial(agent.act, state, mode=mode)
        return play_episodes(env, act, agent.initial_carry(n), n, key, max_steps)

    return run


def play_episodes(env: EnvAdapter, act: Callable, carry, episodes: int, key: jax.Array,
                  max_steps: int = 100_000) -> tuple[jax.Array, jax.Array]:
    """Step `episodes` vmapped envs under `act(carry, obs, is_first, key) -> (action, carry)`
    until each has ended once, in one traceable while loop (any agent or baseline can use it).

    Returns each env's first episode return and whether it ended within `max_steps`."""
    k_reset, key = jax.random.split(key)
    env_state, ts = env.reset_batch(k_reset, episodes)
    finished = jnp.zeros((episodes,), bool)
    returns = jnp.zeros((episodes,), jnp.float32)

    def cond(c):
        return jnp.logical_and(~c[4].all(), c[6] < max_steps)

    def body(c):
        env_state, ts, carry, key, finished, returns, t = c
        key, k_act, k_env = jax.random.split(key, 3)
        action, carry = act(carry, ts.obs, ts.is_first, k_act)
        env_state, ts = env.step_batch(k_env, env_state, action)
        returns = jnp.where(ts.is_last & ~finished, env_state.episode_return, returns)
        return env_state, ts, carry, key, finished | ts.is_last, returns, t + 1

    out = jax.lax.while_loop(cond, body, (env_state, ts, carry, key, finished, returns, 0))
    return out[5], out[4]


def record_rollout(policy: Policy, envs: int, steps: int, key: jax.Array,
                   probe: Callable[[object], dict] | None = None) -> dict[str, np.ndarray]:
    """Play `policy` in `envs` vmapped envs for `steps` steps and return what happened, as
    (steps, envs, ...) numpy arrays, for diagnostics: `obs` acted on, its `is_first`, `action`,
    and of the step it led to `reward`, `ended` (is_last) and `terminal`. `probe(inner)` adds
    fields read from the wrapped env's state before each step (e.g. a Craftax player's health)."""
    return record_steps(policy.env, policy.act, policy.initial_carry(envs), envs, steps, key,
                        probe)


def record_steps(env: EnvAdapter, act: Callable, carry, envs: int, steps: int, key: jax.Array,
                 probe: Callable[[object], dict] | None = None) -> dict[str, np.ndarray]:
    """`record_rollout` for any `act(carry, obs, is_first, key) -> (action, carry)` and its
    initial `carry` for `envs` envs, as `play_episodes` takes them: a baseline, or random
    actions (`carry` may then be None)."""

    def run(key, carry):
        k_reset, key = jax.random.split(key)
        env_state, ts = env.reset_batch(k_reset, envs)

        def step(c, k):
            env_state, ts, act_carry = c
            k_act, k_env = jax.random.split(k)
            action, act_carry = act(act_carry, ts.obs, ts.is_first, k_act)
            seen = probe(env_state.inner) if probe is not None else {}
            env_state, nxt = env.step_batch(k_env, env_state, action)
            out = dict(seen, obs=ts.obs, is_first=ts.is_first, action=action, reward=nxt.reward,
                       ended=nxt.is_last, terminal=nxt.is_terminal)
            return (env_state, nxt, act_carry), out

        return jax.lax.scan(step, (env_state, ts, carry), jax.random.split(key, steps))[1]

    return jax.tree.map(np.asarray, jax.device_get(jax.jit(run)(key, carry)))
