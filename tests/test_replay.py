import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmjax import replay as rb


def _fill(state, start, n, num_envs):
    for t in range(start, start + n):
        rec = {"x": jnp.full((num_envs,), t, jnp.int32) + 1000 * jnp.arange(num_envs),
               "is_first": jnp.full((num_envs,), t % 5 == 0)}
        state = rb.add(state, rec)
    return state


def test_windows_are_consecutive_and_from_one_env():
    state = rb.init({"x": jnp.int32(0), "is_first": jnp.bool_(False)}, num_envs=3, capacity=20)
    state = _fill(state, 0, 12, 3)
    assert int(state.count) == 12 and not bool(rb.can_sample(state, 13))
    batch = rb.sample(state, jax.random.key(0), batch=64, length=6)
    x = np.asarray(batch["x"])
    assert x.shape == (64, 6)
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # consecutive steps of one env
    assert x.min() % 1000 >= 0 and (x % 1000).max() <= 11  # only written data
    np.testing.assert_array_equal(np.asarray(batch["is_first"]), (x % 1000) % 5 == 0)


def test_windows_never_cross_the_write_head_after_wrapping():
    state = rb.init({"x": jnp.int32(0), "is_first": jnp.bool_(False)}, num_envs=2, capacity=10)
    state = _fill(state, 0, 27, 2)  # wrapped: holds steps 17..26
    assert int(state.count) == 10
    x = np.asarray(rb.sample(state, jax.random.key(1), batch=256, length=4)["x"]) % 1000
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)
    assert x.min() >= 17 and x.max() <= 26
    # Every valid start (17..23) is drawn.
    assert set(x[:, 0].tolist()) == set(range(17, 24))


def test_a_field_stored_in_16_bits_comes_out_as_float32():
    state = rb.init({"obs": jnp.zeros((3,), jnp.float16), "x": jnp.int32(0)}, num_envs=2, capacity=8)
    for t in range(8):
        obs = jnp.full((2, 3), 0.1 * t, jnp.float32)  # written as float32, stored in float16
        state = rb.add(state, {"obs": obs, "x": jnp.full((2,), t, jnp.int32)})
    assert state.data["obs"].dtype == jnp.float16 and state.data["obs"].nbytes == 2 * 8 * 3 * 2
    batch = rb.sample(state, jax.random.key(0), batch=16, length=4)
    assert batch["obs"].dtype == jnp.float32 and batch["x"].dtype == jnp.int32
    expected = (0.1 * np.asarray(batch["x"], np.float32)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(batch["obs"])[..., 0], expected)


def test_the_loop_stores_float_observations_in_the_configured_dtype():
    """TrainConfig.replay_obs_dtype shrinks only the observations; the agent still gets float32."""
    from programs import TINY
    from wmjax.loop import make_train

    def shapes(config):
        trainer = make_train(config)
        state = jax.eval_shape(lambda k: trainer.init(k), jax.random.key(0))  # no compile
        batch = jax.eval_shape(lambda r: rb.sample(jax.tree.map(lambda x: x[0], r),
                                                   jax.random.key(1), 4, 8), state.replay)
        return state.replay.data, batch

    data32, _ = shapes(TINY)
    data16, batch = shapes(TINY.replace(replay_obs_dtype="bfloat16"))
    assert data32["obs"].dtype == jnp.float32 and data16["obs"].dtype == jnp.bfloat16
    assert data16["reward"].dtype == jnp.float32  # rewards keep their precision
    assert batch["obs"].dtype == jnp.float32


def test_an_unknown_replay_dtype_is_refused():
    from programs import TINY

    with pytest.raises(ValueError, match="replay_obs_dtype.*float32, float16, bfloat16"):
        TINY.replace(replay_obs_dtype="int8")


def _online(num_envs, capacity, steps):
    state = rb.init({"x": jnp.int32(0), "is_first": jnp.bool_(False)}, num_envs, capacity,
                    online=True)
    return _fill(state, 0, steps, num_envs)


def test_the_online_queue_serves_each_new_window_once_oldest_first():
    state = _online(num_envs=3, capacity=40, steps=12)  # 3 complete windows of 4 per env
    assert isinstance(state, rb.OnlineReplayState) and int(state.written) == 12
    first_rows = []
    for i in range(4):
        batch, state = rb.sample_online(state, jax.random.key(i), batch=4, length=4)
        x = np.asarray(batch["x"])
        np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # still windows of one env
        first_rows.append(x[:, 0].tolist())
    # Windows in order (window index, then env): env e's k-th window starts at 1000 e + 4 k.
    order = [1000 * e + 4 * k for k in range(3) for e in range(3)]
    assert first_rows[0] == order[:4] and first_rows[1] == order[4:8]
    assert first_rows[2][0] == order[8]  # the last one, then uniform rows
    assert int(state.served) == 9  # all served, none twice: the fourth batch is all uniform
    state = _fill(state, 12, 4, 3)  # one more window per env
    batch, state = rb.sample_online(state, jax.random.key(9), batch=8, length=4)
    assert np.asarray(batch["x"])[:3, 0].tolist() == [12, 1012, 2012]
    assert int(state.served) == 12


def test_the_online_queue_skips_windows_overwritten_before_they_were_served():
    state = _online(num_envs=2, capacity=10, steps=27)  # wrapped: holds steps 17..26
    batch, state = rb.sample_online(state, jax.random.key(0), batch=4, length=4)
    x = np.asarray(batch["x"])
    # Windows 0..4 (steps 0..19) are gone or cut; window 5 (steps 20..23) of each env is served.
    np.testing.assert_array_equal(x[:2], [[20, 21, 22, 23], [1020, 1021, 1022, 1023]])
    assert int(state.served) == 2 * 6


def test_sample_online_needs_an_online_replay():
    state = rb.init({"x": jnp.int32(0)}, num_envs=2, capacity=8)
    assert type(state) is rb.ReplayState  # the layout (and checkpoints) of a replay without it
    with pytest.raises(TypeError, match="online=True"):
        rb.sample_online(state, jax.random.key(0), batch=2, length=2)


def test_the_loop_serves_the_online_queue_when_configured():
    """TrainConfig.replay_online: the updates take every window the envs complete (4 per 16
    vector steps here, 1/3 of a window per update, so the queue keeps up)."""
    from programs import TINY, run_chunks
    from wmjax.run import cached_trainer

    trainer = cached_trainer(TINY)  # built outside the trace: its cached arrays stay concrete
    plain = jax.eval_shape(trainer.init, jax.random.key(0))
    assert type(plain.replay) is rb.ReplayState  # without the option: no new state, no new arrays
    state, _ = run_chunks(cached_trainer(TINY.replace(replay_online=True)), 2)
    written, served = np.asarray(state.replay.written), np.asarray(state.replay.served)
    T, E = TINY.agent.batch_length, TINY.num_envs
    complete = E * (written // T)
    assert np.all(written == 2 * TINY.chunk_steps // E)
    # Updates start at 32 records per env (one batch); from then on every window completed
    # before the last vector step's updates has been served, and none twice.
    assert np.all(served >= complete - E) and np.all(served <= complete) and np.all(served > 0)


def _curious(num_envs, capacity, steps):
    state = rb.init({"x": jnp.int32(0), "is_first": jnp.bool_(False)}, num_envs, capacity,
                    curious=True)
    return _fill(state, 0, steps, num_envs)


def test_curious_replay_draws_windows_by_priority():
    """Windows start at valid starts in proportion to the records' priorities; a record not yet
    trained on has the priority `initial`."""
    state = _curious(num_envs=2, capacity=10, steps=27)  # wrapped: holds steps 17..26
    assert isinstance(state, rb.CuriousReplayState)
    np.testing.assert_array_equal(rb.priorities(state), 1e5)  # nothing trained on yet
    # Steps 17..23 are valid starts (length 4): priorities 1, 1, 1, 1, 1, 1, 30 in env 0 and 1
    # everywhere in env 1.
    priority = jnp.ones((2, 10)).at[0, 23 % 10].set(30.0)
    state = state._replace(priority=priority)
    batch, env, idx = rb.sample_curious(state, jax.random.key(0), batch=4000, length=4)
    x = np.asarray(batch["x"])
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # consecutive, never across the head
    assert (x % 1000).min() >= 17 and (x % 1000).max() <= 26
    np.testing.assert_array_equal(x[:, 0] // 1000, np.asarray(env))
    np.testing.assert_array_equal(np.asarray(idx), (x % 1000) % 10)
    starts = x[:, 0]
    # Env 0 holds 36 of the 43 units of weight; its step 23 holds 30 of them.
    assert abs((starts < 1000).mean() - 36 / 43) < 0.03
    assert abs((starts == 23).mean() - 30 / 43) < 0.03
    assert set(starts[starts >= 1000] % 1000) == set(range(17, 24))  # env 1: every valid start
    # Records past the last valid start (24..26), untrained and so the heaviest, never start one.
    state = state._replace(priority=priority.at[:, 4:7].set(jnp.nan))
    starts = np.asarray(rb.sample_curious(state, jax.random.key(1), 512, 4)[0]["x"])[:, 0]
    assert (starts % 1000).max() <= 23


def test_curious_replay_keeps_what_training_saw_and_resets_overwritten_records():
    """A trained record's priority is c * beta**visits + (loss + eps)**alpha."""
    state = _curious(num_envs=2, capacity=8, steps=8)
    env = jnp.array([0, 0, 1])
    idx = jnp.array([[0, 1, 2], [1, 2, 3], [5, 6, 7]])
    loss = jnp.arange(9, dtype=jnp.float32).reshape(3, 3)
    state = rb.mark_trained(state, env, idx, loss)
    visits = np.asarray(state.visits)
    np.testing.assert_array_equal(visits[0], [1, 2, 2, 1, 0, 0, 0, 0])  # overlaps count twice
    np.testing.assert_array_equal(visits[1], [0, 0, 0, 0, 0, 1, 1, 1])
    priority = np.asarray(rb.priorities(state))
    k = rb.Curiosity()
    assert priority[0, 0] == pytest.approx(k.c * k.beta + k.eps ** k.alpha)
    assert priority[0, 3] == pytest.approx(k.c * k.beta + (5 + k.eps) ** k.alpha)
    assert priority[1, 7] == pytest.approx(k.c * k.beta + (8 + k.eps) ** k.alpha)
    assert priority[0, 1] in [pytest.approx(k.c * k.beta ** 2 + (x + k.eps) ** k.alpha)
                              for x in (1, 3)]  # either window's loss
    assert priority[0, 4] == k.initial
    weak = rb.mark_trained(state, env, idx, loss, rb.Curiosity(c=0.0, alpha=1.0, eps=0.0))
    assert np.asarray(weak.priority)[1, 6] == 7.0  # the loss alone
    state = _fill(state, 8, 2, 2)  # overwrites slots 0 and 1: new records, untrained
    assert np.asarray(state.visits)[0, :2].tolist() == [0, 0]
    np.testing.assert_array_equal(np.asarray(rb.priorities(state))[0, :2], k.initial)
    assert np.asarray(state.visits)[0, 2] == 2


def test_curious_replay_needs_its_own_state():
    plain = rb.init({"x": jnp.int32(0)}, num_envs=2, capacity=8)
    with pytest.raises(TypeError, match="curious=True"):
        rb.sample_curious(plain, jax.random.key(0), batch=2, length=2)
    with pytest.raises(ValueError, match="do not combine"):
        rb.init({"x": jnp.int32(0)}, num_envs=2, capacity=8, online=True, curious=True)


def test_the_loop_draws_by_curious_replay_when_configured():
    """TrainConfig.replay_priority="curious": every update's windows gain a visit and a priority
    from the world model's loss there, so the visits add up to the replayed steps; and the draws
    follow the priorities: records given priority 0 are never replayed again."""
    from programs import TINY
    from wmjax.loop import host_metrics
    from wmjax.run import cached_trainer

    config = TINY.replace(replay_priority="curious")
    trainer = cached_trainer(config)
    state = trainer.init(jax.random.key(0))
    for _ in range(2):  # updates start in the second chunk
        state, _ = trainer.train_chunk(state)
    visits, priority = np.asarray(state.replay.visits), np.asarray(state.replay.priority)
    B, T = config.agent.batch_size, config.agent.batch_length
    assert np.all(np.asarray(state.updates) > 0)
    np.testing.assert_array_equal(visits.sum(axis=(1, 2)), np.asarray(state.updates) * B * T)
    # Trained records: below a first visit's count term alone (c * beta = 7000), above the
    # loss term's floor; the others untrained.
    trained = priority[visits > 0]
    assert np.all(np.isfinite(trained)) and np.all((trained > 0.04) & (trained < 7000 + 100))
    assert np.all(np.isnan(priority[visits == 0]))
    # Env 0's records so far get priority 0: no window starts there, and windows only run forward
    # from their start, so none of them is visited again; env 1's records still are.
    written = int(np.asarray(state.replay.count)[0])
    zeroed = state.replay.priority.at[:, 0, :written].set(0.0)
    replay = state.replay._replace(priority=zeroed)
    state, metrics = trainer.train_chunk(state._replace(replay=replay))
    after = np.asarray(state.replay.visits)
    np.testing.assert_array_equal(after[:, 0, :written], visits[:, 0, :written])
    assert np.all(after[:, 1, :written].sum(-1) > visits[:, 1, :written].sum(-1))
    assert all(np.isfinite(row["loss/world_model"]) for row in host_metrics(metrics))
