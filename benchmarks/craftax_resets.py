"""Craftax-Classic env steps/s on this machine: optimistic resets against a reset per env per step.

    python benchmarks/craftax_resets.py --envs 256 --steps 100

A per-env auto-reset under vmap generates a world for every env on every step (both branches of
the select run); the optimistic reset (wmjax.envs.craftax) generates ceil(envs / reset_ratio)
worlds per step. Both loops are one jitted scan of random actions; compile time is excluded.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

from wmjax.envs import make_env  # noqa: E402
from wmjax.envs.core import EnvAdapter  # noqa: E402
from wmjax.startup import start_command  # noqa: E402


def steps_per_second(env, envs: int, steps: int, step_batch) -> float:
    def run(key):
        state, _ = env.reset_batch(key, envs)

        def body(carry, k):
            state, total = carry
            k_act, k_env = jax.random.split(k)
            action = jax.random.randint(k_act, (envs,), 0, env.spec.num_actions)
            state, ts = step_batch(k_env, state, action)
            return (state, total + ts.is_first.sum()), None

        (state, resets), _ = jax.lax.scan(body, (state, 0), jax.random.split(key, steps))
        return resets

    fn = jax.jit(run).lower(jax.random.key(0)).compile()
    jax.block_until_ready(fn(jax.random.key(1)))  # warm
    start = time.perf_counter()
    resets = jax.block_until_ready(fn(jax.random.key(2)))
    return envs * steps / (time.perf_counter() - start), int(resets)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="Craftax-Classic-Symbolic-v1")
    ap.add_argument("--envs", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100, help="vector steps timed")
    ap.add_argument("--reset-ratio", type=int, default=16)
    args = ap.parse_args(argv)
    env = dataclasses.replace(make_env(args.env), reset_ratio=args.reset_ratio)
    per_env = lambda key, state, action: jax.vmap(lambda k, s, a: EnvAdapter.step(env, k, s, a))(
        jax.random.split(key, action.shape[0]), state, action)
    out = {}
    for name, fn in (("optimistic", env.step_batch), ("per-env reset", per_env)):
        rate, resets = steps_per_second(env, args.envs, args.steps, fn)
        out[name] = rate
        print(f"{args.env} {name:14s} {args.envs} envs: {rate:10,.0f} env steps/s "
              f"({resets} episode starts in {args.envs * args.steps:,d} steps)")
    print(f"optimistic / per-env: {out['optimistic'] / out['per-env reset']:.1f}x "
          f"(reset_ratio {args.reset_ratio}, {jax.devices()[0].platform})")
    return out


if __name__ == "__main__":
    start_command()  # huge pages (restarts once) and the compile cache, before any work
    main()
