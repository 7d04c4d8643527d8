"""Train several seeds of DreamerV3 in one vmapped program and report the spread across seeds.

    python experiments/seeds.py --env CartPole-v1 --seeds 4 --steps 50000
    python experiments/seeds.py --env Pendulum-v1 --seeds 2 --preset tiny --steps 4000

Writes the run folder `LOGDIR/ENV/` (config.json, metrics.jsonl with one row per seed per log
point, checkpoints/) and prints the mean and standard deviation over seeds of each seed's final
return.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wmjax import sweep  # noqa: E402
from wmjax.startup import start_command  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = sweep.sweep_parser(__doc__, "runs/experiments/seeds")
    ap.set_defaults(seeds=4)
    args = ap.parse_args(argv)
    try:
        config = sweep.base_config(args)
    except ValueError as e:
        ap.error(str(e))
    logdir = os.path.join(args.logdir, args.env)
    rows = sweep.run_point(config, logdir, args.resume, **sweep.train_kwargs(args))
    finals = sweep.final_returns(rows, args.seeds)
    mean, std, n = sweep.mean_std(finals)
    print(f"{args.env}: final return per seed {finals}; mean {mean:.1f} ± {std:.1f} over "
          f"{n} seed(s); log in {logdir}")
    return dict(finals=finals, mean=mean, std=std, logdir=logdir)


if __name__ == "__main__":
    start_command()  # huge pages (restarts once) and the compile cache, before any work
    main()
