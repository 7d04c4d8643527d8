"""Why do a CartPole run's episodes end? The pole falls, the cart leaves the track, or time runs out.

Loads each seed's newest checkpoint of a CartPole-v1 run (a `python -m wmjax train` folder, a
ladder rung's `dreamer/` folder or a sweep point), plays `--episodes` episodes per seed with
the policy (`--mode train` samples actions as in training, `eval` takes the mode) and counts how
each episode ended. A return below 500 says that the policy failed, not how; this says how.
It also prints what the agent expects: its critic's value with the cart near the centre and
one step before the cart leaves the track (where the true value is about 1), and its continue
head there (see benchmarks/continue_head.py).

    python benchmarks/cartpole_failures.py runs/ladder/cartpole/dreamer
    python benchmarks/cartpole_failures.py RUN_DIR --episodes 64 --mode eval
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gymnax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from wmjax.models.rssm import RSSM  # noqa: E402
from wmjax.policy import load_policy  # noqa: E402
from wmjax.run import load_config  # noqa: E402
from wmjax.startup import start_command  # noqa: E402

CAUSES = ("pole angle", "cart position", "time limit")


def _heads(policy):
    """(critic value, continue probability) of the latent the policy has just acted on."""
    agent, p = policy.agent, policy.state.params

    @jax.jit
    def heads(latent):
        feat = agent.rssm.apply({"params": p["rssm"]}, latent, method=RSSM.feat)
        out = agent.heads(p, feat)
        return out["value"], out["cont"]

    return heads


def episode_ends(run_dir: str, seed: int, episodes: int, mode: str, key: jax.Array) -> dict:
    """Counts of each cause in CAUSES over `episodes` episodes and their mean length; and what
    the agent expects: its critic's value with the cart near the centre (|x| < 0.5) and on the
    last observation before the cart leaves the track, and its continue head there."""
    env, params = gymnax.make("CartPole-v1")
    policy = load_policy(run_dir, seed=seed, mode=mode)
    heads = _heads(policy)
    centre, before_edge = [], []  # critic values; (value, continue) one step before the edge
    key, k_reset = jax.random.split(key)
    obs, state = jax.vmap(env.reset_env, (0, None))(jax.random.split(k_reset, episodes), params)
    step = jax.jit(jax.vmap(env.step_env, (0, 0, 0, None)))
    truncated = jax.jit(jax.vmap(env.is_truncated, (0, None)))  # as wmjax.envs.core does
    carry, first = policy.initial_carry(episodes), jnp.ones(episodes, bool)
    cause = np.full(episodes, -1)
    length = np.zeros(episodes, int)
    for t in range(params.max_steps_in_episode):
        key, k_act, k_step = jax.random.split(key, 3)
        action, carry = policy.act(carry, obs, first, k_act)
        value, cont = (np.asarray(a) for a in heads(carry.latent))
        live = cause < 0
        centre.extend(value[live & (np.abs(np.asarray(state.x)) < 0.5)])
        action = jnp.argmax(action, -1) if action.ndim == 2 else action  # one-hot -> index
        obs, state, _, terminated, _ = step(jax.random.split(k_step, episodes), state, action,
                                            params)
        first = jnp.zeros(episodes, bool)
        # gymnax 1.0's step_env reports termination only; the time limit is its is_truncated
        done = np.asarray(terminated) | np.asarray(truncated(state, params))
        ended = done & (cause < 0)
        angle = np.abs(np.asarray(state.theta)) > params.theta_threshold_radians
        position = np.abs(np.asarray(state.x)) > params.x_threshold
        cause[ended] = np.where(angle, 0, np.where(position, 1, 2))[ended]
        length[ended] = t + 1
        edge = ended & position & ~angle
        before_edge.extend(zip(value[edge], cont[edge]))
        if (cause >= 0).all():
            break
    counts = {name: int((cause == i).sum()) for i, name in enumerate(CAUSES)}
    mean = lambda xs: float(np.mean(xs)) if len(xs) else None
    return dict(seed=seed, chunk=policy.chunk, mean_length=float(length.mean()), **counts,
                value_centre=mean(centre), value_before_edge=mean([v for v, _ in before_edge]),
                continue_before_edge=mean([c for _, c in before_edge]))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--episodes", type=int, default=32, help="episodes per seed")
    ap.add_argument("--mode", choices=("train", "eval"), default="train")
    ap.add_argument("--key", type=int, default=0)
    args = ap.parse_args(argv)
    config = load_config(args.run_dir)
    if config.env != "CartPole-v1":
        ap.error(f"{args.run_dir} trained on {config.env}; this script reads CartPole-v1 runs only")
    rows = []
    for seed in range(config.seeds):
        row = episode_ends(args.run_dir, seed, args.episodes, args.mode,
                           jax.random.fold_in(jax.random.key(args.key), seed))
        rows.append(row)
        fmt = lambda v, f: "n/a" if v is None else format(v, f)
        print(f"seed {seed} (chunk {row['chunk']}): mean length {row['mean_length']:5.1f}  "
              + "  ".join(f"{name} {row[name]:3d}" for name in CAUSES)
              + f"  | value: centre {fmt(row['value_centre'], '.1f')}, one step before the "
                f"edge {fmt(row['value_before_edge'], '.1f')} (continue "
                f"{fmt(row['continue_before_edge'], '.3f')})")
    return rows


if __name__ == "__main__":
    start_command()
    main()
