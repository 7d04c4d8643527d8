import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from programs import walk_jaxpr
from wmjax.models import RSSM
from wmjax.nn.dists import Categorical, unimix_logits
from wmjax.nn.layers import Linear


@pytest.fixture(scope="module")
def rssm_and_params():
    m = RSSM(deter=32, hidden=16, stoch=4, classes=3, blocks=4)
    B, T = 3, 6
    k = jax.random.key(0)
    params = m.init(k, jnp.zeros((B, T, 5)), jnp.zeros((B, T, 2)), jnp.ones((B, T), bool), k)
    return m, params


def _sequences(B=3, T=6):
    """(embed, action, is_first, key) for B sequences of T steps: every sequence starts at t=0
    and the second starts anew at t=3."""
    embed = jax.random.normal(jax.random.key(1), (B, T, 5))
    action = jax.random.normal(jax.random.key(2), (B, T, 2))
    is_first = jnp.zeros((B, T), bool).at[:, 0].set(True).at[1, 3].set(True)
    return embed, action, is_first, jax.random.key(3)


def _loop_of_obs_step(m, params, embed, action, is_first, key):
    """The posterior states of a Python loop of `obs_step`, stacked (B, T, ...) as `observe`'s."""
    B, T = is_first.shape
    keys, state, steps = jax.random.split(key, T), m.apply(params, B, method=RSSM.initial), []
    for t in range(T):
        state = m.apply(params, state, action[:, t], embed[:, t], is_first[:, t], keys[t],
                        method=RSSM.obs_step)
        steps.append(state)
    return jax.tree.map(lambda *x: jnp.stack(x, 1), *steps)


def test_observe_equals_loop_of_obs_step(rssm_and_params):
    m, params = rssm_and_params
    embed, action, is_first, key = _sequences()
    _, states = m.apply(params, embed, action, is_first, key, method=RSSM.observe)
    looped = _loop_of_obs_step(m, params, embed, action, is_first, key)
    np.testing.assert_allclose(states.deter, looped.deter, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states.stoch, looped.stoch, atol=1e-6)


def test_observe_gradient_equals_loop_of_obs_step(rssm_and_params):
    """`observe` defers its GRU weights' gradient to after the backward scan (one matmul over all
    steps); the gradients of every parameter and input match those of a loop of `obs_step`."""
    m, params = rssm_and_params
    embed, action, is_first, key = _sequences()
    B, T = is_first.shape
    weights = jax.random.normal(jax.random.key(4), (B, T, m.deter))
    targets = jax.random.normal(jax.random.key(5), (B, T, m.stoch, m.classes))

    def loss(states):  # reads the deter, the straight-through samples and the logits
        return (jnp.sum(weights * states.deter) + jnp.sum(targets * states.stoch)
                + jnp.sum(jnp.sin(states.logits)))

    def scanned(p, embed, action):
        return loss(m.apply(p, embed, action, is_first, key, method=RSSM.observe)[1])

    def looped(p, embed, action):
        return loss(_loop_of_obs_step(m, p, embed, action, is_first, key))

    got = jax.grad(scanned, argnums=(0, 1, 2))(params, embed, action)
    want = jax.grad(looped, argnums=(0, 1, 2))(params, embed, action)
    flat_got, flat_want = jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)
    assert len(flat_got) == len(flat_want)
    for (path, g), w in zip(flat_got, flat_want):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
    assert np.abs(got[0]["params"]["dyn_gates_kernel"]).max() > 0  # the deferred ones too


def test_observe_gradient_in_bfloat16():
    """Computing in bfloat16 (DreamerV3's dtype on accelerators), the deferred weight gradients
    come back in each parameter's own dtype, finite and not all zero."""
    m = RSSM(deter=32, hidden=16, stoch=4, classes=3, blocks=4, dtype=jnp.bfloat16)
    embed, action, is_first, key = _sequences()
    params = m.init(key, embed, action, is_first, key)
    grads = jax.grad(lambda p: m.apply(p, embed, action, is_first, key, method=RSSM.observe)[1]
                     .deter.astype(jnp.float32).sum())(params)
    for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(params)):
        name = jax.tree_util.keystr(path)
        assert g.dtype == p.dtype and g.shape == p.shape, name
        assert np.isfinite(g).all(), name
        if "kernel" in name and "prior" not in name:  # the prior is not read by `observe`
            assert np.abs(g).max() > 0, name



def _random_ops_in_scans(jaxpr) -> list[str]:
    """The random-number primitives inside scans of a jaxpr."""
    return [eqn.primitive.name for eqn, inside in walk_jaxpr(jaxpr)
            if inside and ("random" in eqn.primitive.name or "threefry" in eqn.primitive.name)]


def test_imagine_draws_the_policy_noise_before_its_scan(rssm_and_params):
    """With `policy_noise` the policy's random numbers are drawn for all steps before the scan
    (drawn inside, XLA's CPU backend runs a threefry loop on every step) and the rollout is
    the keyed policy's, to the bit."""
    m, params = rssm_and_params
    start = m.apply(params, 7, method=RSSM.initial)
    logits = lambda feat: 5.0 * feat[..., -2:]  # any function of the features
    keyed = lambda feat, k: jax.nn.one_hot(Categorical(logits(feat)).sample(k), 2)
    noised = lambda feat, g: jax.nn.one_hot(Categorical(logits(feat)).sample_from(g), 2)
    kw = dict(policy_noise=lambda k: Categorical.noise(k, (7, 2)))

    def rollout(p, policy, **kwargs):
        return m.apply(p, start, policy, 5, jax.random.key(0), method=RSSM.imagine, **kwargs)

    (traj, actions), (traj_n, actions_n) = rollout(params, keyed), rollout(params, noised, **kw)
    np.testing.assert_array_equal(actions_n, actions)
    np.testing.assert_array_equal(traj_n.deter, traj.deter)
    assert 0 < float(actions[:, :, 0].mean()) < 1  # both actions taken
    assert _random_ops_in_scans(jax.make_jaxpr(lambda p: rollout(p, keyed))(params).jaxpr)
    assert not _random_ops_in_scans(jax.make_jaxpr(lambda p: rollout(p, noised, **kw))(params).jaxpr)


def test_is_first_resets_the_state(rssm_and_params):
    m, params = rssm_and_params
    B, T = 3, 6
    embed = jax.random.normal(jax.random.key(1), (B, T, 5))
    action = jax.random.normal(jax.random.key(2), (B, T, 2))
    is_first = jnp.zeros((B, T), bool).at[:, 0].set(True).at[:, 3].set(True)
    key = jax.random.key(4)
    _, full = m.apply(params, embed, action, is_first, key, method=RSSM.observe)
    # Restarting the sequence at t=3 from scratch gives the same states: nothing leaks across.
    keys = jax.random.split(key, T)
    state = m.apply(params, B, method=RSSM.initial)
    for t in range(3, T):
        state = m.apply(params, state, action[:, t], embed[:, t], is_first[:, t], keys[t],
                        method=RSSM.obs_step)
        np.testing.assert_allclose(full.deter[:, t], state.deter, rtol=1e-5, atol=1e-6)


def test_imagine_shapes(rssm_and_params):
    m, params = rssm_and_params
    start = m.apply(params, 7, method=RSSM.initial)
    policy = lambda feat, k: jax.nn.one_hot(jax.random.randint(k, feat.shape[:-1], 0, 2), 2)
    traj, actions = m.apply(params, start, policy, 5, jax.random.key(0), method=RSSM.imagine)
    assert traj.deter.shape == (7, 6, 32)
    assert traj.stoch.shape == (7, 6, 4, 3)
    assert actions.shape == (7, 6, 2)
    np.testing.assert_array_equal(traj.deter[:, 0], start.deter)
    np.testing.assert_allclose(traj.stoch[:, 1:].sum(-1), 1.0, rtol=1e-6)  # one-hot samples
    # time_major gives the same rollout laid out (steps, batch, ...), without the transpose.
    traj_t, actions_t = m.apply(params, start, policy, 5, jax.random.key(0), True,
                                method=RSSM.imagine)
    np.testing.assert_array_equal(jnp.swapaxes(traj_t.deter, 0, 1), traj.deter)
    np.testing.assert_array_equal(jnp.swapaxes(traj_t.stoch, 0, 1), traj.stoch)
    np.testing.assert_array_equal(jnp.swapaxes(actions_t, 0, 1), actions)
    # features=True gives the trajectory's features as `feat` reads them, and the same actions.
    for time_major, states in ((False, traj), (True, traj_t)):
        feat, acts = m.apply(params, start, policy, 5, jax.random.key(0), time_major,
                             features=True, method=RSSM.imagine)
        np.testing.assert_array_equal(feat, m.apply(params, states, method=RSSM.feat))
        np.testing.assert_array_equal(acts, actions_t if time_major else actions)
        # emit: a pytree of functions of each step's features, computed inside the scan and
        # laid out like the trajectory; the rollout itself is unchanged.
        emit = lambda f: {"sum": f.sum(-1), "head": f[..., :3] * 2.0}
        feat_e, acts_e, emitted = m.apply(params, start, policy, 5, jax.random.key(0), time_major,
                                          features=True, emit=emit, method=RSSM.imagine)
        np.testing.assert_array_equal(feat_e, feat)
        np.testing.assert_array_equal(acts_e, acts)
        for name, want in emit(feat).items():
            np.testing.assert_allclose(emitted[name], want, rtol=1e-6, atol=1e-6)


def test_unrolled_scans_compute_the_same(rssm_and_params):
    """`unroll` (used to count every step's FLOPs) changes how the scans compile, not what
    they compute; and the noise drawn before the scan matches the per-step keys."""
    m, params = rssm_and_params
    unrolled = m.clone(unroll=True)
    B, T = 3, 6
    embed = jax.random.normal(jax.random.key(1), (B, T, 5))
    action = jax.random.normal(jax.random.key(2), (B, T, 2))
    is_first = jnp.zeros((B, T), bool).at[:, 0].set(True)
    key = jax.random.key(5)
    for legacy in (False, True):  # typed keys and raw uint32 keys draw the same noise
        k = jax.random.key_data(key) if legacy else key
        a = m.apply(params, embed, action, is_first, k, method=RSSM.observe)[1]
        b = unrolled.apply(params, embed, action, is_first, k, method=RSSM.observe)[1]
        np.testing.assert_allclose(a.deter, b.deter, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a.stoch, b.stoch)
    start = jax.tree.map(lambda x: x[:, -1], a)
    policy = lambda feat, k: jax.nn.one_hot(jax.random.randint(k, feat.shape[:-1], 0, 2), 2)
    ta, aa = m.apply(params, start, policy, 4, key, method=RSSM.imagine)
    tb, ab = unrolled.apply(params, start, policy, 4, key, method=RSSM.imagine)
    np.testing.assert_allclose(ta.deter, tb.deter, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ta.stoch, tb.stoch)
    np.testing.assert_array_equal(aa, ab)
    # Step by step with img_step and the same per-step keys gives the same trajectory.
    state = start
    for t, k in enumerate(jax.random.split(key, 5)[:-1]):
        k_policy, k_stoch = jax.random.split(k)
        act = policy(m.apply(params, state, method=RSSM.feat), k_policy)
        np.testing.assert_array_equal(aa[:, t], act)
        state = m.apply(params, state, act, k_stoch, method=RSSM.img_step)
        np.testing.assert_allclose(ta.deter[:, t + 1], state.deter, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ta.stoch[:, t + 1], state.stoch, atol=1e-6)


def _block_gru_reference(m, deter, stoch, action):
    """DreamerV3's block GRU written out group by group, plainly: group i reads its deter slice
    and the three shared input projections; RMSNorm spans all groups; each group's gate output
    splits into reset, candidate and update."""
    action = action / jnp.maximum(1.0, jnp.abs(action))
    proj = jnp.concatenate([m.in_deter(deter), m.in_stoch(stoch.reshape(len(deter), -1)),
                            m.in_action(action)], -1)
    size = m.deter // m.blocks
    part = lambda x, i: x[:, i * size:(i + 1) * size]
    x = jnp.concatenate([jnp.concatenate([part(deter, i), proj], -1) @ m.dyn_hidden_kernel[i]
                         + m.dyn_hidden_bias[i] for i in range(m.blocks)], -1)
    x = x * jax.lax.rsqrt(jnp.mean(x**2, -1, keepdims=True) + 1e-4) * m.dyn_norm_scale.reshape(-1)
    x = jax.nn.silu(x)
    new = []
    for i in range(m.blocks):
        gates = part(x, i) @ m.dyn_gates_kernel[i] + m.dyn_gates_bias[i]
        reset, cand, update = jnp.split(gates, 3, -1)
        cand = jnp.tanh(jax.nn.sigmoid(reset) * cand)
        update = jax.nn.sigmoid(update - 1.0)
        new.append(update * cand + (1.0 - update) * part(deter, i))
    return jnp.concatenate(new, -1)


def test_block_gru_matches_a_plain_reference(rssm_and_params):
    m, params = rssm_and_params
    leaves, tree = jax.tree.flatten(params)  # perturb every parameter, biases and scales too
    keys = jax.random.split(jax.random.key(7), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                       for p, k in zip(leaves, keys)])
    B = 5
    deter = jax.random.normal(jax.random.key(8), (B, m.deter))
    stoch = jax.nn.one_hot(jax.random.randint(jax.random.key(9), (B, m.stoch), 0, m.classes),
                           m.classes)
    action = 2.0 * jax.random.normal(jax.random.key(10), (B, 2))
    ours = m.apply(params, deter, stoch, action,
                   method=lambda mdl, d, s, a: mdl._core(d, mdl._groups(d), s, a))
    ref = m.apply(params, deter, stoch, action, method=_block_gru_reference)
    np.testing.assert_allclose(ours[0], ref, rtol=1e-5, atol=1e-5)
    grouped = m.apply(params, ours[1], method=RSSM._ungroup)
    np.testing.assert_allclose(grouped, ref, rtol=1e-5, atol=1e-5)


def test_latent_logits_read_a_linear_layers_parameters(rssm_and_params):
    """The latents' output layer computes classes-major for a faster softmax, but its parameters
    mean what a plain Linear's to (stoch, classes) mean: checkpoints written before read the
    same, and the prior is the reference softmax of those logits."""
    m, params = rssm_and_params
    deter = jax.random.normal(jax.random.key(6), (5, m.deter))
    out = params["params"]["prior_out"]
    assert out["kernel"].shape == (m.hidden, m.stoch * m.classes)

    def reference(mdl, deter):
        x = deter
        for layer in mdl.prior_hidden:
            x = layer(x)
        logits = Linear(m.stoch * m.classes).apply({"params": out}, x)
        return unimix_logits(logits.reshape(-1, m.stoch, m.classes), m.unimix)

    want = m.apply(params, deter, method=reference)
    got = m.apply(params, deter, method=RSSM.prior_logits)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # A sampled step's one-hot follows those logits too: the mode picks their argmax.
    state = m.apply(params, 5, method=RSSM.initial)
    step = m.apply(params, state, jnp.zeros((5, 2)), None, method=RSSM.img_step)
    np.testing.assert_array_equal(step.stoch.argmax(-1), step.logits.argmax(-1))
    np.testing.assert_allclose(step.logits, m.apply(params, step.deter, method=RSSM.prior_logits),
                               rtol=1e-6, atol=1e-6)


def test_imagine_writes_the_trajectory_without_copying_it(rssm_and_params):
    """The imagined steps and the last state are written into one buffer: no concatenate in the
    compiled rollout builds the (horizon + 1)-step trajectory (it copied the whole trajectory)."""
    m, params = rssm_and_params
    start = m.apply(params, 7, method=RSSM.initial)
    policy = lambda feat, k: jax.nn.one_hot(jax.random.randint(k, feat.shape[:-1], 0, 2), 2)
    rollout = jax.jit(lambda p, s, k: m.apply(p, s, policy, 5, k, True, features=True,
                                               emit=lambda f: f.sum(-1), method=RSSM.imagine))
    feat, actions, emitted = rollout(params, start, jax.random.key(0))
    assert feat.shape == (6, 7, m.deter + m.stoch * m.classes) and emitted.shape == (6, 7)
    hlo = rollout.lower(params, start, jax.random.key(0)).compile().as_text()
    built = [line for line in hlo.splitlines() if "concatenate(" in line
             and re.search(r"= f32\[6,7(,\d+)?\]", line)]
    assert not built, built


def test_imagine_gives_bfloat16_features_without_float32_round_trips(rssm_and_params):
    """`feat_dtype=bfloat16` (for readers that are all bfloat16-operand matmuls): the same
    rollout, the policy and `emit` get the features rounded to bfloat16, and the compiled
    rollout neither converts them nor the trajectory (XLA's CPU backend writes a bfloat16 buffer,
    and concatenates bfloat16, through float32 unless they are moved as their bits)."""
    m, params = rssm_and_params
    start = m.apply(params, 7, method=RSSM.initial)
    seen = []
    policy = lambda feat, k: seen.append(feat.dtype) or jax.nn.one_hot(
        jax.random.randint(k, feat.shape[:-1], 0, 2), 2)
    emit = lambda f: {"f": f, "dtype_ok": jnp.full(f.shape[:-1], f.dtype == jnp.bfloat16)}

    def rollout(p, s, k, dtype):
        return m.apply(p, s, policy, 5, k, True, features=True, emit=emit, feat_dtype=dtype,
                       method=RSSM.imagine)

    feat, actions, emitted = rollout(params, start, jax.random.key(0), None)
    feat_b, actions_b, emitted_b = rollout(params, start, jax.random.key(0), jnp.bfloat16)
    assert feat_b.dtype == jnp.bfloat16 and set(seen) == {jnp.dtype("float32"), jnp.dtype("bfloat16")}
    np.testing.assert_array_equal(feat_b, feat.astype(jnp.bfloat16))
    np.testing.assert_array_equal(emitted_b["f"], feat_b)
    assert bool(emitted_b["dtype_ok"].all()) and not bool(emitted["dtype_ok"].any())
    np.testing.assert_array_equal(actions_b, actions)
    hlo = jax.jit(rollout, static_argnums=3).lower(
        params, start, jax.random.key(0), jnp.bfloat16).compile().as_text()
    width = m.deter + m.stoch * m.classes
    round_trips = [line for line in hlo.splitlines() if re.search(
        rf"= f32\[(6,)?7,{width}\]\S* (convert|concatenate)\(", line)]
    assert not round_trips, round_trips


def _matmul_shape(shape) -> tuple:
    """A dot operand's or result's shape without leading unit axes: with bfloat16 operands
    `contract` multiplies (batch, m, k) by (batch, k, n), batch 1 for a plain matmul."""
    shape = tuple(shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _dot_operand_shapes(jaxpr):
    """(operand shapes, inside a scan?) of every dot_general in a jaxpr, nested ones included."""
    return [(tuple(_matmul_shape(v.aval.shape) for v in eqn.invars), inside)
            for eqn, inside in walk_jaxpr(jaxpr) if eqn.primitive.name == "dot_general"]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_observe_projects_the_actions_before_its_scan(rssm_and_params, precision):
    """The GRU's action input does not depend on the state, so `observe` projects all steps'
    actions in one matmul before the scan, not one per step inside it (the update measured
    x0.967 and x0.949 for that); `test_observe_equals_loop_of_obs_step` checks the result."""
    m, params = rssm_and_params
    B, T = 3, 6
    args = (jnp.zeros((B, T, 5)), jnp.zeros((B, T, 2)), jnp.zeros((B, T), bool), jax.random.key(0))
    with jax.default_matmul_precision(precision):
        jaxpr = jax.make_jaxpr(lambda p: m.apply(p, *args, method=RSSM.observe))(params).jaxpr
    action_dots = [inside for shapes, inside in _dot_operand_shapes(jaxpr) if (2, m.hidden) in shapes]
    assert action_dots == [False], action_dots


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_observe_keeps_few_intermediates_for_its_gradient(rssm_and_params, precision):
    """Differentiated, `observe`'s scan saves only its states and the matmuls' outputs per step
    for the backward pass (rematerialisation); stacking every intermediate (60 arrays per step)
    made the update 3-5% slower. The GRU's per-group gate matmul is among those saved: recomputed,
    it re-read its weights on every step (Craftax-Classic's size12m update measured x0.95). With
    bfloat16 operands the matmuls are `contract`'s custom_vjp, saved by name (x0.897 there)."""
    m, params = rssm_and_params
    B, T = 3, 6
    args = (jnp.zeros((B, T, 5)), jnp.zeros((B, T, 2)), jnp.zeros((B, T), bool), jax.random.key(0))

    def loss(p):
        _, post = m.apply(p, *args, method=RSSM.observe)
        return jnp.sum(post.deter) + jnp.sum(post.logits)

    with jax.default_matmul_precision(precision):
        jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    forward, _ = [eqn for eqn, _ in walk_jaxpr(jaxpr) if eqn.primitive.name == "scan"]
    body, num_carry = forward.params["jaxpr"].jaxpr, forward.params["num_carry"]
    computed = {v for eqn in body.eqns for v in eqn.outvars}
    # Stacked per step, not counting the scan's own inputs passed through: 3 state fields, 7
    # matmuls (deter, stoch and shared GRU inputs, the GRU's 2 per-group matmuls, the
    # posterior's hidden and output layers), the inputs of the GRU's 3 matmuls and of the 4
    # dense layers (for their weights' gradient, taken after the scan; 2 of those the remat
    # would save anyway) and the few values the recomputation starts from.
    stacked = [v for v in body.outvars[num_carry:] if v in computed]
    assert len(stacked) <= 17, len(stacked)
    g, size = m.blocks, m.deter // m.blocks
    gates = (g, B, 3 * size)
    assert gates in [tuple(v.aval.shape) for v in stacked]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_observe_takes_weight_gradients_after_its_scan(rssm_and_params, precision):
    """Differentiated, `observe`'s backward scan computes no weight's gradient: every matmul
    weight of a posterior step (the GRU's and the dense layers') gets its gradient from one
    matmul over all steps after the scan (the fused loop measured x0.965 for the GRU's, x0.977
    more for the dense layers'); per step on 16 rows each was a small matmul and an add.
    With bfloat16 operands `contract`'s backward rule also multiplies out the held weights'
    gradients, which nothing reads: dead code, removed here as XLA removes it."""
    from jax._src.interpreters.partial_eval import dce_jaxpr  # no public form; XLA does the same

    m, params = rssm_and_params
    embed, action, is_first, key = _sequences()
    kernels = {tuple(p.shape) for path, p in jax.tree_util.tree_leaves_with_path(params)
               if "kernel" in jax.tree_util.keystr(path)}
    grad = jax.grad(lambda p: m.apply(p, embed, action, is_first, key, method=RSSM.observe)[1]
                    .deter.sum())
    with jax.default_matmul_precision(precision):
        jaxpr = jax.make_jaxpr(grad)(params).jaxpr
    jaxpr, _ = dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    inside = [_matmul_shape(eqn.outvars[0].aval.shape) for eqn, in_scan in walk_jaxpr(jaxpr)
              if in_scan and eqn.primitive.name == "dot_general"]
    assert inside and not kernels & set(inside), kernels & set(inside)


def test_scans_regroup_the_gru_weights_once(rssm_and_params):
    """The block GRU's first-layer kernel is regrouped (a transposing copy) once per scan, before
    it, not on every step: inside the loops XLA repeated it on every imagined step and every
    step of the observe scan's backward pass (the fused loop measured x0.981 for this)."""
    m, params = rssm_and_params
    B, T = 3, 6
    args = (jnp.zeros((B, T, 5)), jnp.zeros((B, T, 2)), jnp.zeros((B, T), bool), jax.random.key(0))
    policy = lambda feat, k: jax.nn.one_hot(jax.random.randint(k, feat.shape[:-1], 0, 2), 2)

    def loss(p):
        _, post = m.apply(p, *args, method=RSSM.observe)
        feat, _ = m.apply(p, m.apply(p, 7, method=RSSM.initial), policy, 5, jax.random.key(1),
                          features=True, method=RSSM.imagine)
        return jnp.sum(post.deter) + jnp.sum(feat)

    kernel = params["params"]["dyn_hidden_kernel"].shape  # (blocks, size + 3 * hidden, size)
    shared = (kernel[0], kernel[1] - kernel[2], kernel[2])
    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    regroups = [inside for eqn, inside in walk_jaxpr(jaxpr) if eqn.primitive.name == "transpose"
                and tuple(eqn.invars[0].aval.shape) == shared]
    assert regroups and not any(regroups), regroups  # the forward's, the imagination's: outside
