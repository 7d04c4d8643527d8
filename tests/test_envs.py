import jax
import pytest

from programs import leaf_types
from wmjax.envs import make_env
from wmjax.envs.core import REGISTRY


def _rollout(env, steps, seed=0):
    state, ts = env.reset(jax.random.key(seed))
    step = jax.jit(env.step)
    out = [ts]
    key = jax.random.key(seed + 1)
    for _ in range(steps):
        key, k1, k2 = jax.random.split(key, 3)
        if env.spec.discrete:
            a = jax.random.randint(k1, (), 0, env.spec.num_actions)
        else:
            a = jax.random.uniform(k1, (env.spec.num_actions,), minval=-1, maxval=1)
        state, ts = step(k2, state, a)
        out.append((ts, state))
    return out


def test_unknown_env_lists_known_ones():
    with pytest.raises(ValueError, match="unknown env 'Nope'.*CartPole-v1"):
        make_env("Nope")


@pytest.mark.parametrize("name,obs,discrete,n", [
    ("CartPole-v1", (4,), True, 2), ("Acrobot-v1", (6,), True, 3), ("Pendulum-v1", (3,), False, 1)])
def test_specs(name, obs, discrete, n):
    spec = make_env(name).spec
    assert (spec.obs_shape, spec.discrete, spec.num_actions) == (obs, discrete, n)


def test_cartpole_episode_layout_termination():
    env = make_env("CartPole-v1")
    out = _rollout(env, 120)
    first = out[0]
    assert bool(first.is_first) and float(first.reward) == 0.0
    steps = [ts for ts, _ in out[1:]]
    lasts = [i for i, ts in enumerate(steps) if bool(ts.is_last)]
    assert lasts, "random CartPole should end an episode within 120 steps"
    i = lasts[0]
    # The ending step is a true termination; the next record is the reset, with reward 0.
    assert bool(steps[i].is_terminal)
    assert bool(steps[i + 1].is_first) and not bool(steps[i + 1].is_last)
    assert float(steps[i + 1].reward) == 0.0
    # The episode return recorded at the end is the sum of the episode's rewards.
    ep_return = float(out[i + 1][1].episode_return)
    assert ep_return == pytest.approx(sum(float(ts.reward) for ts in steps[: i + 1]))
    assert not any(bool(ts.is_first) for ts in steps[:i + 1])


def test_pendulum_time_limit_is_truncation_not_termination():
    env = make_env("Pendulum-v1")
    out = _rollout(env, 201)
    steps = [ts for ts, _ in out[1:]]
    assert bool(steps[199].is_last) and not bool(steps[199].is_terminal)
    assert not any(bool(ts.is_terminal) for ts in steps)
    assert bool(steps[200].is_first)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_step_keeps_the_types_of_the_reset_state(name):
    """The training loop's state is the input of one compiled chunk and the output of the last,
    so every leaf must keep its type through a step, weak types included: a weakly typed leaf
    after reset (gymnax Freeway's `pos=9`) made every run compile its chunk program twice."""
    if name.startswith("Craftax"):
        pytest.importorskip("craftax")
    env = make_env(name)
    key = jax.random.key(0)
    state, _ = jax.eval_shape(lambda k: env.reset_batch(k, 2), key)
    action = (jax.ShapeDtypeStruct((2,), jax.numpy.int32) if env.spec.discrete
              else jax.ShapeDtypeStruct((2, env.spec.num_actions), jax.numpy.float32))
    stepped, _ = jax.eval_shape(env.step_batch, key, state, action)
    assert leaf_types(stepped) == leaf_types(state)
    # Unjitted too (an eager reset holds concrete arrays, Craftax's PRNG key among them).
    assert leaf_types(env.reset(key)[0]) == leaf_types(jax.eval_shape(env.reset, key)[0])
