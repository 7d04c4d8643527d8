"""Host driver: build the fused program, run it chunk by chunk, log and checkpoint between chunks.

A run folder holds:
    config.json      the resolved TrainConfig
    hyper.json       per-seed tunables, when a grid of them is trained as one program
    metrics.jsonl    one JSON object per seed per log point
    fork.json        for a run forked from another's checkpoint (`fork`): the source and change
    machines.jsonl   the machine and software that ran each stretch of the run (wmjax.machine)
    checkpoints/     orbax checkpoints of the whole TrainState, numbered by chunks done
    wandb/           when wandb logging is on
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np

from wmjax.checkpoint import CheckpointError, Checkpointer, checkpoint_dir
from wmjax.config import TrainConfig
from wmjax.distributed import is_main_process
from wmjax.envs.gymnasium import is_gymnasium_name
from wmjax.logging import JsonlWriter, Progress, WandbLogger
from wmjax.loop import host_metrics, make_train, num_chunks, seed_hyper
from wmjax.machine import describe as describe_machine

CONFIG_FILE = "config.json"
HYPER_FILE = "hyper.json"
METRICS_FILE = "metrics.jsonl"
FORK_FILE = "fork.json"
MACHINES_FILE = "machines.jsonl"


class RunDirError(ValueError):
    """A run folder that cannot be used as asked (already holds a run, or holds none to resume)."""


def holds_run(logdir: str) -> bool:
    """Whether `logdir` holds something a new run would lose: logged metrics or a checkpoint.
    A folder left by a run that stopped before its first log (its config only) does not, so a
    failed start can be started again without deleting anything by hand."""
    metrics = os.path.join(logdir, METRICS_FILE)
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
        return True
    ckpts = checkpoint_dir(logdir)
    return os.path.isdir(ckpts) and bool(os.listdir(ckpts))


def load_config(run_dir: str) -> TrainConfig:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise RunDirError(f"{run_dir} holds no run ({CONFIG_FILE} is missing)")
    try:
        with open(path, encoding="utf-8") as f:
            return TrainConfig.from_dict(json.load(f))
    except (json.JSONDecodeError, TypeError) as e:
        raise RunDirError(f"{path} is not a valid config: {e}") from None


def read_metrics(run_dir: str) -> list[dict]:
    """The rows of a run folder's metrics.jsonl, stopping at a line cut short by a kill."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} has no {METRICS_FILE}")
    return _read_jsonl(path)


def read_machines(run_dir: str) -> list[dict]:
    """The machines that ran the run, one per start or resume with the chunk it began at
    (wmjax.machine.describe); [] where none were noted. A record, so a damaged file is read up
    to the damage rather than refused."""
    path = os.path.join(run_dir, MACHINES_FILE)
    rows = _read_jsonl(path) if os.path.exists(path) else []
    return [row for row in rows if isinstance(row, dict)]


def _read_jsonl(path: str) -> list:
    """A JSON-lines file's rows, stopping at a line cut short by a kill."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def training_wall_time(rows: list[dict]) -> float:
    """Seconds of training behind a run's metrics. A resumed run's `wall_time` goes on from its
    newest logged row; logs written before wmjax did so restart it at every resume, so a drop
    is read as a new call and the calls' times are summed."""
    total = last = 0.0
    first_seed = min((r["seed"] for r in rows), default=0)
    for row in rows:
        t = row.get("wall_time")
        if row["seed"] != first_seed or t is None:
            continue
        if t < last:  # a resumed call starts its clock again
            total += last
        last = t
    return total + last


def load_hyper(run_dir: str) -> dict[str, list[float]] | None:
    path = os.path.join(run_dir, HYPER_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def train(
    config: TrainConfig | None,
    logdir: str | None = None,
    *,
    resume: bool = False,
    hyper: dict[str, Any] | None = None,
    checkpoint_every: int = 10,
    wandb: bool = False,
    wandb_project: str = "wmjax",
    wandb_group: str | None = None,
    verbose: bool = True,
    devices: int | None = None,
) -> tuple[Any, list[dict]]:
    """Train `config.seeds` seeds for `config.steps` env steps each; returns the final batched
    TrainState and the metric rows logged by this call.

    - `hyper`: tunables (see `wmjax.agents.dreamer.TUNABLES`), one value or one per seed.
    - `checkpoint_every`: save the whole state every this many chunks (0: only at the end).
    - `resume`: continue the run in `logdir` from its newest checkpoint. `config` may be None
      (use the saved one) or must equal the saved one except for `steps`; otherwise nothing is
      written and a RunDirError names the differing fields. The continuation is bit-exact on
      the same kind of CPU (see wmjax.machine; each start is noted in machines.jsonl).
    - A new run refuses a `logdir` that already holds a run, so nothing saved is overwritten.
    - `devices`: shard the program over that many devices (seeds first, then envs and the
      replayed batch; see wmjax.distributed). Not part of the config: a run may resume on
      another device count. With several processes (wmjax.distributed.initialize), only
      process 0 writes config, metrics and wandb; all of them write the checkpoints.
    """
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={checkpoint_every}; allowed: >= 0 (0 = only at the end)")
    extended_from = None  # a resumed run's steps before this call extended them
    if resume:
        if not logdir:
            raise RunDirError("resume needs the run folder (logdir)")
        config, hyper, extended_from = _check_resume(logdir, config, hyper)
    elif logdir and holds_run(logdir):
        raise RunDirError(f"{logdir} already holds a run; resume it (--resume {logdir}) or choose "
                          f"another --logdir")
    if config is None:
        raise ValueError("train: config is required for a new run")

    trainer = cached_trainer(config, devices)
    main = is_main_process()
    log = print if verbose and main else (lambda *a, **k: None)
    key = jax.random.key(config.seed)
    done = 0
    ckpt = None
    if resume:
        ckpt = Checkpointer(logdir)
        done, state = restore_state(ckpt, trainer, key, hyper)
        log(f"wmjax: resuming {logdir} after chunk {done}")
    else:
        state = trainer.init(key, hyper, config.seed_ids)
        if logdir:
            if main:  # with several processes, process 0 writes the run folder's files
                write_json(os.path.join(logdir, CONFIG_FILE), config.to_dict())
                hyper_path = os.path.join(logdir, HYPER_FILE)
                if hyper:
                    write_json(hyper_path, _hyper_lists(hyper, config.seeds))
                elif os.path.exists(hyper_path):  # left by a failed start in this folder
                    os.remove(hyper_path)
            ckpt = Checkpointer(logdir)

    chunks = num_chunks(config)
    if logdir and main and done < chunks:  # a finished run resumed has nothing to note
        _note_machine(logdir, done, resume, log)
    per_chunk = config.env_steps_per_chunk
    total = chunks * per_chunk
    log(f"wmjax: {config.env}, {config.seeds} seed(s) x {config.num_envs} envs, "
        f"{total:,d} env steps per seed in {chunks} chunks, train ratio {config.train_ratio:g} "
        f"({trainer.updates_per_env_step:.4f} updates per env step)")
    if resume and extended_from and config.replay_size < total:
        # The CLI caps a new run's replay at its steps; extending the run does not grow it.
        log(f"wmjax: note: the replay holds {config.replay_size:,d} steps per seed, fixed when "
            f"the run started; extended from {extended_from:,d} to {total:,d} steps, the run "
            f"now evicts its oldest steps (a new run with --replay-size keeps more)")
    writer = JsonlWriter(os.path.join(logdir, METRICS_FILE)) if logdir and main else None
    # A resumed run's clock goes on from its newest logged row, so it never runs backwards.
    logged_up_to, clock = _newest_logged(logdir) if resume and main else (-1, 0.0)
    wb = WandbLogger(logdir or "runs/wandb", config.to_dict(), wandb_project, wandb_group,
                     resume=resume, out=log) if wandb and main else None
    progress = Progress(total, log, start_step=done * per_chunk)
    rows: list[dict] = []
    start = time.time()

    def record(metrics) -> None:
        """Log one finished chunk (waits for it)."""
        chunk_rows = host_metrics(metrics)
        for row in chunk_rows:
            row["wall_time"] = round(clock + time.time() - start, 3)
        # After a resume, the chunks since the checkpoint are re-run bit-exactly; their rows
        # are already in metrics.jsonl.
        if writer and chunk_rows[0]["env_step"] > logged_up_to:
            for row in chunk_rows:
                writer.write(row)
        if wb:
            wb.log(chunk_rows)
        rows.extend(chunk_rows)
        progress.report(int(chunk_rows[0]["env_step"]), [r["episode_return"] for r in chunk_rows],
                        f"  updates {int(chunk_rows[0]['updates']):,d}")

    dispatched = logged = saved = done  # chunks started, logged and checkpointed
    metrics = None
    scheduled = None  # the scheduled tunables in force (config.tunable_schedule)
    try:
        for i in range(done, chunks):
            due = config.tunables_at(i * per_chunk)
            if due != scheduled:  # also on the first chunk of a resume (setting is idempotent)
                if due and scheduled is not None:
                    log(f"\nwmjax: from env step {i * per_chunk:,d}: "
                        + ", ".join(f"{k}={v:g}" for k, v in due.items()))
                state, scheduled = set_tunables(state, due), due
            with _interrupts_after_the_chunk(log):
                state, metrics = trainer.train_chunk(state)
                dispatched = i + 1
            record(metrics)
            logged = i + 1
            if ckpt and ((checkpoint_every and (i + 1) % checkpoint_every == 0) or i + 1 == chunks):
                ckpt.save(i + 1, state)
                saved = i + 1
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM via stop_on_sigterm: keep what was trained
        if ckpt and dispatched > saved:
            log(f"\nwmjax: interrupted; finishing chunk {dispatched} and saving a checkpoint "
                f"(interrupt again to abort)")
            try:
                if dispatched > logged:
                    record(metrics)
                ckpt.save(dispatched, state)
                log(f"wmjax: saved checkpoint {dispatched}; continue with --resume {logdir}")
            except KeyboardInterrupt:
                log("wmjax: aborted; the newest complete checkpoint is kept")
            except Exception as e:  # e.g. the state was already handed to the next chunk
                log(f"wmjax: could not save on interrupt ({type(e).__name__}: {e}); the newest "
                    f"complete checkpoint is kept")
        raise
    finally:
        if writer:
            writer.close()
        if wb:
            wb.close()
        if ckpt:
            ckpt.close()
    return state, rows


def set_tunables(state: Any, values: dict[str, float]) -> Any:
    """`state` (a batched TrainState) with the given tunables set to one value for every seed;
    each new leaf keeps its array's sharding, so the compiled chunk runs on unchanged."""
    unknown = sorted(set(values) - set(state.agent.hyper))
    if unknown:
        raise ValueError(f"unknown tunable(s) {unknown}; tunables: {', '.join(state.agent.hyper)}")

    def fill(x: jax.Array, value: float) -> jax.Array:
        return jax.jit(lambda a, v: jax.numpy.full_like(a, v), out_shardings=x.sharding)(x, value)

    hyper = {k: fill(v, values[k]) if k in values else v for k, v in state.agent.hyper.items()}
    return state._replace(agent=state.agent._replace(hyper=hyper))


# Static agent settings a fork may change besides the tunables: they change the compiled
# program, not the state's layout, so a checkpoint restores into the new program.
FORKABLE_SETTINGS = ("matmul_precision", "replay_policy_positive")


def fork(src: str, dst: str, tunables: dict[str, Any], chunk: int | None = None,
         steps: int | None = None) -> TrainConfig:
    """Start run folder `dst` from checkpoint `chunk` (default: the newest) of run `src`, with
    the given tunables (names in TUNABLES) set to new values for every seed: a branch that tests
    a change from a trained state, with src's replay, optimizer and return statistics. The
    settings in FORKABLE_SETTINGS may be given too (e.g. `matmul_precision`, to go on with
    faster matmuls). Returns dst's config; `train(config, dst, resume=True)` continues it.
    dst's metrics.jsonl begins with src's rows up to that checkpoint, and fork.json names the
    source, the checkpoint and the change. Nothing in src is written, and dst is written only
    once the checkpoint has been read."""
    from wmjax.agents.dreamer import TUNABLES

    unknown = sorted(set(tunables) - set(TUNABLES) - set(FORKABLE_SETTINGS))
    if unknown:
        raise ValueError(f"a fork changes tunables and {', '.join(FORKABLE_SETTINGS)} only; "
                         f"{unknown} would change the state's layout. Tunables: "
                         f"{', '.join(TUNABLES)}")
    settings = {k: v for k, v in tunables.items() if k in FORKABLE_SETTINGS}
    tunables = {k: v for k, v in tunables.items() if k not in FORKABLE_SETTINGS}
    if holds_run(dst):
        raise RunDirError(f"{dst} already holds a run; fork into a new folder")
    config = load_config(src)
    # The fork's values replace src's scheduled changes of the same tunables (which a resume
    # would otherwise make again); its other scheduled changes stay.
    config = config.replace(steps=config.steps if steps is None else steps,
                            agent=config.agent.replace(**tunables, **settings),
                            tunable_schedule=tuple(e for e in config.tunable_schedule
                                                   if e[1] not in tunables))
    done, state = read_state(src, config, None, chunk)
    state = set_tunables(state, tunables)

    env_steps = done * config.env_steps_per_chunk
    write_json(os.path.join(dst, CONFIG_FILE), config.to_dict())
    saved_hyper = load_hyper(src)
    if saved_hyper:  # a grid's per-seed values, with the changed ones replaced
        write_json(os.path.join(dst, HYPER_FILE),
                   {**saved_hyper, **_hyper_lists(tunables, config.seeds)})
    write_json(os.path.join(dst, FORK_FILE), dict(source=os.path.abspath(src), chunk=done,
                                                  env_steps=env_steps, tunables=tunables,
                                                  settings=settings))
    writer = Checkpointer(dst)
    writer.save(done, state)
    writer.close()
    rows = read_metrics(src) if os.path.exists(os.path.join(src, METRICS_FILE)) else []
    write_jsonl(os.path.join(dst, METRICS_FILE), [r for r in rows if r["env_step"] <= env_steps])
    return config


def stop_on_sigterm() -> None:
    """Make SIGTERM (a cluster's preemption, `kill`) raise KeyboardInterrupt in the main thread,
    so that `train` saves a checkpoint of the chunk in flight before the process exits."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _interrupts_after_the_chunk(log=lambda *a, **k: None):
    """Hold Ctrl-C (and SIGTERM under stop_on_sigterm) until the chunk has been handed back.

    The host loop steps its envs in Python and donates the state to each jitted step, so an
    interrupt inside its `train_chunk` would leave no state to save. Held here, it is raised
    once the new state is assigned, and `train` saves that. A second interrupt aborts at once.
    The fused loop's `train_chunk` only dispatches, so for it the hold is short, except on the
    first call, which compiles. `log` says that an interrupt is being held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):
        if pending:
            raise KeyboardInterrupt(f"signal {signum} (second interrupt)")
        pending.append(signum)
        log("\nwmjax: interrupted; the chunk in progress finishes first (interrupt again to abort)")

    # Only signals that would interrupt now (an ignored SIGINT, e.g. under nohup, stays ignored).
    raising = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _raise_interrupt}
    held = [s for s, handler in raising.items() if signal.getsignal(s) is handler]
    previous = {s: signal.signal(s, hold) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        raise KeyboardInterrupt(f"signal {pending[0]}")


def cached_trainer(config: TrainConfig, devices: int | None = None):
    """make_train for a config, kept so that training the same config again in this process
    (a resume, a longer run, a sweep point, an evaluation) reuses the traced and compiled
    program. The step budget and the members' seed ids (an argument of `init`) are not part of
    the program, so they are not part of the key."""
    return _trainer(config.replace(steps=1, seed_ids=None), devices)


@functools.lru_cache(maxsize=16)
def _trainer(config: TrainConfig, devices: int | None):
    if is_gymnasium_name(config.env):  # not a JAX env: step it from the host loop
        if devices is not None:
            raise ValueError(f"{config.env} trains in the host loop on one device; --devices "
                             f"shards the fused loop of JAX envs only")
        from wmjax.host_loop import make_host_train

        return make_host_train(config)
    return make_train(config, devices=devices)


def read_state(run_dir: str, config: TrainConfig, hyper: dict | None = None,
               chunk: int | None = None) -> tuple[int, Any]:
    """Checkpoint `chunk` (default: the newest) of the run in `run_dir`, read without writing
    anything, into the state of `config`'s trainer (the run's own config, or one that changes
    only tunables or FORKABLE_SETTINGS, as a fork's does)."""
    if not os.path.isdir(checkpoint_dir(run_dir)):
        raise CheckpointError(f"{run_dir} has no checkpoints/ folder: nothing to restore")
    reader = Checkpointer(run_dir, read_only=True)
    try:
        return restore_state(reader, cached_trainer(config), jax.random.key(config.seed),
                             hyper, chunk)
    finally:
        reader.close()


def restore_state(ckpt: Checkpointer, trainer, key: jax.Array, hyper: dict | None,
                  chunk: int | None = None) -> tuple[int, Any]:
    """Checkpoint `chunk` (default: the newest) of `trainer`'s run, restored. A tunable added
    to the library after the checkpoint was written (e.g. `replay_policy_scale`) is not in it:
    it restores without that tunable, which then takes its value from `hyper` or the config,
    so runs saved by an older wmjax resume. Anything else missing is a CheckpointError."""
    like = abstract_state(trainer, key, hyper)
    saved = ckpt.saved_names(chunk)
    added = [k for k in like.agent.hyper if saved is not None and f"agent.hyper.{k}" not in saved]
    if not added:
        return ckpt.restore(like, chunk)
    kept = {k: v for k, v in like.agent.hyper.items() if k not in added}
    done, state = ckpt.restore(like._replace(agent=like.agent._replace(hyper=kept)), chunk)
    values = seed_hyper(trainer.agent, hyper, trainer.config.seeds)
    filled = {k: jax.device_put(values[k], like.agent.hyper[k].sharding)
              if like.agent.hyper[k].sharding is not None else values[k] for k in added}
    return done, state._replace(agent=state.agent._replace(hyper={**state.agent.hyper, **filled}))


def abstract_state(trainer, key: jax.Array, hyper: dict | None) -> Any:
    """Shapes, dtypes and (when sharded) shardings of `trainer.init(key, hyper)`, computed
    without running it: the target a checkpoint is restored into."""
    like = jax.eval_shape(lambda k: trainer.init(k, hyper), key)
    if trainer.shardings is None:
        return like
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        like, trainer.shardings)


def _check_resume(logdir: str, config: TrainConfig | None, hyper: dict | None):
    saved = load_config(logdir)
    saved_steps = saved.steps
    if config is not None:
        diffs = saved.differences(config, ignore=("steps",))
        if diffs:
            raise RunDirError(f"cannot resume {logdir}: the config differs from the saved one "
                              f"(saved != requested): {'; '.join(diffs)}")
        saved = saved.replace(steps=config.steps)
    saved_hyper = load_hyper(logdir)
    if hyper is not None and _hyper_lists(hyper, saved.seeds) != saved_hyper:
        raise RunDirError(f"cannot resume {logdir}: tunables {hyper} differ from the saved "
                          f"{saved_hyper}")
    latest = None
    if os.path.isdir(checkpoint_dir(logdir)):
        reader = Checkpointer(logdir, read_only=True)
        latest = reader.latest()
        reader.close()
    if latest is None:
        raise CheckpointError(f"cannot resume {logdir}: it has no complete checkpoint")
    if saved.steps != saved_steps and is_main_process():
        write_json(os.path.join(logdir, CONFIG_FILE), saved.to_dict())
    return saved, saved_hyper, (saved_steps if saved.steps > saved_steps else None)


def _note_machine(logdir: str, chunk: int, resume: bool, log) -> None:
    """Add this machine to the run's MACHINES_FILE (a new run starts the file). A resumed run
    that moved to another kind of CPU goes on correctly, but its numbers stop matching, bit for
    bit, those of a run that stayed on one machine; say so."""
    here = dict(chunk=chunk, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **describe_machine())
    before = read_machines(logdir) if resume else []
    if before and before[-1].get("cpu_features") != here["cpu_features"]:
        log(f"wmjax: resuming on another kind of CPU (features {here['cpu_features']}, before "
            f"{before[-1].get('cpu_features')}): XLA's arithmetic differs in the last bits, so "
            f"from chunk {chunk} on this run will not match one that stayed on one machine")
    write_jsonl(os.path.join(logdir, MACHINES_FILE), before + [here])


def _hyper_lists(hyper: dict[str, Any], seeds: int) -> dict[str, list[float]]:
    out = {}
    for k, v in sorted(hyper.items()):
        vals = np.asarray(v, np.float32).reshape(-1).tolist()
        out[k] = vals * seeds if len(vals) == 1 else vals
    return out


def _newest_logged(logdir: str) -> tuple[int, float]:
    """The newest env_step in metrics.jsonl and its wall_time ((-1, 0.0) if none). A line cut
    short by a kill is dropped from the file, so the rows appended after it stay readable."""
    if not os.path.exists(os.path.join(logdir, METRICS_FILE)):
        return -1, 0.0
    rows = read_metrics(logdir)
    with open(os.path.join(logdir, METRICS_FILE), encoding="utf-8") as f:
        torn = sum(1 for _ in f) != len(rows)
    if torn:
        write_jsonl(os.path.join(logdir, METRICS_FILE), rows)
    if not rows:
        return -1, 0.0
    newest = max(rows, key=lambda r: int(r["env_step"]))
    return int(newest["env_step"]), float(newest.get("wall_time", 0.0))


def write_json(path: str, data: Any) -> None:
    """Write atomically: a kill mid-write never leaves a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Write rows as JSON lines, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)
