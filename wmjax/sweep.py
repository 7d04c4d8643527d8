"""Helpers for sweep files (experiments/*.py): grids, resumable points, per-point run folders.

Two kinds of sweep axes:
- settings that change shapes or the program (model size, train ratio, env count) run as
  separate programs, one run folder each: `run_point`;
- tunables (`wmjax.agents.dreamer.TUNABLES`: lr, entropy, loss scales) are traced values, so a
  grid of them times the seeds is one vmapped program: `train_grid`, which then writes a run
  folder per grid point with that point's config and metrics.
"""
from __future__ import annotations

import itertools
import math
import os
from typing import Any, Sequence

from wmjax.config import TrainConfig
from wmjax.loop import num_chunks
from wmjax.run import METRICS_FILE, holds_run, read_metrics, train, write_json, write_jsonl

PROGRAM_DIR = "program"
POINTS_DIR = "points"


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, e.g. grid(lr=[1, 2], actent=[3]) -> 2 points."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def point_name(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def final_returns(rows: list[dict], seeds: int, last: int = 3) -> list[float | None]:
    """Per seed, the mean of its last `last` non-null episode returns (None if it has none)."""
    out = []
    for s in range(seeds):
        vals = [r["episode_return"] for r in rows if r["seed"] == s and r["episode_return"] is not None]
        out.append(sum(vals[-last:]) / len(vals[-last:]) if vals else None)
    return out


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan"), 0
    mean = sum(vals) / len(vals)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)), len(vals)


def report(title: str, rows: dict[str, list[dict]], seeds: int) -> dict[str, tuple]:
    """Print and return each point's final return as (mean, std, seeds with episodes)."""
    results = {name: mean_std(final_returns(r, seeds)) for name, r in rows.items()}
    width = max(len(name) for name in results) + 2
    print(f"{title}; final return (mean ± std over seeds):")
    for name, (mean, std, n) in results.items():
        print(f"  {name:<{width}s} {mean:9.2f} ± {std:7.2f}  ({n} seeds with episodes)")
    return results


def is_complete(run_dir: str, config: TrainConfig) -> bool:
    """True when the run folder's newest checkpoint is its last chunk."""
    from wmjax.checkpoint import Checkpointer, checkpoint_dir

    if not os.path.isdir(checkpoint_dir(run_dir)):
        return False
    ckpt = Checkpointer(run_dir, read_only=True)
    try:
        return ckpt.latest() == num_chunks(config)
    finally:
        ckpt.close()


def run_point(config: TrainConfig, logdir: str, resume: bool = False, **train_kwargs) -> list[dict]:
    """Train one sweep point in its own folder; with `resume`, a finished point is skipped and
    an unfinished one continues from its checkpoint. Returns all its metric rows."""
    if resume and holds_run(logdir):
        if not is_complete(logdir, config):
            train(config, logdir, resume=True, **train_kwargs)
    else:
        train(config, logdir, **train_kwargs)
    return read_metrics(logdir)


def train_grid(config: TrainConfig, points: list[dict[str, float]], seeds: int, logdir: str,
               resume: bool = False, **train_kwargs) -> dict[str, list[dict]]:
    """Train every point of a tunables grid with `seeds` seeds each, all in one vmapped program
    (in `logdir/program`), then write `logdir/points/<name>/` per point: config.json (that
    point's resolved config), metrics.jsonl (its seeds, numbered 0..seeds-1) and members.json
    (which members of the program it was). Every point trains seeds 0..seeds-1, the seeds of a
    plain run of its config (`config.seed_ids`), so points differ only in their tunables.
    Returns each point's rows by point name."""
    members = len(points) * seeds
    hyper = {k: [p[k] for p in points for _ in range(seeds)] for k in points[0]}
    program = config.replace(seeds=members, seed_ids=tuple(s for _ in points for s in range(seeds)))
    run_point(program, os.path.join(logdir, PROGRAM_DIR), resume=resume, hyper=hyper,
              **train_kwargs)
    rows = read_metrics(os.path.join(logdir, PROGRAM_DIR))
    out = {}
    for i, point in enumerate(points):
        name = point_name(point)
        folder = os.path.join(logdir, POINTS_DIR, name)
        ids = list(range(i * seeds, (i + 1) * seeds))
        mine = [{**r, "seed": r["seed"] - i * seeds} for r in rows if r["seed"] in ids]
        point_config = config.replace(seeds=seeds, seed_ids=None,
                                      agent=config.agent.replace(**point))
        write_json(os.path.join(folder, "config.json"), point_config.to_dict())
        write_json(os.path.join(folder, "members.json"),
                    dict(program=os.path.join("..", "..", PROGRAM_DIR), members=ids, point=point))
        write_jsonl(os.path.join(folder, METRICS_FILE), mine)
        out[name] = mine
    return out


def train_tunables_grid(ap, args, axes: dict[str, Sequence[float]]) -> dict[str, tuple]:
    """The body of a tunables sweep file: the grid of `axes` x `args.seeds` seeds trained as one
    program from `sweep_parser` flags (a bad setting exits through `ap.error`), then reported."""
    try:
        base = base_config(args)
        for name, values in axes.items():  # a flag error here, not a traceback from train
            for value in values:
                base.agent.check_tunable(name, value)
    except ValueError as e:
        ap.error(str(e))
    points = grid(**axes)
    rows = train_grid(base, points, args.seeds, args.logdir, args.resume, **train_kwargs(args))
    return report(f"{args.env}, {len(points)} points x {args.seeds} seed(s) in one program",
                  rows, args.seeds)


def sweep_parser(doc: str, logdir: str):
    """The flags every sweep file shares; any agent field is settable with --set NAME=VALUE."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--steps", type=int, default=50_000, help="env steps per seed")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per sweep point")
    ap.add_argument("--preset", default="size1m")
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--train-ratio", type=float, default=32.0)
    ap.add_argument("--chunk-steps", type=int, default=2048)
    ap.add_argument("--replay-size", type=int, default=None,
                    help="replay capacity per seed (default: the whole run, all steps kept)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override an agent config field for every point (repeatable)")
    ap.add_argument("--logdir", default=logdir)
    ap.add_argument("--resume", action="store_true",
                    help="skip finished points and continue unfinished ones from their checkpoints")
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--wandb", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    return ap


def base_config(args) -> TrainConfig:
    """The sweep's TrainConfig from `sweep_parser` flags (validated; raises ValueError)."""
    from wmjax.cli import parse_override
    from wmjax.config import DreamerConfig
    from wmjax.envs import check_env_name

    check_env_name(args.env)
    agent = DreamerConfig.preset(args.preset, **dict(parse_override(s) for s in args.set))
    replay = args.replay_size or max(args.steps, args.envs * (agent.batch_length + 1))
    return TrainConfig(env=args.env, num_envs=args.envs, seeds=args.seeds, steps=args.steps,
                       train_ratio=args.train_ratio, chunk_steps=args.chunk_steps,
                       replay_size=replay, agent=agent)


def train_kwargs(args) -> dict[str, Any]:
    return dict(checkpoint_every=args.checkpoint_every, wandb=args.wandb,
                verbose=not args.quiet)
