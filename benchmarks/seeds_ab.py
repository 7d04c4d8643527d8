"""How should one CPU run several seeds: one after another (`wmjax.loop.over_seeds`) or a vmap?

Builds the fused loop twice in one process, once as it runs (seed after seed on a CPU) and once
with the seeds vmapped, as it ran before session 44, and times whole chunks round-robin (this
machine's speed drifts, so the two are compared within each round). Also prints XLA's memory
analysis of each chunk program and how far the two runs' parameters drift apart.

    python benchmarks/seeds_ab.py --seeds 4
    python benchmarks/seeds_ab.py --seeds 1 --chunk-steps 512 --rounds 12
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import wmjax.loop as loop  # noqa: E402
from benchmarks.throughput import write_comparison  # noqa: E402
from wmjax.config import DreamerConfig, TrainConfig  # noqa: E402
from wmjax.startup import start_command  # noqa: E402


def vmapped_trainer(config: TrainConfig) -> loop.Trainer:
    """The fused loop with its seeds vmapped (the loop's program before session 44)."""
    as_built = loop.over_seeds
    loop.over_seeds = lambda fn, seeds: jax.vmap(fn)
    try:
        return loop.make_train(config)
    finally:
        loop.over_seeds = as_built


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--preset", default="size1m")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--train-ratio", type=float, default=32)
    ap.add_argument("--chunk-steps", type=int, default=256)
    ap.add_argument("--warmup-chunks", type=int, default=5,
                    help="untimed chunks first, until replay holds a batch and updates run")
    ap.add_argument("--rounds", type=int, default=8, help="timed round-robin rounds")
    ap.add_argument("--out", default="benchmarks/results/seeds_ab.json")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.rounds < 1:
        ap.error(f"--seeds {args.seeds} --rounds {args.rounds}; allowed: both >= 1")
    try:
        config = TrainConfig(env=args.env, num_envs=args.envs, seeds=args.seeds, steps=10**9,
                             chunk_steps=args.chunk_steps, train_ratio=args.train_ratio,
                             agent=DreamerConfig.preset(args.preset))
    except ValueError as e:
        ap.error(str(e))

    trainers = {"seed after seed": loop.make_train(config), "vmap": vmapped_trainer(config)}
    states, memory = {}, {}
    for name, trainer in trainers.items():
        state = trainer.init(jax.random.key(0))
        stats = trainer.train_chunk.lower(state).compile().memory_analysis()
        memory[name] = getattr(stats, "temp_size_in_bytes", float("nan")) / 1e6
        for _ in range(args.warmup_chunks):
            state, _ = trainer.train_chunk(state)
        states[name] = jax.block_until_ready(state)
    times = {name: [] for name in trainers}
    for r in range(args.rounds):
        for name in (list(trainers) if r % 2 == 0 else list(trainers)[::-1]):
            start = time.perf_counter()
            states[name], _ = trainers[name].train_chunk(states[name])
            jax.block_until_ready(states[name])
            times[name].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times["seed after seed"], times["vmap"])]
    drift = max(float(abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(states["seed after seed"].agent.params), jax.tree.leaves(states["vmap"].agent.params)))
    updates = int(states["vmap"].updates[0])
    print(f"{args.preset} on {args.env}, {args.seeds} seed(s) x {args.envs} envs, ratio "
          f"{args.train_ratio:g}, {args.chunk_steps}-step chunks, {args.rounds} rounds, "
          f"{os.cpu_count()} cores, jax {jax.__version__}")
    rows = []
    for name, ts in times.items():
        rows.append(dict(way=name, median_s=statistics.median(ts), min_s=min(ts), times_s=ts,
                         temp_mb=memory[name]))
        print(f"{name:16s} median chunk {statistics.median(ts):.3f} s  min {min(ts):.3f} s  "
              f"temporaries {memory[name]:.0f} MB")
    print(f"seed after seed / vmap, median of the rounds' ratios: x{statistics.median(ratios):.3f} "
          f"(rounds: {min(ratios):.2f}-{max(ratios):.2f}); parameters differ by at most {drift:.1e} "
          f"after {updates} updates")
    args.set = []  # write_comparison records config overrides; there are none
    return write_comparison(args, rows, seeds=args.seeds, chunk_steps=args.chunk_steps,
                            ratio=statistics.median(ratios), ratios=ratios, param_drift=drift,
                            updates=updates)


if __name__ == "__main__":
    start_command(cache=False)  # huge pages (restarts once), as throughput.py; no compile cache
    main()
