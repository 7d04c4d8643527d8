import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from programs import walk_jaxpr
from wmjax.agents.dreamer.losses import lambda_return
from wmjax.models.rssm import kl_loss
from wmjax.nn import (BoundedNormal, Categorical, MLP, TwoHot, softmax_xent, symexp, symlog,
                      twohot_bins, unimix_logits)
from wmjax.nn.dists import inverse_cdf_index, straight_through_probs, unimix_probs
from wmjax.nn.layers import SAVE_MATMULS, bits_dtype, concat_bits, contract


def test_symlog_symexp_are_inverse():
    x = jnp.array([-1e6, -123.4, -1.0, -1e-3, 0.0, 1e-3, 0.5, 7.0, 1e6])
    np.testing.assert_allclose(symexp(symlog(x)), x, rtol=1e-5)
    np.testing.assert_allclose(symlog(symexp(symlog(x))), symlog(x), rtol=1e-6)
    assert symlog(jnp.array(0.0)) == 0.0


def test_twohot_bins_are_symmetric_and_official():
    bins = twohot_bins(255)
    assert bins.shape == (255,)
    assert bins[127] == 0.0
    np.testing.assert_array_equal(bins[:127], -bins[128:][::-1])
    np.testing.assert_allclose(bins[-1], symexp(20.0), rtol=1e-6)  # ~4.85e8
    assert bool(jnp.all(jnp.diff(bins) > 0))


def test_twohot_roundtrip_and_interpolation_in_raw_space():
    th = TwoHot(twohot_bins(255))
    x = jnp.array([0.0, 1.0, -3.7, 123.4, -5e4, 1e5])
    target = th.target(x)
    np.testing.assert_allclose(target.sum(-1), 1.0, rtol=1e-6)
    assert int((target > 0).sum(-1).max()) <= 2
    # The target's expectation over bins is x itself: interpolation is linear in raw space.
    np.testing.assert_allclose((target * th.bins).sum(-1), x, rtol=1e-5, atol=1e-5)
    # Decoding logits that put all mass on the target gives x back.
    np.testing.assert_allclose(th.mean(jnp.log(target + 1e-38)), x, rtol=1e-4, atol=1e-4)


def test_twohot_mean_is_exactly_zero_at_init():
    th = TwoHot(twohot_bins(255))
    assert float(th.mean(jnp.zeros((3, 255)))[0]) == 0.0
    head = MLP(1, 16, 255, outscale=0.0)
    params = head.init(jax.random.key(0), jnp.ones((4, 8)))
    out = head.apply(params, jax.random.normal(jax.random.key(1), (4, 8)))
    np.testing.assert_array_equal(th.mean(out), jnp.zeros(4))
    # Also compiled inside a scan, as imagination reads its frozen heads (RSSM.imagine's emit).
    feats = jax.random.normal(jax.random.key(2), (5, 4, 8))
    read = jax.jit(lambda p, xs: jax.lax.scan(
        lambda c, x: (c, th.mean(head.apply(p, x))), 0.0, xs)[1])
    np.testing.assert_array_equal(read(params, feats), jnp.zeros((5, 4)))
    # The readout cancels mirrored bins, so other bins are refused by name.
    with pytest.raises(ValueError, match="mirrored around a middle 0.*9 bins from -3 to 5"):
        TwoHot(jnp.linspace(-3.0, 5.0, 9)).mean(jnp.zeros(9))


def test_softmax_xent_matches_autodiff_of_the_plain_formula():
    """The critic's loss uses a closed-form gradient; it must equal autodiff of
    -(target * log_softmax(logits)).sum(-1), also for a weighted sum of two-hot targets (the
    critic's return plus slowreg times the slow critic's value), and pass no gradient to the
    target."""
    th = TwoHot(twohot_bins(255))
    logits = 3.0 * jax.random.normal(jax.random.key(0), (4, 6, 255))
    target = th.target(jnp.linspace(-50.0, 80.0, 24).reshape(4, 6)) \
        + 0.7 * th.target(jnp.linspace(3.0, -9.0, 24).reshape(4, 6))
    weight = jax.random.uniform(jax.random.key(1), (4, 6))
    plain = lambda z, t: (weight * -(t * jax.nn.log_softmax(z, -1)).sum(-1)).sum()
    fused = lambda z, t: (weight * softmax_xent(z, t)).sum()
    np.testing.assert_allclose(fused(logits, target), plain(logits, target), rtol=1e-5)
    g_plain = jax.grad(plain)(logits, jax.lax.stop_gradient(target))
    g_fused, g_target = jax.grad(fused, argnums=(0, 1))(logits, target)
    np.testing.assert_allclose(g_fused, g_plain, rtol=1e-4, atol=1e-7)
    assert not bool(jnp.any(g_target))
    # Computed in float32 whatever the logits' dtype; gradients come back in that dtype.
    g_half = jax.grad(fused)(logits.astype(jnp.bfloat16), target)
    assert g_half.dtype == jnp.bfloat16
    np.testing.assert_allclose(g_half.astype(jnp.float32), g_plain, rtol=0.05, atol=1e-3)
    # TwoHot.loss is this cross-entropy against the two-hot encoding.
    x = jnp.array([0.0, 2.5, -700.0])
    np.testing.assert_allclose(th.loss(logits[0, :3], x),
                               -(th.target(x) * jax.nn.log_softmax(logits[0, :3])).sum(-1), rtol=1e-5)


def test_twohot_target_finds_the_bins_either_side_by_binary_search():
    """`TwoHot.target` finds its bins by binary search; it must give the two-hot encoding that
    comparing with every bin gives, also on the bins themselves, beyond both ends and at zero."""
    th = TwoHot(twohot_bins(255))
    on_bins = th.bins[jnp.array([0, 1, 126, 127, 128, 200, 253, 254])]
    x = jnp.concatenate([on_bins, on_bins * (1 + 1e-6), on_bins * (1 - 1e-6),
                         jnp.array([1e12, -1e12, 0.0, -0.0, 3.3, -0.01])])
    below = jnp.clip(jnp.sum(th.bins <= x[..., None], -1) - 1, 0, 254)
    above = jnp.clip(below + 1, 0, 254)
    lo, hi = th.bins[below], th.bins[above]
    w_hi = jnp.where(below == above, 0.0, jnp.abs(lo - x) / (jnp.abs(lo - x) + jnp.abs(hi - x)))
    expected = (jax.nn.one_hot(below, 255) * (1.0 - w_hi)[:, None]
                + jax.nn.one_hot(above, 255) * w_hi[:, None])
    np.testing.assert_allclose(th.target(x), expected, rtol=1e-5, atol=1e-6)


def test_twohot_readout_and_xent_can_share_a_logsumexp():
    """The critic's value readout and loss share one logsumexp over the bins: given it, both
    give what they give without it, gradients included."""
    th = TwoHot(twohot_bins(255))
    logits = 3.0 * jax.random.normal(jax.random.key(0), (4, 6, 255))
    lse = jax.nn.logsumexp(logits, -1)
    np.testing.assert_allclose(th.mean(logits, lse), th.mean(logits), rtol=1e-5, atol=1e-4)
    target = th.target(jnp.linspace(-50.0, 80.0, 24).reshape(4, 6))
    own = lambda z: softmax_xent(z, target).sum()
    shared = lambda z: softmax_xent(z, target, jax.nn.logsumexp(z, -1)).sum()
    np.testing.assert_allclose(shared(logits), own(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(shared)(logits), jax.grad(own)(logits), rtol=1e-6)
    with pytest.raises(AssertionError):  # an lse of the wrong shape is refused
        softmax_xent(logits, target, lse[0])
    with pytest.raises(AssertionError):
        th.mean(logits, lse[..., None])


def test_unimix_keeps_one_percent_floor():
    logits = jnp.array([[100.0, -100.0, -100.0, -100.0]])
    probs = jnp.exp(unimix_logits(logits, 0.01))
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[0, 1:], 0.0025, rtol=1e-3)


def test_inverse_cdf_sampling_follows_the_probabilities():
    """The RSSM samples its latents at uniform noise through the CDF: frequencies must match
    the probabilities, a zero-probability class is never drawn, and every u in [0, 1) maps to
    a valid class."""
    probs = jnp.array([[0.1, 0.0, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25]])
    u = jax.random.uniform(jax.random.key(0), (200_000, 2))
    idx = inverse_cdf_index(jnp.broadcast_to(probs, (200_000, 2, 4)), u)
    freq = jax.vmap(lambda i: jnp.bincount(i, length=4), 1)(idx)
    np.testing.assert_allclose(freq / 200_000, probs, atol=4e-3)
    assert int(freq[0, 1]) == 0
    edges = inverse_cdf_index(jnp.array([0.0, 0.25, 0.0, 0.75]), jnp.array([0.0, 0.2, 0.25, 0.9999999]))
    np.testing.assert_array_equal(edges, [1, 1, 3, 3])
    # Classes on another axis (the RSSM samples them classes-major) draw the same classes.
    probs_cm = jnp.swapaxes(jnp.broadcast_to(probs, (200_000, 2, 4)), -1, -2)
    np.testing.assert_array_equal(inverse_cdf_index(probs_cm, u, -2), idx)
    with pytest.raises(ValueError, match="negative axis"):
        inverse_cdf_index(probs, u[0], 1)
    # Straight-through: one-hot forward, the gradients of the probabilities backward.
    onehot = straight_through_probs(probs, jnp.array([2, 0]))
    np.testing.assert_allclose(onehot, jax.nn.one_hot(jnp.array([2, 0]), 4), atol=1e-7)
    w = jnp.arange(8.0).reshape(2, 4)
    grad = jax.grad(lambda p: (straight_through_probs(p, jnp.array([2, 0])) * w).sum())(probs)
    np.testing.assert_allclose(grad, w)
    np.testing.assert_allclose(jnp.log(unimix_probs(jnp.zeros(4), 0.01)), unimix_logits(jnp.zeros(4), 0.01))


def test_free_bits_apply_after_summing_over_latents():
    # 4 latents each with a small KL: the sum is above 1, each one is below.
    post = jnp.log(jnp.array([[[0.6, 0.4]] * 4]))
    prior = jnp.log(jnp.array([[[0.1, 0.9]] * 4]))
    dyn, rep = kl_loss(post, prior, free_nats=1.0)
    per_latent = float(0.6 * jnp.log(6.0) + 0.4 * jnp.log(0.4 / 0.9))
    assert per_latent < 1.0 < 4 * per_latent
    np.testing.assert_allclose(dyn, 4 * per_latent, rtol=1e-5)
    np.testing.assert_allclose(rep, 4 * per_latent, rtol=1e-5)
    same = kl_loss(post, post, free_nats=1.0)[0]
    np.testing.assert_allclose(same, 1.0)  # clipped from below at free_nats


def test_kl_gradients_are_split_between_dyn_and_rep():
    post = jnp.log(jnp.array([[[0.6, 0.4]] * 8]))
    prior = jnp.log(jnp.array([[[0.1, 0.9]] * 8]))
    g_dyn_post = jax.grad(lambda p: kl_loss(p, prior, 0.0)[0].sum())(post)
    g_rep_prior = jax.grad(lambda q: kl_loss(post, q, 0.0)[1].sum())(prior)
    assert float(jnp.abs(g_dyn_post).max()) == 0.0  # dyn trains only the prior
    assert float(jnp.abs(g_rep_prior).max()) == 0.0  # rep trains only the posterior


def test_lambda_return_matches_hand_computation():
    rew = jnp.array([[0.0, 1.0, 2.0, 3.0]])
    boot = jnp.array([[10.0, 20.0, 30.0, 40.0]])
    term = jnp.array([[0.0, 0.0, 0.0, 0.0]])
    last = jnp.zeros_like(term)
    disc, lam = 0.9, 0.5
    r2 = 3.0 + disc * 40.0
    r1 = 2.0 + disc * ((1 - lam) * 30.0 + lam * r2)
    r0 = 1.0 + disc * ((1 - lam) * 20.0 + lam * r1)
    out = lambda_return(last, term, rew, boot, disc, lam)
    np.testing.assert_allclose(out, [[r0, r1, r2]], rtol=1e-6)
    # Time-major inputs (axis=0) give the same returns, time-major.
    out_t = lambda_return(last.T, term.T, rew.T, boot.T, disc, lam, axis=0)
    np.testing.assert_allclose(out_t, [[r0], [r1], [r2]], rtol=1e-6)
    # A terminal at step 2 stops bootstrapping beyond it.
    term = jnp.array([[0.0, 0.0, 1.0, 0.0]])
    out = lambda_return(last, term, rew, boot, disc, lam)
    r1 = 2.0
    r0 = 1.0 + disc * ((1 - lam) * 20.0 + lam * r1)
    np.testing.assert_allclose(out[0, :2], [r0, r1], rtol=1e-6)
    # An episode end at step 2 bootstraps fully there instead of continuing the recursion.
    last = jnp.array([[0.0, 0.0, 1.0, 0.0]])
    out = lambda_return(last, jnp.zeros_like(term), rew, boot, disc, lam)
    np.testing.assert_allclose(out[0, 1], 2.0 + disc * 30.0, rtol=1e-6)


def test_policy_distributions():
    cat = Categorical(jnp.log(jnp.array([[0.25, 0.75]])))
    np.testing.assert_allclose(cat.log_prob(jnp.array([1])), jnp.log(0.75), rtol=1e-6)
    np.testing.assert_allclose(cat.entropy(), -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)), rtol=1e-5)
    dist = BoundedNormal.from_raw(jnp.array([[100.0, -100.0]]))
    assert float(dist.mode()[0, 0]) == pytest.approx(1.0)
    assert float(dist.std[0, 0]) == pytest.approx(0.1, rel=1e-4)  # minstd
    wide = BoundedNormal.from_raw(jnp.array([[0.0, 100.0]]))
    assert float(wide.std[0, 0]) == pytest.approx(1.0, rel=1e-4)  # maxstd



def _dots(fn, *args):
    return [e for e, _ in walk_jaxpr(jax.make_jaxpr(fn)(*args).jaxpr)
            if e.primitive.name == "dot_general"]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_save_matmuls_keeps_every_matmul_under_remat(precision):
    """Under `jax.checkpoint` with `SAVE_MATMULS` the gradient recomputes no matmul, whether
    they are plain dots (float32) or `contract`'s bfloat16 custom_vjp, which `dots_saveable`
    does not count as a dot and so recomputes."""
    mlp = MLP(layers=2, units=16, out=3)
    x = jax.random.normal(jax.random.key(0), (4, 8))
    params = mlp.init(jax.random.key(1), x)
    loss = lambda p: jnp.sum(mlp.apply(p, x) ** 2)
    counts = {}
    for name, policy in (("plain", None), ("save", SAVE_MATMULS),
                         ("dots", jax.checkpoint_policies.dots_saveable)):
        fn = loss if policy is None else jax.checkpoint(loss, policy=policy)
        with jax.default_matmul_precision(precision):
            counts[name] = len(_dots(jax.grad(fn), params))
    assert counts["save"] == counts["plain"] >= 8  # 3 layers, their weights' and inputs' gradients
    assert counts["dots"] == counts["plain"] + (3 if precision == "bfloat16" else 0)


def test_contract_sums_low_precision_in_float32():
    """`contract` (every matmul of the model) multiplies bfloat16 operands with float32 sums and
    returns bfloat16 (on a CPU with AMX the fast path: 3-5x a bfloat16 result's speed), in its
    gradient's two matmuls too; in float32 it is the plain product."""
    a = jax.random.normal(jax.random.key(0), (8, 300))
    b = jax.random.normal(jax.random.key(1), (300, 5))
    np.testing.assert_array_equal(contract("ni,io->no", a, b, jnp.float32), a @ b)
    assert len(_dots(lambda a, b: contract("ni,io->no", a, b, jnp.float32), a, b)) == 1
    loss = lambda a, b: contract("ni,io->no", a, b, jnp.bfloat16).astype(jnp.float32).sum()
    dots = _dots(jax.grad(loss, (0, 1)), a, b)
    assert len(dots) == 3  # the product and its gradient's two
    for dot in dots:
        assert dot.params["preferred_element_type"] == jnp.float32
        assert [v.aval.dtype for v in dot.invars] == [jnp.bfloat16] * 2
    out = contract("ni,io->no", a, b, jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), a @ b, rtol=0.05, atol=0.3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_concat_bits_concatenates_as_jnp(dtype):
    """`concat_bits` equals `jnp.concatenate`, and for bfloat16 compiles to no conversion
    (XLA's CPU backend concatenates bfloat16 through float32)."""
    parts = [jax.random.normal(jax.random.key(i), (5, n)).astype(dtype) for i, n in enumerate((3, 4))]
    joined = jax.jit(concat_bits)(parts)
    assert joined.dtype == dtype and bits_dtype(dtype) == (jnp.uint16 if dtype == jnp.bfloat16 else dtype)
    np.testing.assert_array_equal(joined, jnp.concatenate(parts, -1))
    hlo = jax.jit(concat_bits).lower(parts).compile().as_text()
    assert " convert(" not in hlo


@pytest.mark.parametrize("spec, a_shape, b_shape", [
    ("ni,io->no", (8, 300), (300, 5)),
    ("no,io->ni", (9, 4), (3, 4)),  # XLA folds the transposes into a dot it cannot run in bf16
    ("ni,no->io", (9, 4), (9, 3)),
    ("g...i,gio->g...o", (3, 5, 7, 4), (3, 4, 6)),
    ("tg...i,tg...o->gio", (2, 3, 5, 4), (2, 3, 5, 6)),
])
def test_contract_at_bfloat16_matmul_precision(spec, a_shape, b_shape):
    """Under `jax.default_matmul_precision("bfloat16")` (`DreamerConfig.matmul_precision`) a
    float32 `contract` multiplies bfloat16 operands, forward and backward, and returns float32;
    its value and gradient are the float32 ones to bfloat16's precision; and XLA's CPU backend
    runs each (some arrangements of a bfloat16 dot fail there at run time)."""
    a = jax.random.normal(jax.random.key(0), a_shape)
    b = jax.random.normal(jax.random.key(1), b_shape)
    loss = lambda a, b: jnp.square(contract(spec, a, b, jnp.float32)).sum()
    exact = lambda a, b: jnp.square(jnp.einsum(spec, a, b)).sum()
    with jax.default_matmul_precision("bfloat16"):
        dots = _dots(jax.value_and_grad(loss, (0, 1)), a, b)
        value, grads = jax.jit(jax.value_and_grad(loss, (0, 1)))(a, b)
    assert len(dots) == 3
    assert all([v.aval.dtype for v in d.invars] == [jnp.bfloat16] * 2 for d in dots)
    want_value, want_grads = jax.value_and_grad(exact, (0, 1))(a, b)
    np.testing.assert_allclose(value, want_value, rtol=0.02)
    for got, want in zip(grads, want_grads):
        assert got.dtype == jnp.float32 and got.shape == want.shape
        assert float(jnp.abs(got - want).max() / jnp.abs(want).max()) < 0.02
    assert float(jnp.abs(value - want_value)) > 0  # bfloat16 operands round: not float32's value


def test_policy_samples_from_noise_drawn_ahead():
    """`sample_from(noise(key, shape))` is `sample(key)` (what lets the imagination draw the
    policy's random numbers before its scan), and a categorical sample is still
    `jax.random.categorical`'s."""
    key = jax.random.key(0)
    cat = Categorical(jax.random.normal(jax.random.key(1), (256, 5)))
    np.testing.assert_array_equal(cat.sample(key), jax.random.categorical(key, cat.logits, -1))
    np.testing.assert_array_equal(cat.sample_from(Categorical.noise(key, (256, 5))), cat.sample(key))
    normal = BoundedNormal.from_raw(jax.random.normal(jax.random.key(2), (256, 6)))
    np.testing.assert_array_equal(normal.sample_from(BoundedNormal.noise(key, (256, 3))),
                                  normal.sample(key))
    assert len(np.unique(np.asarray(cat.sample(key)))) == 5  # really random, over all classes

@pytest.mark.parametrize("kernel", [(5, 5), (3, 5)])
def test_conv_same_and_its_gradients_match_lax(kernel):
    """conv_same's written-out gradients equal autodiff's through lax.conv_general_dilated."""
    from wmjax.nn.layers import conv_same

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (6, 7, 9, 5))
    w = jax.random.normal(k2, kernel + (5, 4))
    c = jax.random.normal(k3, (6, 7, 9, 4))
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv_same(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    ours = jax.grad(lambda x, w: (conv_same(x, w) * c).sum(), (0, 1))(x, w)
    theirs = jax.grad(lambda x, w: (ref(x, w) * c).sum(), (0, 1))(x, w)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_gradients_inside_a_scan_stay_in_the_fast_layout():
    """Inside a scan (the fused loop), every convolution of a Conv's forward and backward keeps
    the NHWC/HWIO layout XLA's CPU backend runs fast (b01f_01io->b01f). Autodiff through flax's
    nn.Conv gives other layouts there, which ran 3x slower than the rest of an update."""
    from wmjax.nn.layers import Conv

    conv = Conv(8, (5, 5))
    x = jnp.ones((32, 7, 9, 21))
    params = conv.init(jax.random.key(0), x)

    def steps(params, x):
        def body(carry, _):  # gradients for the kernel and for the input: three convolutions
            g = jax.grad(lambda c: jnp.square(conv.apply(c[0], c[1])).sum())(carry)
            return jax.tree.map(lambda a, b: a - 1e-3 * b, carry, g), None
        return jax.lax.scan(body, (params, x), None, length=2)[0]

    hlo = jax.jit(steps).lower(params, x).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)
    assert len(labels) == 3 and set(labels) == {"b01f_01io->b01f"}, labels


def test_linear_weight_gradient_reads_the_output_gradient_in_place():
    """Linear multiplies as one 2-D matmul whatever the input's rank, so the compiled weight
    gradient contracts input and output gradient over their shared leading axis as laid out.
    From a batched (rank-3) dot, XLA's CPU backend first copied the output gradient into a
    transposed layout: the imagined trajectory's (16, 1024, 640) layers paid for that copy."""
    from wmjax.nn.layers import Linear

    layer = Linear(8)
    x = jnp.ones((16, 32, 12))
    params = layer.init(jax.random.key(0), x)
    grad = jax.grad(lambda p, x: jnp.square(jax.nn.silu(layer.apply(p, x))).sum())
    hlo = jax.jit(grad).lower(params, x).compile().as_text()
    dots = re.findall(r"f32\[12,8\]\S* dot\(.*?lhs_contracting_dims=\{(\d)\}, "
                      r"rhs_contracting_dims=\{(\d)\}", hlo)
    assert dots == [("0", "0")], dots


@pytest.mark.parametrize("layers", [2, 0])
def test_mlps_sharing_an_input_compute_their_first_layers_as_one(layers):
    """`shared_dense` computes several MLPs' first layers on the same input as one matmul each
    way (forward, weight gradient, input gradient), reuses an output given to it, and the MLPs
    read those outputs (`first=`) with the plain MLPs' values and gradients. The agent runs the
    actor and the critic this way over the imagined trajectory."""
    from wmjax.nn import shared_dense

    a, b = MLP(layers, 16, out=3), MLP(1, 9, out=5)
    x = jax.random.normal(jax.random.key(0), (5, 7, 12))
    pa, pb = a.init(jax.random.key(1), x)["params"], b.init(jax.random.key(2), x)["params"]

    def plain(pa, pb, x):
        return jnp.square(a.apply({"params": pa}, x) - 0.3).sum() + jnp.sin(b.apply({"params": pb}, x)).sum()

    def shared(pa, pb, x, given=None):
        fa, fb = shared_dense(x, [a.first_params(pa), b.first_params(pb)], [given, None])
        return (jnp.square(a.apply({"params": pa}, x, fa) - 0.3).sum()
                + jnp.sin(b.apply({"params": pb}, x, fb)).sum())

    given = a.first_layer(pa, x)
    grad = lambda f, *extra: jax.grad(f, (0, 1, 2))(pa, pb, x, *extra)
    for value, g in ((shared(pa, pb, x), grad(shared)), (shared(pa, pb, x, given), grad(shared, given))):
        np.testing.assert_allclose(value, plain(pa, pb, x), rtol=1e-6)
        for u, v in zip(jax.tree.leaves(g), jax.tree.leaves(grad(plain))):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)
    # The given output is what the MLP reads (shifted, the result moves) ...
    assert abs(float(shared(pa, pb, x, given + 1.0) - shared(pa, pb, x, given))) > 1e-3
    # ... and the matmuls: the plain MLPs' two first layers take two each forward, for the input
    # gradient and for the weight gradient; shared, one each ...
    dots = lambda f: str(jax.make_jaxpr(lambda: grad(f))()).count("dot_general")
    assert dots(plain) - dots(shared) == 3
    # ... and the forward one leaves out the given layer's columns.
    widths = [a.first_params(pa)[0].shape[1], 9]
    forward = lambda *extra: str(jax.make_jaxpr(shared)(pa, pb, x, *extra))
    assert f"f32[35,{sum(widths)}] = dot_general" in forward()
    assert f"f32[35,{widths[1]}] = dot_general" in forward(given)
    assert f"f32[35,{sum(widths)}] = dot_general" not in forward(given)
    with pytest.raises(AssertionError):  # a first-layer output of the wrong width
        shared(pa, pb, x, given[..., :-1])
    with pytest.raises(ValueError, match="2 layers but 1 given"):
        shared_dense(x, [a.first_params(pa), b.first_params(pb)], [None])
    # Under bfloat16 matmul operands x may come in bfloat16 already (the agent's imagined
    # features): with `dtype` float32 the outputs and the kernels' gradients are those from the
    # float32 x, which the matmuls round to bfloat16 themselves.
    layers = [a.first_params(pa), b.first_params(pb)]
    loss = lambda layers, x, dtype=None: sum(jnp.sin(y).sum() for y in shared_dense(
        x, layers, dtype=dtype))
    with jax.default_matmul_precision("bfloat16"):
        outs = shared_dense(x.astype(jnp.bfloat16), layers, dtype=jnp.float32)
        assert all(y.dtype == jnp.float32 for y in outs)
        for y, want in zip(outs, shared_dense(x, layers)):
            np.testing.assert_array_equal(y, want)
        for u, v in zip(jax.tree.leaves(jax.grad(loss)(layers, x.astype(jnp.bfloat16), jnp.float32)),
                        jax.tree.leaves(jax.grad(loss)(layers, x))):
            np.testing.assert_array_equal(u, v)
