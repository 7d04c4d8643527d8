"""Where does one DreamerV3 update spend its time? The compiled ops, slowest first, by model part.

Compiles the update as the fused loop runs it (`throughput.timed_update`, over `--seeds`), runs it
`--rounds` times under `jax.profiler`, and sums each compiled op's time per update. Each op is
named by the model code that made it, read from the HLO's `op_name` metadata (e.g.
`jvp(RSSM.imagine)/while/body/.../RSSM._core/dot_general`), and `x15` says it ran 15 times per
update (inside the imagination scan). On a CPU two threads run ops side by side and a
partitioned op counts its wait for the other core, so the op times add up to more than the
update's wall time: read them as upper bounds and as a ranking.

It also counts the page faults per update. XLA's CPU runtime takes a fresh temporary arena
(318 MB at size1m) on every call, and glibc hands it back to the kernel after each, so every
call faults its pages in again and the kernel zeroes them: the op that first touches a page
is charged for that. The fused loop pays this once per chunk, not per update, so such op
times overstate what the loop spends. An allocator that keeps freed memory removes them, e.g.
`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4` (Debian's
libtcmalloc-minimal4); one thread (`XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1" taskset -c 0`) makes the op times add up to the wall time.

    python benchmarks/profile_update.py
    python benchmarks/profile_update.py --preset size12m --top 20 --rounds 3
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.throughput import (  # noqa: E402
    add_comparison_args, comparison_setup, print_comparison_header, timed_how, timed_update,
    write_comparison)
from wmjax.agents.dreamer import Dreamer  # noqa: E402
from wmjax.startup import start_command  # noqa: E402

# An HLO instruction with its op_name metadata: `%name = ... metadata={op_name="..."`.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{op_name="([^"]+)"')


def op_names(hlo_text: str) -> dict[str, str]:
    """Each instruction of a compiled module's text mapped to the model code that made it (its
    op_name metadata without the leading `jit(...)/`)."""
    names = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            names[m.group(1)] = re.sub(r"^jit\([^)]*\)/", "", m.group(2))
    return names


def op_times(trace_events: list[dict], ops: dict[str, str]) -> dict[str, tuple[float, int]]:
    """Total microseconds and count of the complete ('X') events whose name is a compiled op."""
    total, count = collections.Counter(), collections.Counter()
    for e in trace_events:
        if e.get("ph") == "X" and e.get("name") in ops:
            total[e["name"]] += float(e.get("dur", 0.0))
            count[e["name"]] += 1
    return {name: (total[name], count[name]) for name in total}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def profile(step, args, rounds: int) -> tuple[list[dict], float, float]:
    """Per-op rows (ms and runs per update, model code), slowest first, the wall time of one
    update and its page faults (see the module's doc), from `rounds` profiled updates after
    two warm-up ones."""
    compiled = step.lower(*args).compile()
    ops = op_names(compiled.as_text())
    for _ in range(2):
        jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            start, faults = time.perf_counter(), _minor_faults()  # the updates only
            for _ in range(rounds):
                jax.block_until_ready(compiled(*args))
            wall = (time.perf_counter() - start) / rounds
            faults = (_minor_faults() - faults) / rounds
        traces = glob.glob(os.path.join(tmp, "**", "*perfetto_trace.json.gz"), recursive=True)
        if not traces:
            raise RuntimeError(f"jax.profiler wrote no perfetto trace under {tmp}")
        with gzip.open(traces[0]) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    rows = [dict(op=name, ms=us / rounds / 1e3, runs=n / rounds, code=ops[name])
            for name, (us, n) in op_times(events, ops).items()]
    return sorted(rows, key=lambda r: -r["ms"]), wall, faults


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comparison_args(ap, rounds=10, out="benchmarks/results/profile_update.json", seeds=True)
    ap.add_argument("--top", type=int, default=30, help="ops to print (all are written)")
    args = ap.parse_args(argv)
    _, config, spec = comparison_setup(ap, args)
    if args.top < 1:
        ap.error(f"--top {args.top}; allowed: >= 1")

    step, step_args, _ = timed_update(Dreamer(config, spec), args.seeds)
    rows, wall, faults = profile(step, step_args, args.rounds)
    summed = sum(r["ms"] for r in rows)
    print_comparison_header(args, f"; {timed_how(args.seeds)}")
    print(f"update {1e3 * wall:.0f} ms wall; its ops sum to {summed:.0f} ms (two threads); "
          f"{faults:.0f} page faults per update"
          + (" (fresh memory: see --help)" if faults >= 100 else ""))
    for r in rows[:args.top]:
        print(f"{r['ms']:8.2f} ms  x{r['runs']:<5g} {r['op'][:28]:28s} {r['code'][-100:]}")
    return write_comparison(args, rows, seeds=args.seeds, wall_s=wall, ops_ms=summed,
                            page_faults=faults)


if __name__ == "__main__":
    start_command(cache=False)  # huge pages (restarts once), as throughput.py; no compile cache
    main()
