"""End to end through the CLI: the tiny agent must learn CartPole within a few thousand steps.

A random policy averages ~22; a broken learner stays there. This is the test that fails when
anything in the world model, imagination, actor-critic or loop stops learning.
"""
import json
import os

import pytest

from wmjax.cli import main


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
