"""Does splitting one update's batch over two CPU devices make it faster on this machine?

One DreamerV3 update on a fixed batch, compiled four ways in one process and timed round-robin
(the machine's speed drifts, so the ways are compared within each round):

- `one device`: the plain jitted update, the whole batch (what a run uses);
- `half batch`: the same on half the batch, one device: the most a 2-way split could save;
- `two devices, GSPMD`: the update jitted with the batch sharded over a 2-device `data` axis
  and the state replicated, as `--devices 2` shards a single-seed run (wmjax.distributed);
- `two half updates at once`: two independent half-batch updates, one per device, dispatched
  together with no communication: whether the two devices run side by side at all.

    python benchmarks/data_parallel.py                     # size1m on CartPole-v1
    python benchmarks/data_parallel.py --env Craftax-Classic-Symbolic-v1 --set imag_starts=256
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=2").strip()

import jax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.throughput import (  # noqa: E402
    _fixed_batch, add_comparison_args, comparison_setup, print_comparison_header, round_robin,
    write_comparison)
from wmjax.agents.dreamer import Dreamer  # noqa: E402
from wmjax.distributed import batch_sharding, make_mesh, replicated  # noqa: E402
from wmjax.startup import start_command  # noqa: E402


def _variants(agent: Dreamer, half_agent: Dreamer) -> dict:
    """name -> (a function of no arguments that runs one update, or two at once)."""
    d0, d1 = jax.devices()[:2]
    key = jax.random.key(0)
    state, batch = jax.jit(agent.init)(key), _fixed_batch(agent)
    half_state = jax.jit(half_agent.init)(key)
    halves = jax.tree.map(lambda x: x[:half_agent.config.batch_size], batch)
    update, half_update = jax.jit(agent.update), jax.jit(half_agent.update)

    # The mesh and shardings `--devices 2` gives one seed: 1 (seeds) x 2 (data). No envs here.
    mesh = make_mesh(2, seeds=1, num_envs=2, batch_size=agent.config.batch_size)
    rep, data = replicated(mesh), batch_sharding(mesh)
    sharded = jax.jit(agent.update, in_shardings=(rep, data, rep), out_shardings=(rep, rep))
    s_args = (jax.device_put(state, rep), jax.device_put(batch, data), jax.device_put(key, rep))
    on = [jax.device_put((half_state, halves, key), d) for d in (d0, d1)]
    return {
        "one device": lambda: update(state, batch, key),
        "half batch": lambda: half_update(half_state, halves, key),
        "two devices, GSPMD": lambda: sharded(*s_args),
        "two half updates at once": lambda: (half_update(*on[0]), half_update(*on[1])),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_comparison_args(ap, rounds=8, out="benchmarks/results/data_parallel.json")
    args = ap.parse_args(argv)
    _, config, spec = comparison_setup(ap, args)
    if config.batch_size % 2:
        ap.error(f"batch_size={config.batch_size} cannot be split over 2 devices; allowed: even")
    try:  # the half-batch config is validated like any other (e.g. imag_starts must fit it)
        half = config.replace(batch_size=config.batch_size // 2)
    except ValueError as e:
        ap.error(f"half the batch: {e}")
    if jax.device_count() < 2:
        ap.error("needs 2 XLA devices; XLA_FLAGS already fixed the device count at 1")

    times = round_robin(_variants(Dreamer(config, spec), Dreamer(half, spec)), args.rounds)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    rows = [dict(variant=name, median_s=medians[name], min_s=min(ts), times_s=ts,
                 speedup=medians["one device"] / medians[name]) for name, ts in times.items()]
    print_comparison_header(args)
    for r in rows:
        print(f"{r['variant']:26s} median {r['median_s']:.3f} s  min {r['min_s']:.3f} s  "
              f"x{r['speedup']:.2f} against one device")
    return write_comparison(args, rows)


if __name__ == "__main__":
    start_command(cache=False)  # huge pages (restarts once), as throughput.py; no compile cache
    main()
