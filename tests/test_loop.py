import math

import jax
import numpy as np
import pytest

from programs import TINY, run_chunks
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
