"""Sweep: any grid of tunables (lr, actent, loss scales, ...), every point and seed in ONE program.

The names in wmjax.agents.dreamer.TUNABLES are traced values in the agent state, so a grid over
them needs no recompiles: points x seeds members train side by side in one vmapped program.

    python experiments/tunables.py --grid rec_scale=1,3 --grid dyn_scale=0.5,1 --seeds 2
    python experiments/tunables.py --preset tiny --grid lr=1e-4,1e-3 --seeds 1 --steps 1024

Writes LOGDIR/program/ (the run) and LOGDIR/points/NAME=VALUE,.../ per grid point, which
`wmjax plot`, `wmjax eval` and `wmjax.load_policy` accept like any run.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wmjax import sweep  # noqa: E402
from wmjax.agents.dreamer import TUNABLES  # noqa: E402
from wmjax.startup import start_command  # noqa: E402


def parse_axis(text: str) -> tuple[str, list[float]]:
    """'rec_scale=1,3' -> ('rec_scale', [1.0, 3.0]); the name must be a tunable."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not values.strip():
        raise ValueError(f"--grid takes NAME=V1,V2,... (got {text!r})")
    if name not in TUNABLES:
        raise ValueError(f"--grid: {name!r} is not a tunable; tunables: {', '.join(TUNABLES)} "
                         "(other fields change the program: set them with --set or sweep them "
                         "as separate runs)")
    try:
        return name, [float(v) for v in values.split(",")]
    except ValueError:
        raise ValueError(f"--grid {name}: values must be numbers (got {values!r})") from None


def main(argv: list[str] | None = None) -> dict:
    ap = sweep.sweep_parser(__doc__, "runs/sweeps/tunables")
    ap.add_argument("--grid", action="append", required=True, metavar="NAME=V1,V2,...",
                    help="a tunable and its values (repeatable: the grid is every combination)")
    args = ap.parse_args(argv)
    try:
        axes = dict(parse_axis(a) for a in args.grid)
    except ValueError as e:
        ap.error(str(e))
    return sweep.train_tunables_grid(ap, args, axes)


if __name__ == "__main__":
    start_command()  # huge pages (restarts once) and the compile cache, before any work
    main()
