"""Throughput of the fused DreamerV3 loop on this machine.

For each (preset, train ratio, seeds): env steps/s and updates/s of the fused loop (replay
already holding enough data, so every timed chunk trains), the time of one bare jitted update of
the same model over the same seeds, as the loop runs it (so the loop's overhead shows as a
ratio), and the update's achieved GFLOP/s beside this machine's matmul peak measured in the
same run, for the dtype the update's matmuls multiply in (float32, or bfloat16 operands with
float32 sums under `matmul_precision`; both peaks are printed). Each timed chunk is followed at
once by as many bare updates, timed, and the overhead is the median of those pairs' ratios: this
machine's speed drifts by 10% or more within minutes, and a loop and an update timed apart would
show that drift as overhead.

FLOPs are counted two ways. `GFLOP/upd` is XLA's cost analysis of the compiled single-seed update,
as asked for and as the official DreamerV3 reference was measured; XLA counts the body of a
while loop once, so the 64 observe steps and the 15 imagination steps are each counted as one
step. `GFLOP*` is the cost analysis of the same update with the RSSM's scans unrolled (of the
lowered program: compiling it unrolled takes minutes), i.e. every step counted; `% peak*` uses it.

    python benchmarks/throughput.py                       # size1m and size12m, ratios 32/512, 1/8 seeds
    python benchmarks/throughput.py --presets size1m --seeds 1 --ratios 32
    python benchmarks/throughput.py --presets size1m --seeds 1 --ratios 32 --set imag_starts=256
    python benchmarks/throughput.py --env Breakout-MinAtar --presets size1m --seeds 1 --ratios 32

Loop variants (--loops): `fused` (the one-program loop on gymnax CartPole), `host` (the host
loop stepping gymnasium CartPole from Python; same agent, replay and ratio), and `fusedN` (the
fused loop sharded over N devices, seeds first, then envs). On a CPU, `--cpu-devices N` splits
it into N XLA devices (they share its cores, so this shows sharding overhead, not speed-up):

    python benchmarks/throughput.py --presets size1m size12m --seeds 1 --ratios 32 --loops fused host
    python benchmarks/throughput.py --cpu-devices 4 --presets size1m --seeds 4 --ratios 32 \
        --loops fused fused2 fused4
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time

if "--cpu-devices" in sys.argv:  # must be set before JAX starts
    _n = sys.argv[sys.argv.index("--cpu-devices") + 1]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_n}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from wmjax.agents.dreamer import Batch, Dreamer  # noqa: E402
from wmjax.cli import parse_override  # noqa: E402
from wmjax.config import DreamerConfig, TrainConfig  # noqa: E402
from wmjax.envs import make_env  # noqa: E402
from wmjax.loop import make_train, over_seeds  # noqa: E402
from wmjax.machine import describe as describe_machine  # noqa: E402
from wmjax.run import write_json  # noqa: E402
from wmjax.startup import start_command  # noqa: E402


def _timed(fn, *args, repeats=3, stat=min):
    """`stat` (min or median) of `repeats` timed calls after a warm-up call, and the output."""
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return stat(times), out


def round_robin(runs: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each of `runs` (name -> a function of no arguments) over `rounds` rounds,
    one call of each per round after a warm-up call: this machine's speed drifts between
    rounds, so variants are compared within them."""
    for run in runs.values():
        jax.block_until_ready(run())
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - t)
    return times


def add_comparison_args(ap: argparse.ArgumentParser, rounds: int, out: str,
                        seeds: bool = False) -> None:
    """The flags every round-robin comparison of one update takes (data_parallel.py,
    xla_options.py, update_ab.py): the env, preset, config overrides, rounds and output; with
    `seeds`, also --seeds, how the update is timed (see `timed_update`)."""
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--preset", default="size1m")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="agent config overrides, e.g. imag_starts=256")
    ap.add_argument("--rounds", type=int, default=rounds, help="timed round-robin rounds")
    ap.add_argument("--out", default=out)
    if seeds:
        ap.add_argument("--seeds", type=int, default=1,
                        help="time the update over this many seeds, as the fused loop runs it "
                             "(default 1); 0 times the plain update")


def comparison_setup(ap: argparse.ArgumentParser, args) -> tuple[dict, DreamerConfig, object]:
    """The overrides, the agent config and the env spec from those flags; bad input exits with
    the parser's error."""
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}; allowed: >= 1")
    if getattr(args, "seeds", 0) < 0:
        ap.error(f"--seeds {args.seeds}; allowed: >= 0 (0: the plain update)")
    try:
        overrides = dict(parse_override(s) for s in args.set)
        return overrides, DreamerConfig.preset(args.preset, **overrides), make_env(args.env).spec
    except ValueError as e:
        ap.error(str(e))


def print_comparison_header(args, note: str = "") -> None:
    """The first line of a round-robin comparison's report (data_parallel.py, xla_options.py,
    update_ab.py)."""
    print(f"{args.preset} on {args.env}, {args.rounds} rounds, {os.cpu_count()} cores, "
          f"jax {jax.__version__}{note}")


def write_comparison(args, rows: list[dict], **extra) -> dict:
    """A round-robin comparison's result: its settings, this machine, one row per variant and
    `extra` fields, written to args.out as JSON."""
    result = dict(env=args.env, preset=args.preset, overrides=args.set, rounds=args.rounds,
                  jax=jax.__version__, machine=describe_machine(), rows=rows, **extra)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


def matmul_peak(n: int = 2048, operands=jnp.float32) -> float:
    """GFLOP/s of an n-square matmul of `operands`, summed in float32."""
    a = jnp.ones((n, n), operands)
    f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    t, _ = _timed(f, a, repeats=5)
    return 2 * n**3 / t / 1e9


def matmul_operands(agent: Dreamer) -> str:
    """The dtype the agent's matmuls multiply in (`DreamerConfig.matmul_precision`)."""
    return "bfloat16" if agent.matmul_precision == "bfloat16" else jnp.dtype(agent.dtype).name


def _flops(cost) -> float:
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def _random_obs(spec, lead: tuple[int, ...]):
    """Observations of `spec`'s shapes: normal vectors, uniform uint8 images, dicts of both."""
    def one(shape, key):
        if len(shape) == 3:
            return jax.random.randint(key, lead + shape, 0, 256).astype(jnp.uint8)
        return jax.random.normal(key, lead + shape)
    if spec.is_dict:
        keys = jax.random.split(jax.random.key(0), len(spec.obs_shape))
        return {k: one(s, key) for (k, s), key in zip(spec.obs_shape, keys)}
    return one(spec.obs_shape, jax.random.key(0))


def _fixed_batch(agent: Dreamer) -> Batch:
    B, T, spec = agent.config.batch_size, agent.config.batch_length, agent.spec
    return Batch(_random_obs(spec, (B, T)),
                 jax.nn.one_hot(jnp.zeros((B, T), jnp.int32), spec.num_actions),
                 jnp.ones((B, T)), jnp.zeros((B, T), bool), jnp.zeros((B, T), bool),
                 jnp.zeros((B, T), bool))


def update_gflop(agent: Dreamer) -> tuple[float, float]:
    """GFLOP of one single-seed update: as XLA's cost analysis of the compiled update counts it
    (loop bodies once), and with every scan step counted (the cost analysis of the lowered
    update with the RSSM's scans fully unrolled; compiling that takes minutes)."""
    k = jax.random.key(0)
    args = (jax.jit(agent.init)(k), _fixed_batch(agent), k)
    rolled = _flops(jax.jit(agent.update).lower(*args).compile().cost_analysis())
    unrolled = Dreamer(agent.config, agent.spec)
    unrolled.rssm = unrolled.rssm.clone(unroll=True)
    every_step = _flops(jax.jit(unrolled.update).lower(*args).cost_analysis())
    return rolled / 1e9, every_step / 1e9


def seeded_update(agent: Dreamer, seeds: int, batch: Batch | None = None):
    """The update as the fused loop runs it, jitted over `seeds` (each seed its own state, batch
    and key; on a CPU seed after seed, elsewhere a vmap: `wmjax.loop.over_seeds`), and its
    arguments on a fixed batch: (step, (states, batches, keys))."""
    k = jax.random.key(0)
    states = jax.jit(jax.vmap(agent.init))(jax.random.split(k, seeds))  # one program, not op by op
    batch = _fixed_batch(agent) if batch is None else batch
    batches = jax.tree.map(lambda x: jnp.broadcast_to(x, (seeds,) + x.shape), batch)
    return jax.jit(over_seeds(agent.update, seeds)), (states, batches, jax.random.split(k, seeds))


def timed_update(agent: Dreamer, seeds: int, batch: Batch | None = None):
    """What a comparison times: with `seeds` >= 1 the update over that many seeds as the fused
    loop runs it (`seeded_update`), with 0 the plain jitted update (since `over_seeds`, the same
    program as one seed's). Returns (step, its arguments, a function that reads one seed's
    metrics from step's)."""
    if seeds:
        step, step_args = seeded_update(agent, seeds, batch)
        return step, step_args, lambda metrics: jax.tree.map(lambda x: x[0], metrics)
    key = jax.random.key(0)
    batch = _fixed_batch(agent) if batch is None else batch
    return jax.jit(agent.update), (jax.jit(agent.init)(key), batch, key), lambda metrics: metrics


def timed_how(seeds: int) -> str:
    """How `timed_update` timed the update, for a report's header."""
    return f"over {seeds} seed(s), as the loop runs it" if seeds else "the plain update"


def bare_updates(agent: Dreamer, seeds: int):
    """A function of n that runs n jitted updates over `seeds` (`seeded_update`) on a fixed
    batch (each from the same state, as a loop's updates cost the same whatever the state) and
    waits."""
    step, args = seeded_update(agent, seeds)

    def run(n: int):
        for _ in range(n):
            out = step(*args)
        return jax.block_until_ready(out)
    return run


def make_loop(kind: str, cfg: TrainConfig):
    """`fused`, `host` (gymnasium CartPole from Python), or `fusedN` (N devices)."""
    if kind == "host":
        from wmjax.host_loop import make_host_train

        return make_host_train(cfg.replace(env="gymnasium:CartPole-v1"))
    if kind.startswith("fused") and kind[5:].isdigit():
        return make_train(cfg, devices=int(kind[5:]))
    if kind == "fused":
        return make_train(cfg)
    raise ValueError(f"unknown loop {kind!r}; allowed: fused, host, fusedN (N devices)")


def warm_loop(agent_cfg: DreamerConfig, ratio: float, seeds: int, envs: int, min_updates: int,
              kind: str = "fused", env: str = "CartPole-v1", *, train_config=TrainConfig,
              make=make_loop):
    """The fused loop with chunks of at least `min_updates` updates per seed, run until its
    replay is full enough that every chunk trains fully. `train_config` and `make` build it
    (another revision's, in update_ab.py --loop). Returns (a function that runs one more chunk
    and returns its metrics, env steps and updates per seed in a chunk, the first chunk's
    seconds with its compile, the first full chunk's metrics)."""
    B, T = agent_cfg.batch_size, agent_cfg.batch_length
    upd_per_vec_step = envs * ratio / (B * T)
    iters = max(1, math.ceil(min_updates / upd_per_vec_step))
    cfg = train_config(env=env, num_envs=envs, seeds=seeds, steps=10**9,
                       train_ratio=ratio, replay_size=max(envs * (T + 1), 64 * 1024),
                       chunk_steps=iters * envs, agent=agent_cfg)
    trainer = make(kind, cfg)
    state = trainer.init(jax.random.key(0))
    t0 = time.perf_counter()
    state, m = trainer.train_chunk(state)
    jax.block_until_ready(m)
    first_chunk = time.perf_counter() - t0
    while int(m["updates"][0]) == 0 or int(m["chunk_updates"][0]) < int(
            math.floor(upd_per_vec_step * iters)):  # fill replay until every chunk trains fully
        state, m = trainer.train_chunk(state)

    def chunk():
        nonlocal state
        state, metrics = trainer.train_chunk(state)
        return metrics
    return chunk, iters * envs, int(m["chunk_updates"][0]), first_chunk, jax.device_get(m)


def loop_throughput(agent_cfg: DreamerConfig, ratio: float, seeds: int, envs: int,
                    min_updates: int, kind: str = "fused", timed_chunks: int = 3,
                    env: str = "CartPole-v1", *, bare, train_config=TrainConfig) -> dict:
    """Env steps/s and updates/s of `timed_chunks` chunks of at least `min_updates` updates per
    seed, from the median chunk (this machine's speed drifts by 5-10% between runs).

    Each timed chunk is followed by as many bare updates (`bare`, from `bare_updates`), timed:
    the loop's overhead is the median of the chunk / bare ratios, each pair seconds apart, so
    a drift of the machine's speed does not pass for overhead."""
    chunk, steps, updates, first_chunk, _ = warm_loop(agent_cfg, ratio, seeds, envs, min_updates,
                                                      kind, env, train_config=train_config)
    # Each chunk followed at once by as many bare updates.
    timed = round_robin({"chunk": chunk, "bare": lambda: bare(updates)}, timed_chunks)
    times, bare_times = timed["chunk"], timed["bare"]
    overheads = [c / b - 1.0 for c, b in zip(times, bare_times)]
    dt = statistics.median(times)
    return dict(first_chunk_s=round(first_chunk, 2), chunk_s=dt, chunk_s_each=times,
                env_steps_per_seed=steps, updates_per_seed=updates,
                env_steps_per_s=steps * seeds / dt, updates_per_s=updates * seeds / dt,
                bare_update_s=statistics.median(bare_times) / updates, bare_s_each=bare_times,
                loop_overhead=statistics.median(overheads), loop_overhead_each=overheads)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="CartPole-v1",
                    help="the env of the fused loop and the model's observations (default CartPole-v1)")
    ap.add_argument("--presets", nargs="+", default=["size1m", "size12m"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[32.0, 512.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--min-updates", type=int, default=4, help="updates per seed in a timed chunk")
    ap.add_argument("--timed-chunks", type=int, default=5,
                    help="chunks timed per row, each followed by as many bare updates; rates are "
                         "from the median chunk, the overhead from the median chunk/bare ratio")
    ap.add_argument("--loops", nargs="+", default=["fused"],
                    help="fused, host (gymnasium from Python) and/or fusedN (sharded over N devices)")
    ap.add_argument("--cpu-devices", type=int, default=None,
                    help="split the CPU into this many XLA devices (for the fusedN variants)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="agent config overrides for every preset, e.g. imag_starts=256")
    ap.add_argument("--replay-online", action="store_true",
                    help="the loops with DreamerV3's online replay queue (TrainConfig.replay_online)")
    ap.add_argument("--out", default="benchmarks/results/throughput.json")
    args = ap.parse_args(argv)
    if args.timed_chunks < 1 or args.min_updates < 1:
        ap.error(f"--timed-chunks {args.timed_chunks}, --min-updates {args.min_updates}; "
                 "allowed: each >= 1")
    try:
        overrides = dict(parse_override(s) for s in args.set)
        spec = make_env(args.env).spec
    except ValueError as e:
        ap.error(str(e))
    if args.env != "CartPole-v1" and "host" in args.loops:
        ap.error(f"--loops host steps gymnasium CartPole only; with --env {args.env} use fused loops")

    peaks = {name: matmul_peak(operands=dtype) for name, dtype in
             (("float32", jnp.float32), ("bfloat16", jnp.bfloat16))}
    machine = describe_machine()
    print(f"machine: {machine['cpu']} (features {machine['cpu_features']}), {machine['cores']} "
          f"cores, jax {machine['jax']} ({machine['backend']}); matmul peak {peaks['float32']:.1f} "
          f"GFLOP/s in float32, {peaks['bfloat16']:.1f} with bfloat16 operands (float32 sums)")
    print("reference (official DreamerV3, size1m f32, CartPole, ratio 32, this machine): "
          "1.39 updates/s, 45 env steps/s, ~19 GFLOP/update (~14% of peak), loop bodies counted once")
    print(f"env: {args.env}")
    header = (f"{'preset':8s} {'ratio':>5s} {'seeds':>5s} {'loop':>7s} | {'env st/s':>9s} {'upd/s':>7s} | "
              f"{'bare upd s':>10s} {'overhead':>8s} | {'GFLOP/upd':>9s} {'GFLOP/s':>8s} {'% peak':>6s} | "
              f"{'GFLOP*':>7s} {'% peak*':>7s}")
    print(header)
    print("-" * len(header))
    rows = []
    for preset in args.presets:
        agent_cfg = DreamerConfig.preset(preset, **overrides)
        agent = Dreamer(agent_cfg, spec)
        operands = matmul_operands(agent)
        peak = peaks.get(operands, peaks["float32"])  # "% peak": of the matmuls' own dtype
        print(f"{preset}: matmul operands {operands}, % peak of {peak:.1f} GFLOP/s")
        gflop, gflop_all = update_gflop(agent)
        # One bare update per seed count, compiled once and shared by its rows; rows with more
        # seeds give the GFLOP/s of a single-seed update, timed here.
        bares = {s: bare_updates(agent, s) for s in sorted(set(args.seeds) | {1})}
        single_t = (_timed(bares[1], 1, repeats=5, stat=statistics.median)[0]
                    if max(args.seeds) > 1 else None)
        for seeds in args.seeds:
            bare = bares[seeds]
            for ratio in args.ratios:
                fused_rate = None
                for kind in args.loops:
                    r = loop_throughput(agent_cfg, ratio, seeds, args.envs, args.min_updates, kind,
                                        args.timed_chunks, args.env, bare=bare,
                                        train_config=functools.partial(
                                            TrainConfig, replay_online=args.replay_online))
                    bare_t, overhead = r["bare_update_s"], r["loop_overhead"]
                    update_t = bare_t if seeds == 1 else single_t
                    achieved = gflop / update_t
                    pct_all = 100 * gflop_all / update_t / peak
                    fused_rate = r["env_steps_per_s"] if kind == "fused" else fused_rate
                    row = dict(env=args.env, preset=preset, overrides=overrides, train_ratio=ratio, seeds=seeds,
                               envs=args.envs, loop=kind, replay_online=args.replay_online, **r,
                               matmul_operands=operands,
                               gflop_per_update=gflop, update_gflops=achieved, peak_gflops=peak,
                               pct_of_peak=100 * achieved / peak,
                               gflop_per_update_all_steps=gflop_all, pct_of_peak_all_steps=pct_all,
                               devices=jax.device_count())
                    if fused_rate and kind != "fused":
                        row["fused_over_this"] = fused_rate / r["env_steps_per_s"]
                    rows.append(row)
                    vs = f"  fused/{kind} {row['fused_over_this']:.2f}x" if "fused_over_this" in row else ""
                    print(f"{preset:8s} {ratio:5.0f} {seeds:5d} {kind:>7s} | {r['env_steps_per_s']:9.1f} "
                          f"{r['updates_per_s']:7.2f} | {bare_t:10.3f} {100 * overhead:7.1f}% | "
                          f"{gflop:9.2f} {achieved:8.1f} {100 * achieved / peak:5.1f}% | {gflop_all:7.2f} "
                          f"{pct_all:6.1f}%{vs}", flush=True)
                    # after every row, so a stopped run keeps its rows
                    write_json(args.out, dict(peak_gflops=peaks["float32"], peaks_gflops=peaks,
                                              jax=jax.__version__, machine=machine, rows=rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    start_command(cache=False)  # huge pages (restarts once); no cache: compile time is measured
    main()
