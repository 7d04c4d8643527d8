"""Which XLA CPU compiler options make one DreamerV3 update faster on this machine?

One update on a fixed batch, over `--seeds` (default 1) as the fused loop runs it (`--seeds
0`: the plain update), compiled once per option set in one process (`compiler_options`
of `jax.jit(...).lower(...).compile`, so no option leaks into another) and timed round-robin,
since the machine's speed drifts between rounds. Each row also gives the update's total loss,
so a set that changes the arithmetic shows as a different loss.

The sets are XLA's library-fusion choices on CPU: its default, YNNPACK fusions off, YNNPACK for
single dots only, YNNPACK for dots and elementwise ops, XNNPACK off, and the HLO scheduler
that minimises memory instead of the one that orders ops for concurrency.

    python benchmarks/xla_options.py                       # size1m on CartPole-v1
    python benchmarks/xla_options.py --only default ynn_dot --rounds 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.throughput import (  # noqa: E402
    add_comparison_args, comparison_setup, print_comparison_header, round_robin, timed_how,
    timed_update, write_comparison)
from wmjax.agents.dreamer import Dreamer  # noqa: E402
from wmjax.startup import start_command  # noqa: E402

_YNN = "xla_cpu_experimental_ynn_fusion_type"
OPTION_SETS = {
    "default": {},
    "no_ynn": {_YNN: ""},
    "ynn_dot": {_YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "ynn_dot_eltwise": {_YNN: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"},
    "no_xnnpack": {"xla_cpu_use_xnnpack": False},
    "memory_scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": False},
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comparison_args(ap, rounds=12, out="benchmarks/results/xla_options.json", seeds=True)
    ap.add_argument("--only", nargs="+", default=list(OPTION_SETS), metavar="SET",
                    help=f"option sets to time (default all): {', '.join(OPTION_SETS)}")
    args = ap.parse_args(argv)
    _, config, spec = comparison_setup(ap, args)
    unknown = [s for s in args.only if s not in OPTION_SETS]
    if unknown:
        ap.error(f"unknown option set(s) {', '.join(unknown)}; allowed: {', '.join(OPTION_SETS)}")

    step, step_args, one_seed = timed_update(Dreamer(config, spec), args.seeds)
    lowered = step.lower(*step_args)
    compiled = {name: lowered.compile(compiler_options=OPTION_SETS[name] or None) for name in args.only}
    losses = {name: float(one_seed(fn(*step_args)[1])["loss/total"]) for name, fn in compiled.items()}
    times = round_robin({name: (lambda fn=fn: fn(*step_args)) for name, fn in compiled.items()},
                        args.rounds)
    base = statistics.median(times[args.only[0]])
    rows = [dict(options=name, compiler_options=OPTION_SETS[name], loss=losses[name],
                 median_s=statistics.median(ts), min_s=min(ts), times_s=ts,
                 ratio=statistics.median(ts) / base) for name, ts in times.items()]
    print_comparison_header(args, f"; {timed_how(args.seeds)}; ratio against {args.only[0]}")
    for r in rows:
        print(f"{r['options']:16s} median {1e3 * r['median_s']:6.0f} ms  min {1e3 * r['min_s']:6.0f} ms  "
              f"x{r['ratio']:.2f}  loss {r['loss']:.6f}")
    return write_comparison(args, rows, seeds=args.seeds)


if __name__ == "__main__":
    start_command(cache=False)  # huge pages (restarts once), as throughput.py; no compile cache
    main()
