"""Is one DreamerV3 update faster than at another revision of wmjax?

The working tree's update and the base's (a git revision, exported with `git archive`, or the
`wmjax` package under a folder) are compiled in one process and timed round-robin on the same
fixed batch. This machine's speed drifts by 10% or more within minutes, so versions timed in
separate runs cannot be compared; within a round they can. The answer is the median over rounds
of each round's time ratio (this tree / base). The two updates' metrics are compared as well,
so a change meant to leave the arithmetic alone shows whether it did.

The update is timed over `--seeds` (default 1) as the fused loop runs it (`wmjax.loop.over_seeds`:
since session 44, on a CPU seed after seed, one seed as `--seeds 0` times it). A vmap over the
seeds compiles a different, slower program: session 43's heads mapped over the imagined steps
were 4% faster plain and 38% slower vmapped over one seed.

    python benchmarks/update_ab.py --base HEAD~1
    python benchmarks/update_ab.py --base 5c0c42e --rounds 30 --set imag_starts=256
    python benchmarks/update_ab.py --base-dir ../other_checkout

`--loop` times chunks of the fused training loop instead (acting, replay and updates, as
throughput.py runs it: `--train-ratio`, `--envs`, at least `--min-updates` updates a chunk), both
loops built in one process and their chunks timed round-robin: the env steps/s that issue #2's
target is about, compared within rounds. The metrics compared are those of each loop's first
full chunk.

    python benchmarks/update_ab.py --base HEAD~3 --loop --rounds 20

`--base-set NAME=VALUE` changes a setting for the base only (on top of `--set`), so one
revision can be timed against itself under two settings, e.g. bfloat16 against float32:

    python benchmarks/update_ab.py --base HEAD --set compute_dtype=bfloat16 --base-set compute_dtype=float32
"""
from __future__ import annotations

import argparse
import importlib
import io
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.throughput import (  # noqa: E402
    _fixed_batch, add_comparison_args, comparison_setup, make_loop, print_comparison_header,
    round_robin, timed_how, timed_update, warm_loop, write_comparison)
from wmjax.agents.dreamer import Dreamer  # noqa: E402
from wmjax.cli import parse_override  # noqa: E402
from wmjax.config import TrainConfig  # noqa: E402
from wmjax.startup import start_command  # noqa: E402

BASE_NAME = "wmjax_base"
_IMPORTS = re.compile(r"\bwmjax(?=[.\s])")


def export_base(rev: str | None, folder: str | None, into: str) -> str:
    """Copy the base's `wmjax` package into `into` as `wmjax_base`, its own imports renamed, so
    it imports beside the working tree's. Returns the package's path."""
    dst = os.path.join(into, BASE_NAME)
    if rev is not None:
        root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        if root.returncode:
            raise ValueError(f"--base {rev}: not in a git checkout ({root.stderr.strip()}); "
                             "use --base-dir")
        archive = subprocess.run(["git", "archive", "--format=tar", rev, "wmjax"],
                                 capture_output=True, cwd=root.stdout.strip())
        if archive.returncode:
            raise ValueError(f"--base {rev}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(into, filter="data")
        os.rename(os.path.join(into, "wmjax"), dst)
    else:
        src = os.path.join(folder, "wmjax")
        if not os.path.isfile(os.path.join(src, "__init__.py")):
            raise ValueError(f"--base-dir {folder}: no wmjax package there (no {src}/__init__.py)")
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for walk_root, _, files in os.walk(dst):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(walk_root, name)
                with open(path) as f:
                    text = f.read()
                with open(path, "w") as f:
                    f.write(_IMPORTS.sub(BASE_NAME, text))
    return dst


def metric_gap(a: dict, b: dict) -> tuple[float, str]:
    """The largest |a - b| / (1 + |a|) over the metrics both updates report, and its name."""
    gaps = {k: abs(float(a[k]) - float(b[k])) / (1.0 + abs(float(a[k]))) for k in a if k in b}
    name = max(gaps, key=gaps.get)
    return gaps[name], name


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    base = ap.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", metavar="REV", help="a git revision, e.g. HEAD~1")
    base.add_argument("--base-dir", metavar="DIR", help="a folder holding a wmjax package")
    add_comparison_args(ap, rounds=20, out="benchmarks/results/update_ab.json", seeds=True)
    ap.add_argument("--loop", action="store_true",
                    help="time chunks of the fused training loop, not bare updates")
    ap.add_argument("--train-ratio", type=float, default=32.0, help="with --loop (default 32)")
    ap.add_argument("--envs", type=int, default=16, help="with --loop: envs per seed (default 16)")
    ap.add_argument("--min-updates", type=int, default=4,
                    help="with --loop: updates per seed in a chunk (default 4)")
    ap.add_argument("--base-set", action="append", default=[], metavar="NAME=VALUE",
                    help="a config setting for the base only, on top of --set (repeatable)")
    args = ap.parse_args(argv)
    overrides, config, spec = comparison_setup(ap, args)
    try:
        base_overrides = {**overrides, **dict(parse_override(s) for s in args.base_set)}
    except ValueError as e:
        ap.error(str(e))
    label = args.base or args.base_dir
    if args.loop and (args.seeds < 1 or args.envs < 1 or args.min_updates < 1
                      or args.train_ratio <= 0):
        ap.error(f"--loop needs --seeds, --envs and --min-updates >= 1 and --train-ratio > 0; "
                 f"got {args.seeds}, {args.envs}, {args.min_updates} and {args.train_ratio}")

    with tempfile.TemporaryDirectory() as tmp:
        try:
            export_base(args.base, args.base_dir, tmp)
        except ValueError as e:
            ap.error(str(e))
        sys.path.insert(0, tmp)
        for name in [m for m in sys.modules if m == BASE_NAME or m.startswith(BASE_NAME + ".")]:
            del sys.modules[name]  # an earlier call's base, from another folder
        try:
            old = importlib.import_module(BASE_NAME)
            old_agent = old.Dreamer(old.DreamerConfig.preset(args.preset, **base_overrides),
                                    old.make_env(args.env).spec)
        except (TypeError, ValueError) as e:
            ap.error(f"the base ({label}) cannot build this agent: {e}")
        finally:
            sys.path.remove(tmp)
        updates, metrics = {}, {}
        if args.loop:
            old_loop = importlib.import_module(BASE_NAME + ".loop")
            builds = {"base": (old_agent.config, old.TrainConfig,
                               lambda kind, cfg: old_loop.make_train(cfg)),
                      "tree": (config, TrainConfig, make_loop)}
            for name, (agent_cfg, train_config, make) in builds.items():
                chunk, steps, n_updates, _, first = warm_loop(
                    agent_cfg, args.train_ratio, args.seeds, args.envs, args.min_updates,
                    env=args.env, train_config=train_config, make=make)
                updates[name] = chunk
                metrics[name] = {k: v[0] for k, v in first.items()  # seed 0's finite scalars
                                 if getattr(v, "ndim", 0) == 1 and math.isfinite(v[0])}
        else:
            tree_agent = Dreamer(config, spec)
            batch = _fixed_batch(tree_agent)  # one batch for both
            for name, agent in {"base": old_agent, "tree": tree_agent}.items():
                step, step_args, one_seed = timed_update(agent, args.seeds, batch)
                fn = step.lower(*step_args).compile()
                updates[name] = lambda fn=fn, step_args=step_args: fn(*step_args)
                metrics[name] = one_seed(jax.device_get(updates[name]()[1]))
        times = round_robin(updates, args.rounds)

    ratios = [t / b for t, b in zip(times["tree"], times["base"])]
    gap, gap_name = metric_gap(metrics["base"], metrics["tree"])
    rows = [dict(version=name, median_s=statistics.median(ts), min_s=min(ts), times_s=ts)
            for name, ts in times.items()]
    if args.loop:
        how = (f"chunks of the fused loop, ratio {args.train_ratio:g}, {args.envs} envs, "
               f"{steps} env steps and {n_updates} updates per seed a chunk, {args.seeds} seed(s)")
        for r in rows:
            r["env_steps_per_s"] = steps * args.seeds / r["median_s"]
    else:
        how = timed_how(args.seeds)
    print_comparison_header(args, f"; base {label}; {how}")
    for r in rows:
        rate = f"  {r['env_steps_per_s']:6.1f} env steps/s" if args.loop else ""
        print(f"{r['version']:5s} median {1e3 * r['median_s']:6.0f} ms  min {1e3 * r['min_s']:6.0f} ms"
              + rate)
    print(f"tree / base, median of the rounds' ratios: x{statistics.median(ratios):.3f} "
          f"(rounds: {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"metrics: largest relative difference {gap:.2e} ({gap_name})")
    return write_comparison(args, rows, base=label, base_set=args.base_set, seeds=args.seeds,
                            loop=args.loop,
                            ratio=statistics.median(ratios),
                            ratios=ratios, metric_gap=gap, metric_gap_name=gap_name)


if __name__ == "__main__":
    start_command(cache=False)  # huge pages (restarts once), as throughput.py; no compile cache
    main()
