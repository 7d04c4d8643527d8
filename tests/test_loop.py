import math

import jax
import numpy as np
import pytest

from programs import TINY, leaf_types, run_chunks
from wmjax.loop import host_metrics
from wmjax.run import cached_trainer

# 4 envs, ratio 24, 128-step chunks: 96 replayed steps owed per vector step, 128 per update.
E, RATIO, CHUNK = TINY.num_envs, TINY.train_ratio, TINY.chunk_steps


@pytest.fixture(scope="module")
def run():
    trainer = cached_trainer(TINY)  # the program the other tests share
    state, chunks = run_chunks(trainer, 3)
    return trainer, state, chunks


def test_train_ratio_is_kept_exactly(run):
    trainer, state, chunks = run
    c = trainer.config.agent
    B, T = c.batch_size, c.batch_length
    # Training starts at the vector step whose record makes replay hold one batch of windows.
    start = max(T, math.ceil(B * T / E))
    for i, rows in enumerate(chunks):
        iters = (i + 1) * CHUNK // E
        expected = (max(0, iters - start + 1) * E * int(RATIO)) // (B * T)
        for row in rows:
            assert row["env_step"] == iters * E
            assert row["updates"] == expected, (i, row["updates"], expected)
    # Over the run, replayed steps per env step converge to the ratio.
    steps_trained = (3 * CHUNK // E - start + 1) * E
    assert abs(chunks[-1][0]["updates"] * B * T / steps_trained - RATIO) < B * T / steps_trained


def test_seeds_are_vmapped_and_differ(run):
    _, state, chunks = run
    assert state.env_steps.shape == (2,)
    p = jax.tree.leaves(state.agent.params["actor"])[0]
    assert p.shape[0] == 2 and not np.allclose(p[0], p[1])
    # Metrics are reduced per chunk: one scalar per seed, never stacked per step.
    assert len(chunks[-1]) == 2 and all(isinstance(v, (int, float, type(None)))
                                        for v in chunks[-1][0].values())
    assert chunks[-1][0]["loss/total"] is not None and chunks[-1][0]["episodes"] > 0


def test_members_with_one_seed_id_train_like_that_seed_of_a_plain_run(run):
    # A sweep gives every grid point seeds 0..n-1: members with seed id 1 start from seed 1's
    # key of a plain run, so with equal tunables they train exactly like it. Same program.
    trainer, _, chunks = run
    state = trainer.init(jax.random.key(0), None, (1, 1))
    plain = trainer.init(jax.random.key(0))
    for same, seeds in zip(jax.tree.leaves(state.agent.params), jax.tree.leaves(plain.agent.params)):
        np.testing.assert_array_equal(same[0], same[1])
        np.testing.assert_array_equal(same[0], seeds[1])
    assert not all(np.array_equal(p[0], p[1]) for p in jax.tree.leaves(plain.agent.params))
    for _ in range(2):  # the second chunk trains (the first fills replay)
        state, metrics = trainer.train_chunk(state)
    rows = host_metrics(metrics)
    assert chunks[1][1]["updates"] > 0 and chunks[1][1]["loss/total"] is not None
    for row in rows:
        for name, value in chunks[1][1].items():  # seed 1's second chunk in the plain run
            if value is None or name == "seed":
                assert name == "seed" or row[name] is None, name
            else:
                assert row[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    ids = trainer.init(jax.random.key(0), None, (0, 1))  # the plain run's seeds, named
    np.testing.assert_array_equal(jax.random.key_data(ids.key), jax.random.key_data(plain.key))
    with pytest.raises(ValueError, match="seed_ids=.*2 seed indices"):
        trainer.init(jax.random.key(0), None, (0,))


def test_replay_holds_dreamer_layout(run):
    _, state, _ = run
    data = jax.tree.map(lambda x: np.asarray(x[0]), state.replay.data)  # seed 0
    count = int(state.replay.count[0])
    last, first, term = (data[k][:, :count] for k in ("is_last", "is_first", "is_terminal"))
    # After every is_last the next record starts an episode, and only there.
    np.testing.assert_array_equal(first[:, 1:], last[:, :-1])
    assert np.all(first[:, 0])
    assert np.all(last[term])  # terminal implies last
    np.testing.assert_array_equal(data["reward"][:, :count][first], 0.0)
    np.testing.assert_allclose(data["action"][:, :count].sum(-1), 1.0)  # one-hot actions


def test_continue_ratios_are_taken_over_the_chunks_records():
    """A ratio metric is the chunk's summed numerator over its summed denominator, not a mean
    of per-update ratios: one terminal at 0.9 and three summing to 0.3 give 1.2 / 4 = 0.3."""
    import jax.numpy as jnp

    from wmjax.agents.dreamer.agent import RATIO_METRICS
    from wmjax.envs import make_env
    from wmjax.loop import summarise_chunk

    env = make_env("CartPole-v1")
    state = type("S", (), {"env_steps": jnp.array(64), "updates": jnp.array(2)})()
    base = {"episodes": jnp.array(0.0), "num_updates": jnp.array(2.0),
            "episode_return_sum": jnp.array(0.0), "episode_length_sum": jnp.array(0.0),
            "cont/nonterminal_sum": jnp.array(100.0), "cont/nonterminals": jnp.array(200.0)}
    out = summarise_chunk({**base, "cont/terminal_sum": jnp.array(1.2),
                           "cont/terminals": jnp.array(4.0)}, state, env, RATIO_METRICS)
    np.testing.assert_allclose(out["cont/terminal"], 0.3, rtol=1e-6)
    np.testing.assert_allclose(out["cont/nonterminal"], 0.5, rtol=1e-6)
    assert float(out["cont/terminals"]) == 2.0  # per update
    assert "cont/terminal_sum" not in out
    none = summarise_chunk({**base, "cont/terminal_sum": jnp.array(0.0),
                            "cont/terminals": jnp.array(0.0)}, state, env, RATIO_METRICS)
    assert np.isnan(none["cont/terminal"])


def test_continue_metrics_are_logged(run):
    """Every chunk row has the continue head's means at terminal and other records; the
    counts per update add up to the replayed batch."""
    trainer, _, chunks = run
    c = trainer.config.agent
    for row in chunks[-1]:
        assert row["cont/terminals"] + row["cont/nonterminals"] == pytest.approx(c.batch_size * c.batch_length)
        assert 0.0 <= row["cont/nonterminal"] <= 1.0
        assert row["cont/terminal"] is None or 0.0 <= row["cont/terminal"] <= 1.0


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
def test_a_chunk_returns_its_input_types(env):
    """The state a chunk returns is the next chunk's input: any change of shape, dtype or weak
    type anywhere in it (Pendulum's state had a weakly typed `last_u` after reset) compiles the
    chunk program a second time. Traced only, nothing is compiled."""
    from wmjax.loop import make_train

    trainer = make_train(TINY.replace(env=env))
    fresh = jax.eval_shape(trainer.init, jax.random.key(0))
    after, _ = jax.eval_shape(trainer.train_chunk, fresh)
    assert leaf_types(after) == leaf_types(fresh)


def test_seeds_run_one_after_another():
    """over_seeds gives vmap's values and axes, but compiles each seed's own program (no batched
    dots: vmaps made size1m's chunk 1.23x slower for one seed, 1.30x for four), and writes each
    seed's new state into the batched state it was given (so a donated state is reused)."""
    from wmjax.loop import over_seeds

    def fn(state, b):  # (state, *xs) -> (state, *ys)
        return {"w": state["w"] + 1.0, "n": state["n"] + 1}, state["w"] @ b, b.sum()

    for seeds in (1, 3):
        state = {"w": jax.random.normal(jax.random.key(seeds), (seeds, 5, 3)),
                 "n": jax.numpy.zeros((seeds,), jax.numpy.int32)}
        b = jax.random.normal(jax.random.key(1), (seeds, 3, 4))
        out, batched = over_seeds(fn, seeds)(state, b), jax.vmap(fn)(state, b)
        assert jax.tree.map(np.shape, out) == jax.tree.map(np.shape, batched)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), out, batched)
        lowered = jax.jit(over_seeds(fn, seeds), donate_argnums=0).lower(state, b)
        assert "batching_dims" not in lowered.as_text()
        assert "batching_dims" in jax.jit(jax.vmap(fn)).lower(state, b).as_text()
        # The donated state's buffers are reused for the new state.
        assert lowered.compile().memory_analysis().alias_size_in_bytes == sum(
            x.nbytes for x in jax.tree.leaves(state))
