"""Train several seeds of DreamerV3 in one vmapped program and report the spread across seeds.

    python experiments/seeds.py --env CartPole-v1 --seeds 4 --steps 50000
    python experiments/seeds.py --env Pendulum-v1 --seeds 2 --preset tiny --steps 4000

Writes `runs/experiments/seeds/ENV/` (config.json, metrics.jsonl with one row per seed per log
point) and prints the mean and standard deviation over seeds of each seed's final return.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wmjax import DreamerConfig, TrainConfig, train  # noqa: E402


def final_returns(rows: list[dict], seeds: int, last: int = 3) -> list[float | None]:
    """Per seed, the mean of its last `last` non-null episode returns."""
    out = []
    for s in range(seeds):
        vals = [r["episode_return"] for r in rows if r["seed"] == s and r["episode_return"] is not None]
        out.append(sum(vals[-last:]) / len(vals[-last:]) if vals else None)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--preset", default="size1m")
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--train-ratio", type=float, default=32.0)
    ap.add_argument("--chunk-steps", type=int, default=2048)
    ap.add_argument("--logdir", default="runs/experiments/seeds")
    args = ap.parse_args(argv)
    config = TrainConfig(env=args.env, num_envs=args.envs, seeds=args.seeds, steps=args.steps,
                         train_ratio=args.train_ratio, chunk_steps=args.chunk_steps,
                         replay_size=max(args.steps, args.envs * 65),
                         agent=DreamerConfig.preset(args.preset))
    logdir = os.path.join(args.logdir, args.env)
    _, rows = train(config, logdir)
    finals = final_returns(rows, args.seeds)
    vals = [v for v in finals if v is not None]
    mean = sum(vals) / len(vals) if vals else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)) if vals else float("nan")
    print(f"{args.env}: final return per seed {finals}; mean {mean:.1f} ± {std:.1f} over "
          f"{len(vals)} seed(s); log in {logdir}")
    return dict(finals=finals, mean=mean, std=std, logdir=logdir)


if __name__ == "__main__":
    main()
