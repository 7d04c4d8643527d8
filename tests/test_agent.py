import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from programs import walk_jaxpr
from wmjax.agents.dreamer import Batch, Dreamer
from wmjax.agents.dreamer.agent import BEHAVIOUR, WORLD_MODEL
from wmjax.config import DreamerConfig
from wmjax.envs import make_env
from wmjax.loop import seed_hyper


def _batch(spec, B, T, key):
    k1, k2, k3 = jax.random.split(key, 3)
    if spec.obs_dtype == jnp.uint8:  # images
        obs = jax.random.randint(k1, (B, T) + spec.obs_shape, 0, 256).astype(jnp.uint8)
    else:
        obs = jax.random.normal(k1, (B, T) + spec.obs_shape)
    if spec.discrete:
        action = jax.nn.one_hot(jax.random.randint(k2, (B, T), 0, spec.num_actions), spec.num_actions)
    else:
        action = jax.random.uniform(k2, (B, T, spec.num_actions), minval=-1, maxval=1)
    reward = jax.random.normal(k3, (B, T))
    is_first = jnp.zeros((B, T), bool).at[:, 5].set(True)
    is_last = jnp.zeros((B, T), bool).at[:, 4].set(True)
    is_terminal = is_last.at[0].set(False)
    return Batch(obs, action, reward, is_first, is_last, is_terminal)


@functools.lru_cache(maxsize=None)
def _agent(env_name):
    """One agent and one jitted update per env for the whole module: compiles are the cost."""
    agent = Dreamer(DreamerConfig.preset("tiny", warmup=0, lr=1e-3), make_env(env_name).spec)
    return agent, jax.jit(agent.update)


@pytest.fixture(scope="module", params=["CartPole-v1", "Pendulum-v1", "Breakout-MinAtar"])
def setup(request):
    agent, update = _agent(request.param)
    state = agent.init(jax.random.key(0))
    c = agent.config
    batch = _batch(agent.spec, c.batch_size, c.batch_length, jax.random.key(1))
    one, _ = update(state, batch, jax.random.key(2))
    two, metrics = update(one, batch, jax.random.key(3))
    return agent, state, batch, (one, two, metrics)


def _grads_of_loss_subset(agent, state, batch, **scales):
    """Gradients of the loss with the named loss scales only (DreamerV3's others zero; the
    replay actor loss's as configured unless given), jitted."""
    names = ("rec_scale", "reward_scale", "cont_scale", "dyn_scale", "rep_scale", "policy_scale",
             "value_scale", "repval_scale")
    hyper = agent.hyper({**{n: 0.0 for n in names}, **scales})  # traced: one compile per agent
    return _loss_grad(agent)(state.params, state.slow_critic, state.retnorm, hyper, batch)


@functools.lru_cache(maxsize=None)
def _loss_grad(agent):
    loss = lambda p, slow, rn, h, b: agent.loss(p, slow, rn, h, b, jax.random.key(3))[0]
    return jax.jit(jax.grad(loss))


def _max_abs(tree):
    return max(float(jnp.abs(g).max()) for g in jax.tree.leaves(tree))


def _action0_prob(agent, state, batch, grads=None):
    """The mean probability of action 0 on `batch`'s posterior features under the actor,
    after a small gradient step along grads["actor"] if given."""
    actor = state.params["actor"]
    if grads is not None:
        actor = jax.tree.map(lambda p, g: p - 1e-2 * g, actor, grads["actor"])
    feat = agent.observe(state.params, batch.obs, batch.action, batch.is_first,
                         jax.random.key(5))[3]
    return float(jnp.exp(agent._policy(actor, feat).log_prob(
        jnp.zeros(feat.shape[:-1], jnp.int32))).mean())


def test_continue_metrics_sum_the_head_at_terminal_records(setup):
    """The update's continue-head sums and counts (logged as cont/terminal, the mean prediction
    at terminal records) equal the head applied to the loss's own posterior features."""
    agent, state, batch, (one, _, metrics) = setup
    B, T = batch.is_first.shape
    term = np.asarray(batch.is_terminal, np.float32)
    assert float(metrics["cont/terminals"]) == term.sum() == B - 1
    assert float(metrics["cont/nonterminals"]) == B * T - term.sum()
    # The metrics came from update(one, batch, key 3); the loss observes with the first split.
    key_obs = jax.random.split(jax.random.key(3))[0]
    feat = agent.observe(one.params, batch.obs, batch.action, batch.is_first, key_obs)[3]
    cont = np.asarray(agent.heads(one.params, feat)["cont"])  # at the agent's matmul precision
    np.testing.assert_allclose(float(metrics["cont/terminal_sum"]), (cont * term).sum(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["cont/nonterminal_sum"]), (cont * (1 - term)).sum(),
                               rtol=1e-4)


def test_heads_read_reward_continue_and_value_in_their_units(setup):
    """`heads` gives one prediction per feature: zero reward and value at init (zero-initialised
    outputs), a continue probability in (0, 1); after updates towards non-zero rewards the
    reward head no longer says zero."""
    agent, state, batch, (_, two, _) = setup
    feat = jax.random.normal(jax.random.key(4), (3, 5, agent.config.feat_size))
    heads = agent.heads(state.params, feat)
    assert {k: v.shape for k, v in heads.items()} == {k: (3, 5) for k in ("reward", "cont", "value")}
    assert float(jnp.abs(heads["reward"]).max()) == 0.0 and float(jnp.abs(heads["value"]).max()) == 0.0
    assert 0.0 < float(heads["cont"].min()) and float(heads["cont"].max()) < 1.0
    assert float(jnp.abs(agent.heads(two.params, feat)["reward"]).max()) > 0.0


def test_update_changes_every_parameter(setup):
    agent, state, batch, (one, new, metrics) = setup
    # Zero-initialised output layers (reward, critic) pass no gradient to their hidden layers on
    # the first step, as in DreamerV3; after a second step every parameter has moved.
    for group in WORLD_MODEL + BEHAVIOUR:
        leaves_old = jax.tree_util.tree_leaves_with_path(state.params[group])
        leaves_new = jax.tree.leaves(new.params[group])
        for (path, old), upd in zip(leaves_old, leaves_new):
            assert not np.array_equal(np.asarray(old), np.asarray(upd)), \
                f"{group}{jax.tree_util.keystr(path)} did not change"
    assert int(new.step) == 2
    assert all(np.isfinite(float(v)) for v in metrics.values())
    # The slow critic moved toward the critic by the EMA rate.
    old_s = jax.tree.leaves(one.slow_critic)[0]
    new_c = jax.tree.leaves(new.params["critic"])[0]
    np.testing.assert_allclose(jax.tree.leaves(new.slow_critic)[0],
                               0.98 * old_s + 0.02 * new_c, rtol=1e-5, atol=1e-7)


def test_actor_critic_loss_sends_no_gradient_into_world_model(setup):
    agent, _, batch, (_, trained, _) = setup
    grads = _grads_of_loss_subset(agent, trained, batch, policy_scale=1.0, value_scale=1.0)
    for group in WORLD_MODEL:
        assert _max_abs(grads[group]) == 0.0, f"actor-critic loss leaked a gradient into {group}"
    for group in BEHAVIOUR:
        assert _max_abs(grads[group]) > 0.0


def test_replay_value_loss_reaches_world_model(setup):
    # DreamerV3's repval_grad: the replay value loss trains the representation too. (At init
    # the critic's zero output layer blocks it, so use the state after two updates.)
    agent, _, batch, (_, trained, _) = setup
    grads = _grads_of_loss_subset(agent, trained, batch, repval_scale=1.0)
    assert _max_abs(grads["encoder"]) > 0.0 and _max_abs(grads["rssm"]) > 0.0
    assert _max_abs(grads["actor"]) == 0.0


def test_act_shapes_and_modes(setup):
    agent, state, _, _ = setup
    carry = agent.initial_carry(5)
    obs = jnp.zeros((5,) + agent.spec.obs_shape, agent.spec.obs_dtype)
    first = jnp.ones((5,), bool)
    act = jax.jit(agent.act, static_argnames="mode")
    a, carry2 = act(state, carry, obs, first, jax.random.key(0), mode="train")
    e, _ = act(state, carry, obs, first, jax.random.key(0), mode="eval")
    if agent.spec.discrete:
        assert a.shape == (5,) and a.dtype == jnp.int32
        np.testing.assert_allclose(carry2.action.sum(-1), 1.0)
    else:
        assert a.shape == (5, agent.spec.num_actions)
    assert carry2.latent.deter.shape == (5, agent.config.deter)
    with pytest.raises(ValueError, match="mode"):
        agent.act(state, carry, obs, first, jax.random.key(0), mode="greedy")


def test_wrong_batch_shape_is_rejected(setup):
    agent, state, batch, _ = setup
    bad = batch._replace(obs=batch.obs[..., :1])
    with pytest.raises(AssertionError):
        agent.update(state, bad, jax.random.key(0))


def test_imagined_continuous_actions_are_scored_unclipped():
    """REINFORCE must use log pi of the sample actually drawn, not of its clipped value."""
    env = make_env("Pendulum-v1")
    agent = Dreamer(DreamerConfig.preset("tiny", maxstd=1.0, minstd=1.0), env.spec)
    state = agent.init(jax.random.key(0))
    starts = agent.initial_carry(512).latent
    feat, actions = jax.jit(agent.imagine)(state.params, starts, jax.random.key(1))
    H = agent.config.imag_horizon
    assert feat.shape == (512, H + 1, agent.config.feat_size)
    assert actions.shape == (512, H + 1, 1)
    # std 1 around a mean near 0: a good share of the samples lies outside [-1, 1].
    assert float(jnp.mean(jnp.abs(actions) > 1.0)) > 0.1



@pytest.mark.parametrize("env_name", ["CartPole-v1", "Pendulum-v1"])
def test_imagination_draws_its_random_numbers_before_the_rollout(env_name):
    """No random-number op runs inside the imagination's scan: the policy's noise, like the
    latents', is drawn for every step before it (`RSSM.imagine(policy_noise=...)`)."""
    agent = Dreamer(DreamerConfig.preset("tiny"), make_env(env_name).spec)
    key = jax.random.key(0)
    params = jax.eval_shape(agent.init, key).params
    jaxpr = jax.make_jaxpr(agent.imagine)(params, agent.initial_carry(8).latent, key).jaxpr
    assert [eqn for eqn, _ in walk_jaxpr(jaxpr) if eqn.primitive.name == "scan"]
    inside = [eqn.primitive.name for eqn, in_scan in walk_jaxpr(jaxpr)
              if in_scan and ("random" in eqn.primitive.name or "threefry" in eqn.primitive.name)]
    assert not inside, inside


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_matmul_precision_sets_every_update_matmuls_operands(precision):
    """`matmul_precision="bfloat16"` gives every matmul of an update, forward and gradient,
    bfloat16 operands summed in float32 while the compute dtype stays float32 (the CPU's AMX
    path); "float32" leaves them all float32."""
    agent = Dreamer(DreamerConfig.preset("tiny", compute_dtype="float32",
                                         matmul_precision=precision), make_env("CartPole-v1").spec)
    key = jax.random.key(0)
    state = jax.eval_shape(agent.init, key)
    batch = _batch(agent.spec, agent.config.batch_size, agent.config.batch_length, key)
    jaxpr = jax.make_jaxpr(agent.update)(state, batch, key).jaxpr
    dots = [eqn for eqn, _ in walk_jaxpr(jaxpr) if eqn.primitive.name == "dot_general"]
    assert len(dots) > 50  # the model's and the gradient's
    operands = {str(v.aval.dtype) for eqn in dots for v in eqn.invars}
    assert operands == {precision}
    assert {str(eqn.outvars[0].aval.dtype) for eqn in dots} == {"float32"}


def test_traced_tunables_equal_the_static_config():
    """A tunable given per state (how a vmapped grid runs) acts exactly like the config value."""
    agent, update = _agent("CartPole-v1")  # config lr=1e-3, actent=3e-4
    c = agent.config
    batch = _batch(agent.spec, c.batch_size, c.batch_length, jax.random.key(1))
    k = jax.random.key(0)
    a, _ = update(agent.init(k), batch, k)
    # Member 0 repeats the config's values as traced ones; member 1 differs in both.
    hyper = seed_hyper(agent, {"lr": [1e-3, 1e-4], "actent": [3e-4, 1e-2]}, 2)
    grid = jax.vmap(agent.init, in_axes=(None, 0))(k, hyper)
    b, _ = jax.jit(jax.vmap(agent.update, in_axes=(0, None, None)))(grid, batch, k)
    first = jax.tree.map(lambda x: x[0], b.params)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(first)):
        # LaProp's first step is lr * g / |g|: a gradient entry within float noise of zero may
        # flip sign between the vmapped and the plain program; everything else must agree.
        same = np.isclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
        assert same.mean() > 0.99, (x.shape, same.mean())
    changed = jax.tree.map(lambda x: bool(jnp.any(x[0] != x[1])), b.params)
    assert all(jax.tree.leaves(changed["actor"]))  # the two grid points really differ
    with pytest.raises(ValueError, match="unknown tunable.*'deter'.*tunables are: lr"):
        agent.hyper({"deter": 3})


def test_cont_terminal_weight_scales_only_terminal_records():
    """cont_terminal_weight multiplies the continue loss at terminal records only: with none in
    the batch the loss is unchanged, with some it grows; 1 is DreamerV3's loss."""
    spec = make_env("CartPole-v1").spec
    base = Dreamer(DreamerConfig.preset("tiny"), spec)
    heavy = Dreamer(DreamerConfig.preset("tiny", cont_terminal_weight=5.0), spec)
    state = base.init(jax.random.key(0))
    c = base.config
    batch = _batch(spec, c.batch_size, c.batch_length, jax.random.key(1))
    none = batch._replace(is_terminal=jnp.zeros_like(batch.is_terminal))

    def cont_loss(agent, b):
        metrics = agent.loss(state.params, state.slow_critic, state.retnorm, state.hyper, b,
                             jax.random.key(2))[1][0]
        return float(metrics["loss/cont"])

    assert cont_loss(heavy, none) == pytest.approx(cont_loss(base, none), rel=1e-6)
    assert cont_loss(heavy, batch) > cont_loss(base, batch) * 1.01
    with pytest.raises(ValueError, match="cont_terminal_weight"):
        DreamerConfig.preset("tiny", cont_terminal_weight=0.0)


def test_replay_policy_loss_trains_only_the_actor_towards_better_than_expected_actions():
    """replay_policy_scale adds REINFORCE on the replayed actions: it reaches the actor and
    nothing else, raises the probability of an action whose returns beat the critic, and is
    absent (zero gradient, zero metric) at its default 0."""
    spec = make_env("CartPole-v1").spec
    agent = Dreamer(DreamerConfig.preset("tiny", replay_policy_scale=1.0), spec)
    state = agent.init(jax.random.key(0))
    c = agent.config
    batch = _batch(spec, c.batch_size, c.batch_length, jax.random.key(1))
    # Every replayed step took action 0 and was rewarded; the critic starts at zero, so every
    # advantage is positive.
    batch = batch._replace(action=jax.nn.one_hot(jnp.zeros_like(batch.reward, jnp.int32), 2),
                           reward=jnp.ones_like(batch.reward))
    grads = _grads_of_loss_subset(agent, state, batch)  # every tunable loss scale at zero
    for group in WORLD_MODEL + ("critic",):
        assert _max_abs(grads[group]) == 0.0, f"the replay actor loss reached {group}"
    assert _max_abs(grads["actor"]) > 0.0
    assert _action0_prob(agent, state, batch, grads) > _action0_prob(agent, state, batch) + 1e-4
    # A tunable: at 0 in `hyper` (e.g. scheduled off late in a run) the compiled loss adds nothing.
    assert _max_abs(_grads_of_loss_subset(agent, state, batch, replay_policy_scale=0.0)) == 0.0
    default = Dreamer(DreamerConfig.preset("tiny"), spec)
    assert _max_abs(_grads_of_loss_subset(default, state, batch)["actor"]) == 0.0
    metrics = default.loss(state.params, state.slow_critic, state.retnorm, state.hyper, batch,
                           jax.random.key(2))[1][0]
    assert float(metrics["loss/replay_policy"]) == 0.0
    with pytest.raises(ValueError, match="replay_policy_scale"):
        DreamerConfig.preset("tiny", replay_policy_scale=-1.0)
    with pytest.raises(ValueError, match="in a run whose agent config has replay_policy_scale > 0"):
        default.hyper({"replay_policy_scale": 1.0})  # the default program has no such loss
    with pytest.raises(ValueError, match="reward_scale=-1.0"):  # each of a grid's values
        default.hyper({"reward_scale": np.array([1.0, -1.0])})


def test_positive_replay_policy_loss_only_raises_actions_that_beat_the_critic():
    """replay_policy_positive keeps the replay actor loss's positive advantages only: where
    every replayed return beats the critic it is the signed loss exactly, and where every one
    falls short the signed loss lowers the taken action while the positive one leaves it."""
    spec = make_env("CartPole-v1").spec
    signed = Dreamer(DreamerConfig.preset("tiny", replay_policy_scale=1.0), spec)
    positive = Dreamer(DreamerConfig.preset("tiny", replay_policy_scale=1.0,
                                            replay_policy_positive=True), spec)
    state = signed.init(jax.random.key(0))
    c = signed.config
    batch = _batch(spec, c.batch_size, c.batch_length, jax.random.key(1))
    batch = batch._replace(action=jax.nn.one_hot(jnp.zeros_like(batch.reward, jnp.int32), 2))
    better = batch._replace(reward=jnp.ones_like(batch.reward))  # the critic starts at zero
    chex.assert_trees_all_close(_grads_of_loss_subset(positive, state, better),
                                _grads_of_loss_subset(signed, state, better))
    worse = batch._replace(reward=-jnp.ones_like(batch.reward))
    before = _action0_prob(signed, state, worse)
    moved = lambda agent: before - _action0_prob(
        signed, state, worse, _grads_of_loss_subset(agent, state, worse))
    lowered = moved(signed)
    assert lowered > 1e-4
    assert abs(moved(positive)) < 0.05 * lowered
    with pytest.raises(ValueError, match="replay_policy_positive"):
        DreamerConfig.preset("tiny", replay_policy_positive=True)


def test_bce_vector_loss_is_cross_entropy_on_unit_range_features():
    """vector_loss="bce": the vector decoder outputs logits, trained with binary cross-entropy
    against obs clipped to [0, 1], and `to_obs` is the sigmoid. A one-hot cell predicted at 1%
    costs -log 0.01 = 4.6 nats, where symlog squared error charges 0.48 for one predicted
    empty. The option reaches the agent for flat and dict observations and is validated."""
    from wmjax.cli import parse_override
    from wmjax.models import VectorDecoder

    p = 0.01
    logits = jnp.full((4,), np.log(p / (1 - p)))
    obs = jnp.array([1.0, 0.0, 0.5, -0.3])  # a cell, an empty cell, a scaled count, out of range
    bce, mse = VectorDecoder(4, vector_loss="bce"), VectorDecoder(4)
    expected = -np.log(p) - np.log(1 - p) + -(0.5 * np.log(p) + 0.5 * np.log(1 - p)) - np.log(1 - p)
    np.testing.assert_allclose(bce.loss(logits, obs), expected, rtol=1e-5)
    np.testing.assert_allclose(bce.to_obs(logits), np.full(4, p), rtol=1e-5)
    np.testing.assert_allclose(mse.loss(jnp.zeros(4), obs), np.log1p(1.0) ** 2 + np.log1p(0.5) ** 2
                               + np.log1p(0.3) ** 2, rtol=1e-5)
    with pytest.raises(ValueError, match="vector_loss='l1'; allowed"):
        VectorDecoder(4, vector_loss="l1").init(jax.random.key(0), jnp.zeros((1, 8)))
    assert parse_override("vector_loss=bce") == ("vector_loss", "bce")
    with pytest.raises(ValueError, match=r"vector_loss='l1'; allowed: one of \('mse', 'bce'\)"):
        DreamerConfig(vector_loss="l1")
    config = DreamerConfig.preset("tiny", vector_loss="bce")
    flat = Dreamer(config, make_env("Craftax-Classic-Symbolic-v1").spec).decoder
    assert flat.vector_loss == "bce"
    grid = Dreamer(config, make_env("Craftax-Classic-Symbolic-Grid-v1").spec).decoder
    pred = {"map": jnp.zeros((7, 9, 21)), "state": jnp.zeros(22)}
    obs = {"map": jnp.full((7, 9, 21), 255, jnp.uint8), "state": jnp.ones(22)}
    # image keys keep their (mse) loss, 1 per missed pixel; the vector keys cost log 2 per dim
    np.testing.assert_allclose(grid.loss(pred, obs), 7 * 9 * 21 + 22 * np.log(2.0), rtol=1e-5)
    np.testing.assert_allclose(grid.to_obs(pred)["state"], np.full(22, 0.5))


def test_actor_unimix_puts_a_floor_under_every_discrete_action():
    """actor_unimix mixes a uniform share into the policy (the 2023 paper's 1%); 0 leaves it."""
    spec = make_env("CartPole-v1").spec
    n = 1024
    feat = jax.random.normal(jax.random.key(1), (n, DreamerConfig.preset("tiny").feat_size))
    for mix in (0.0, 0.1):
        agent = Dreamer(DreamerConfig.preset("tiny", actor_unimix=mix), spec)
        actor = agent.init(jax.random.key(0)).params["actor"]
        # Output bias +-1000: without a mix, one action takes all the probability.
        actor = {**actor, "Linear_0": {**actor["Linear_0"], "bias": jnp.array([1e3, -1e3])}}
        dist = agent._policy(actor, feat)
        floor = mix / spec.num_actions
        np.testing.assert_allclose(jnp.exp(dist.log_prob(jnp.ones(n, jnp.int32))), floor, atol=1e-6)
        share = float(jnp.mean(dist.sample(jax.random.key(2)) == 1))  # the acted share follows
        assert abs(share - floor) < 0.03 and (share > 0) == (mix > 0)
    with pytest.raises(ValueError, match="actor_unimix"):
        DreamerConfig.preset("tiny", actor_unimix=1.0)


def test_imagined_value_loss_is_the_mean_over_all_but_the_last_state():
    """The critic's loss on imagination runs over all H + 1 states with the last weighted 0 (no
    slice of the logits); it must equal, with its gradient, the weighted cross-entropy of the
    first H states against their returns and slow values, averaged over those H."""
    agent, _ = _agent("CartPole-v1")
    H, N = 4, 6
    ks = jax.random.split(jax.random.key(0), 4)
    logits = 2.0 * jax.random.normal(ks[0], (H + 1, N, agent.config.num_bins))
    ret = 5.0 * jax.random.normal(ks[1], (H, N))
    slow = 5.0 * jax.random.normal(ks[2], (H + 1, N))
    weight = jax.random.uniform(ks[3], (H, N))
    hyper = agent.hyper({"slowreg": 0.7})

    def padded(z):
        return agent._imagined_value_loss(z, jax.nn.logsumexp(z, -1), ret, slow, weight, hyper)

    def sliced(z):
        target = agent.twohot.target(ret) + 0.7 * agent.twohot.target(slow[:-1])
        return (weight * -(target * jax.nn.log_softmax(z[:-1], -1)).sum(-1)).mean()

    np.testing.assert_allclose(padded(logits), sliced(logits), rtol=1e-5)
    grad = jax.grad(padded)(logits)
    np.testing.assert_allclose(grad, jax.grad(sliced)(logits), rtol=1e-4, atol=1e-8)
    assert not bool(jnp.any(grad[-1]))  # no gradient from the last state
