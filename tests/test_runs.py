"""Run folders: checkpoints, exact resume (also after SIGKILL), refusals that overwrite nothing,
and wandb logging that never stops training."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from programs import TINY, TINY_FLAGS
from wmjax.checkpoint import CheckpointError, Checkpointer
from wmjax.machine import cpu_fingerprint
from wmjax.run import RunDirError, holds_run, read_metrics, train, training_wall_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = TINY.replace(steps=2048)  # 16 chunks; replay (1024) wraps around
CHUNKS = 16
CLI_FLAGS = TINY_FLAGS + ["--steps", "2048"]


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _rows(logdir):
    rows = [json.loads(line) for line in open(os.path.join(logdir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def _snapshot(folder):
    """Every file under folder with its content hash: to prove nothing was changed."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, checkpointed every 4 chunks."""
    logdir = str(tmp_path_factory.mktemp("reference"))
    state, _ = train(CONFIG, logdir, checkpoint_every=4, verbose=False)
    return logdir, state


def test_checkpoints_written_and_kept(reference):
    logdir, _ = reference
    ckpt = Checkpointer(logdir, read_only=True)
    assert ckpt.latest() == CHUNKS
    assert sorted(int(d) for d in os.listdir(os.path.join(logdir, "checkpoints")) if d.isdigit()) \
        == [12, 16]  # every 4 chunks and at the end, the newest 2 kept
    with pytest.raises(CheckpointError, match=r"no checkpoint 8 in .*; saved: \[12, 16\]"):
        ckpt.restore({}, 8)  # rotated out: named, with what there is
    ckpt.close()


def test_resume_after_sigkill_is_bit_exact(reference, tmp_path):
    ref_dir, ref_state = reference
    logdir = str(tmp_path / "killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wmjax", "train", *CLI_FLAGS, "--logdir", logdir,
         "--checkpoint-every", "1", "--quiet"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    ckpt_dir = os.path.join(logdir, "checkpoints")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
        if done and max(done) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = Checkpointer(logdir, read_only=True).latest()
    assert latest is not None and 3 <= latest < CHUNKS, latest

    state, _ = train(None, logdir, resume=True, verbose=False)
    _leaves_equal(state, ref_state)  # params, optimizer, replay, env states, keys, counters
    assert _rows(logdir) == _rows(ref_dir)  # every log point once, identical values
    clock = [r["wall_time"] for r in read_metrics(logdir) if r["seed"] == 0]
    assert all(b >= a for a, b in zip(clock, clock[1:])), clock  # never backwards


def test_interrupt_checkpoints_the_chunk_in_flight(reference, tmp_path, monkeypatch):
    """Ctrl-C while train waits for a chunk: the chunk is finished, logged and checkpointed
    before the interrupt goes on, and a resume ends exactly where an uninterrupted run ends."""
    import wmjax.run as run

    ref_dir, ref_state = reference
    real, calls = run.host_metrics, []

    def interrupted_once(metrics):
        calls.append(1)
        if len(calls) == 6:  # while waiting for chunk 6 (checkpoints every 4: the last was 4)
            raise KeyboardInterrupt
        return real(metrics)

    monkeypatch.setattr(run, "host_metrics", interrupted_once)
    logdir = str(tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, logdir, checkpoint_every=4, verbose=False)
    assert Checkpointer(logdir, read_only=True).latest() == 6
    rows_per_chunk = len(_rows(ref_dir)) // CHUNKS
    assert _rows(logdir) == _rows(ref_dir)[:6 * rows_per_chunk]  # chunk 6 logged once

    monkeypatch.setattr(run, "host_metrics", real)
    state, _ = train(None, logdir, resume=True, verbose=False)
    _leaves_equal(state, ref_state)
    assert _rows(logdir) == _rows(ref_dir)
    # The resumed run's clock goes on from the checkpoint's, so the total is the last row's.
    clock = [r["wall_time"] for r in read_metrics(logdir) if r["seed"] == 0]
    assert all(b >= a for a, b in zip(clock, clock[1:])), clock
    assert training_wall_time(read_metrics(logdir)) == clock[-1]


def test_training_wall_time_sums_clocks_that_restart_at_a_resume():
    """Logs written before the clock went on across resumes restart it at each one."""
    rows = [{"seed": s, "env_step": i, "wall_time": t}
            for i, t in enumerate([10.0, 20.0, 5.0, 8.0, 3.0]) for s in (0, 1)]
    assert training_wall_time(rows) == 20.0 + 8.0 + 3.0
    assert training_wall_time([]) == 0.0


def test_interrupt_inside_a_chunk_is_held_until_it_returns(reference, tmp_path, monkeypatch):
    """Ctrl-C while a chunk is being computed on the host (the host loop steps envs in Python
    and donates the state as it goes): the chunk completes, and its state is what is saved."""
    import wmjax.run as run

    real, calls = run.cached_trainer, []

    def interrupting(config, devices=None):
        trainer = real(config, devices)

        def train_chunk(state):
            calls.append(1)
            if len(calls) == 6:  # Ctrl-C arrives while chunk 6 is running
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)  # the handler runs here; unheld, chunk 6 would never start
            return trainer.train_chunk(state)

        return trainer._replace(train_chunk=train_chunk)

    monkeypatch.setattr(run, "cached_trainer", interrupting)
    logdir = str(tmp_path / "held")
    # Ctrl-C's usual handler (a process started in the background, as CI may be, ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(CONFIG, logdir, checkpoint_every=4, verbose=False)
        restored = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 6 and Checkpointer(logdir, read_only=True).latest() == 6
    ref_dir, _ = reference
    rows_per_chunk = len(_rows(ref_dir)) // CHUNKS
    assert _rows(logdir) == _rows(ref_dir)[:6 * rows_per_chunk]
    assert restored is signal.default_int_handler


def test_an_ignored_interrupt_stays_ignored_during_a_chunk():
    from wmjax.run import _interrupts_after_the_chunk

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. a job started under nohup
    try:
        with _interrupts_after_the_chunk():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_raises_keyboard_interrupt():
    from wmjax.run import stop_on_sigterm

    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode
    finally:
        signal.signal(signal.SIGTERM, previous)


def _machines(logdir):
    return [json.loads(line) for line in open(os.path.join(logdir, "machines.jsonl"))]


def test_resume_can_extend_steps_exactly(reference, tmp_path, capsys):
    """Also: each start is noted in machines.jsonl, and a resume on another kind of CPU says
    that its numbers will no longer match bit for bit (here the first note is edited to look
    like one)."""
    _, ref_state = reference
    logdir = str(tmp_path / "short")
    train(CONFIG.replace(steps=CONFIG.steps // 2), logdir, checkpoint_every=0, verbose=False)
    first = _machines(logdir)
    assert [m["chunk"] for m in first] == [0]
    assert first[0]["cpu_features"] == cpu_fingerprint() and first[0]["jax"] == jax.__version__
    with open(os.path.join(logdir, "machines.jsonl"), "w") as f:
        f.write(json.dumps({**first[0], "cpu_features": "elsewhere"}) + "\n")
    capsys.readouterr()
    state, _ = train(CONFIG, logdir, resume=True)
    _leaves_equal(state.agent.params, ref_state.agent.params)
    out = capsys.readouterr().out
    assert "resuming on another kind of CPU" in out
    # The replay was sized for the run as started (1,024 steps); extending it does not grow it.
    assert "the replay holds 1,024 steps per seed" in out and "from 1,024 to 2,048 steps" in out
    notes = _machines(logdir)
    assert [m["chunk"] for m in notes] == [0, CHUNKS // 2]
    assert [m["cpu_features"] for m in notes] == ["elsewhere", cpu_fingerprint()]


def test_resume_with_a_different_config_names_it_and_writes_nothing(reference):
    logdir, _ = reference
    before = _snapshot(logdir)
    with pytest.raises(RunDirError, match=r"agent.lr: 4e-05 != 0.001.*train_ratio: 24"):
        train(CONFIG.replace(train_ratio=64.0, agent=CONFIG.agent.replace(lr=1e-3)), logdir,
              resume=True, verbose=False)
    with pytest.raises(RunDirError, match="already holds a run"):
        train(CONFIG, logdir, verbose=False)
    assert _snapshot(logdir) == before


def test_a_failed_start_can_be_started_again(reference, tmp_path):
    """A run that stopped before its first log leaves only its config (and empty files); a new
    run may take the folder. Logged metrics alone are enough to refuse it."""
    _, ref_state = reference
    logdir = tmp_path / "failed"
    (logdir / "checkpoints").mkdir(parents=True)
    (logdir / "config.json").write_text(json.dumps(CONFIG.replace(seed=7).to_dict()))
    (logdir / "metrics.jsonl").write_text("")
    (logdir / "hyper.json").write_text(json.dumps({"lr": [1e-3]}))  # stale: must not survive
    (logdir / "machines.jsonl").write_text('{"chunk": 5}\nnot json\n')  # stale as well
    assert not holds_run(str(logdir))
    state, _ = train(CONFIG, str(logdir), verbose=False)
    _leaves_equal(state.agent.params, ref_state.agent.params)
    assert [m["chunk"] for m in _machines(str(logdir))] == [0]
    assert not (logdir / "hyper.json").exists() and holds_run(str(logdir))
    assert json.loads((logdir / "config.json").read_text())["seed"] == CONFIG.seed
    logged = tmp_path / "logged"
    logged.mkdir()
    (logged / "metrics.jsonl").write_text('{"env_step": 128}\n')
    with pytest.raises(RunDirError, match="already holds a run"):
        train(CONFIG, str(logged), verbose=False)


def test_checkpoint_of_another_shape_names_the_array(reference, tmp_path):
    src, _ = reference
    logdir = str(tmp_path / "edited")
    import shutil

    shutil.copytree(src, logdir)
    config = json.load(open(os.path.join(logdir, "config.json")))
    config["agent"]["units"] = 48  # the saved config no longer matches its checkpoint
    json.dump(config, open(os.path.join(logdir, "config.json"), "w"))
    before = _snapshot(logdir)
    # Found from the checkpoint's metadata before anything is restored.
    with pytest.raises(CheckpointError, match=r"does not fit this config: agent\.params\.\S+ is "
                                              r"float32\[.*\], this config needs float32\[.*48"):
        train(None, logdir, resume=True, verbose=False)
    assert _snapshot(logdir) == before


def test_a_checkpoint_from_before_a_tunable_existed_resumes_exactly(reference, tmp_path):
    """A run saved by a wmjax without `replay_policy_scale` among its tunables (its checkpoint
    has no agent.hyper entry for it) resumes: the tunable takes the config's value, and the
    run ends exactly where the uninterrupted reference does."""
    from wmjax.run import abstract_state, cached_trainer

    ref_dir, ref_state = reference
    src = Checkpointer(ref_dir, read_only=True)
    _, state = src.restore(abstract_state(cached_trainer(CONFIG), jax.random.key(0), None), 12)
    src.close()
    older = {k: v for k, v in state.agent.hyper.items() if k != "replay_policy_scale"}
    logdir = str(tmp_path / "older")
    writer = Checkpointer(logdir)
    writer.save(12, state._replace(agent=state.agent._replace(hyper=older)))
    writer.close()
    reader = Checkpointer(logdir, read_only=True)
    assert "agent.hyper.replay_policy_scale" not in reader.saved_names()
    reader.close()
    for name in ("config.json", "metrics.jsonl"):
        lines = open(os.path.join(ref_dir, name)).read().splitlines(keepends=True)
        if name == "metrics.jsonl":
            lines = [line for line in lines if json.loads(line)["env_step"] <= 12 * 128]
        open(os.path.join(logdir, name), "w").writelines(lines)
    state, _ = train(None, logdir, resume=True, verbose=False)
    np.testing.assert_array_equal(np.asarray(state.agent.hyper["replay_policy_scale"]), [0.0, 0.0])
    _leaves_equal(state, ref_state)
    assert _rows(logdir) == _rows(ref_dir)


def test_cli_resume_errors_exit_2(reference, capsys):
    from wmjax.cli import main

    logdir, _ = reference
    assert main(["train", "--resume", logdir, "--train-ratio", "8"]) == 2
    assert "train_ratio: 24 != 8.0" in capsys.readouterr().err
    assert main(["train", "--resume", logdir, "--replay-obs-dtype", "float16"]) == 2
    assert "replay_obs_dtype: 'float32' != 'float16'" in capsys.readouterr().err
    assert main(["train", "--resume", os.path.join(logdir, "nothing-here")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_wandb_offline_writes_its_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logdir = str(tmp_path / "wb")
    _, rows = train(CONFIG.replace(steps=256), logdir, wandb=True, verbose=False)
    assert len(rows) == 4  # 2 chunks x 2 seeds
    runs = [d for d in os.listdir(os.path.join(logdir, "wandb")) if d.startswith("offline-run-")]
    assert len(runs) == 1
    files = os.listdir(os.path.join(logdir, "wandb", runs[0]))
    assert any(f.endswith(".wandb") for f in files), files


@pytest.mark.parametrize("broken", ["init", "log"])
def test_broken_wandb_does_not_stop_training(tmp_path, monkeypatch, capsys, broken):
    class Run:
        def log(self, *a, **k):
            raise ConnectionError("wandb server went away")

        def finish(self):
            pass

    def init(**kwargs):
        if broken == "init":
            raise RuntimeError("no wandb here")
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    logdir = str(tmp_path / broken)
    _, rows = train(CONFIG.replace(steps=256), logdir, wandb=True)
    assert [r["env_step"] for r in rows] == [128, 128, 256, 256]  # 2 seeds per chunk
    assert len(_rows(logdir)) == 4
    out = capsys.readouterr().out
    assert f"wandb {broken} failed" in out and out.count("continuing without wandb") == 1


def test_cartpole_failures_counts_how_every_episode_ended(reference, capsys, tmp_path):
    """benchmarks/cartpole_failures.py on a trained run: one row per seed, every episode counted
    once; a run on another env is refused."""
    from benchmarks.cartpole_failures import CAUSES, main

    logdir, _ = reference
    rows = main([logdir, "--episodes", "6"])
    assert [r["seed"] for r in rows] == [0, 1] and all(r["chunk"] == CHUNKS for r in rows)
    for r in rows:
        assert sum(r[c] for c in CAUSES) == 6 and 1 <= r["mean_length"] <= 500
        # an untrained tiny policy drops the pole long before the cart reaches the edge
        assert r["pole angle"] > 0
        assert np.isfinite(r["value_centre"])  # the critic read along the way
    assert "seed 1" in capsys.readouterr().out
    with open(os.path.join(logdir, "config.json")) as f:
        other = json.load(f)
    other_dir = str(tmp_path)
    with open(os.path.join(other_dir, "config.json"), "w") as f:
        json.dump({**other, "env": "Acrobot-v1"}, f)
    with pytest.raises(SystemExit):
        main([other_dir])
    assert "reads CartPole-v1 runs only" in capsys.readouterr().err


def test_continue_head_reads_every_replayed_record(reference, capsys):
    """benchmarks/continue_head.py on a trained run: every record of the replay is predicted
    once, the terminal records are the replay's, and CartPole's causes add up to them."""
    from benchmarks.continue_head import CARTPOLE_LIMITS, continue_predictions, main, replay_in_order
    from wmjax.policy import load_train_state
    from wmjax.run import cached_trainer

    logdir, _ = reference
    # 256 records per env: a short last window; then the head alone, trained hard
    rows = main([logdir, "--window", "40", "--fit-steps", "100", "--fit-lr", "1e-2"])
    config, _, state = load_train_state(logdir)
    replay = state.replay
    for seed, row in enumerate(rows):
        term = np.asarray(replay.data["is_terminal"][seed])[:, :int(replay.count[seed])]
        assert row["records"] == term.size and row["terminals"] == int(term.sum()) > 0
        assert sum(row[f"terminals/{c}"] for c in CARTPOLE_LIMITS) == row["terminals"]
        assert 0.0 < row["cont_elsewhere"] < 1.0 and 0.0 <= row["cont_at_terminals"] <= 1.0
        assert row["fitted"]["cont_at_terminals"] < row["cont_at_terminals"] - 0.1
    # oldest first, the newest record last (the ring has wrapped around)
    full, pos = replay_in_order(replay, 0), int(replay.pos[0])
    for k in ("reward", "is_first", "is_terminal"):
        np.testing.assert_array_equal(full[k][:, -1], np.asarray(replay.data[k][0])[:, pos - 1])
        np.testing.assert_array_equal(full[k][:, 0], np.asarray(replay.data[k][0])[:, pos])
    # windowing does not change a prediction, except that each window starts a fresh state
    records = replay_in_order(replay, 0, last=20)
    np.testing.assert_array_equal(records["reward"], full["reward"][:, -20:])
    params = jax.tree.map(lambda x: x[0], state.agent.params)
    agent = cached_trainer(config).agent
    whole = continue_predictions(agent, params, records, window=20)
    assert whole.shape == records["is_first"].shape and np.isfinite(whole).all()
    windowed = continue_predictions(agent, params, records, window=8)  # [0,8) [8,16) [12,20)
    np.testing.assert_allclose(windowed[:, :8], whole[:, :8], rtol=1e-5)
    tail = jax.tree.map(lambda x: x[:, 12:], records)
    np.testing.assert_allclose(windowed[:, 16:], continue_predictions(agent, params, tail)[:, 4:],
                               rtol=1e-5)
    assert "seed 1" in capsys.readouterr().out


def test_fork_without_a_change_continues_bit_exactly(reference, tmp_path):
    """`train --fork SRC --fork-chunk 12` from the CLI: the new folder continues chunk 12 of the
    reference run, logs its rows up to there and then exactly the rows the reference logged
    after it, names its source in fork.json, and leaves the source untouched."""
    from wmjax.cli import main

    ref_dir, _ = reference
    before = _snapshot(ref_dir)
    dst = str(tmp_path / "fork")
    assert main(["train", "--fork", ref_dir, "--fork-chunk", "12", "--logdir", dst, "--quiet"]) == 0
    assert _rows(dst) == _rows(ref_dir)
    fork = json.load(open(os.path.join(dst, "fork.json")))
    assert fork == dict(source=os.path.abspath(ref_dir), chunk=12, env_steps=12 * 128, tunables={},
                        settings={})
    assert _snapshot(ref_dir) == before


def test_fork_sets_tunables_from_its_checkpoint_on(reference, tmp_path):
    """A fork with lr=1e-3 (the reference trained at 4e-5) starts from checkpoint 12's state
    with only the tunable changed, trains on with it, and ends elsewhere than the reference;
    the fork without a change above ends exactly on it, so the change made the difference."""
    from wmjax.run import abstract_state, cached_trainer, fork

    ref_dir, ref_state = reference
    dst = str(tmp_path / "lr")
    config = fork(ref_dir, dst, {"lr": 1e-3}, chunk=12)
    assert config.agent.lr == 1e-3
    assert json.load(open(os.path.join(dst, "config.json")))["agent"]["lr"] == 1e-3
    ckpt = Checkpointer(dst, read_only=True)
    _, start = ckpt.restore(abstract_state(cached_trainer(config), jax.random.key(0), None), 12)
    ckpt.close()
    np.testing.assert_allclose(np.asarray(start.agent.hyper["lr"]), [1e-3, 1e-3])
    src = Checkpointer(ref_dir, read_only=True)
    _, original = src.restore(abstract_state(cached_trainer(CONFIG), jax.random.key(0), None), 12)
    src.close()
    _leaves_equal(start.agent.params, original.agent.params)
    _leaves_equal(start.replay, original.replay)
    state, rows = train(config, dst, resume=True, verbose=False)
    assert [r["env_step"] for r in rows if r["seed"] == 0] == [128 * c for c in range(13, 17)]
    np.testing.assert_allclose(np.asarray(state.agent.hyper["lr"]), [1e-3, 1e-3])
    leaves = zip(jax.tree.leaves(state.agent.params), jax.tree.leaves(ref_state.agent.params))
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in leaves]
    assert max(moved) > 0.0


def test_fork_may_change_the_matmul_precision(reference, tmp_path):
    """`matmul_precision` changes the compiled program, not the state's layout: a fork may set
    it, says so in fork.json and config.json, and trains on from the source's checkpoint."""
    from wmjax.cli import main

    ref_dir, _ = reference
    dst = str(tmp_path / "precision")
    other = "float32" if CONFIG.agent.resolved_matmul_precision() == "bfloat16" else "bfloat16"
    assert main(["train", "--fork", ref_dir, "--fork-chunk", "12", "--logdir", dst, "--steps",
                 str(13 * 128), "--set", f"matmul_precision={other}", "--quiet"]) == 0
    fork = json.load(open(os.path.join(dst, "fork.json")))
    assert fork["tunables"] == {} and fork["settings"] == {"matmul_precision": other}
    assert json.load(open(os.path.join(dst, "config.json")))["agent"]["matmul_precision"] == other
    assert [r["env_step"] for r in _rows(dst) if r["seed"] == 0] == [128 * c for c in range(1, 14)]


def test_fork_refusals_name_the_problem_and_write_nothing(reference, tmp_path, capsys):
    from wmjax.cli import main

    ref_dir, _ = reference
    before = _snapshot(ref_dir)
    dst = str(tmp_path / "never")
    cases = [
        (["--set", "units=48"], "a fork changes tunables and matmul_precision, "
                                "replay_policy_positive only; ['units']"),
        (["--env", "Acrobot-v1"], "env: 'CartPole-v1' != 'Acrobot-v1'"),
        (["--fork-chunk", "8"], "no checkpoint 8 in .*saved: [12, 16]"),
        (["--resume", ref_dir], "give one of them"),
        (["--num-processes", "2"], "from one process"),
    ]
    for flags, message in cases:
        assert main(["train", "--fork", ref_dir, "--logdir", dst, "--quiet"] + flags) == 2
        err = capsys.readouterr().err
        assert all(part in err for part in message.split(".*")), err
        assert not os.path.exists(dst)
    assert main(["train", "--fork", ref_dir, "--logdir", ref_dir, "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--fork-chunk", "12", "--logdir", dst]) == 2
    assert "give --fork too" in capsys.readouterr().err
    bare = str(tmp_path / "bare")  # a run folder whose checkpoints are gone
    os.makedirs(bare)
    shutil.copy(os.path.join(ref_dir, "config.json"), bare)
    for command in (["train", "--fork", bare, "--logdir", dst, "--quiet"], ["eval", bare]):
        assert main(command) == 2
        assert f"{bare} has no checkpoints/ folder" in capsys.readouterr().err
    assert not os.path.exists(dst)
    assert _snapshot(ref_dir) == before


def test_a_tunable_schedule_is_a_fork_in_one_run(reference, tmp_path):
    """`--set-from 1536:lr=1e-3` trains as the reference until chunk 12 and then exactly as a
    fork of the reference's checkpoint 12 with lr=1e-3, also when the run is stopped before the
    change and resumed (the resumed process makes the change)."""
    from wmjax.cli import main
    from wmjax.run import fork, set_tunables

    ref_dir, _ = reference
    forked = str(tmp_path / "fork")
    train(fork(ref_dir, forked, {"lr": 1e-3}, chunk=12), forked, resume=True, verbose=False)
    scheduled = str(tmp_path / "scheduled")
    flags = TINY_FLAGS + ["--set-from", "1536:lr=1e-3", "--logdir", scheduled, "--quiet",
                          "--checkpoint-every", "1"]
    assert main(["train", *flags, "--steps", "1408"]) == 0  # 11 chunks: before the change
    assert main(["train", "--resume", scheduled, "--steps", "2048", "--quiet"]) == 0
    assert _rows(scheduled)[:24] == _rows(ref_dir)[:24]  # 12 chunks x 2 seeds
    assert _rows(scheduled) == _rows(forked) != _rows(ref_dir)
    saved = json.load(open(os.path.join(scheduled, "config.json")))
    assert saved["tunable_schedule"] == [[1536, "lr", 0.001]] and saved["agent"]["lr"] == 4e-5
    # A fork after the change that sets lr back keeps its value: the schedule's lr entry, which
    # its resume would make again, is dropped from the fork's config.
    back = str(tmp_path / "back")
    config = fork(scheduled, back, {"lr": 4e-5}, steps=2304)  # from its end, 2 chunks more
    assert config.tunable_schedule == () and config.agent.lr == 4e-5
    state, rows = train(config, back, resume=True, verbose=False)
    assert [r["env_step"] for r in rows if r["seed"] == 0] == [2176, 2304]
    np.testing.assert_allclose(np.asarray(state.agent.hyper["lr"]), [4e-5, 4e-5])
    with pytest.raises(ValueError, match=r"unknown tunable\(s\) \['units'\]"):
        set_tunables(state, {"units": 32.0})
