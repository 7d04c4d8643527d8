"""Command line (also installed as `wmjax`):

    python -m wmjax train --env CartPole-v1 --steps 50000 --logdir runs/cartpole [--wandb]
    python -m wmjax train --resume runs/cartpole            # continue from the newest checkpoint
    python -m wmjax train --fork runs/cartpole --logdir runs/cartpole_lr --set lr=1e-4  # branch
    python -m wmjax eval runs/cartpole --episodes 20
    python -m wmjax plot runs/cartpole runs/other --out plots/
    python -m wmjax table runs/cartpole runs/other --every 10000  # mean return per 10k steps
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing

from wmjax.config import (PRESETS, REPLAY_OBS_DTYPES, REPLAY_PRIORITIES, TUNABLES, DreamerConfig,
                          TrainConfig)
from wmjax.envs import REGISTRY, check_env_name

# TrainConfig flags and their defaults. They parse to None so that with --resume we can tell
# which ones were given (and must then match the saved run).
TRAIN_DEFAULTS = dict(env="CartPole-v1", preset="size1m", steps=50_000, seeds=1, seed=0,
                      envs=16, train_ratio=32.0, replay_size=1_000_000, chunk_steps=2048,
                      replay_obs_dtype="float32", replay_online=False, replay_priority="uniform")


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


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
        if kind is tuple:  # e.g. --set cnn_mults=2,3,4
            return name, tuple(int(v) for v in value.split(","))
        if kind is bool:  # bool("false") would be True
            return name, _BOOLS[value.lower()]
        return name, kind(value)
    except KeyError:
        raise ValueError(f"--set {name}: {value!r} is not a valid bool; allowed: "
                         f"{', '.join(_BOOLS)}") from None
    except ValueError:
        raise ValueError(f"--set {name}: {value!r} is not a valid {kind.__name__}") from None


def parse_schedule_entry(text: str) -> tuple[int, str, float]:
    """`STEP:NAME=VALUE` (--set-from) as a TrainConfig.tunable_schedule entry."""
    step, sep, change = text.partition(":")
    if not sep or "=" not in change:
        raise ValueError(f"--set-from expects STEP:NAME=VALUE (e.g. 500000:reward_scale=10), "
                         f"got {text!r}")
    name, value = change.split("=", 1)
    if name not in TUNABLES:
        raise ValueError(f"--set-from: {name!r} is not a tunable; tunables: {', '.join(TUNABLES)}")
    try:
        return int(step.replace("_", "")), name, float(value)
    except ValueError:
        raise ValueError(f"--set-from {text!r}: STEP must be an integer and VALUE a number") from None


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed `train` flags (defaults filled in); raises ValueError."""
    get = lambda name: TRAIN_DEFAULTS[name] if getattr(args, name) is None else getattr(args, name)
    overrides = dict(parse_override(s) for s in args.set)
    agent = DreamerConfig.preset(get("preset"), **overrides)
    steps, envs = get("steps"), get("envs")
    # A replay larger than the run is never filled; keep it at least one window per env.
    replay_size = max(min(get("replay_size"), steps), max(1, envs) * (agent.batch_length + 1))
    check_env_name(get("env"))
    return TrainConfig(env=get("env"), num_envs=envs, seeds=get("seeds"), seed=get("seed"),
                       steps=steps, train_ratio=get("train_ratio"), replay_size=replay_size,
                       chunk_steps=get("chunk_steps"), replay_obs_dtype=get("replay_obs_dtype"),
                       replay_online=get("replay_online"),
                       replay_priority=get("replay_priority"), agent=agent,
                       tunable_schedule=_schedule(args) or ())


def _schedule(args: argparse.Namespace) -> tuple[tuple[int, str, float], ...] | None:
    """--set-from's entries, or None when the flag was not given."""
    return None if args.set_from is None else tuple(parse_schedule_entry(s) for s in args.set_from)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wmjax", description="World-model RL in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train DreamerV3 in one fused XLA program")
    d = TRAIN_DEFAULTS
    t.add_argument("--env", help=f"one of: {', '.join(sorted(REGISTRY))} (default {d['env']})")
    t.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default {d['preset']})")
    t.add_argument("--steps", type=int, help=f"env steps per seed (default {d['steps']})")
    t.add_argument("--seeds", type=int, help="seeds trained at once, vmapped (default 1)")
    t.add_argument("--seed", type=int, help="base PRNG seed (default 0)")
    t.add_argument("--envs", type=int, help="vectorised envs per seed (default 16)")
    t.add_argument("--train-ratio", type=float,
                   help="replayed steps per env step, DreamerV3's train_ratio (default 32)")
    t.add_argument("--replay-size", type=int, help="replay capacity per seed (default 1M)")
    t.add_argument("--replay-obs-dtype", choices=REPLAY_OBS_DTYPES,
                   help="how replay stores float observations (default float32; float16 or "
                        "bfloat16 halve its memory, e.g. for many Craftax-Symbolic seeds)")
    t.add_argument("--replay-online", action="store_true", default=None,
                   help="DreamerV3's online queue: serve every new replay window once, first in "
                        "a batch, before uniform sampling (default off)")
    t.add_argument("--replay-priority", choices=REPLAY_PRIORITIES,
                   help="how replay windows are drawn: uniform (DreamerV3's, the default) or "
                        "curious (Curious Replay: new records and those the world model predicts "
                        "badly first)")
    t.add_argument("--chunk-steps", type=int,
                   help="env steps per seed between log points (default 2048)")
    t.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override an agent config field, e.g. --set lr=1e-4 (repeatable)")
    t.add_argument("--set-from", action="append", default=None, metavar="STEP:NAME=VALUE",
                   help="change a tunable for every seed from env step STEP on (at the first chunk "
                        "boundary at or after it), e.g. --set-from 500000:reward_scale=10 "
                        f"(repeatable; tunables: {', '.join(TUNABLES)})")
    t.add_argument("--logdir", help="run folder (default: runs/ENV-DATE-TIME); must not hold a run")
    t.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its newest checkpoint; flags given must "
                        "match its config (except --steps, which may extend it)")
    t.add_argument("--fork", metavar="SRC",
                   help="start the new run in --logdir from the newest checkpoint of run SRC (or "
                        "--fork-chunk), with the tunables (or matmul_precision) given by --set "
                        "changed, e.g. --set reward_scale=10; other flags must match SRC's "
                        "config, except --steps")
    t.add_argument("--fork-chunk", type=int, metavar="N", help="with --fork: SRC's checkpoint N")
    t.add_argument("--checkpoint-every", type=int, default=10,
                   help="checkpoint every N chunks and at the end (0: only at the end)")
    t.add_argument("--wandb", action="store_true",
                   help="also log to Weights & Biases (offline unless WANDB_MODE is set)")
    t.add_argument("--wandb-project", default="wmjax")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--devices", type=int,
                   help="shard the run over this many devices: seeds first, then envs and the "
                        "replayed batch (default: one device)")
    t.add_argument("--coordinator", metavar="HOST:PORT",
                   help="several hosts: address of process 0 (or JAX_COORDINATOR_ADDRESS); every "
                        "process runs the same command with its own --process-id")
    t.add_argument("--num-processes", type=int, help="several hosts: how many processes "
                   "(or WMJAX_NUM_PROCESSES)")
    t.add_argument("--process-id", type=int, help="several hosts: this process, 0..N-1 "
                   "(or WMJAX_PROCESS_ID)")

    e = sub.add_parser("eval", help="mean return of a trained run's policy")
    e.add_argument("run_dir")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--seed-index", type=int, default=0, help="which of the run's seeds")
    e.add_argument("--mode", default="eval", choices=["eval", "train"],
                   help="eval: the policy's mode; train: sample as in training")
    e.add_argument("--key", type=int, default=0, help="PRNG seed of the evaluation episodes")
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("plot", help="learning curves and the open-loop imagination report")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the first run dir)")
    p.add_argument("--metric", default="episode_return")
    p.add_argument("--smooth", type=float, default=0, metavar="STEPS",
                   help="draw each curve as its mean over the trailing STEPS env steps, the "
                        "logged curve faint behind it (default 0: as logged)")
    p.add_argument("--no-openloop", action="store_true", help="only the learning curves")
    p.add_argument("--seed-index", type=int, default=0)

    b = sub.add_parser("table", help="a Markdown table of a metric's mean per bin of env steps")
    b.add_argument("run_dirs", nargs="+")
    b.add_argument("--every", type=int, default=100_000, help="env steps per bin (default 100000)")
    b.add_argument("--metric", default="episode_return",
                   help="any metrics.jsonl field; episode_return and episode_length are weighted "
                        "by the episodes each row finished (default episode_return)")
    a = sub.add_parser("achievements", help="each Craftax achievement's success rate over the "
                                            "episodes of one or more runs, side by side")
    a.add_argument("run_dirs", nargs="+")
    a.add_argument("--from-step", type=int, default=0,
                   help="only chunks logged after this many env steps (default 0)")
    a.add_argument("--to-step", type=int, default=None,
                   help="only chunks logged up to this many env steps (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": _train, "eval": _eval, "plot": _plot, "table": _table,
                "achievements": _achievements}[args.command](args)
    except ValueError as e:  # includes config, run-folder and checkpoint errors
        print(f"wmjax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # train has saved what it could and said so
        print("wmjax: interrupted", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    from wmjax.run import stop_on_sigterm, train

    stop_on_sigterm()  # SIGTERM saves the chunk in flight, like Ctrl-C

    several = args.coordinator or args.num_processes is not None or args.process_id is not None
    if several and args.fork:
        raise ValueError("--fork writes the new folder from one process: fork there, then "
                         "--resume it with several")
    if several:
        from wmjax.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)
        if not (args.logdir or args.resume):
            raise ValueError("several processes write one run folder: give them all the same "
                             "--logdir (or --resume DIR)")
    if args.fork_chunk is not None and not args.fork:
        raise ValueError("--fork-chunk picks a checkpoint of --fork SRC; give --fork too")
    if args.fork:
        config, logdir = None, _fork(args)  # train resumes the forked folder
    elif args.resume:
        config = _resume_config(args)
        logdir = args.resume
    else:
        config = build_config(args)
        logdir = args.logdir or os.path.join(
            "runs", f"{config.env}-{time.strftime('%Y%m%d-%H%M%S')}")
    train(config, logdir, resume=bool(args.resume or args.fork),
          checkpoint_every=args.checkpoint_every, wandb=args.wandb,
          wandb_project=args.wandb_project, verbose=not args.quiet, devices=args.devices)
    from wmjax.distributed import is_main_process

    if is_main_process():
        print(f"wrote {logdir}/metrics.jsonl")
    return 0


def _fork(args: argparse.Namespace) -> str:
    """`train --fork SRC --logdir DST --set NAME=VALUE`: fork SRC into DST (wmjax.run.fork), which
    `train` then resumes. Returns DST."""
    from wmjax.run import FORKABLE_SETTINGS, fork, load_config

    if args.resume:
        raise ValueError("--fork starts a new run from another's checkpoint and --resume "
                         "continues one; give one of them")
    if not args.logdir:
        raise ValueError("--fork needs --logdir, the new run's folder")

    tunables = dict(parse_override(s) for s in args.set)
    requested = _resume_config(args, args.fork)
    ignore = ("steps",) + tuple(f"agent.{name}" for name in tunables)
    diffs = load_config(args.fork).differences(requested, ignore=ignore)
    if diffs:
        raise ValueError(f"--fork keeps {args.fork}'s config except --steps and the tunables and "
                         f"{', '.join(FORKABLE_SETTINGS)} set with --set; these differ (saved != "
                         f"requested): {'; '.join(diffs)}")
    fork(args.fork, args.logdir, tunables, chunk=args.fork_chunk, steps=args.steps)
    return args.logdir


def _resume_config(args: argparse.Namespace, run_dir: str | None = None) -> TrainConfig:
    """The saved config of `run_dir` (default: --resume's) with the flags given on this
    command line applied on top, so that `train` can name any that differ from the saved run."""
    from wmjax.run import load_config

    saved = load_config(run_dir or args.resume)
    agent = dict(parse_override(s) for s in args.set)
    if args.preset is not None:
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}; known presets: {', '.join(PRESETS)}")
        agent = {**PRESETS[args.preset], **agent}
    flag = lambda name, saved_value: saved_value if getattr(args, name) is None else getattr(args, name)
    return saved.replace(
        env=flag("env", saved.env), num_envs=flag("envs", saved.num_envs),
        seeds=flag("seeds", saved.seeds), seed=flag("seed", saved.seed),
        steps=flag("steps", saved.steps), train_ratio=flag("train_ratio", saved.train_ratio),
        replay_size=flag("replay_size", saved.replay_size),
        chunk_steps=flag("chunk_steps", saved.chunk_steps),
        replay_obs_dtype=flag("replay_obs_dtype", saved.replay_obs_dtype),
        replay_online=flag("replay_online", saved.replay_online),
        replay_priority=flag("replay_priority", saved.replay_priority),
        agent=saved.agent.replace(**agent),
        tunable_schedule=saved.tunable_schedule if args.set_from is None else _schedule(args),
    )


def _eval(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from wmjax.policy import evaluate, load_policy

    policy = load_policy(args.run_dir, seed=args.seed_index, mode=args.mode)
    returns = np.asarray(evaluate(policy, args.episodes, jax.random.key(args.key)))
    result = dict(run_dir=args.run_dir, env=policy.config.env, seed=args.seed_index,
                  chunk=policy.chunk, mode=args.mode, episodes=args.episodes,
                  mean_return=float(returns.mean()), std_return=float(returns.std()),
                  returns=[float(r) for r in returns])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.run_dir} ({policy.config.env}, seed {args.seed_index}, checkpoint after "
              f"chunk {policy.chunk}): mean return {result['mean_return']:.2f} ± "
              f"{result['std_return']:.2f} over {args.episodes} episodes ({args.mode} mode)")
    return 0


def _runs_rows(run_dirs: list[str]) -> dict[str, list[dict]]:
    """Each run folder's metrics rows, by its normalised path; ValueError names a folder
    without any (all are checked before any is read)."""
    from wmjax.run import read_metrics

    for run_dir in run_dirs:
        if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
            raise ValueError(f"{run_dir} holds no metrics.jsonl; pass run folders")
    return {os.path.normpath(d): read_metrics(d) for d in run_dirs}


def _table(args: argparse.Namespace) -> int:
    from wmjax.plots import binned_table

    print(binned_table(_runs_rows(args.run_dirs), args.every, args.metric))
    return 0


def _achievements(args: argparse.Namespace) -> int:
    from wmjax.envs.core import EPISODE_PREFIX
    from wmjax.envs.craftax import ACHIEVEMENT_PREFIX, achievement_rates, crafter_score
    from wmjax.plots import achievements_table

    if args.to_step is not None and args.to_step <= args.from_step:
        raise ValueError(f"--to-step {args.to_step} <= --from-step {args.from_step}; allowed: "
                         f"a window of env steps with to > from")
    rates, scores = {}, {}
    logged = EPISODE_PREFIX + ACHIEVEMENT_PREFIX
    for name, rows in _runs_rows(args.run_dirs).items():
        if rows and not any(k.startswith(logged) for r in rows for k in r):
            raise ValueError(f"{name} logs no achievements; allowed: Craftax-Classic runs")
        rows = [r for r in rows if args.from_step < r["env_step"] and
                (args.to_step is None or r["env_step"] <= args.to_step)]
        # every seed's episodes pooled
        rates[name], scores[name] = [achievement_rates(rows)], crafter_score(rows)
    print(achievements_table(rates))
    print("Crafter score (%): " + ", ".join(
        f"{name} {'–' if score is None else f'{score:.2f}'}" for name, score in scores.items()))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from wmjax.plots import plot_curves, plot_openloop

    out = args.out or args.run_dirs[0]
    path = plot_curves(args.run_dirs, os.path.join(out, "curves.png"), args.metric, args.smooth)
    print(f"wrote {path}")
    if not args.no_openloop:
        for run_dir in args.run_dirs:
            name = os.path.basename(os.path.normpath(run_dir))
            for path in plot_openloop(run_dir, os.path.join(out, f"{name}_openloop.png"),
                                      seed=args.seed_index):
                print(f"wrote {path}")
    return 0
