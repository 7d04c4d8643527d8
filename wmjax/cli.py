"""Command line: `python -m wmjax train ...` (also installed as `wmjax`)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from wmjax.config import PRESETS, DreamerConfig, TrainConfig
from wmjax.envs import REGISTRY, check_env_name


def parse_override(text: str) -> tuple[str, typing.Any]:
    """`name=value` for a DreamerConfig field, value converted to the field's type."""
    if "=" not in text:
        raise ValueError(f"--set expects name=value, got {text!r}")
    name, value = text.split("=", 1)
    fields = {f.name: f for f in dataclasses.fields(DreamerConfig)}
    if name not in fields:
        raise ValueError(f"--set: unknown agent field {name!r}; known: {', '.join(sorted(fields))}")
    kind = type(getattr(DreamerConfig(), name))
    try:
        return name, kind(value)
    except ValueError:
        raise ValueError(f"--set {name}: {value!r} is not a valid {kind.__name__}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wmjax", description="World-model RL in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train DreamerV3 in one fused XLA program")
    t.add_argument("--env", default="CartPole-v1", help=f"one of: {', '.join(sorted(REGISTRY))}")
    t.add_argument("--preset", default="size1m", help=f"one of: {', '.join(PRESETS)}")
    t.add_argument("--steps", type=int, default=50_000, help="env steps per seed")
    t.add_argument("--seeds", type=int, default=1, help="seeds trained at once (vmapped)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--envs", type=int, default=16, help="vectorised envs per seed")
    t.add_argument("--train-ratio", type=float, default=32.0,
                   help="replayed steps per env step (DreamerV3's train_ratio)")
    t.add_argument("--replay-size", type=int, default=1_000_000, help="replay capacity per seed")
    t.add_argument("--chunk-steps", type=int, default=2048,
                   help="env steps per seed between log points")
    t.add_argument("--logdir", default="runs/default")
    t.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override an agent config field, e.g. --set lr=1e-4 (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = dict(parse_override(s) for s in args.set)
        agent = DreamerConfig.preset(args.preset, **overrides)
        # A replay larger than the run is never filled; keep it at least one window per env.
        min_replay = max(1, args.envs) * (agent.batch_length + 1)
        replay_size = max(min(args.replay_size, args.steps), min_replay)
        config = TrainConfig(
            env=args.env, num_envs=args.envs, seeds=args.seeds, seed=args.seed, steps=args.steps,
            train_ratio=args.train_ratio, replay_size=replay_size,
            chunk_steps=args.chunk_steps, agent=agent,
        )
        check_env_name(args.env)
    except ValueError as e:
        print(f"wmjax: error: {e}", file=sys.stderr)
        return 2
    from wmjax.run import train

    train(config, args.logdir)
    print(f"wrote {args.logdir}/metrics.jsonl")
    return 0
