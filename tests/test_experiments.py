import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from programs import TINY_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seeds_experiment_runs_two_seeds_in_one_program(tmp_path):
    # The suite's shared program (tests/programs.py): 2 seeds, compiled once per session.
    out = _load("seeds").main(TINY_FLAGS + ["--steps", "512", "--logdir", str(tmp_path), "--quiet"])
    rows = [json.loads(line) for line in open(os.path.join(out["logdir"], "metrics.jsonl"))]
    assert sorted({r["seed"] for r in rows}) == [0, 1]
    assert max(r["env_step"] for r in rows) == 512
    # CartPole episodes under an untrained policy last ~20 steps: every seed has finished some.
    assert all(v is not None and 5 < v < 200 for v in out["finals"])
    assert out["finals"][0] != out["finals"][1]


def test_seeds_ratio_sweep_writes_a_run_folder_per_ratio(tmp_path):
    # Ratio 24 is the shared program; ratio 12 is one more compile.
    argv = TINY_FLAGS + ["--ratios", "24", "12", "--steps", "512", "--logdir", str(tmp_path),
                         "--quiet"]
    results = _load("seeds_ratio").main(argv)
    assert sorted(results) == ["train_ratio=12", "train_ratio=24"]
    updates = {}
    for name in results:
        folder = os.path.join(tmp_path, name)
        config = json.load(open(os.path.join(folder, "config.json")))
        assert config["train_ratio"] == float(name.split("=")[1]) and config["seeds"] == 2
        rows = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
        assert sorted({r["seed"] for r in rows}) == [0, 1]
        updates[name] = max(r["updates"] for r in rows)
        assert os.path.isdir(os.path.join(folder, "checkpoints"))
    assert updates["train_ratio=24"] > updates["train_ratio=12"]
    # --resume skips finished points: nothing is retrained, nothing rewritten.
    before = {n: os.path.getmtime(os.path.join(tmp_path, n, "metrics.jsonl")) for n in results}
    assert _load("seeds_ratio").main(argv + ["--resume"]) == results
    assert before == {n: os.path.getmtime(os.path.join(tmp_path, n, "metrics.jsonl")) for n in results}


def test_lr_entropy_grid_is_one_program_with_a_folder_per_point(tmp_path):
    import wmjax

    # 2 points x 1 seed: the shared 2-member program, with lr and actent as traced values.
    results = _load("lr_entropy").main(
        TINY_FLAGS + ["--lrs", "1e-4", "1e-3", "--actents", "3e-4", "--seeds", "1",
                      "--steps", "512", "--logdir", str(tmp_path), "--quiet"])
    assert sorted(results) == ["lr=0.0001,actent=0.0003", "lr=0.001,actent=0.0003"]
    program = json.load(open(os.path.join(tmp_path, "program", "config.json")))
    assert program["seeds"] == 2  # 2 points x 1 seed in one vmapped program
    assert program["seed_ids"] == [0, 0]  # both points train seed 0
    hyper = json.load(open(os.path.join(tmp_path, "program", "hyper.json")))
    assert hyper["lr"] == pytest.approx([1e-4, 1e-3])
    for name in results:
        folder = os.path.join(tmp_path, "points", name)
        config = json.load(open(os.path.join(folder, "config.json")))
        assert config["seeds"] == 1 and config["agent"]["warmup"] == 10
        assert f"lr={config['agent']['lr']:g}" in name
        assert config["seed_ids"] is None  # the point's config is a plain run's
        rows = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
        assert {r["seed"] for r in rows} == {0} and len(rows) == 4
    # Both points are seed 0, so they act alike until the tunables first matter: the first
    # replay records, written before any update, are the same (members differ in a plain run).
    _, _, state = wmjax.policy.load_train_state(os.path.join(tmp_path, "program"))
    obs = np.asarray(state.replay.data["obs"])[:, :, :16]  # (members, envs, steps, ...)
    np.testing.assert_array_equal(obs[0], obs[1])
    assert not np.array_equal(obs[0, 0], obs[0, 1])  # the envs of one seed differ
    # A point folder loads like a run: seed 0 of the second point is member 1 of the program.
    policy = wmjax.load_policy(os.path.join(tmp_path, "points", "lr=0.001,actent=0.0003"), seed=0)
    assert float(policy.state.hyper["lr"]) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="seeds 0..0"):
        wmjax.load_policy(os.path.join(tmp_path, "points", "lr=0.001,actent=0.0003"), seed=1)
    # Played frozen, the point's one seed is the program's member 1, with key 0.
    point = os.path.join(tmp_path, "points", "lr=0.001,actent=0.0003")
    frozen = wmjax.seed_returns(point, episodes=2, mode="train")
    played = wmjax.evaluate(wmjax.load_policy(point, 0, "train"), 2, jax.random.key(0))
    assert frozen == [float(np.mean(played))]


def test_sweep_rejects_bad_settings(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _load("seeds_ratio").main(["--ratios", "-1", "--logdir", str(tmp_path)])
    assert "train_ratio" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _load("lr_entropy").main(["--set", "imag_horizon=0", "--logdir", str(tmp_path)])
    assert "imag_horizon" in capsys.readouterr().err


def test_tunables_grid_sweeps_any_tunable_in_one_program(tmp_path, capsys):
    # 2 points x 1 seed: the suite's shared 2-member program, with rec_scale traced.
    results = _load("tunables").main(
        TINY_FLAGS + ["--grid", "rec_scale=0.5,2", "--seeds", "1", "--steps", "512",
                      "--logdir", str(tmp_path), "--quiet"])
    assert sorted(results) == ["rec_scale=0.5", "rec_scale=2"]
    hyper = json.load(open(os.path.join(tmp_path, "program", "hyper.json")))
    assert hyper["rec_scale"] == pytest.approx([0.5, 2.0])
    for name in results:
        config = json.load(open(os.path.join(tmp_path, "points", name, "config.json")))
        assert f"rec_scale={config['agent']['rec_scale']:g}" == name
    # The points train differently once updates start: the total loss weighs the
    # reconstruction by each point's scale.
    rows = {n: [json.loads(line) for line in open(os.path.join(tmp_path, "points", n, "metrics.jsonl"))]
            for n in results}
    assert rows["rec_scale=0.5"][-1]["loss/total"] != rows["rec_scale=2"][-1]["loss/total"]
    for bad, says in (("free_nats=1,2", "not a tunable"), ("rec_scale", "NAME=V1,V2"),
                      ("rec_scale=a,b", "must be numbers"), ("rec_scale=1,-1", "rec_scale=-1.0"),
                      ("replay_policy_scale=0,1", "replay_policy_scale > 0 (only that")):
        with pytest.raises(SystemExit):
            _load("tunables").main(["--grid", bad, "--logdir", str(tmp_path / "bad")])
        assert says in capsys.readouterr().err
        assert not os.path.exists(tmp_path / "bad")
