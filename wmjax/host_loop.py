"""The host loop: the same agent, replay and train ratio, with environments that are not JAX.

    trainer = make_host_train(TrainConfig(env="gymnasium:CartPole-v1", num_envs=8))
    state = trainer.init(jax.random.key(0))
    state, metrics = trainer.train_chunk(state)     # steps the gymnasium envs in Python

`wmjax.run.train` (and so `python -m wmjax train --env gymnasium:ID`) picks this loop for
`gymnasium:` env names. Per vector step, one jitted call runs the agent's side of the fused
loop's iteration (`wmjax.loop.make_agent_step`: act, write replay, the updates the train ratio
owes), then the host steps the envs with the actions. Only the env step differs from the fused
loop, so the two share every line of agent, replay and ratio code.

Seeds: one vector env of seeds * num_envs envs; seed s acts in envs [s*E, (s+1)*E).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wmjax.agents.dreamer.agent import Dreamer
from wmjax.config import TrainConfig
from wmjax.envs.core import Timestep
from wmjax.envs.gymnasium import GymnasiumEnv, make_vector_env
from wmjax.loop import (
    TrainState, Trainer, initial_state, make_agent_step, member_keys, over_seeds, ratio_fraction,
    seed_hyper, static_seed_ids, summarise_chunk,
)


def make_host_train(config: TrainConfig, envs: Any = None) -> Trainer:
    """A Trainer whose `train_chunk` steps a gymnasium vector env on the host. `envs`: a
    GymnasiumEnv or a gymnasium vector env of seeds * num_envs envs (default: made from the
    `gymnasium:ID` name in config.env)."""
    S, E = config.seeds, config.num_envs
    if envs is None:
        envs = make_vector_env(config.env, S * E)
    env = envs if isinstance(envs, GymnasiumEnv) else GymnasiumEnv(envs, config.env)
    if env.num_envs != S * E:
        raise ValueError(f"the vector env has {env.num_envs} envs; this config needs seeds * "
                         f"num_envs = {S} * {E} = {S * E}")
    agent = Dreamer(config.agent, env.spec)
    agent_step = make_agent_step(config, agent)
    c = config.agent

    def init_one(key: jax.Array, hyper: dict) -> TrainState:
        k_agent, _, k_loop = jax.random.split(key, 3)  # the fused loop's split; envs seed on host
        placeholder = Timestep(env.spec.zeros((E,)), jnp.zeros(E, jnp.float32),
                               jnp.ones(E, bool), jnp.zeros(E, bool), jnp.zeros(E, bool))
        return initial_state(config, agent, k_agent, k_loop, hyper, None, placeholder)

    @functools.partial(jax.jit, static_argnums=2)
    def init_seeds(key: jax.Array, hyper: dict, seed_ids: tuple[int, ...] | None) -> TrainState:
        return jax.vmap(init_one)(member_keys(config, key, seed_ids), hyper)

    def step_one(state: TrainState, ts: Timestep):
        key, k_act, _, k_update = jax.random.split(state.key, 4)
        state, action, n, sums = agent_step(state._replace(key=key, timestep=ts), k_act, k_update)
        return state, action, {**sums, "num_updates": n.astype(jnp.float32)}

    @jax.jit
    def step(state: TrainState, ts: Timestep, acc: dict):
        state, action, stats = over_seeds(step_one, S)(state, ts)
        return state, action, jax.tree.map(jnp.add, acc, stats)

    live: dict[str, Any] = {"state": None, "records": None}

    def to_seeds(record: dict) -> Timestep:
        """(S * E, ...) host records -> a Timestep of (S, E, ...) arrays."""
        split = lambda x: np.reshape(x, (S, E) + np.shape(x)[1:])
        return Timestep(jax.tree.map(split, record["obs"]), split(record["reward"]),
                        split(record["is_first"]), split(record["is_last"]),
                        split(record["is_terminal"]))

    def train_chunk(state: TrainState) -> tuple[TrainState, dict]:
        """`config.iters_per_chunk` vector steps; metrics as the fused loop's, batched (S,)."""
        if state is not live["state"]:  # a new or restored state: its envs start afresh
            seed = int(jax.random.randint(jax.random.fold_in(state.key[0], 1), (), 0, 2**31 - 1))
            live["records"] = env.reset(seed)
        records = live["records"]
        acc = {k: jnp.zeros(S, jnp.float32) for k in (*agent.metric_names, "num_updates")}
        host = {k: np.zeros(S) for k in ("episode_return_sum", "episode_length_sum", "episodes")}
        for _ in range(config.iters_per_chunk):
            state, action, acc = step(state, to_seeds(records), acc)
            records, ret, length = env.step(np.asarray(action).reshape((S * E,) + action.shape[2:]))
            done = records["is_last"].reshape(S, E)
            host["episode_return_sum"] += ret.reshape(S, E).sum(1)
            host["episode_length_sum"] += length.reshape(S, E).sum(1)
            host["episodes"] += done.sum(1)
        state = state._replace(timestep=jax.tree.map(jnp.asarray, to_seeds(records)))
        live["state"], live["records"] = state, records
        stats = {**{k: jnp.asarray(v, jnp.float32) for k, v in host.items()}, **acc}
        return state, summarise_chunk(stats, state, env, agent.ratio_metrics)

    def init(key: jax.Array, hyper: dict | None = None, seed_ids: tuple[int, ...] | None = None
             ) -> TrainState:
        return init_seeds(key, seed_hyper(agent, hyper, S), static_seed_ids(config, seed_ids))

    ratio = ratio_fraction(config.train_ratio)
    return Trainer(config, env, agent, init, train_chunk, None, None,
                   float(ratio) / (c.batch_size * c.batch_length))
