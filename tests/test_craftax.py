"""Craftax-Classic: adapters, optimistic resets, time limit as truncation, the Crafter score."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("craftax")

from programs import TINY  # noqa: E402
from wmjax.config import DreamerConfig, TrainConfig  # noqa: E402
from wmjax.envs import make_env  # noqa: E402
from wmjax.envs.craftax import (achievement_names, achievement_rates, crafter_score,  # noqa: E402
                                score_from_rates)
from wmjax.loop import host_metrics, make_train  # noqa: E402

SYMBOLIC = "Craftax-Classic-Symbolic-v1"
GRID = "Craftax-Classic-Symbolic-Grid-v1"


@pytest.fixture(scope="module")
def env():
    return make_env(SYMBOLIC)


N = 8  # envs; every test steps this many, so the step is compiled once


@pytest.fixture(scope="module")
def step(env):
    return jax.jit(env.step_batch)


@pytest.fixture(scope="module")
def start(env):
    return jax.jit(env.reset_batch, static_argnums=1)(jax.random.key(0), N)


def test_specs():
    sym = make_env(SYMBOLIC).spec
    assert sym.obs_shape == (1345,) and sym.discrete and sym.num_actions == 17
    pix = make_env("Craftax-Classic-Pixels-v1")
    assert pix.spec.obs_shape == (63, 63, 3) and pix.spec.obs_dtype == jnp.uint8
    _, ts = jax.jit(pix.reset_batch, static_argnums=1)(jax.random.key(0), 2)
    assert ts.obs.shape == (2, 63, 63, 3) and ts.obs.dtype == jnp.uint8 and ts.obs.max() > 0


def test_optimistic_reset_hands_fresh_worlds_to_finished_envs(start, step):
    n = N  # reset_ratio 16: one fresh world per step for 8 envs
    state, ts = start
    assert ts.is_first.all() and ts.obs.shape == (n, 1345)
    for i in range(5):
        state, ts = step(jax.random.key(i + 1), state, jnp.full((n,), 5, jnp.int32))  # 5 = DO
    assert not ts.is_first.any() and (state.inner.timestep == 5).all()
    ending = jnp.array([True, False, True, False, False, False, True, False])
    state = state._replace(needs_reset=ending)
    new, ts = step(jax.random.key(99), state, jnp.zeros((n,), jnp.int32))
    np.testing.assert_array_equal(ts.is_first, ending)
    np.testing.assert_array_equal(new.inner.timestep, np.where(ending, 0, 6))
    assert (ts.reward[ending] == 0).all() and (new.episode_length[ending] == 0).all()
    assert not ts.is_last.any()
    maps = np.asarray(new.inner.map)
    # A fresh world, not the finished env's old one; with one world per step all three share it.
    assert not np.array_equal(maps[0], np.asarray(state.inner.map)[0])
    np.testing.assert_array_equal(maps[0], maps[2])
    np.testing.assert_array_equal(maps[0], maps[6])
    assert (np.asarray(new.inner.achievements)[ending] == 0).all()
    # Envs that did not end keep their own worlds.
    np.testing.assert_array_equal(maps[1], np.asarray(state.inner.map)[1])


def test_grid_variant_lays_the_symbolic_map_out_as_an_image(env, start):
    """Craftax-Classic-Symbolic-Grid-v1 is the same game and the same numbers as the symbolic
    env, with the 7x9 view as a (7, 9, 21) uint8 image (cells 0/255) beside a 22-vector."""
    grid = make_env(GRID)
    assert grid.spec.obs_shapes == {"map": (7, 9, 21), "state": (22,)}
    state, ts = jax.jit(grid.reset_batch, static_argnums=1)(jax.random.key(0), N)
    flat = np.asarray(start[1].obs)
    assert ts.obs["map"].dtype == jnp.uint8 and set(np.unique(ts.obs["map"])) <= {0, 255}
    np.testing.assert_array_equal(np.asarray(ts.obs["map"]).reshape(N, -1) / 255.0, flat[:, :1323])
    np.testing.assert_array_equal(ts.obs["state"], flat[:, 1323:])
    # The mob channels follow the block types, in the order the craftax renderer writes them.
    from craftax.craftax_classic.constants import BlockType
    from wmjax.envs.craftax import MOB_CHANNELS
    assert list(MOB_CHANNELS.values()) == list(range(len(BlockType), 21))
    # The player's own cell, the view's centre, holds exactly one block type.
    assert (np.asarray(ts.obs["map"])[:, 3, 4, :17] == 255).sum(-1).tolist() == [1] * N


def test_time_limit_is_truncation_and_death_is_termination(env, start, step):
    state, _ = start
    limit = env.params.max_timesteps
    inner = state.inner.replace(  # env 0 at its last step, env 1 dead, the rest playing on
        timestep=state.inner.timestep.at[0].set(limit - 1).at[1].set(5),
        player_health=state.inner.player_health.at[1].set(0),
    )
    _, ts = step(jax.random.key(1), state._replace(inner=inner), jnp.zeros((N,), jnp.int32))
    np.testing.assert_array_equal(ts.is_last, [True, True] + [False] * (N - 2))
    np.testing.assert_array_equal(ts.is_terminal, [False, True] + [False] * (N - 2))


def test_crafter_score():
    assert score_from_rates(np.full(22, 100.0)) == pytest.approx(100.0)
    assert score_from_rates(np.zeros(22)) == pytest.approx(0.0)
    # One achievement always unlocked, the rest never: exp(ln(101) / 22) - 1.
    assert score_from_rates(np.r_[100.0, np.zeros(21)]) == pytest.approx(101 ** (1 / 22) - 1)
    names = achievement_names()
    assert len(names) == 22 and names[0] == "collect_wood"
    rows = [{"seed": 0, "episodes": 3, **{f"episode/achievement/{n}": 0.0 for n in names}},
            {"seed": 0, "episodes": 1, **{f"episode/achievement/{n}": 0.0 for n in names}},
            {"seed": 0, "episodes": 0}]
    rows[0]["episode/achievement/collect_wood"] = 100.0 * 2 / 3  # 2 of 3 episodes
    rows[1]["episode/achievement/collect_wood"] = 100.0  # 1 of 1
    assert crafter_score(rows) == pytest.approx(score_from_rates(np.r_[75.0, np.zeros(21)]))
    assert crafter_score(rows, seed=1) is None
    # The rates the score is the mean of: pooled over episodes, not averaged over rows (83.3).
    rates = achievement_rates(rows)
    assert list(rates) == names and rates["collect_wood"] == pytest.approx(75.0)
    assert sum(rates.values()) == pytest.approx(75.0) and achievement_rates(rows, seed=1) is None


def test_training_chunk_logs_achievements_and_score():
    """The fused loop on Craftax with 16-step episodes: optimistic resets inside the compiled
    program, per-episode achievement rates, the Crafter score and reward %."""
    env = make_env(SYMBOLIC)
    env = dataclasses.replace(env, params=env.params.replace(max_timesteps=16), reset_ratio=2)
    config = TrainConfig(env=SYMBOLIC, num_envs=4, seeds=1, steps=136, chunk_steps=136,
                         train_ratio=8, replay_size=256,
                         agent=DreamerConfig.preset("tiny", warmup=10))
    trainer = make_train(config, env)
    state, metrics = trainer.train_chunk(trainer.init(jax.random.key(0)))
    (row,) = host_metrics(metrics)
    # 34 vector steps: each env ends an episode at steps 16 and 33 (16 steps + a reset record).
    assert row["episodes"] == 8
    assert row["episode_length"] == 16
    rates = [row[f"episode/achievement/{n}"] for n in achievement_names()]
    assert all(0.0 <= r <= 100.0 for r in rates)
    assert row["crafter/score"] == pytest.approx(float(score_from_rates(np.array(rates))), rel=1e-5)
    assert row["crafter/reward_percent"] == pytest.approx(100 * row["episode_return"] / 22, rel=1e-5)


def _craftax_records(steps, envs):
    rec = {k: np.zeros((steps, envs), bool) for k in ("is_first", "ended", "terminal", "asleep")}
    rec.update({k: np.full((steps, envs), 9) for k in ("health", "food", "drink", "energy")})
    rec["zombie"] = np.full((steps, envs), 99)
    rec["reward"] = np.zeros((steps, envs), np.float32)
    rec["is_first"][0] = True
    return rec


def test_craftax_view_names_the_cause_of_each_death():
    """benchmarks/craftax_view.py reads each death from the state before the fatal step, counts
    only episodes seen from their start, and keeps the time limit apart from deaths."""
    from benchmarks.craftax_view import episodes

    rec = _craftax_records(6, 5)
    rec["ended"][2] = rec["terminal"][2] = True  # every env's first episode ends at step 2
    rec["is_first"][4] = True  # the next starts at record 4 (record 3 is the last frame)
    rec["health"][2] = [2, 6, 1, 5, 9]
    rec["zombie"][2] = [1, 2, 99, 99, 99]
    rec["asleep"][2, 1] = True
    rec["drink"][2, 2] = 0
    rec["terminal"][2, 4] = False  # env 4 hit the time limit
    rec["reward"][0, 0] = rec["reward"][1, 0] = 1.0
    rec["ended"][5, 0] = rec["terminal"][5, 0] = True  # seen from record 4: a second episode
    causes, lengths, returns = episodes(rec)
    assert causes == {"zombie": 1, "zombie, asleep": 1, "no drink": 1, "lava or other": 2,
                      "time limit": 1}
    assert lengths == [3, 2, 3, 3, 3, 3] and returns[:2] == [2.0, 0.0]
    rec["is_first"][0] = False  # episodes already running when recording began are not counted
    assert sum(episodes(rec)[0].values()) == 1


def test_craftax_view_reads_the_reward_head_at_each_unlock():
    """The reward head is read on the record a step reaches: an achievement unlocked by the step
    from record t is scored by the prediction at t + 1, and a reset in between is no unlock."""
    from benchmarks.craftax_view import reward_view
    from wmjax.envs.craftax import achievement_names

    names = achievement_names()
    wood, table = names.index("collect_wood"), names.index("place_table")
    rec = _craftax_records(5, 2)
    rec["achievements"] = np.zeros((5, 2, len(names)), bool)
    rec["achievements"][2:, 0, wood] = True  # env 0: the step from record 1 collects wood
    rec["achievements"][4:, 0, table] = True  # and the step from record 3 places a table
    rec["reward"][1, 0] = rec["reward"][3, 0] = 1.0
    rec["achievements"][:3, 1, table] = True  # env 1 resets at record 3: nothing unlocked there
    rec["is_first"][3, 1] = True
    predicted = np.zeros((2, 5), np.float32)
    predicted[0, 2], predicted[0, 4], predicted[0, 1] = 0.8, 0.3, 0.6
    view = reward_view(rec, predicted, envs=2)
    assert view["per achievement"] == {"collect_wood": {"unlocks": 1, "predicted": 0.8, "true": 1.0},
                                       "place_table": {"unlocks": 1, "predicted": 0.3, "true": 1.0}}
    # the other records: env 0's t + 1 = 1, 3 and env 1's t + 1 = 1, 2, 4 (not its reset at 3)
    assert view["elsewhere predicted"] == pytest.approx(0.6 / 5)
    assert view["elsewhere predicted above 0.5"] == pytest.approx(1 / 5)


def test_craftax_view_random_baseline():
    """`--random` plays uniform random actions with no run folder: its episodes get causes and
    it strikes an adjacent zombie about 1 step in 17; a run folder and --random together, or
    neither, are refused."""
    from benchmarks.craftax_view import main

    out = main(["--random", "--envs", "8", "--steps", "400"])
    assert out["episodes"] > 0 and out["world_model"] is None and out["checkpoint"] is None
    assert sum(out["causes"].values()) == out["episodes"]
    assert 0.0 <= out["strikes_when_adjacent"] < 0.3  # one action of 17; a policy could be near 1
    for argv in ([], ["somewhere", "--random"]):
        with pytest.raises(SystemExit):
            main(argv)


@pytest.mark.parametrize("name", [SYMBOLIC, GRID])
def test_craftax_view_on_a_trained_run(tmp_path, name):
    """The diagnosis end to end on a tiny Craftax run (flat or grid observations): every finished
    episode gets a cause, the world model's figures are shares, and a run on another env is
    refused by name."""
    from benchmarks.craftax_view import main
    from wmjax.run import train

    config = TrainConfig(env=name, num_envs=4, seeds=1, steps=128, chunk_steps=128,
                         train_ratio=8, replay_size=512, agent=DreamerConfig.preset("tiny", warmup=10))
    train(config, str(tmp_path / "craftax"), verbose=False)
    out = main([str(tmp_path / "craftax"), "--envs", "8", "--steps", "300"])
    assert out["episodes"] > 0
    assert sum(out["causes"].values()) == out["episodes"]
    assert 0.0 <= out["asleep"] <= 1.0 and 0.0 <= out["zombie_adjacent"] <= 1.0
    view = out["world_model"]
    assert 0.0 < view["cont elsewhere"] < 1.0
    assert view["zombie decoded on a true zombie cell"] is None or 0.0 <= view["zombie decoded on a true zombie cell"] <= 1.0
    rewards = view["reward head"]
    assert all(r["unlocks"] > 0 and r["true"] > 0.5 for r in rewards["per achievement"].values())
    assert 0.0 <= rewards["elsewhere predicted above 0.5"] <= 1.0
    if name == GRID:
        return
    train(TINY.replace(steps=128), str(tmp_path / "cartpole"), verbose=False)  # the shared program
    with pytest.raises(SystemExit):
        main([str(tmp_path / "cartpole")])
