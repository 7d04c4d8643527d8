"""The host loop on gymnasium envs: the record layout, the shared train-ratio semantics, the
errors for envs it cannot drive, and an end-to-end learning signal on gymnasium CartPole."""
import json
import os

import gymnasium as gym
import jax
import numpy as np
import pytest

from programs import TINY, run_chunks
from wmjax import evaluate, load_policy
from wmjax.cli import main
from wmjax.envs.gymnasium import GymnasiumEnv, make_vector_env, register_vector_env
from wmjax.host_loop import make_host_train
from wmjax.run import cached_trainer, train


def test_records_follow_the_fused_layout():
    """Truncation at 5 steps: is_last without is_terminal, then a reset record with is_first and
    reward 0 whose action is ignored; returns and lengths of finished episodes reported."""
    env = GymnasiumEnv(gym.make_vec("CartPole-v1", num_envs=2, max_episode_steps=5))
    assert env.spec.discrete and env.spec.num_actions == 2 and env.spec.obs_shape == (4,)
    rec = env.reset(seed=0)
    assert rec["is_first"].all() and rec["obs"].dtype == np.float32
    seen = []
    for _ in range(7):
        rec, ret, length = env.step(np.zeros(2, np.int32))
        seen.append((rec["is_first"][0], rec["is_last"][0], rec["is_terminal"][0], rec["reward"][0],
                     ret[0], length[0]))
    # Always pushing left ends CartPole within 5 steps only by the time limit (truncation).
    assert [s[1] for s in seen] == [False, False, False, False, True, False, False]
    assert not any(s[2] for s in seen)  # truncation is never terminal
    assert seen[4][4:] == (5.0, 5) and seen[5][0] and seen[5][3] == 0.0
    pend = GymnasiumEnv(make_vector_env("gymnasium:Pendulum-v1", 1))
    assert not pend.spec.discrete and pend.spec.num_actions == 1
    pend.reset(seed=0)
    pend.step(np.ones((1, 1), np.float32))  # [-1, 1] rescaled to Pendulum's [-2, 2]


@pytest.fixture(scope="module")
def chunks():
    trainer = cached_trainer(TINY.replace(env="gymnasium:CartPole-v1"))
    state, rows = run_chunks(trainer, 3)
    return trainer, state, rows


def test_host_loop_keeps_the_fused_train_ratio(chunks):
    """The same update counts, per chunk and seed, as the fused loop of the same config
    (tests/test_loop.py checks those against the ratio arithmetic)."""
    trainer, state, rows = chunks
    _, fused_rows = run_chunks(cached_trainer(TINY), 3)
    for host_rows, fused in zip(rows, fused_rows):
        expected = [(r["env_step"], r["updates"]) for r in fused]
        assert [(r["env_step"], r["updates"]) for r in host_rows] == expected
    assert rows[-1][0]["updates"] > 0 and rows[-1][0]["episodes"] > 0
    assert np.isfinite(rows[-1][0]["loss/total"])
    # The replay holds the host's records: seed s saw envs [4s, 4s + 4) of the vector env.
    assert int(state.replay.count[0]) == 3 * TINY.chunk_steps // TINY.num_envs


class _TwoButtons(gym.Env):
    """An env whose MultiDiscrete actions the host loop does not support."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.MultiDiscrete([2, 2])

    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


class _Walker(gym.Env):
    """dm_control-like Dict observations with a scalar entry."""

    observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (3,), np.float64),
                                         "height": gym.spaces.Box(-1, 1, (), np.float64)})
    action_space = gym.spaces.Box(-0.5, 0.5, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        return {"pos": np.ones(3), "height": np.array(0.5)}, {}

    def step(self, action):
        assert np.all(np.abs(action) <= 0.5)  # rescaled from [-1, 1]
        return {"pos": np.ones(3), "height": np.array(0.5)}, float(action[0]), False, False, {}


def test_dict_observations_and_registered_factories():
    register_vector_env("gymnasium:walker-test", lambda n: gym.vector.SyncVectorEnv([_Walker] * n))
    env = GymnasiumEnv(make_vector_env("gymnasium:walker-test", 3), "gymnasium:walker-test")
    assert env.spec.obs_shapes == {"height": (1,), "pos": (3,)} and not env.spec.discrete
    rec, _, _ = env.step(np.ones((3, 2), np.float32))
    assert rec["obs"]["height"].shape == (3, 1) and rec["obs"]["pos"].dtype == np.float32
    with pytest.raises(ValueError, match="must start with 'gymnasium:'"):
        register_vector_env("walker", lambda n: None)


def test_host_loop_refuses_what_it_cannot_drive():
    single = gym.make("CartPole-v1")
    with pytest.raises(TypeError, match="vector env.*lacks num_envs"):
        GymnasiumEnv(single)
    same_step = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync", vector_kwargs={
        "autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    with pytest.raises(ValueError, match="allowed: NEXT_STEP"):
        GymnasiumEnv(same_step)
    with pytest.raises(ValueError, match="action space.*allowed: Discrete"):
        GymnasiumEnv(gym.vector.SyncVectorEnv([_TwoButtons]))
    with pytest.raises(ValueError, match="has 2 envs; this config needs seeds \\* num_envs = 2 \\* 4"):
        make_host_train(TINY.replace(env="gymnasium:CartPole-v1"), gym.make_vec("CartPole-v1", 2))
    with pytest.raises(ValueError, match="gymnasium cannot make 'NoSuchEnv-v9'"):
        make_vector_env("gymnasium:NoSuchEnv-v9", 1)
    with pytest.raises(ValueError, match="host loop on one device"):
        train(TINY.replace(env="gymnasium:CartPole-v1"), devices=2, verbose=False)


def test_tiny_agent_learns_gymnasium_cartpole(tmp_path):
    """The fused loop's end-to-end learning test (tests/test_learning.py), through the CLI,
    on gymnasium's CartPole stepped by the host loop."""
    logdir = str(tmp_path / "run")
    rc = main(["train", "--env", "gymnasium:CartPole-v1", "--preset", "tiny", "--steps", "5000",
               "--envs", "8", "--train-ratio", "64", "--chunk-steps", "1000",
               "--set", "lr=3e-4", "--set", "warmup=100", "--logdir", logdir, "--quiet"])
    assert rc == 0
    rows = [json.loads(line) for line in open(os.path.join(logdir, "metrics.jsonl"))]
    returns = [r["episode_return"] for r in rows if r["episode_return"] is not None]
    assert returns[0] < 40, returns  # starts near random
    assert max(returns[-3:]) > 100, f"did not learn: returns per 1000 steps {returns}"
    # The saved run evaluates like a fused one, on fresh gymnasium envs.
    policy = load_policy(logdir)
    returns = np.asarray(evaluate(policy, episodes=3, key=jax.random.key(1)))
    assert returns.shape == (3,) and returns.min() >= 1
