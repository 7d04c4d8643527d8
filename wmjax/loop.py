"""The fused training loop: acting, replay, world-model and actor-critic updates in one program.

    trainer = make_train(TrainConfig(env="CartPole-v1", seeds=4))
    state = trainer.init(jax.random.key(0))          # batched over seeds
    state, metrics = trainer.train_chunk(state)      # jitted, state donated

One chunk is a `lax.scan` over `iters_per_chunk` iterations; an iteration acts in every env, writes
the records to replay, steps the vmapped envs, and runs as many updates as keep the train ratio
exact (a `while_loop` over an integer credit of replayed steps, so any ratio and any number of envs
work). Seeds are a `vmap` over the whole program on accelerators and when sharded over devices;
on one CPU they run one after another inside it, which is faster there (`over_seeds`). Metrics
are reduced inside the scan: sums and counts, never per-step stacks. The host sees the state
only between chunks.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from wmjax import distributed
from wmjax import replay as rb
from wmjax.agents.dreamer.agent import AgentState, Batch, Carry, Dreamer
from wmjax.config import TrainConfig
from wmjax.envs.core import EPISODE_PREFIX, EnvAdapter, EnvState, Timestep, make_env


class TrainState(NamedTuple):
    agent: AgentState
    env_state: EnvState  # batched over envs
    timestep: Timestep  # the newest record of every env, acted on next
    carry: Carry
    replay: rb.AnyReplayState  # Online with TrainConfig.replay_online, Curious with replay_priority
    key: jax.Array
    env_steps: jax.Array  # env steps taken by this seed, over all its envs
    updates: jax.Array
    credit: jax.Array  # replayed steps owed, in units of 1/ratio_den


class Trainer(NamedTuple):
    """Pure functions of one fused training run; `init` and `train_chunk` are batched over seeds."""

    config: TrainConfig
    env: EnvAdapter
    agent: Dreamer
    init: Callable[..., TrainState]  # (key, hyper=None, seed_ids=None) -> batched TrainState
    train_chunk: Callable[[TrainState], tuple[TrainState, dict]]
    init_one: Callable[[jax.Array], TrainState]
    chunk_one: Callable[[TrainState], tuple[TrainState, dict]]
    updates_per_env_step: float
    mesh: Any = None  # a ("seeds", "data") jax.sharding.Mesh, or None for one device
    shardings: Any = None  # NamedShardings of the batched TrainState when sharded


def ratio_fraction(train_ratio: float) -> Fraction:
    return Fraction(train_ratio).limit_denominator(1000)


def over_seeds(fn: Callable, seeds: int) -> Callable:
    """`fn(state, *xs) -> (state, *ys)` of one seed, applied over a leading seed axis of `seeds`
    on every argument and result. On CPU the seeds run one after another in one program, each
    seed's new state written in place into the batched state (so a donated state is updated in
    place), its other results into stacked buffers; elsewhere it is `jax.vmap`. One seed runs
    `fn` itself between dropping and restoring the axis. On CPU a vmap computes the same but
    compiles into a slower program: size1m's chunk took 1.23x the time for one seed and 1.30x
    for four (benchmarks/README.md, session 44), and 3.7x the temporary memory for four."""
    take = lambda i: lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False)
    if seeds == 1:
        return lambda *args: jax.tree.map(lambda x: x[None], fn(*jax.tree.map(take(0), args)))
    if jax.default_backend() != "cpu":  # accelerators batch the seeds' work
        return jax.vmap(fn)

    def each(state, *xs):
        example = jax.eval_shape(fn, *jax.tree.map(take(0), (state, *xs)))
        ys = jax.tree.map(lambda t: jnp.zeros((seeds,) + t.shape, t.dtype), tuple(example[1:]))

        def body(i, carry):
            new, *out = fn(*jax.tree.map(take(i), (carry[0], *xs)))
            put = lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, i, 0)
            return jax.tree.map(put, carry[0], new), jax.tree.map(put, carry[1], tuple(out))

        state, ys = jax.lax.fori_loop(0, seeds, body, (state, ys))
        return (state, *ys)
    return each


def make_train(config: TrainConfig, env: EnvAdapter | None = None, devices: int | None = None
               ) -> Trainer:
    """The fused program of `config`. `devices`: place it on a ("seeds", "data") mesh of that
    many devices (see wmjax.distributed); None keeps it on the default device."""
    env = env or make_env(config.env)
    agent = Dreamer(config.agent, env.spec)
    c = config.agent
    E, B, T = config.num_envs, c.batch_size, c.batch_length
    ratio = ratio_fraction(config.train_ratio)
    mesh = None if devices is None else distributed.make_mesh(devices, config.seeds, E, B)

    def place_batch(batch: Batch) -> Batch:
        if mesh is None:
            return batch
        # data-parallel updates: the batch axis is split over "data"
        return jax.lax.with_sharding_constraint(batch, distributed.batch_sharding(mesh))

    def init_one(key: jax.Array, hyper: dict | None = None) -> TrainState:
        k_agent, k_env, k_loop = jax.random.split(key, 3)
        env_state, timestep = env.reset_batch(k_env, E)
        return initial_state(config, agent, k_agent, k_loop, hyper, env_state, timestep)

    agent_step = make_agent_step(config, agent, place_batch)

    def iteration(state: TrainState, _):
        key, k_act, k_env, k_update = jax.random.split(state.key, 4)
        state, action, n, sums = agent_step(state._replace(key=key), k_act, k_update)
        env_state, timestep = env.step_batch(k_env, state.env_state, action)
        done = timestep.is_last
        stats = {
            "episode_return_sum": jnp.where(done, env_state.episode_return, 0.0).sum(),
            "episode_length_sum": jnp.where(done, env_state.episode_length, 0).sum().astype(jnp.float32),
            "episodes": done.sum().astype(jnp.float32),
            "num_updates": n.astype(jnp.float32),
            **sums,
        }
        for name, value in jax.vmap(env.episode_stats)(env_state.inner).items():
            stats[EPISODE_PREFIX + name] = jnp.where(done, value, 0).sum().astype(jnp.float32)
        return state._replace(env_state=env_state, timestep=timestep), stats

    def chunk_one(state: TrainState) -> tuple[TrainState, dict]:
        """`config.iters_per_chunk` iterations; their stats are summed in the scan's carry."""
        names = ["episode_return_sum", "episode_length_sum", "episodes", "num_updates",
                 *agent.metric_names,
                 *(EPISODE_PREFIX + k for k in jax.eval_shape(jax.vmap(env.episode_stats),
                                                              state.env_state.inner))]
        zeros = {k: jnp.zeros((), jnp.float32) for k in names}

        def body(carry, _):
            state, sums = carry
            state, stats = iteration(state, None)
            return (state, jax.tree.map(jnp.add, sums, stats)), None

        (state, stats), _ = jax.lax.scan(body, (state, zeros), None, length=config.iters_per_chunk)
        return state, summarise_chunk(stats, state, env, agent.ratio_metrics)

    def init_seeds(key: jax.Array, hyper: dict, seed_ids: tuple[int, ...] | None = None
                   ) -> TrainState:
        return jax.vmap(init_one, spmd_axis_name=None if mesh is None else distributed.SEEDS)(
            member_keys(config, key, seed_ids), hyper)

    shardings = None
    if mesh is None:
        batched_init = jax.jit(init_seeds, static_argnums=2)
        batched_chunk = jax.jit(over_seeds(chunk_one, config.seeds), donate_argnums=0)
    else:
        like = jax.eval_shape(init_seeds, jax.random.key(0), seed_hyper(agent, None, config.seeds))
        shardings = distributed.state_shardings(like, mesh, E)
        everywhere = distributed.replicated(mesh)
        batched_init = jax.jit(init_seeds, in_shardings=everywhere, out_shardings=shardings,
                               static_argnums=2)
        batched_chunk = jax.jit(jax.vmap(chunk_one, spmd_axis_name=distributed.SEEDS),
                                in_shardings=(shardings,), out_shardings=(shardings, everywhere),
                                donate_argnums=0)

    def init(key: jax.Array, hyper: dict | None = None, seed_ids: tuple[int, ...] | None = None
             ) -> TrainState:
        """Initial state of every member. `hyper` maps tunables (TUNABLES) to one value for all
        members or a sequence of one value per member, so a grid is one vmapped program.
        `seed_ids`: each member's seed index (see `member_keys`; default 0..seeds-1)."""
        return batched_init(key, seed_hyper(agent, hyper, config.seeds),
                            static_seed_ids(config, seed_ids))

    return Trainer(config, env, agent, init, batched_chunk, init_one, chunk_one,
                   float(ratio) / (B * T), mesh, shardings)


def member_keys(config: TrainConfig, key: jax.Array, seed_ids: tuple[int, ...] | None = None
                ) -> jax.Array:
    """One PRNG key per member of the program. Seed s's key is split s of the run's base key,
    split into as many keys as there are seeds (max(seed_ids) + 1 when given). So members with
    equal seed ids start alike, and a sweep point's seeds 0..n-1 are those of a plain run with
    n seeds. None: member m is seed m."""
    base = jax.random.fold_in(key, config.seed)
    if seed_ids is None:
        return jax.random.split(base, config.seeds)
    return jax.random.split(base, max(seed_ids) + 1)[jnp.asarray(seed_ids)]


def static_seed_ids(config: TrainConfig, seed_ids) -> tuple[int, ...] | None:
    """`seed_ids` checked (one index >= 0 per member) and made a tuple, the hashable form that
    `init`'s jitted program takes as a static argument."""
    if seed_ids is None:
        return None
    ids = tuple(int(i) for i in seed_ids)
    if len(ids) != config.seeds or min(ids, default=0) < 0:
        raise ValueError(f"seed_ids={seed_ids}; allowed: {config.seeds} seed indices >= 0, one "
                         f"per member")
    return ids


def initial_state(config: TrainConfig, agent: Dreamer, k_agent: jax.Array, k_loop: jax.Array,
                  hyper: dict | None, env_state: Any, timestep: Timestep) -> TrainState:
    """One seed's state before its first step: fresh agent, empty replay, `timestep` to act on."""
    E = config.num_envs
    carry = agent.initial_carry(E)
    example = _record(jax.tree.map(lambda x: x[0], timestep), carry.action[0])
    example["obs"] = jax.tree.map(  # the storage dtype of float observations; sample widens them
        lambda x: x.astype(config.replay_obs_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        example["obs"])
    zero = jnp.zeros((), jnp.int32)
    return TrainState(agent.init(k_agent, hyper), env_state, timestep, carry,
                      rb.init(example, E, config.replay_size // E, config.replay_online,
                              curious=config.replay_priority == "curious"),
                      k_loop, zero, zero, zero)


def make_agent_step(config: TrainConfig, agent: Dreamer,
                    place_batch: Callable[[Batch], Batch] | None = None):
    """The agent's side of one vector step, shared by the fused loop and the host loop:
    act on `state.timestep`, write that record (with the action) to replay, and run the updates
    that keep the train ratio exact. Returns `(state, action, n_updates, metric_sums)`; the
    caller steps the envs with `action` and stores the next timestep. `place_batch` may place
    each replayed batch on devices (a sharding constraint).

    Updates start once replay holds one batch of windows. The ratio is kept with an integer
    credit of replayed steps (units of 1/denominator), so any ratio and env count are exact.
    With `config.replay_online` each batch first takes the online queue's unserved windows; with
    `config.replay_priority == "curious"` batches are drawn by Curious Replay's priorities, which
    each update's world-model losses then refresh.
    """
    c = config.agent
    E, B, T = config.num_envs, c.batch_size, c.batch_length
    ratio = ratio_fraction(config.train_ratio)
    credit_per_step = E * ratio.numerator  # per vector step, in units of 1/ratio_den replayed steps
    credit_per_update = ratio.denominator * B * T
    place_batch = place_batch or (lambda batch: batch)

    curious = config.replay_priority == "curious"

    def update_many(agent_state, replay, key, n):
        """Run n updates (n traced), returning the agent state, metric sums and what the
        updates change in replay: the online queue's served count, or Curious Replay's
        (visits, priority); None for plain replay. Only those are carried through the loop, not
        the records."""
        zeros = {k: jnp.zeros((), jnp.float32) for k in agent.metric_names}
        changed = (replay.served if config.replay_online else
                   (replay.visits, replay.priority) if curious else None)

        def body(i, carry):
            state, sums, changed = carry
            k_sample, k_update = jax.random.split(jax.random.fold_in(key, i))
            if config.replay_online:
                data, queue = rb.sample_online(replay._replace(served=changed), k_sample, B, T)
                changed = queue.served
            elif curious:
                stats = replay._replace(visits=changed[0], priority=changed[1])
                data, env, idx = rb.sample_curious(stats, k_sample, B, T)
            else:
                data = rb.sample(replay, k_sample, B, T)
            state, metrics, model_loss = agent.update_with_model_loss(
                state, place_batch(Batch(**data)), k_update)
            if curious:
                stats = rb.mark_trained(stats, env, idx, model_loss)
                changed = (stats.visits, stats.priority)
            return state, jax.tree.map(jnp.add, sums, metrics), changed

        return jax.lax.fori_loop(0, n, body, (agent_state, zeros, changed))

    def agent_step(state: TrainState, k_act: jax.Array, k_update: jax.Array):
        ts = state.timestep
        action, carry = agent.act(state.agent, state.carry, ts.obs, ts.is_first, k_act)
        replay = rb.add(state.replay, _record(ts, carry.action))
        ready = jnp.logical_and(rb.can_sample(replay, T), replay.count * E >= B * T)
        credit = state.credit + jnp.where(ready, credit_per_step, 0)
        n = credit // credit_per_update
        agent_state, sums, changed = update_many(state.agent, replay, k_update, n)
        if config.replay_online:
            replay = replay._replace(served=changed)
        elif curious:
            replay = replay._replace(visits=changed[0], priority=changed[1])
        state = state._replace(agent=agent_state, carry=carry, replay=replay,
                               env_steps=state.env_steps + E, updates=state.updates + n,
                               credit=credit - n * credit_per_update)
        return state, action, n, sums

    return agent_step


def seed_hyper(agent: Dreamer, hyper: dict | None, seeds: int) -> dict:
    """Tunables as float32 arrays of shape (seeds,); scalars are broadcast to every seed."""
    out = {}
    for name, value in agent.hyper(hyper).items():  # validates the names
        given = jnp.asarray((hyper or {}).get(name, value), jnp.float32)
        if given.ndim == 0:
            given = jnp.broadcast_to(given, (seeds,))
        if given.shape != (seeds,):
            raise ValueError(f"hyper[{name!r}] has {given.shape[0] if given.ndim else 1} values; "
                             f"give one value or one per seed ({seeds})")
        out[name] = given
    return out


def _record(ts: Timestep, action: jax.Array) -> dict:
    """What replay stores per step: the observation record and the action taken at it."""
    return dict(obs=ts.obs, action=action, reward=ts.reward, is_first=ts.is_first,
                is_last=ts.is_last, is_terminal=ts.is_terminal)


def summarise_chunk(stats: dict, state: TrainState, env: EnvAdapter, ratios: dict) -> dict:
    """A chunk's summed stats as its log row: means per finished episode and per update, and
    each of `ratios` (name -> (numerator, denominator)) as a ratio of the chunk's sums, so that
    a rare event is averaged over every record it occurred in (NaN if none)."""
    eps = stats.pop("episodes")
    n = stats.pop("num_updates")
    out = {
        "env_step": state.env_steps,
        "updates": state.updates,
        "episodes": eps,
        "episode_return": jnp.where(eps > 0, stats.pop("episode_return_sum") / jnp.maximum(eps, 1), jnp.nan),
        "episode_length": jnp.where(eps > 0, stats.pop("episode_length_sum") / jnp.maximum(eps, 1), jnp.nan),
        "chunk_updates": n,
    }
    for k in [k for k in stats if k.startswith(EPISODE_PREFIX)]:  # means over finished episodes
        out[k] = jnp.where(eps > 0, stats.pop(k) / jnp.maximum(eps, 1), jnp.nan)
    out.update(env.chunk_metrics(out))  # e.g. the Crafter score of the chunk's episodes
    for name, (num, den) in ratios.items():
        total, count = stats.pop(num), stats[den]
        out[name] = jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)
    for k, v in stats.items():
        out[k] = jnp.where(n > 0, v / jnp.maximum(n, 1), jnp.nan)
    return out


def num_chunks(config: TrainConfig) -> int:
    return -(-config.steps // config.env_steps_per_chunk)


def host_metrics(metrics: dict) -> list[dict[str, Any]]:
    """Split batched chunk metrics into one plain dict per seed (NaN -> None)."""
    metrics = jax.device_get(metrics)
    seeds = len(metrics["env_step"])
    rows = []
    for s in range(seeds):
        row = {"seed": s}
        for k, v in metrics.items():
            x = v[s].item()
            row[k] = None if isinstance(x, float) and x != x else x
        rows.append(row)
    return rows
