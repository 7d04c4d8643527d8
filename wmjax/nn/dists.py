"""Distributions and transforms used by DreamerV3.

- symlog / symexp: squash targets of any scale into a range networks can fit.
- TwoHot: a 255-bin categorical over symexp-spaced bins, trained with two-hot targets that are
  interpolated linearly in raw space, read out as a probability-weighted bin sum that is exactly
  zero at initialisation.
- Categorical latents with unimix and straight-through sampling, and their KL.
- Policy distributions: categorical for discrete actions, DreamerV3's bounded normal for continuous.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

sg = jax.lax.stop_gradient


def symlog(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def twohot_bins(num_bins: int = 255, limit: float = 20.0) -> jax.Array:
    """Bins at symexp(linspace(-limit, limit, n)): symmetric, 0 in the middle, ~±4.85e8 at the ends."""
    if num_bins % 2 == 0:
        raise ValueError(f"num_bins must be odd so that 0 is a bin, got {num_bins}")
    half = symexp(jnp.linspace(0.0, limit, (num_bins + 1) // 2, dtype=jnp.float32))[1:]
    # Mirror exactly: a float linspace over [-limit, limit] is not symmetric, and at these
    # magnitudes the asymmetry would make the zero-init readout far from zero.
    return jnp.concatenate([-half[::-1], jnp.zeros((1,), jnp.float32), half])


class TwoHot(NamedTuple):
    """Reading and training a two-hot categorical head. `logits` have `len(bins)` on the last axis;
    the bins mirror around a middle zero, as `twohot_bins` builds them."""

    bins: jax.Array

    def mean(self, logits: jax.Array, lse: jax.Array | None = None) -> jax.Array:
        """Probability-weighted bin sum. The bins mirror around a middle zero (`twohot_bins`),
        so it is summed as sum_j (p[m+1+j] - p[m-1-j]) * bins[m+1+j]: each term is exactly 0
        where the mirrored probabilities are equal, as at initialisation, whatever order and
        fused multiply-adds the compiler picks. As a sum of separate products, a compiled scan
        fused one product into a multiply-add, kept its rounding error (~0.1 against bins up to
        4.85e8) and read a zero-initialised head as 0.11.

        `lse`: logsumexp(logits) over the bins, when the caller has it (`softmax_xent` can
        share it); the softmax is then exp(logits - lse), without its own max and sum."""
        m = (self.bins.shape[0] - 1) // 2
        if not isinstance(self.bins, jax.core.Tracer):  # checked when tracing, not per call
            bins = np.asarray(self.bins)
            if bins.size % 2 == 0 or bins[m] != 0 or not np.array_equal(bins[:m], -bins[:m:-1]):
                raise ValueError("TwoHot.mean needs an odd number of bins mirrored around a middle "
                                 f"0, as twohot_bins builds them; got {bins.size} bins from "
                                 f"{bins[0]:.4g} to {bins[-1]:.4g} with {bins[m]:.4g} in the middle")
        if lse is None:
            probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
        else:
            chex.assert_shape(lse, logits.shape[:-1])
            probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
        return ((probs[..., m + 1:] - probs[..., :m][..., ::-1]) * self.bins[m + 1:]).sum(-1)

    def target(self, x: jax.Array) -> jax.Array:
        """Two-hot encoding of raw values x, linear interpolation between the two nearest bins."""
        x = x.astype(jnp.float32)
        n = self.bins.shape[0]
        # A binary search (8 steps for 255 bins), not a comparison with every bin: the critic's
        # targets cover the whole imagined trajectory, and that comparison ran 4x slower.
        below = jnp.searchsorted(self.bins, x, side="right", method="scan_unrolled")
        below = jnp.clip(below - 1, 0, n - 1)
        above = jnp.clip(below + 1, 0, n - 1)
        lo, hi = self.bins[below], self.bins[above]
        dist_lo, dist_hi = jnp.abs(lo - x), jnp.abs(hi - x)
        same = below == above
        total = jnp.where(same, 1.0, dist_lo + dist_hi)
        w_lo = jnp.where(same, 1.0, dist_hi / total)
        w_hi = jnp.where(same, 0.0, dist_lo / total)
        return jax.nn.one_hot(below, n) * w_lo[..., None] + jax.nn.one_hot(above, n) * w_hi[..., None]

    def loss(self, logits: jax.Array, x: jax.Array) -> jax.Array:
        """Cross-entropy of the logits against the two-hot encoding of x."""
        return softmax_xent(logits, self.target(x))


def softmax_xent(logits: jax.Array, target: jax.Array, lse: jax.Array | None = None) -> jax.Array:
    """-(target * log_softmax(logits)).sum(-1) in float32 for a fixed `target` (no gradient
    reaches it): any non-negative weights over the last axis, e.g. a sum of weighted two-hot
    encodings, which trains the logits as the sum of the separate cross-entropies would.

    Its gradient is the closed form softmax(logits) * target.sum(-1) - target. Autodiff of
    log_softmax instead sums the incoming gradient over all 255 bins a second time, and that
    reduction was the update's slowest single elementwise op on CPU.

    `lse`: logsumexp(logits) over the last axis, when the caller computed it for another use
    (e.g. `TwoHot.mean`), so the max and sum over the bins are not taken twice."""
    logits = logits.astype(jnp.float32)
    if lse is None:
        lse = jax.nn.logsumexp(sg(logits), -1)
    chex.assert_shape(lse, logits.shape[:-1])
    return _softmax_xent(logits, sg(lse).astype(jnp.float32), sg(target).astype(jnp.float32))


@jax.custom_vjp
def _softmax_xent(logits: jax.Array, lse: jax.Array, target: jax.Array) -> jax.Array:
    return _softmax_xent_fwd(logits, lse, target)[0]


def _softmax_xent_fwd(logits, lse, target):
    mass = target.sum(-1)
    return mass * lse - (target * logits).sum(-1), (logits, lse, target, mass)


def _softmax_xent_bwd(res, g):
    logits, lse, target, mass = res
    probs = jnp.exp(logits - lse[..., None])
    return (g[..., None] * (probs * mass[..., None] - target), jnp.zeros_like(lse),
            jnp.zeros_like(target))


_softmax_xent.defvjp(_softmax_xent_fwd, _softmax_xent_bwd)


# ---------------------------------------------------------------- categorical latents


def unimix_probs(logits: jax.Array, unimix: float, axis: int = -1) -> jax.Array:
    """softmax(logits) over the classes on `axis` with `unimix` of a uniform distribution mixed in."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis)
    if unimix <= 0.0:
        return probs
    return (1.0 - unimix) * probs + unimix / logits.shape[axis]


def unimix_logits(logits: jax.Array, unimix: float, axis: int = -1) -> jax.Array:
    """The log-probs of `unimix_probs` (normalised logits of the mixed distribution)."""
    if unimix <= 0.0:
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis)
    return jnp.log(unimix_probs(logits, unimix, axis))


def straight_through(logits: jax.Array, idx: jax.Array) -> jax.Array:
    """one_hot(idx) in the forward pass, with the gradients of softmax(logits)."""
    return straight_through_probs(jax.nn.softmax(logits, -1), idx)


def straight_through_probs(probs: jax.Array, idx: jax.Array) -> jax.Array:
    """one_hot(idx) in the forward pass, with the gradients of `probs`."""
    return jax.nn.one_hot(idx, probs.shape[-1], dtype=probs.dtype) + probs - sg(probs)


def sample_onehot(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One-hot sample with straight-through gradients to the probabilities."""
    return straight_through(logits, jax.random.categorical(key, logits, -1))


def inverse_cdf_index(probs: jax.Array, u: jax.Array, axis: int = -1) -> jax.Array:
    """A sample from each categorical `probs` (classes on `axis`), by inverting its CDF at
    uniform noise `u` (probs' shape without the class axis; it may have more leading axes)
    drawn beforehand. One number per categorical instead of a Gumbel per class: a scan's noise
    then costs a fraction of the random bits and no logarithms. `axis` counts from the end."""
    if axis >= 0:
        raise ValueError(f"inverse_cdf_index: axis={axis}; allowed: a negative axis (from the end)")
    n = probs.shape[axis]
    cdf = jnp.cumsum(sg(probs), axis)
    total = jax.lax.slice_in_dim(cdf, n - 1, n, axis=probs.ndim + axis)
    idx = jnp.sum(cdf <= jnp.expand_dims(u, axis) * total, axis)  # cdf[i-1] <= u < cdf[i]
    return jnp.minimum(idx, n - 1)


def mode_onehot(logits: jax.Array) -> jax.Array:
    return straight_through(logits, jnp.argmax(logits, -1))


def categorical_kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """KL(p || q) per categorical, over the last axis. Inputs are normalised log-probs or logits."""
    logp = jax.nn.log_softmax(logits_p, -1)
    logq = jax.nn.log_softmax(logits_q, -1)
    return (jnp.exp(logp) * (logp - logq)).sum(-1)


# ---------------------------------------------------------------- policy distributions


class Categorical(NamedTuple):
    logits: jax.Array

    @staticmethod
    def noise(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
        """The random numbers one sample takes, for logits of `shape`: Gumbel noise, as
        `jax.random.categorical` draws it. Drawn ahead (e.g. before a scan), `sample_from`
        then gives the same sample as `sample(key)`."""
        return jax.random.gumbel(key, shape, dtype)

    def sample(self, key: jax.Array) -> jax.Array:
        return self.sample_from(self.noise(key, self.logits.shape, self.logits.dtype))

    def sample_from(self, noise: jax.Array) -> jax.Array:
        """The sample at `noise` (from `noise`): the Gumbel-max trick."""
        return jnp.argmax(self.logits + noise.astype(self.logits.dtype), -1)

    def mode(self) -> jax.Array:
        return jnp.argmax(self.logits, -1)

    def log_prob(self, action: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(self.logits, -1)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), -1)[..., 0]

    def entropy(self) -> jax.Array:
        logp = jax.nn.log_softmax(self.logits, -1)
        return -(jnp.exp(logp) * logp).sum(-1)


class BoundedNormal(NamedTuple):
    """DreamerV3's continuous policy: mean = tanh(x), std in [minstd, maxstd], samples unsquashed.

    The environment wrapper clips actions to [-1, 1]; log-probs are of the unclipped sample.
    """

    mean_: jax.Array
    std: jax.Array

    @classmethod
    def from_raw(cls, raw: jax.Array, minstd: float = 0.1, maxstd: float = 1.0) -> "BoundedNormal":
        x, s = jnp.split(raw.astype(jnp.float32), 2, -1)
        return cls(jnp.tanh(x), (maxstd - minstd) * jax.nn.sigmoid(s + 2.0) + minstd)

    @staticmethod
    def noise(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
        """The random numbers one sample takes, for actions of `shape`: standard normal."""
        return jax.random.normal(key, shape, dtype)

    def sample(self, key: jax.Array) -> jax.Array:
        return self.sample_from(self.noise(key, self.mean_.shape))

    def sample_from(self, noise: jax.Array) -> jax.Array:
        """The sample at standard normal `noise` (from `noise`)."""
        return self.mean_ + self.std * noise

    def mode(self) -> jax.Array:
        return self.mean_

    def log_prob(self, action: jax.Array) -> jax.Array:
        z = (action - self.mean_) / self.std
        return (-0.5 * z**2 - jnp.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> jax.Array:
        return (0.5 * math.log(2 * math.pi * math.e) + jnp.log(self.std)).sum(-1)
