"""DreamerV3's recurrent state-space model (RSSM) as a Flax linen module.

State: a deterministic vector `deter` (block GRU) and a stochastic part `stoch` of `stoch`
categorical latents with `classes` classes each (one-hot samples, straight-through gradients).

Methods, all pure given params and explicit PRNG keys:
- `initial(batch)`            zero state (DreamerV3 has no learned initial state)
- `img_step(state, action, key)`          prior step: h' = GRU(h, z, a); z' ~ p(z' | h')
- `obs_step(state, action, embed, is_first, key)`  posterior step; resets state and action on is_first
- `observe(embed, action, is_first, key, state)`  scan of obs_step over time (batch-major)
- `imagine(state, policy, horizon, key)`  scan of img_step under `policy(feat, key) -> action`
- `__call__(embed, action, is_first, key)` observe plus prior logits, the training pass (and init)
- `prior_logits(deter)`, `feat(state)`, and `kl_loss(post_logits, prior_logits)` for training.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from wmjax.nn.dists import (categorical_kl, inverse_cdf_index, straight_through_probs, unimix_logits,
                            unimix_probs)
from wmjax.nn.layers import (SAVE_MATMULS, NormAct, bits_dtype, concat_bits, contract, dense,
                             dreamer_init)

sg = jax.lax.stop_gradient


class RSSMState(NamedTuple):
    deter: jax.Array  # (..., deter)
    stoch: jax.Array  # (..., stoch, classes) one-hot sample
    logits: jax.Array  # (..., stoch, classes) unimixed log-probs it was sampled from

    @classmethod
    def zeros(cls, batch: int, deter: int, stoch: int, classes: int) -> "RSSMState":
        """The initial state: all zeros (DreamerV3 has no learned initial state)."""
        latents = jnp.zeros((batch, stoch, classes), jnp.float32)
        return cls(jnp.zeros((batch, deter), jnp.float32), latents, latents)


def _reset(state: Any, is_first: jax.Array) -> Any:
    """Zero every leaf of `state` where is_first is set (is_first has the batch shape)."""

    def zero(x):
        mask = is_first.reshape(is_first.shape + (1,) * (x.ndim - is_first.ndim))
        return jnp.where(mask, jnp.zeros_like(x), x)

    return jax.tree.map(zero, state)


def _sample(probs_cm: jax.Array, noise: jax.Array | None) -> jax.Array:
    """One-hot latents (..., stoch, classes) with straight-through gradients from classes-major
    probs (..., classes, stoch): sampled at uniform `noise`, or the mode where noise is None."""
    idx = jnp.argmax(probs_cm, -2) if noise is None else inverse_cdf_index(probs_cm, noise, -2)
    return straight_through_probs(jnp.swapaxes(probs_cm, -1, -2), idx)


class LatentLogits(nn.Module):
    """The output layer of the latents' logits, returned classes-major: (..., classes, stoch).

    Its parameters are a `Linear`'s to (stoch * classes) features in (stoch, classes) order, so
    checkpoints read the same; the kernel's columns are permuted before the matmul. With few
    classes (size1m has 4) a softmax over a minor axis of 4 runs several times slower on CPU
    than over the second-minor axis, where it vectorises across the latents.
    """

    stoch: int
    classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, dense_out: jax.Array | None = None) -> jax.Array:
        """`dense_out`: the flat (..., classes * stoch) output from `x` with the reordered
        weights (`classes_major`), computed by the caller; the layer is then not applied."""
        n = self.stoch * self.classes
        kernel = self.param("kernel", dreamer_init(1.0), (x.shape[-1], n), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (n,), jnp.float32)
        if dense_out is None:
            dense_out = dense(x, *self.classes_major(kernel, bias), self.dtype)
        return dense_out.reshape(*x.shape[:-1], self.classes, self.stoch)

    def classes_major(self, kernel: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The parameters' columns permuted from (stoch, classes) to (classes, stoch) order."""
        order = lambda p: jnp.swapaxes(p.reshape(*p.shape[:-1], self.stoch, self.classes),
                                       -1, -2).reshape(p.shape)
        return order(kernel), order(bias)


class RSSM(nn.Module):
    deter: int = 512
    hidden: int = 64
    stoch: int = 32
    classes: int = 4
    blocks: int = 8
    unimix: float = 0.01
    img_layers: int = 2
    obs_layers: int = 1
    dtype: Any = jnp.float32
    unroll: int | bool = 1  # the scans' unroll; True unrolls fully (e.g. to count FLOPs)

    def setup(self) -> None:
        if self.deter % self.blocks:
            raise ValueError(f"RSSM: deter={self.deter} must be a multiple of blocks={self.blocks}")
        self.in_deter = NormAct(self.hidden, dtype=self.dtype)
        self.in_stoch = NormAct(self.hidden, dtype=self.dtype)
        self.in_action = NormAct(self.hidden, dtype=self.dtype)
        g, size = self.blocks, self.deter // self.blocks
        block_init = dreamer_init(1.0, batch_axis=(0,))
        zeros, ones = nn.initializers.zeros_init(), nn.initializers.ones_init()
        self.dyn_hidden_kernel = self.param(
            "dyn_hidden_kernel", block_init, (g, size + 3 * self.hidden, size)
        )
        self.dyn_hidden_bias = self.param("dyn_hidden_bias", zeros, (g, size))
        self.dyn_norm_scale = self.param("dyn_norm_scale", ones, (g, size))
        self.dyn_gates_kernel = self.param("dyn_gates_kernel", block_init, (g, size, 3 * size))
        self.dyn_gates_bias = self.param("dyn_gates_bias", zeros, (g, 3 * size))
        self.prior_hidden = [NormAct(self.hidden, dtype=self.dtype) for _ in range(self.img_layers)]
        self.prior_out = LatentLogits(self.stoch, self.classes, dtype=self.dtype)
        self.post_hidden = [NormAct(self.hidden, dtype=self.dtype) for _ in range(self.obs_layers)]
        self.post_out = LatentLogits(self.stoch, self.classes, dtype=self.dtype)

    # ------------------------------------------------------------------ pieces

    def initial(self, batch: int) -> RSSMState:
        return RSSMState.zeros(batch, self.deter, self.stoch, self.classes)

    def feat(self, state: RSSMState, dtype: Any = None) -> jax.Array:
        """Features every head reads: concat(deter, flatten(stoch)), in `dtype` (default the
        state's float32). Converted before the concatenation, the deter's conversion is the
        one the GRU's input layer makes too (the compiler makes it once)."""
        stoch = state.stoch.reshape(*state.stoch.shape[:-2], -1)
        if dtype is None:
            return jnp.concatenate([state.deter, stoch], -1)
        return concat_bits([state.deter.astype(dtype), stoch.astype(dtype)], -1)

    def _groups(self, deter: jax.Array) -> jax.Array:
        """(..., deter) -> (blocks, ..., deter // blocks): the block GRU's group-major layout."""
        g = self.blocks
        return jnp.moveaxis(deter.reshape(*deter.shape[:-1], g, self.deter // g), -2, 0)

    def _ungroup(self, deter_g: jax.Array) -> jax.Array:
        return jnp.moveaxis(deter_g, 0, -2).reshape(*deter_g.shape[1:-1], self.deter)

    def _gru_weights(self) -> tuple[jax.Array, ...]:
        """The block GRU's weights as `_core` multiplies with them: the first layer's per-group
        kernels reading each group's deter slice (g, size, size), its part reading the shared
        input projections as one dense kernel (3 * hidden, deter) and its bias (deter,), then
        the gates' per-group kernels (g, size, 3 * size) and bias (g, 3 * size). Regrouping the
        dense part copies the kernel, so the scans compute these once, outside the loop: inside
        it, XLA repeated the copy on every step of the imagination and of the observe scan's
        backward pass."""
        w1 = self.dyn_hidden_kernel.astype(self.dtype)
        size = self.deter // self.blocks
        w_shared = jnp.moveaxis(w1[:, size:], 0, 1).reshape(3 * self.hidden, self.deter)
        return (w1[:, :size], w_shared, self.dyn_hidden_bias.reshape(-1).astype(self.dtype),
                self.dyn_gates_kernel.astype(self.dtype), self.dyn_gates_bias)

    def _dense_weights(self) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """The (kernel, bias) of each dense layer a posterior step applies besides the GRU's, in
        the order it applies them: the GRU's deter and stoch input projections, the posterior's
        hidden layers and its output layer (classes-major, as `LatentLogits` multiplies)."""
        linear = lambda layer: (layer.variables["params"]["Linear_0"]["kernel"],
                                layer.variables["params"]["Linear_0"]["bias"])
        out = self.post_out.variables["params"]
        return (linear(self.in_deter), linear(self.in_stoch),
                *(linear(layer) for layer in self.post_hidden),
                self.post_out.classes_major(out["kernel"], out["bias"]))

    def _layer(self, layer: nn.Module, x: jax.Array, deferred: tuple | None):
        """`layer(x)`; with `deferred` = (kernel, bias, offset) its dense part is computed here
        from those weights held constant plus the offset (see `_core`). Returns the output and
        the dense part's input (None without `deferred`)."""
        if deferred is None:
            return layer(x), None
        kernel, bias, offset = deferred
        x = x.astype(self.dtype)
        return layer(x, dense(x, sg(kernel), sg(bias), self.dtype) + offset), x

    def _core(
        self, deter: jax.Array, deter_g: jax.Array, stoch: jax.Array, action: jax.Array,
        action_in: jax.Array | None = None, weights: tuple | None = None,
        offsets: tuple | None = None, dense_deferred: tuple | None = None,
    ) -> tuple[jax.Array, ...]:
        """Block GRU: each of `blocks` groups sees its deter slice and all three input projections.

        Computed group-major, (groups, batch, width): the block matmuls then are plain batched
        dots whose outputs need no transpose before the gate nonlinearities. The new state is
        returned in both layouts (batch-major for the heads, group-major for the next step);
        scans carry both, because on CPU XLA otherwise fuses the gates into a transposing write
        that costs several times the gates themselves. `weights`: `_gru_weights()`, when the
        caller computed them already.

        `offsets` (zeros shaped like the three matmuls' outputs: the deter part, the shared
        part, the gates) defer the weights' gradient to the caller: the weights are then held
        constant, the offsets are added to the matmuls' outputs (so their gradient is the
        outputs' gradient) and the matmuls' inputs are returned third (see `observe`).
        `dense_deferred`, with `offsets`: the same for the deter and stoch input projections,
        as (kernel, bias, offset) each (see `_layer`); their inputs follow the GRU's.
        """
        if action_in is None:
            action_in = self._action_input(action)
        stoch = stoch.reshape(*stoch.shape[:-2], -1)
        d_deter, d_stoch = dense_deferred or (None, None)
        (in_deter, x_deter), (in_stoch, x_stoch) = (self._layer(self.in_deter, deter, d_deter),
                                                    self._layer(self.in_stoch, stoch, d_stoch))
        proj = jnp.concatenate([in_deter, in_stoch, action_in], -1).astype(self.dtype)
        batch = deter.shape[:-1]
        per_group = lambda p: p.reshape((self.blocks,) + (1,) * len(batch) + p.shape[-1:])
        weights = self._gru_weights() if weights is None else weights
        if offsets is not None:
            weights = sg(weights)
        w_deter, w_shared, b_shared, w_gates, b_gates = weights
        o_deter, o_shared, o_gates = (0, 0, 0) if offsets is None else offsets
        # First block layer; its kernel (g, size + 3*hidden, size) is split into the part that
        # reads the group's own deter slice (a batched dot per group) and the part that reads
        # the shared projections. That part is one dense (3*hidden, g*size) matmul whose result
        # is then regrouped: as a per-group einsum, XLA's CPU backend laid its output out
        # transposed and the update measured 5-10% slower.
        deter_in = deter_g.astype(self.dtype)
        shared = contract("...i,io->...o", proj, w_shared, self.dtype) + o_shared + b_shared
        x = contract("g...i,gio->g...o", deter_in, w_deter, self.dtype) + o_deter
        x = (x + self._groups(shared)).astype(jnp.float32)
        # RMSNorm over the whole deter width (all groups), then SiLU.
        ms = jnp.mean(jnp.square(x), axis=(0, x.ndim - 1), keepdims=True)
        x = nn.silu(x * jax.lax.rsqrt(ms + 1e-4) * per_group(self.dyn_norm_scale))
        gates_in = x.astype(self.dtype)
        x = contract("g...i,gio->g...o", gates_in, w_gates, self.dtype) + o_gates
        x = x.astype(jnp.float32) + per_group(b_gates)
        reset, cand, update = jnp.split(x, 3, -1)
        reset = jax.nn.sigmoid(reset)
        cand = jnp.tanh(reset * cand)
        update = jax.nn.sigmoid(update - 1.0)
        new_g = update * cand + (1.0 - update) * deter_g
        if offsets is None:
            return self._ungroup(new_g), new_g
        return self._ungroup(new_g), new_g, (deter_in, proj, gates_in) + (
            () if dense_deferred is None else (x_deter, x_stoch))

    def _action_input(self, action: jax.Array) -> jax.Array:
        """The GRU's action input: the action bounded by a / max(1, |a|), projected."""
        return self.in_action(action / sg(jnp.maximum(1.0, jnp.abs(action))))

    def _dist(self, x: jax.Array, hidden: list, out: nn.Module,
              deferred: tuple | None = None) -> tuple[jax.Array, ...]:
        """(log-probs (..., stoch, classes), probs (..., classes, stoch)) of the latents, with
        DreamerV3's 1% uniform mix. The softmax runs over classes on the second-minor axis
        (see `LatentLogits`); the log-probs are swapped to the state's layout, the probs stay
        classes-major for `_sample`. `deferred`: (kernel, bias, offset) for each layer (see
        `_layer`); the layers' inputs are then returned third."""
        inputs = []
        for i, layer in enumerate([*hidden, out]):
            x, x_in = self._layer(layer, x, None if deferred is None else deferred[i])
            inputs.append(x_in)
        logits = x.astype(jnp.float32)  # (..., classes, stoch)
        logits_sc = jnp.swapaxes(unimix_logits(logits, self.unimix, -2), -1, -2)
        probs = unimix_probs(logits, self.unimix, -2)
        return (logits_sc, probs) if deferred is None else (logits_sc, probs, tuple(inputs))

    def prior_logits(self, deter: jax.Array) -> jax.Array:
        return self._dist(deter, self.prior_hidden, self.prior_out)[0]

    def post_logits(self, deter: jax.Array, embed: jax.Array) -> jax.Array:
        return self._dist(jnp.concatenate([deter, embed], -1), self.post_hidden, self.post_out)[0]

    # ------------------------------------------------------------------ steps

    def img_step(self, state: RSSMState, action: jax.Array, key: jax.Array | None) -> RSSMState:
        """One prior step; `key=None` takes the mode instead of sampling."""
        return self._img_step(state, self._groups(state.deter), action, self._noise(key, state))[0]

    def obs_step(
        self,
        state: RSSMState,
        action: jax.Array,
        embed: jax.Array,
        is_first: jax.Array,
        key: jax.Array | None,
    ) -> RSSMState:
        """One posterior step. `action` is the previous action; both it and the state are zeroed
        where `is_first` is set, so episodes never leak into each other."""
        noise = self._noise(key, state)
        return self._obs_step(state, self._groups(state.deter), action, embed, is_first, noise)[0]

    # The step functions the scans use carry the deter also in group-major layout (see `_core`),
    # and take uniform noise drawn before the scan (None: take the mode): drawn inside, XLA's CPU
    # backend runs a small threefry while-loop on every step.

    def _noise(self, key: jax.Array | None, state: RSSMState) -> jax.Array | None:
        """Uniform noise for sampling the stoch of `state`'s batch shape, one number per latent
        (see `inverse_cdf_index`); a batch of keys gives one draw per key, in one call (the
        same numbers as one call per key)."""
        if key is None:
            return None
        draw = lambda k: jax.random.uniform(k, state.stoch.shape[:-1])
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        return jax.vmap(draw)(key) if key.ndim > (0 if typed else 1) else draw(key)

    def _img_step(self, state, deter_g, action, noise, weights=None):
        """`weights`: `_gru_weights()`, computed once by a scan (see there)."""
        deter, deter_g = self._core(state.deter, deter_g, state.stoch, action, weights=weights)
        logits, probs = self._dist(deter, self.prior_hidden, self.prior_out)
        stoch = _sample(probs, noise)
        return RSSMState(deter, stoch, logits), deter_g

    def _obs_step(self, state, deter_g, action, embed, is_first, noise, action_in=None,
                  weights=None, deferred=None):
        """`action_in`: the action input already projected from the reset action (`observe`);
        `action` may then be None. `weights`: `_gru_weights()`, computed once by the scan.
        `deferred`: (GRU offsets, dense layers' (kernel, bias, offset) in `_dense_weights`'
        order) to defer their weights' gradient (see `_core`, `_layer`); the inputs of the
        GRU's matmuls and of those layers are then returned third, in that order."""
        state, action = _reset((state, action), is_first)
        deter_g = jnp.where(is_first[..., None], 0.0, deter_g)  # (g, batch, size) vs (batch,)
        offsets, dense = (None, None) if deferred is None else deferred
        deter, deter_g, *inputs = self._core(state.deter, deter_g, state.stoch, action, action_in,
                                             weights, offsets, dense and dense[:2])
        logits, probs, *dist_inputs = self._dist(jnp.concatenate([deter, embed], -1),
                                                 self.post_hidden, self.post_out,
                                                 dense and dense[2:])
        stoch = _sample(probs, noise)
        if deferred is None:
            return RSSMState(deter, stoch, logits), deter_g
        return RSSMState(deter, stoch, logits), deter_g, inputs[0] + dist_inputs[0]

    # ------------------------------------------------------------------ sequences

    def __call__(self, embed, action, is_first, key, state=None):
        """Training pass: posterior states over a sequence and the prior logits at each step.
        Also the method `init` uses, since it touches every parameter."""
        last, post = self.observe(embed, action, is_first, key, state)
        return last, post, self.prior_logits(post.deter)

    def observe(
        self,
        embed: jax.Array,
        action: jax.Array,
        is_first: jax.Array,
        key: jax.Array,
        state: RSSMState | None = None,
    ) -> tuple[RSSMState, RSSMState]:
        """Posterior states for a batch-major sequence: embed (B, T, E), previous actions
        (B, T, A), is_first (B, T). Returns (last state, states with a (B, T) prefix)."""
        batch, length = is_first.shape
        if state is None:
            state = self.initial(batch)
        noise = self._noise(jax.random.split(key, length), state)
        # The action input does not depend on the state: projected for all steps at once, out
        # of the scan (the action zeroed where is_first, as `_obs_step` resets it).
        action_in = self._action_input(_reset(action, is_first))
        xs = (jnp.swapaxes(embed, 0, 1), is_first.T, noise, jnp.swapaxes(action_in, 0, 1))
        start = (state, self._groups(state.deter))
        if self.is_initializing():  # creates the parameters; nothing differentiates it
            (last, _), states = _observe_scan(self, self._gru_weights(), None, xs, start)
        else:
            g, size = self.blocks, self.deter // self.blocks
            dense_weights = self._dense_weights()
            zeros = lambda *shape: jnp.zeros((length,) + shape, self.dtype)
            offsets = ((zeros(g, batch, size), zeros(batch, self.deter), zeros(g, batch, 3 * size)),
                       tuple(zeros(batch, kernel.shape[-1]) for kernel, _ in dense_weights))
            (last, _), states = _observe_deferred(self, (self._gru_weights(), dense_weights),
                                                  offsets, xs, start)
        return last, jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), states)

    def imagine(
        self,
        state: RSSMState,
        policy: Callable[[jax.Array, jax.Array], jax.Array],
        horizon: int,
        key: jax.Array,
        time_major: bool = False,
        features: bool = False,
        emit: Callable[[jax.Array], Any] | None = None,
        policy_noise: Callable[[jax.Array], Any] | None = None,
        feat_dtype: Any = None,
    ) -> tuple[RSSMState | jax.Array, jax.Array] | tuple[RSSMState | jax.Array, jax.Array, Any]:
        """Roll the prior forward `horizon` steps from `state` (batch B) under `policy`.

        Returns the trajectory including the start, shape (B, horizon + 1, ...), and the actions
        taken at each of those states (B, horizon + 1, A); the last action is never executed.
        `time_major=True` returns (horizon + 1, B, ...) instead, as the scan builds them: that
        skips a transpose of the whole trajectory, and slices along time stay contiguous.
        `features=True` returns the trajectory's features (`feat`) instead of its states, as
        the policy read them inside the scan: no copy of the states afterwards.
        `emit`, a function of one step's features (B, feat) to a pytree, is computed inside the
        scan at every state and returned third, laid out like the trajectory: heads that need
        no gradient read each step's features while they are in cache (for DreamerV3's frozen
        reward, continue and slow-critic heads the update measured 3-5% faster than reading the
        whole trajectory after the scan).
        `policy_noise`, a function of a key to the random numbers one policy step takes: they
        are then drawn for every step before the scan (one call, the same numbers as one per
        key) and `policy` gets them in place of its key. Drawn inside the scan, XLA's CPU
        backend runs a small threefry loop on every step.
        `feat_dtype` (default: `feat`'s float32): the dtype the policy, `emit` and the returned
        features get the features in. A caller whose every reader of them is a matmul with
        bfloat16 operands passes bfloat16: the same results, without converting the features
        at every step and the whole trajectory after the scan, and half its memory to write.
        """
        keys = jax.random.split(key, horizon + 1)
        policy_keys, stoch_keys = jnp.swapaxes(jax.vmap(jax.random.split)(keys[:-1]), 0, 1)
        noise = self._noise(stoch_keys, state)
        policy_xs, last_x = policy_keys, keys[-1]
        if policy_noise is not None:
            policy_xs, last_x = jax.vmap(policy_noise)(policy_keys), policy_noise(keys[-1])

        def outputs(state, key):
            feat = self.feat(state, feat_dtype)
            action = policy(feat, key)
            return action, (feat if features else state, action) + (
                (emit(feat),) if emit is not None else ())

        # The outputs are written into buffers of horizon + 1 steps carried by the scan, the
        # last state's after it: stacked by the scan, appending the last state would copy the
        # whole trajectory once more. bfloat16 outputs are kept as their bits (`bits_dtype`):
        # XLA's CPU backend writes a step into a bfloat16 buffer by converting all of it to
        # float32 and back.
        shapes = jax.eval_shape(outputs, state, last_x)[1]
        buffers = jax.tree.map(
            lambda s: jnp.zeros((horizon + 1,) + s.shape, bits_dtype(s.dtype)), shapes)
        write = lambda bufs, out, t: jax.tree.map(
            lambda b, o: jax.lax.dynamic_update_index_in_dim(
                b, jax.lax.bitcast_convert_type(o, b.dtype), t, 0), bufs, out)

        def step(mdl, carry, x, weights):
            state, deter_g, bufs, t = carry
            action, out = outputs(state, x[0])
            new, new_g = mdl._img_step(state, deter_g, action, x[1], weights)
            return (new, new_g, write(bufs, out, t), t + 1), None

        scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=(0, nn.broadcast), unroll=self.unroll)
        start = (state, self._groups(state.deter), buffers, jnp.zeros((), jnp.int32))
        (last, _, buffers, _), _ = scan(self, start, (policy_xs, noise), self._gru_weights())
        out = write(buffers, outputs(last, last_x)[1], horizon)
        out = jax.tree.map(lambda b, s: jax.lax.bitcast_convert_type(b, s.dtype), out, shapes)
        if time_major:
            return out
        swap = lambda x: jnp.swapaxes(x, 0, 1)
        return jax.tree.map(swap, out)


def _observe_scan(mdl: RSSM, weights: tuple, offsets: tuple | None, xs: tuple, start: tuple):
    """`RSSM.observe`'s scan of `_obs_step` from `start` (state, group-major deter) over the
    time-major `xs` (embed, is_first, noise, action input), with the GRU's `weights`. With
    `offsets` (time-major: the GRU's three, see `RSSM._core`, and one per dense layer), the
    weights are (the GRU's, `RSSM._dense_weights()`), and it also returns the stacked inputs
    of the GRU's matmuls and of those layers, without gradient."""

    def step(mdl, carry, x, weights):
        if offsets is None:
            new = mdl._obs_step(*carry, None, *x[:4], weights)
            return new, new[0]
        (gru, dense), (gru_offsets, dense_offsets) = weights, x[4]
        deferred = (gru_offsets, tuple((k, b, o) for (k, b), o in zip(dense, dense_offsets)))
        new = mdl._obs_step(*carry, None, *x[:4], gru, deferred)
        return new[:2], (new[0], sg(new[2]))

    # Differentiated, the scan would stack each step's intermediates for the backward pass,
    # some sixty small writes per step on 16 rows (size1m), each an op of its own. Saving
    # only the matmuls' outputs, the backward pass recomputes the rest inside its own fused
    # ops: the update measured 3% faster at size1m and 5% at size12m. The block GRU's batched
    # (per-group) matmuls are saved too: recomputed, they read their weights once more on
    # every step, 8 MB at size12m (Craftax-Classic's update x0.95; size1m's unchanged).
    # `SAVE_MATMULS` saves `contract`'s bfloat16 products as well, which `dots_saveable` alone
    # would recompute (a custom_vjp is no dot to it).
    step = nn.remat(step, prevent_cse=False, policy=SAVE_MATMULS)
    scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=(0, nn.broadcast), unroll=mdl.unroll)
    carry, out = scan(mdl, start, xs if offsets is None else xs + (offsets,), weights)
    return (carry, out) if offsets is None else (carry, *out)


def _observe_deferred_fwd(mdl, weights, offsets, xs, start):
    (carry, states, inputs), vjp_fn = nn.vjp(_observe_scan, mdl, weights, offsets, xs, start)
    return (carry, states), (vjp_fn, inputs, weights)


def _observe_deferred_bwd(res, cotangents):
    """The backward scan leaves the gradient of the GRU's and the dense layers' weights out (they
    were held constant); it is the sum over steps of each matmul's input times its output's
    gradient (the offsets' gradient), taken here once over all steps and rows: one matmul per
    weight instead of a small matmul and an accumulation on every step."""
    vjp_fn, inputs, weights = res
    params_t, _, offsets_t, xs_t, start_t = vjp_fn(
        (*cotangents, jax.tree.map(jnp.zeros_like, inputs)))
    (x_deter, x_shared, x_gates), x_dense = inputs[:3], inputs[3:]
    (g_deter, g_shared, g_gates), g_dense = offsets_t
    rows = lambda a: a.reshape(-1, a.shape[-1])
    dtype = x_shared.dtype  # the compute dtype; the sums in float32 (`contract`)
    gru_t = (contract("tg...i,tg...o->gio", x_deter, g_deter, dtype),
             contract("ni,no->io", rows(x_shared), rows(g_shared), dtype),
             rows(g_shared).sum(0),
             contract("tg...i,tg...o->gio", x_gates, g_gates, dtype),
             jnp.einsum("tg...o->go", g_gates))
    dense_t = tuple((contract("ni,no->io", rows(x), rows(g), dtype), rows(g).sum(0))
                    for x, g in zip(x_dense, g_dense))
    # Each in its weight's dtype: the biases are float32 whatever the compute dtype.
    weights_t = jax.tree.map(lambda t, w: t.astype(w.dtype), (gru_t, dense_t), weights)
    return params_t, weights_t, jax.tree.map(jnp.zeros_like, offsets_t), xs_t, start_t


# `RSSM.observe`'s scan with the gradient of the GRU's and the dense layers' weights deferred to
# after the backward scan (`_observe_deferred_bwd`). Per step on 16 rows (size1m), those weight
# gradients were small matmuls plus adds into the running sums, each an op of its own.
_observe_deferred = nn.custom_vjp(lambda *args: _observe_scan(*args)[:2],
                                  forward_fn=_observe_deferred_fwd,
                                  backward_fn=_observe_deferred_bwd)


def kl_loss(post_logits: jax.Array, prior_logits: jax.Array, free_nats: float) -> tuple[jax.Array, jax.Array]:
    """DreamerV3's dynamics and representation losses, each max(free_nats, KL summed over latents).

    dyn = KL(sg(post) || prior) trains the prior; rep = KL(post || sg(prior)) trains the encoder.
    """
    dyn = categorical_kl(sg(post_logits), prior_logits).sum(-1)
    rep = categorical_kl(post_logits, sg(prior_logits)).sum(-1)
    return jnp.maximum(dyn, free_nats), jnp.maximum(rep, free_nats)
