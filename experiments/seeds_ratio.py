"""Sweep: seeds x train ratio. Each ratio is its own program (the ratio sets how many updates
run per env step); the seeds of a ratio train together in one vmapped program.

    python experiments/seeds_ratio.py --ratios 16 32 64 --seeds 3 --steps 50000
    python experiments/seeds_ratio.py --preset tiny --ratios 8 16 --seeds 2 --steps 2048
    python experiments/seeds_ratio.py ... --resume      # after an interruption

Writes one run folder per ratio, `LOGDIR/train_ratio=R/` (config.json, metrics.jsonl,
checkpoints/), and prints each ratio's final return (mean ± std over seeds).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wmjax import sweep  # noqa: E402
from wmjax.startup import start_command  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = sweep.sweep_parser(__doc__, "runs/sweeps/seeds_ratio")
    ap.add_argument("--ratios", type=float, nargs="+", default=[16.0, 32.0, 64.0])
    args = ap.parse_args(argv)
    try:
        base = sweep.base_config(args)
        configs = {r: base.replace(train_ratio=r) for r in args.ratios}
    except ValueError as e:
        ap.error(str(e))
    rows = {}
    for ratio, config in configs.items():
        name = sweep.point_name({"train_ratio": ratio})
        rows[name] = sweep.run_point(config, os.path.join(args.logdir, name), args.resume,
                                     **sweep.train_kwargs(args))
    return sweep.report(f"{args.env}, {args.seeds} seed(s) per point, {args.steps} steps",
                        rows, args.seeds)


if __name__ == "__main__":
    start_command()  # huge pages (restarts once) and the compile cache, before any work
    main()
