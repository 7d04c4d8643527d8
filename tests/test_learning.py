"""End to end through the CLI: the tiny agent must learn CartPole within a few thousand steps.

A random policy averages ~22; a broken learner stays there. This is the test that fails when
anything in the world model, imagination, actor-critic or loop stops learning.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wmjax
from wmjax.cli import main
from wmjax.policy import record_steps


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("cartpole"))
    rc = main(["train", "--env", "CartPole-v1", "--preset", "tiny", "--steps", "5000",
               "--envs", "8", "--train-ratio", "64", "--chunk-steps", "1000",
               "--set", "lr=3e-4", "--set", "warmup=100", "--logdir", logdir])
    assert rc == 0
    return logdir


def test_metrics_jsonl_written(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert len(rows) == 5
    assert [r["env_step"] for r in rows] == [1000, 2000, 3000, 4000, 5000]
    assert all(r["seed"] == 0 for r in rows)
    assert all("episode_return" in r and "updates" in r for r in rows)
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["env"] == "CartPole-v1" and config["agent"]["lr"] == 3e-4


def test_tiny_agent_learns_cartpole(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    returns = [r["episode_return"] for r in rows if r["episode_return"] is not None]
    assert returns[0] < 40, returns  # starts near random
    assert max(returns[-3:]) > 100, f"did not learn: returns per 1000 steps {returns}"


def test_cli_rejects_bad_input(capsys):
    assert main(["train", "--env", "NoSuchEnv-v0"]) == 2
    assert "unknown env 'NoSuchEnv-v0'" in capsys.readouterr().err
    assert main(["train", "--set", "horizon=0.5"]) == 2
    assert "horizon" in capsys.readouterr().err
    assert main(["train", "--set", "nosuchfield=1"]) == 2
    assert "unknown agent field" in capsys.readouterr().err


def test_load_policy_acts_and_beats_random(run_dir):
    policy = wmjax.load_policy(run_dir)
    assert policy.chunk == 5 and policy.config.env == "CartPole-v1"
    carry = policy.initial_carry(3)
    action, carry = policy.act(carry, jnp.zeros((3, 4)), jnp.ones(3, bool), jax.random.key(0))
    assert action.shape == (3,) and set(np.asarray(action).tolist()) <= {0, 1}
    assert carry.latent.deter.shape == (3, policy.agent.config.deter)
    returns = np.asarray(wmjax.evaluate(policy, episodes=8, key=jax.random.key(1)))
    assert returns.shape == (8,)
    assert returns.mean() > 60, returns  # a random policy averages ~22
    # Loading again reuses the compiled act and evaluation loop (the state is an argument).
    from wmjax.policy import _ROLLOUTS

    cached = len(_ROLLOUTS)
    again = wmjax.load_policy(run_dir)
    assert again.act.func is policy.act.func
    np.testing.assert_array_equal(wmjax.evaluate(again, episodes=8, key=jax.random.key(1)), returns)
    assert len(_ROLLOUTS) == cached


def test_record_rollout_layout_and_record_steps_with_any_act(run_dir):
    policy = wmjax.load_policy(run_dir, mode="train")
    key = jax.random.key(3)
    rec = wmjax.record_rollout(policy, 4, 300, key)
    assert rec["obs"].shape == (300, 4, 4) and rec["action"].shape == (300, 4)
    # Auto-reset: the record after an ending step is the reset, acted on one step later.
    assert rec["is_first"][0].all() and not rec["is_first"][1].any()
    np.testing.assert_array_equal(rec["is_first"][2:], rec["ended"][:-2])
    # The same recorder under random actions and no carry: CartPole's ~22-step episodes.
    rand = record_steps(policy.env, lambda c, o, f, k: (jax.random.randint(k, f.shape, 0, 2), c),
                        None, 4, 300, key)
    assert set(np.unique(rand["action"]).tolist()) == {0, 1}
    assert rand["ended"].sum() > 1.5 * max(int(rec["ended"].sum()), 10), (rand["ended"].sum(),
                                                                       rec["ended"].sum())


def test_cli_eval_and_plot(run_dir, tmp_path, capsys):
    # 8 episodes, as above: the compiled evaluation loop is reused, not rebuilt.
    assert main(["eval", run_dir, "--episodes", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["episodes"] == 8 and len(result["returns"]) == 8
    assert result["mean_return"] == pytest.approx(np.mean(result["returns"]), rel=1e-5)
    out = str(tmp_path / "plots")
    assert main(["plot", run_dir, "--out", out]) == 0
    for name in ("curves.png", f"{os.path.basename(run_dir)}_openloop.png"):
        path = os.path.join(out, name)
        assert os.path.getsize(path) > 10_000, name
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # --smooth draws a trailing mean over the logged curve: another picture.
    smooth = str(tmp_path / "smooth")
    assert main(["plot", run_dir, "--out", smooth, "--smooth", "2000", "--no-openloop"]) == 0
    drawn = open(os.path.join(smooth, "curves.png"), "rb").read()
    assert drawn[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn != open(os.path.join(out, "curves.png"), "rb").read()
    capsys.readouterr()
    assert main(["plot", run_dir, "--out", smooth, "--smooth", "-1"]) == 2
    assert "smooth must be 0" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_open_loop_reconstructs_the_observed_half_better(run_dir):
    from wmjax.plots import openloop

    truth, pred, context = openloop(run_dir, sequences=8)
    assert truth.shape == pred.shape and context == truth.shape[1] // 2
    observed = np.abs(pred[:, :context] - truth[:, :context]).mean()
    imagined = np.abs(pred[:, context:] - truth[:, context:]).mean()
    assert np.isfinite(imagined) and observed < imagined


def test_openloop_report_draws_vectors_and_images(tmp_path):
    from wmjax.plots import draw_openloop

    rng = np.random.default_rng(0)
    vec = rng.normal(size=(2, 10, 3)).astype(np.float32)
    img = rng.integers(0, 256, size=(2, 10, 12, 12, 3), dtype=np.uint8)
    for name, truth in (("vec.png", vec), ("img.png", img)):
        path = draw_openloop(truth, truth, 5, str(tmp_path / name))
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5_000
    with pytest.raises(ValueError, match="vectors .* or images"):
        draw_openloop(vec[0], vec[0], 5, str(tmp_path / "bad.png"))


def test_binned_means_weigh_episodes_and_average_seeds():
    from wmjax.plots import binned

    rows = [  # seed 0: chunks of 50 steps; seed 1 logs only in the second bin
        {"seed": 0, "env_step": 50, "episode_return": 1.0, "episodes": 1, "loss/rec": 4.0},
        {"seed": 0, "env_step": 100, "episode_return": 4.0, "episodes": 3, "loss/rec": 2.0},
        {"seed": 0, "env_step": 150, "episode_return": None, "episodes": 0, "loss/rec": 1.0},
        {"seed": 0, "env_step": 200, "episode_return": 10.0, "episodes": 2, "loss/rec": 1.0},
        {"seed": 1, "env_step": 200, "episode_return": 20.0, "episodes": 5},
        {"seed": 0, "env_step": 250, "episode_return": None, "episodes": 0, "loss/rec": 0.5},
    ]
    # (1·1 + 4·3) / 4 = 3.25; seeds 10 and 20 average to 15; nothing ended after step 200.
    assert binned(rows, 100) == [3.25, 15.0, None]
    assert binned(rows, 100, "loss/rec") == [3.0, 1.0, 0.5]  # plain means of the rows
    # With a fixed number of bins, the chunk that rounds a budget up counts in the last bin.
    assert binned(rows, 100, "loss/rec", bins=2) == [3.0, 2.5 / 3]
    assert binned([], 100) == []
    with pytest.raises(ValueError, match="bin width 0"):
        binned(rows, 0)


def test_trailing_mean_averages_the_points_in_each_window_without_looking_ahead():
    from wmjax.plots import trailing_mean

    # Windows of 15 steps ending at each point: {0}, {0, 10}, {10, 20}, {40}.
    smooth = trailing_mean([0, 10, 20, 40], [1.0, 3.0, 5.0, 7.0], 15)
    np.testing.assert_allclose(smooth, [1.0, 2.0, 4.0, 7.0])
    assert trailing_mean([], [], 10).shape == (0,)
    with pytest.raises(ValueError, match="width must be positive"):
        trailing_mean([0, 1], [1.0, 2.0], 0)
    with pytest.raises(ValueError, match="ascending"):
        trailing_mean([1, 0], [1.0, 2.0], 5)


def test_cli_table_prints_the_mean_return_per_bin(tmp_path, capsys):
    from wmjax.run import write_jsonl

    for name, steps in (("a", (40, 80, 120)), ("b", (40, 80))):
        os.makedirs(tmp_path / name)
        write_jsonl(str(tmp_path / name / "metrics.jsonl"),
                    [{"seed": 0, "env_step": s, "episode_return": float(s), "episodes": 1}
                     for s in steps])
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(["table", *runs, "--every", "80"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "| steps | 0–80 | 80–160 |"
    assert table[2].endswith("| 60.00 | 120.00* |")  # a's last bin holds 120 of its 160 steps
    assert table[3].endswith("| 60.00 |  |")  # b stopped at 80 steps
    assert main(["table", str(tmp_path / "missing")]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err


def test_cli_achievements_prints_each_runs_success_rates(tmp_path, capsys):
    pytest.importorskip("craftax")
    from wmjax.envs.craftax import achievement_names
    from wmjax.run import write_jsonl

    names = achievement_names()
    row = lambda step, episodes, wood: {"seed": 0, "env_step": step, "episodes": episodes, **{
        f"episode/achievement/{n}": (wood if n == "collect_wood" else 0.0) for n in names}}
    os.makedirs(tmp_path / "a")
    write_jsonl(str(tmp_path / "a" / "metrics.jsonl"),
                [row(100, 1, 100.0), row(200, 3, 0.0), {"seed": 0, "env_step": 300, "episodes": 0}])
    assert main(["achievements", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "| collect_wood | 25.0 |" in out and "| eat_cow | 0.0 |" in out  # 1 of 4 episodes
    assert "Crafter score (%): " in out and out.count("|\n") == 24
    assert main(["achievements", str(tmp_path / "a"), "--to-step", "100"]) == 0
    assert "| collect_wood | 100.0 |" in capsys.readouterr().out
    assert main(["achievements", str(tmp_path / "a"), "--from-step", "250"]) == 0
    assert "(no episode finished)" in capsys.readouterr().out
    assert main(["achievements", str(tmp_path / "a"), "--from-step", "5", "--to-step", "5"]) == 2
    assert "allowed: a window" in capsys.readouterr().err
    os.makedirs(tmp_path / "cartpole")
    write_jsonl(str(tmp_path / "cartpole" / "metrics.jsonl"),
                [{"seed": 0, "env_step": 100, "episodes": 1, "episode_return": 9.0}])
    assert main(["achievements", str(tmp_path / "cartpole")]) == 2
    assert "logs no achievements" in capsys.readouterr().err
