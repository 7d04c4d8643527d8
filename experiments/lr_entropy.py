"""Sweep: learning rate x entropy bonus, every point and seed in ONE vmapped program.

lr and actent are traced values in the agent state (wmjax.agents.dreamer.TUNABLES), so the grid
needs no recompiles: points x seeds members train side by side in one XLA program.

    python experiments/lr_entropy.py --lrs 4e-5 1e-4 3e-4 --actents 3e-4 1e-3 --seeds 2
    python experiments/lr_entropy.py --preset tiny --lrs 1e-4 1e-3 --actents 3e-4 --seeds 1 --steps 1024

Writes LOGDIR/program/ (the run: checkpoints, metrics of every member) and one folder per grid
point, LOGDIR/points/lr=...,actent=.../ (config.json with that point's values, metrics.jsonl of
its seeds), which `wmjax plot`, `wmjax eval` and `wmjax.load_policy` accept like any run.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wmjax import sweep  # noqa: E402
from wmjax.startup import start_command  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = sweep.sweep_parser(__doc__, "runs/sweeps/lr_entropy")
    ap.add_argument("--lrs", type=float, nargs="+", default=[4e-5, 1e-4, 3e-4])
    ap.add_argument("--actents", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    args = ap.parse_args(argv)
    return sweep.train_tunables_grid(ap, args, dict(lr=args.lrs, actent=args.actents))


if __name__ == "__main__":
    start_command()  # huge pages (restarts once) and the compile cache, before any work
    main()
