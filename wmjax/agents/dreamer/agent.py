"""The DreamerV3 agent as three pure functions: `init`, `act`, `update`.

    agent = Dreamer(DreamerConfig.preset("size1m"), env.spec)
    state = agent.init(key)
    carry = agent.initial_carry(num_envs)
    action, carry = agent.act(state, carry, obs, is_first, key, mode="train")
    state, metrics = agent.update(state, batch, key)

`Dreamer` only holds the static config, the env spec and the Flax modules; every function takes
and returns explicit state, so they jit, vmap (many seeds) and scan freely.

One loss, one optimizer (as in DreamerV3): world-model loss + imagination actor-critic loss +
replay value loss. Imagination runs on stop-gradient states and parameters, so the rollout is a
forward pass only and the actor-critic sends no gradient into the world model; the replay value
loss does (DreamerV3's `repval_grad`).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wmjax.agents.dreamer.losses import (
    RetNormState,
    lambda_return,
    retnorm_scale,
    retnorm_update,
)
from wmjax.agents.dreamer.optim import dreamer_optimizer
from wmjax.config import TUNABLES, DreamerConfig
from wmjax.envs.core import EnvSpec
from wmjax.models.heads import (
    DictDecoder, DictEncoder, ImageDecoder, ImageEncoder, VectorDecoder, VectorEncoder, split_keys,
)
from wmjax.models.rssm import RSSM, RSSMState, kl_loss
from wmjax.nn.dists import (BoundedNormal, Categorical, TwoHot, softmax_xent, twohot_bins,
                            unimix_logits)
from wmjax.nn.layers import MLP, matmul_dtype, shared_dense

sg = jax.lax.stop_gradient

WORLD_MODEL = ("encoder", "rssm", "decoder", "reward", "cont")
BEHAVIOUR = ("actor", "critic")


class AgentState(NamedTuple):
    params: dict  # {encoder, rssm, decoder, reward, cont, actor, critic}
    slow_critic: Any  # EMA of params["critic"]
    opt_state: Any
    retnorm: RetNormState
    step: jax.Array  # number of updates done
    hyper: dict  # the tunable hyperparameters (TUNABLES) as traced scalars


# The scalar metrics `update` returns, known without tracing it (the fused loop sums them).
METRICS = ("loss/total", "loss/world_model", "loss/rec", "loss/reward", "loss/cont", "loss/dyn",
           "loss/rep", "loss/policy", "loss/value", "loss/repval", "loss/replay_policy",
           "imag/return", "imag/reward",
           "imag/cont", "imag/entropy", "imag/retnorm_scale", "grad_norm", "update_norm",
           "cont/terminal_sum", "cont/terminals", "cont/nonterminal_sum", "cont/nonterminals")

# Metrics logged as a ratio of two summed METRICS (name -> (numerator, denominator)), taken over
# a whole chunk: the continue head's mean prediction at terminal records, an event too rare
# (under 1% of CartPole's records) to show in loss/cont, and elsewhere (target: gamma).
RATIO_METRICS = {"cont/terminal": ("cont/terminal_sum", "cont/terminals"),
                 "cont/nonterminal": ("cont/nonterminal_sum", "cont/nonterminals")}


class Carry(NamedTuple):
    """What acting carries between env steps: the posterior latent and the previous action."""

    latent: RSSMState
    action: jax.Array  # (batch, action_size), one-hot for discrete actions


class Batch(NamedTuple):
    """A replayed batch, every leaf (B, T, ...). action[t] is the action taken at obs[t]."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    is_first: jax.Array
    is_last: jax.Array
    is_terminal: jax.Array


def _global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _continue_stats(cont: jax.Array, is_terminal: jax.Array) -> dict:
    """Summed continue predictions and counts at terminal and other records (RATIO_METRICS)."""
    cont, terminal = cont.astype(jnp.float32), is_terminal.astype(jnp.float32)
    other = 1.0 - terminal
    return {"cont/terminal_sum": (cont * terminal).sum(), "cont/terminals": terminal.sum(),
            "cont/nonterminal_sum": (cont * other).sum(), "cont/nonterminals": other.sum()}


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _at_matmul_precision(method: Callable) -> Callable:
    """`method` traced under the agent's matmul precision (`DreamerConfig.matmul_precision`):
    with "bfloat16", `jax.default_matmul_precision("bfloat16")`, which `wmjax.nn.layers.contract`
    reads; with "float32", JAX's own setting is left alone."""

    @functools.wraps(method)
    def traced(self, *args, **kwargs):
        with (jax.default_matmul_precision("bfloat16") if self.matmul_precision == "bfloat16"
              else contextlib.nullcontext()):
            return method(self, *args, **kwargs)

    return traced


class Dreamer:
    metric_names = METRICS
    ratio_metrics = RATIO_METRICS

    def __init__(self, config: DreamerConfig, spec: EnvSpec):
        self.config = c = config
        self.spec = spec
        self.dtype = dtype = _DTYPES[c.resolved_dtype()]
        self.matmul_precision = c.resolved_matmul_precision()
        self.image = not spec.is_dict and len(spec.obs_shape) == 3  # (H, W, C) uint8 images
        if spec.is_dict:  # image keys through the CNN, vector keys through the MLP
            split_keys(spec.obs_shapes)  # raises early on keys DreamerV3 cannot stack
            cnn = dict(depth=c.depth, mults=c.cnn_mults, minres=c.cnn_minres, dtype=dtype,
                       outer=c.cnn_outer)
            self.encoder = DictEncoder(spec.obs_shape, c.enc_layers, c.units, **cnn)
            self.decoder = DictDecoder(spec.obs_shape, c.dec_layers, c.units, **cnn,
                                       image_loss=c.image_loss, vector_loss=c.vector_loss)
        elif self.image:
            self.encoder = ImageEncoder(c.depth, c.cnn_mults, c.cnn_minres, dtype, c.cnn_outer)
            self.decoder = ImageDecoder(spec.obs_shape, c.depth, c.cnn_mults, c.cnn_minres, dtype,
                                        c.cnn_outer, c.image_loss)
        else:
            self.encoder = VectorEncoder(c.enc_layers, c.units, dtype)
            self.decoder = VectorDecoder(spec.obs_shape[-1], c.dec_layers, c.units, dtype,
                                         c.vector_loss)
        self.rssm = RSSM(c.deter, c.hidden, c.stoch, c.classes, c.blocks, c.unimix, dtype=dtype)
        self.reward = MLP(c.reward_layers, c.units, c.num_bins, outscale=0.0, dtype=dtype)
        self.cont = MLP(c.cont_layers, c.units, 1, outscale=1.0, dtype=dtype)
        policy_out = spec.num_actions if spec.discrete else 2 * spec.num_actions
        self.actor = MLP(c.actor_layers, c.units, policy_out, outscale=0.01, dtype=dtype)
        self.critic = MLP(c.critic_layers, c.units, c.num_bins, outscale=0.0, dtype=dtype)
        self.twohot = TwoHot(twohot_bins(c.num_bins))
        # Unit learning rate: `update` multiplies by the traced hyper["lr"].
        self.optimizer = dreamer_optimizer(1.0, c.warmup, c.agc, c.beta1, c.beta2, c.eps)

    # ------------------------------------------------------------------ state

    def init(self, key: jax.Array, hyper: dict | None = None) -> AgentState:
        """Fresh parameters and optimizer state. `hyper` overrides tunables (names in TUNABLES)
        for this state only; the rest come from the config."""
        c, spec = self.config, self.spec
        hyper = self.hyper(hyper)
        keys = jax.random.split(key, 8)
        obs = spec.zeros((1, 2))
        action = jnp.zeros((1, 2, spec.action_size), jnp.float32)
        first = jnp.ones((1, 2), bool)
        feat = jnp.zeros((1, c.feat_size), jnp.float32)
        enc = self.encoder.init(keys[0], obs)["params"]
        embed = self.encoder.apply({"params": enc}, obs)
        params = {
            "encoder": enc,
            "rssm": self.rssm.init(keys[1], embed, action, first, keys[7])["params"],
            "decoder": self.decoder.init(keys[2], feat)["params"],
            "reward": self.reward.init(keys[3], feat)["params"],
            "cont": self.cont.init(keys[4], feat)["params"],
            "actor": self.actor.init(keys[5], feat)["params"],
            "critic": self.critic.init(keys[6], feat)["params"],
        }
        return AgentState(
            params=params,
            slow_critic=jax.tree.map(jnp.copy, params["critic"]),  # no aliasing: state is donated
            opt_state=self.optimizer.init(params),
            retnorm=RetNormState.create(),
            step=jnp.zeros((), jnp.int32),
            hyper=hyper,
        )

    def hyper(self, overrides: dict | None = None) -> dict:
        """The tunables as float32 scalars: the config's values, replaced by `overrides`."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(TUNABLES))
        if unknown:
            raise ValueError(f"unknown tunable(s) {unknown}; tunables are: {', '.join(TUNABLES)}")
        for name, value in overrides.items():  # traced (a vmapped init): checked before
            if not isinstance(value, jax.core.Tracer):
                for v in np.unique(np.asarray(value, np.float64)):
                    self.config.check_tunable(name, float(v))
        return {name: jnp.asarray(overrides.get(name, getattr(self.config, name)), jnp.float32)
                for name in TUNABLES}

    def initial_carry(self, batch: int) -> Carry:
        c = self.config
        latent = RSSMState.zeros(batch, c.deter, c.stoch, c.classes)
        return Carry(latent, jnp.zeros((batch, self.spec.action_size), jnp.float32))

    # ------------------------------------------------------------------ helpers

    def _policy(self, actor_params: Any, feat: jax.Array, first: jax.Array | None = None):
        """The policy at `feat`; `first`, the actor's first-layer output there computed by the
        caller (see `MLP.__call__`)."""
        raw = self.actor.apply({"params": actor_params}, feat, first)
        if self.spec.discrete:
            mix = self.config.actor_unimix  # static: 0 leaves the logits (and runs) as they were
            return Categorical(unimix_logits(raw, mix) if mix > 0 else raw)
        return BoundedNormal.from_raw(raw, self.config.minstd, self.config.maxstd)

    def action_vector(self, action: jax.Array) -> jax.Array:
        """The env action as the world model sees it: one-hot (discrete) or clipped to [-1, 1]."""
        if self.spec.discrete:
            return jax.nn.one_hot(action, self.spec.num_actions, dtype=jnp.float32)
        return jnp.clip(action, -1.0, 1.0)

    def _value_xent(self, logits: jax.Array, ret: jax.Array, slow: jax.Array, hyper: dict,
                    lse: jax.Array | None = None):
        """The critic's loss: cross-entropy against the return's two-hot encoding, plus `slowreg`
        times that against the slow critic's value. Both targets are fixed, so it is one
        cross-entropy against their weighted sum (the same loss and gradient, half the work).
        `lse`: the logits' logsumexp, if the value readout computed it already."""
        target = self.twohot.target(ret) + hyper["slowreg"] * self.twohot.target(slow)
        return softmax_xent(logits, target, lse)

    def _reinforce(self, dist: Any, action: jax.Array, adv: jax.Array, weight: jax.Array,
                   hyper: dict) -> tuple[jax.Array, jax.Array]:
        """DreamerV3's actor loss: the log-probability of each `action` taken (one-hot for
        discrete actions) times its normalised advantage, plus the entropy bonus, weighted and
        averaged. Returns (loss, entropy). Imagination's loss and the replayed one share it."""
        taken = jnp.argmax(action, -1) if self.spec.discrete else action
        entropy = dist.entropy()
        loss = (weight * -(dist.log_prob(sg(taken)) * adv + hyper["actent"] * entropy)).mean()
        return loss, entropy

    def _imagined_value_loss(self, logits: jax.Array, lse: jax.Array, ret: jax.Array,
                             slow: jax.Array, weight: jax.Array, hyper: dict) -> jax.Array:
        """The critic's loss on an imagined trajectory: time-major `logits`, their `lse` and
        the `slow` critic's values for the H + 1 states, `ret` and `weight` for the first H.
        The mean over those H states of the weighted `_value_xent`, taken over all H + 1 with
        the last weighted 0: slicing the logits to H copied them, and the slice's gradient
        padded them back, two passes over every imagined state's bins."""
        last0 = lambda x: jnp.pad(x, ((0, 1),) + ((0, 0),) * (x.ndim - 1))
        xent = self._value_xent(logits, last0(ret), slow, hyper, lse)
        return (last0(weight) * xent).sum() / weight.size

    def _slow_value(self, slow_critic: Any, feat: jax.Array) -> jax.Array:
        """The slow critic's (the critic's EMA) value of features, the target of `slowreg`."""
        return self.twohot.mean(self.critic.apply({"params": slow_critic}, feat))

    def _apply(self, params: dict, name: str, *args, **kwargs):
        return getattr(self, name).apply({"params": params[name]}, *args, **kwargs)

    # ------------------------------------------------------------------ act

    @_at_matmul_precision
    def act(
        self,
        state: AgentState,
        carry: Carry,
        obs: jax.Array,
        is_first: jax.Array,
        key: jax.Array,
        mode: str = "train",
    ) -> tuple[jax.Array, Carry]:
        """Choose actions for a batch of observations. mode "train" samples, "eval" takes the mode."""
        if mode not in ("train", "eval"):
            raise ValueError(f"act: mode must be 'train' or 'eval', got {mode!r}")
        chex.assert_rank(is_first, 1)
        self.spec.check_obs(obs, (is_first.shape[0],))
        key_latent, key_action = jax.random.split(key)
        p = state.params
        embed = self._apply(p, "encoder", obs)
        latent = self._apply(
            p, "rssm", carry.latent, carry.action, embed, is_first, key_latent,
            method=RSSM.obs_step,
        )
        feat = self._apply(p, "rssm", latent, method=RSSM.feat)
        dist = self._policy(p["actor"], feat)
        action = dist.sample(key_action) if mode == "train" else dist.mode()
        return action, Carry(latent, self.action_vector(action))

    # ------------------------------------------------------------------ update

    def update(self, state: AgentState, batch: Batch, key: jax.Array) -> tuple[AgentState, dict]:
        """One gradient step on a replayed batch; returns the new state and scalar metrics."""
        return self.update_with_model_loss(state, batch, key)[:2]

    @_at_matmul_precision
    def update_with_model_loss(self, state: AgentState, batch: Batch, key: jax.Array
                               ) -> tuple[AgentState, dict, jax.Array]:
        """`update`, also returning the world model's loss at every replayed step, (B, T) and
        before the step, which a prioritised replay (`wmjax.replay`'s Curious Replay) reads."""
        c = self.config
        chex.assert_rank(batch.is_first, 2)
        self.spec.check_obs(batch.obs, batch.is_first.shape)
        chex.assert_shape(batch.action, batch.is_first.shape + (self.spec.action_size,))
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)
        (_, (metrics, retnorm, model_loss)), grads = grad_fn(
            state.params, state.slow_critic, state.retnorm, state.hyper, batch, key
        )
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: state.hyper["lr"] * u, updates)
        params = optax.apply_updates(state.params, updates)
        slow = jax.tree.map(
            lambda s, p: (1.0 - c.slow_rate) * s + c.slow_rate * p, state.slow_critic, params["critic"]
        )
        metrics["grad_norm"] = _global_norm(grads)
        metrics["update_norm"] = _global_norm(updates)
        if set(metrics) != set(METRICS):  # checked at trace time
            raise AssertionError(f"update's metrics {sorted(metrics)} differ from METRICS")
        new_state = AgentState(params, slow, opt_state, retnorm, state.step + 1, state.hyper)
        return new_state, metrics, model_loss

    @_at_matmul_precision
    def imagine(self, params: dict, starts: RSSMState, key: jax.Array,
                time_major: bool = False, emit: Callable[[jax.Array], Any] | None = None,
                feat_dtype: Any = None):
        """Roll the world model forward `imag_horizon` steps from `starts` (batch N) under the actor.

        Returns features (N, H + 1, feat) and actions (N, H + 1, A), or (H + 1, N, ...) with
        `time_major` (what the loss uses: no transposes). Actions are one-hot for discrete
        actions, the raw unclipped samples for continuous ones (REINFORCE scores the sample
        that was drawn; the RSSM bounds its action input by a / max(1, |a|), as DreamerV3).
        `emit` (a function of one step's features) is computed inside the rollout at every
        state and returned third (`RSSM.imagine`). `feat_dtype`: the features' dtype for the
        policy, `emit` and the result (default float32; see `RSSM.imagine`).
        """

        def policy(f, noise):
            sample = self._policy(params["actor"], f).sample_from(noise)
            return jax.nn.one_hot(sample, self.spec.num_actions) if self.spec.discrete else sample

        # The policy's random numbers drawn before the rollout, as the RSSM's (`policy_noise`).
        shape = (starts.deter.shape[0], self.spec.num_actions)
        dist = Categorical if self.spec.discrete else BoundedNormal
        return self._apply(params, "rssm", starts, policy, self.config.imag_horizon, key,
                           time_major, features=True, emit=emit,
                           policy_noise=lambda k: dist.noise(k, shape), feat_dtype=feat_dtype,
                           method=RSSM.imagine)

    @_at_matmul_precision
    def observe(self, params: dict, obs: Any, action: jax.Array, is_first: jax.Array,
                key: jax.Array) -> tuple[RSSMState, RSSMState, jax.Array, jax.Array]:
        """The world model's posterior over replayed windows (B, T) of records, as training
        sees them: every window starts from a fresh state, and the action fed at step t is the
        one taken at t - 1 (zero at t = 0). Returns (last state, posterior states (B, T),
        prior logits (B, T, ...), features (B, T, feat))."""
        prev_action = jnp.concatenate([jnp.zeros_like(action[:, :1]), action[:, :-1]], 1)
        embed = self._apply(params, "encoder", obs)
        last, post, prior_logits = self._apply(params, "rssm", embed, prev_action,
                                               is_first.at[:, 0].set(True), key)
        return last, post, prior_logits, self._apply(params, "rssm", post, method=RSSM.feat)

    @_at_matmul_precision
    def decode(self, params: dict, feat: jax.Array) -> Any:
        """The decoder's prediction from RSSM features, in observation units (pixels 0..255,
        vectors un-symlogged; a dict of them for dict observations)."""
        return self.decoder.to_obs(self._apply(params, "decoder", feat))

    @_at_matmul_precision
    def heads(self, params: dict, feat: jax.Array) -> dict[str, jax.Array]:
        """What the heads say about RSSM features, in their own units: the expected `reward`,
        the `cont` probability (the discount folded in) and the critic's `value`. For
        diagnostics; under jit only the outputs used are computed."""
        return {"reward": self.twohot.mean(self._apply(params, "reward", feat)),
                "cont": jax.nn.sigmoid(self._apply(params, "cont", feat)[..., 0]),
                "value": self.twohot.mean(self._apply(params, "critic", feat))}

    @_at_matmul_precision
    def open_loop(self, params: dict, batch: Batch, context: int, key: jax.Array) -> jax.Array:
        """DreamerV3's open-loop report: observe the first `context` steps of each sequence, then
        predict the rest from the prior alone under the recorded actions (the mode of each
        latent). Returns decoded observations (B, T, ...): reconstructions for the context
        steps, open-loop predictions after it."""
        B, T = batch.is_first.shape
        if not 1 <= context < T:
            raise ValueError(f"open_loop: context={context}; allowed: 1 <= context < {T}")
        last, post, _, _ = self.observe(
            params, jax.tree.map(lambda x: x[:, :context], batch.obs), batch.action[:, :context],
            batch.is_first[:, :context], key,
        )

        def step(state, action):
            new = self._apply(params, "rssm", state, action, None, method=RSSM.img_step)
            return new, new

        # The action fed at step t is the one taken at t - 1.
        _, prior = jax.lax.scan(step, last, jnp.swapaxes(batch.action[:, context - 1:-1], 0, 1))
        prior = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), prior)
        states = jax.tree.map(lambda a, b: jnp.concatenate([a, b], 1), post, prior)
        feat = self._apply(params, "rssm", states, method=RSSM.feat)
        return self.decode(params, feat)

    @_at_matmul_precision
    def loss(
        self, params: dict, slow_critic: Any, retnorm: RetNormState, hyper: dict, batch: Batch,
        key: jax.Array,
    ) -> tuple[jax.Array, tuple[dict, RetNormState, jax.Array]]:
        """DreamerV3's total loss on one batch; aux is (metrics, updated return-norm stats, the
        world model's loss at every step, (B, T)).
        Loss scales and the entropy bonus come from `hyper` (see TUNABLES)."""
        c, h = self.config, hyper
        key_obs, key_img = jax.random.split(key)
        B, T = batch.is_first.shape

        # ---- world model
        _, post, prior_logits, feat = self.observe(params, batch.obs, batch.action,
                                                   batch.is_first, key_obs)
        dyn, rep = kl_loss(post.logits, prior_logits, c.free_nats)
        rec = self.decoder.loss(self._apply(params, "decoder", feat), batch.obs)
        rew_loss = self.twohot.loss(self._apply(params, "reward", feat), batch.reward)
        con_logit = self._apply(params, "cont", feat)[..., 0]
        con_target = (1.0 - batch.is_terminal.astype(jnp.float32)) * c.gamma
        con_loss = optax.sigmoid_binary_cross_entropy(con_logit, con_target)
        if c.cont_terminal_weight != 1.0:  # static: DreamerV3's loss is unchanged by default
            con_loss = con_loss * jnp.where(batch.is_terminal, c.cont_terminal_weight, 1.0)
        wm_step_loss = (
            h["rec_scale"] * rec + h["reward_scale"] * rew_loss + h["cont_scale"] * con_loss
            + h["dyn_scale"] * dyn + h["rep_scale"] * rep
        )
        wm_loss = wm_step_loss.mean()

        # ---- imagination (forward only: stop-gradient starts and parameters)
        frozen = sg(params)
        starts = jax.tree.map(lambda x: sg(x).reshape((B * T,) + x.shape[2:]), post)
        if c.imag_starts:
            idx = jax.random.choice(key_img, B * T, (c.imag_starts,), replace=False)
            starts = jax.tree.map(lambda x: x[idx], starts)
        # Time-major (H + 1, N, ...) from here on: slices along time stay contiguous.
        def frozen_heads(f):
            """The heads that need no gradient, read inside the rollout (`RSSM.imagine`'s emit),
            and the actor's first layer, which the policy computes there anyway (the compiler
            merges the two): the actor's loss below reuses it instead of recomputing it."""
            return (self.twohot.mean(self._apply(frozen, "reward", f)),
                    jax.nn.sigmoid(self._apply(frozen, "cont", f)[..., 0]),
                    self._slow_value(slow_critic, f),
                    self.actor.first_layer(frozen["actor"], f))

        # Every reader of the imagined features is a matmul, so they come in its operands' dtype.
        img_feat, img_action, (img_rew, img_con, slow_value, rollout_first) = self.imagine(
            frozen, starts, jax.random.fold_in(key_img, 1), time_major=True, emit=frozen_heads,
            feat_dtype=matmul_dtype(self.dtype))
        img_feat = sg(img_feat)

        # ---- actor-critic on the imagined trajectories
        # The actor's and the critic's first layers read the same features: one weight-gradient
        # matmul for both (`shared_dense`), and the actor's output is the rollout's.
        actor_first, critic_first = shared_dense(
            img_feat,
            [self.actor.first_params(params["actor"]), self.critic.first_params(params["critic"])],
            [sg(rollout_first), None], dtype=self.dtype)
        critic_logits = self._apply(params, "critic", img_feat, critic_first)
        # The value readout and the critic's loss share one logsumexp over the bins (the value
        # takes no gradient): over every imagined state, each pass over the bins counts.
        critic_lse = jax.nn.logsumexp(sg(critic_logits), -1)
        value = self.twohot.mean(sg(critic_logits), critic_lse)
        weight = sg(jnp.cumprod(img_con, 0))[:-1]
        ret = sg(lambda_return(jnp.zeros_like(img_con), 1.0 - img_con, img_rew, sg(value), 1.0,
                               c.lam, axis=0))
        retnorm = retnorm_update(retnorm, ret, c.retnorm_rate, c.retnorm_low, c.retnorm_high)
        scale = retnorm_scale(retnorm, c.retnorm_limit)
        adv = sg((ret - value[:-1]) / scale)
        # The actor reads every state and its output is sliced: slicing the (H + 1, N, feat)
        # input instead copies it (the update measured 2% slower).
        dist = jax.tree.map(lambda x: x[:-1], self._policy(params["actor"], img_feat, actor_first))
        policy_loss, entropy = self._reinforce(dist, img_action[:-1], adv, weight, h)
        value_loss = self._imagined_value_loss(critic_logits, critic_lse, ret, slow_value,
                                               weight, h)

        # ---- replay value loss: lambda-returns on the real sequence, bootstrapped from imagination
        rep_logits = self._apply(params, "critic", feat)  # gradient reaches the world model
        rep_slow = self._slow_value(slow_critic, sg(feat))
        rep_value = sg(self.twohot.mean(rep_logits))  # the critic on replay, no gradient
        boot = rep_value if c.imag_starts else ret[0].reshape(B, T)
        rep_ret = sg(lambda_return(batch.is_last, batch.is_terminal, batch.reward, boot, c.gamma, c.lam))
        rep_weight = 1.0 - batch.is_last[:, :-1].astype(jnp.float32)
        repval_loss = (rep_weight * self._value_xent(rep_logits[:, :-1], rep_ret,
                                                     rep_slow[:, :-1], h)).mean()

        total = wm_loss + h["policy_scale"] * policy_loss + h["value_scale"] * value_loss \
            + h["repval_scale"] * repval_loss
        replay_policy_loss = jnp.zeros((), jnp.float32)
        if c.replay_policy_scale > 0.0:  # static: DreamerV3's program is unchanged by default
            # REINFORCE on the replayed actions (B, T - 1); `rep_weight` leaves out an episode's
            # last record, whose action is never taken. No gradient reaches the world model.
            rep_adv = sg((rep_ret - rep_value[:, :-1]) / scale)
            if c.replay_policy_positive:
                rep_adv = jnp.maximum(rep_adv, 0.0)
            replay_policy_loss = self._reinforce(
                self._policy(params["actor"], sg(feat[:, :-1])), batch.action[:, :-1],
                rep_adv, rep_weight, h)[0]
            total = total + h["replay_policy_scale"] * replay_policy_loss
        metrics = {
            "loss/total": total,
            "loss/world_model": wm_loss,
            "loss/rec": rec.mean(),
            "loss/reward": rew_loss.mean(),
            "loss/cont": con_loss.mean(),
            "loss/dyn": dyn.mean(),
            "loss/rep": rep.mean(),
            "loss/policy": policy_loss,
            "loss/value": value_loss,
            "loss/repval": repval_loss,
            "loss/replay_policy": replay_policy_loss,
            "imag/return": ret.mean(),
            "imag/reward": img_rew[1:].mean(),
            "imag/cont": img_con.mean(),
            "imag/entropy": entropy.mean(),
            "imag/retnorm_scale": scale,
            **_continue_stats(sg(jax.nn.sigmoid(con_logit)), batch.is_terminal),
        }
        return total, (metrics, retnorm, sg(wm_step_loss))
