import jax
import jax.numpy as jnp
import numpy as np

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
