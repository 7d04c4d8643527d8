"""Learning curves of DreamerV3 (wmjax) on gymnax classic control, with wall-clock.

Prints mean episode return (over seeds) against env steps for each task and checks it against
the issue's targets: CartPole-v1 >= 450, Acrobot-v1 >= -100, Pendulum-v1 >= -250 within 50k
env steps. "final" is the mean over seeds of the last `--final-points` log points; "frozen" is
each seed's final checkpoint played for `--eval-episodes` episodes (sampling as in training),
averaged over seeds. A task passes when both reach the target: training returns come from a
policy that changes every few env steps and can hide a late regression.

    python benchmarks/learning.py                              # all three, 1 seed, 50k steps
    python benchmarks/learning.py --envs CartPole-v1 --seeds 3

The default settings are a reduced-compute variant of DreamerV3 for a 2-core CPU, stated in the
output: size1m, train ratio 64, lr 3e-4 with a 200-update warm-up (DreamerV3: 4e-5, 1000),
imagination from 256 of the 1024 replayed states (DreamerV3: all).
"""
from __future__ import annotations

import argparse
import json
import os
import time

from wmjax.config import DreamerConfig, TrainConfig
from wmjax.machine import describe as describe_machine
from wmjax.policy import seed_returns
from wmjax.run import train
from wmjax.startup import start_command

TARGETS = {"CartPole-v1": 450.0, "Acrobot-v1": -100.0, "Pendulum-v1": -250.0}
RANDOM = {"CartPole-v1": 22.2, "Acrobot-v1": -499.7, "Pendulum-v1": -1224.0}


def parse_overrides(items: list[str]) -> dict:
    from wmjax.cli import parse_override

    return dict(parse_override(s) for s in items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=list(TARGETS))
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--preset", default="size1m")
    ap.add_argument("--train-ratio", type=float, default=64.0)
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--chunk-steps", type=int, default=2048)
    ap.add_argument("--final-points", type=int, default=3)
    ap.add_argument("--eval-episodes", type=int, default=32, help="0: skip the frozen play")
    ap.add_argument("--set", action="append", default=None, metavar="NAME=VALUE",
                    help="agent overrides (default: lr=3e-4 warmup=200 imag_starts=256)")
    ap.add_argument("--logdir", default="runs/bench_learning")
    ap.add_argument("--out", default="benchmarks/results/learning.json")
    args = ap.parse_args()
    if args.eval_episodes < 0:
        ap.error(f"--eval-episodes {args.eval_episodes}; allowed: >= 0")

    overrides = parse_overrides(args.set or ["lr=3e-4", "warmup=200", "imag_starts=256"])
    results = {}
    for env in args.envs:
        cfg = TrainConfig(env=env, num_envs=args.num_envs, seeds=args.seeds, steps=args.steps,
                          train_ratio=args.train_ratio, replay_size=args.steps,
                          chunk_steps=args.chunk_steps,
                          agent=DreamerConfig.preset(args.preset, **overrides))
        print(f"\n=== {env}: {args.preset}, {args.seeds} seed(s), {args.steps:,d} steps, "
              f"ratio {args.train_ratio:g}, overrides {overrides}")
        start = time.time()
        _, rows = train(cfg, os.path.join(args.logdir, env))
        wall = time.time() - start
        curve: dict[int, list[float]] = {}
        for r in rows:
            if r["episode_return"] is not None:
                curve.setdefault(int(r["env_step"]), []).append(r["episode_return"])
        points = sorted(curve)
        mean_curve = [(s, sum(curve[s]) / len(curve[s])) for s in points]
        final = [v for _, v in mean_curve[-args.final_points:]]
        final_mean = sum(final) / len(final)
        frozen = (seed_returns(os.path.join(args.logdir, env), args.eval_episodes)
                  if args.eval_episodes else None)
        frozen_mean = None if frozen is None else sum(frozen) / len(frozen)
        target = TARGETS.get(env)
        passed = (target is not None and final_mean >= target
                  and (frozen_mean is None or frozen_mean >= target))
        results[env] = dict(curve=mean_curve, final=final_mean, frozen=frozen,
                            frozen_mean=frozen_mean, eval_episodes=args.eval_episodes,
                            wall_s=wall, target=target, passed=passed, seeds=args.seeds,
                            steps=args.steps, preset=args.preset, train_ratio=args.train_ratio,
                            overrides=overrides, machine=describe_machine())
        print(f"{'env steps':>10s}  mean return")
        for s, v in mean_curve:
            print(f"{s:10,d}  {v:10.1f}")
        played = ("" if frozen is None else f", frozen {frozen_mean:.1f} (per seed "
                  f"{', '.join(f'{v:.1f}' for v in frozen)}; {args.eval_episodes} episodes each)")
        print(f"{env}: final {final_mean:.1f}{played} (random {RANDOM.get(env)}, target {target}) "
              f"-> {'PASS' if passed else 'below target'}; wall-clock {wall / 60:.1f} min")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    start_command()  # huge pages (restarts once) and the compile cache, before any work
    main()
