"""A compact PPO baseline (PureJaxRL-style) on wmjax's environments, fused into one program.

It runs on the same `make_env` adapters as DreamerV3, so both learners see the same
observations, actions, episode boundaries and env-step budget. The ladder uses it to measure
the sample-efficiency gap instead of assuming it.

    python benchmarks/ppo.py --env CartPole-v1 --steps 100000 --seeds 3
    python benchmarks/ppo.py --env Acrobot-v1 --steps 50000 --eval-episodes 32   # + frozen play
    python benchmarks/ppo.py --env Breakout-MinAtar --steps 1000000 --preset minatar

Per seed, with the "classic" preset (PureJaxRL's classic-control settings): num_envs envs,
rollouts of num_steps, GAE(γ 0.99, λ 0.95), clipped objective (0.2), 4 epochs x 4 minibatches,
Adam 2.5e-4 annealed linearly, grad-norm clip 0.5, entropy 0.01, value 0.5; separate tanh MLPs
(2 x 64) on flattened observations (images scaled to [0, 1]); a categorical policy for discrete
actions, a state-independent-std Gaussian for continuous ones. The "minatar" preset is
gymnax-blines' MinAtar recipe (see PPO_PRESETS). One transition per episode is the env's reset
record (reward 0, cut from bootstrapping).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wmjax.envs import make_env  # noqa: E402
from wmjax.envs.core import EPISODE_PREFIX  # noqa: E402
from wmjax.machine import describe as describe_machine  # noqa: E402
from wmjax.policy import play_episodes  # noqa: E402
from wmjax.startup import start_command  # noqa: E402


LR_SCHEDULES = ("linear", "constant")
ACTIVATIONS = ("tanh", "relu")
# "orthogonal": PureJaxRL's (gains sqrt 2, 0.01 for the policy, 1 for the value; zero biases).
# "lecun": Flax's default kernels with biases drawn from U(0, 0.05), gymnax-blines' choice.
WEIGHT_INITS = ("orthogonal", "lecun")


@dataclass(frozen=True)
class PPOConfig:
    """PPO's settings. The defaults are PureJaxRL's classic-control ones; `PPO_PRESETS["minatar"]`
    is gymnax-blines' MinAtar recipe, the one behind gymnax's published MinAtar PPO numbers."""
    num_envs: int = 4  # PureJaxRL's classic-control default; more updates per env step
    num_steps: int = 128
    epochs: int = 4
    minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    lr: float = 2.5e-4
    lr_schedule: str = "linear"  # "linear": annealed to 0 over the run; "constant"
    max_grad_norm: float = 0.5
    hidden: int = 64
    activation: str = "tanh"
    clip_value: bool = False  # clip the value update to ±clip around the rollout's value
    weight_init: str = "orthogonal"

    def __post_init__(self):
        def check(ok, name, allowed):
            if not ok:
                raise ValueError(f"invalid PPO config: {name}={getattr(self, name)!r}; allowed: {allowed}")
        check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {LR_SCHEDULES}")
        check(self.activation in ACTIVATIONS, "activation", f"one of {ACTIVATIONS}")
        check(self.weight_init in WEIGHT_INITS, "weight_init", f"one of {WEIGHT_INITS}")
        for name in ("num_envs", "num_steps", "epochs", "minibatches", "hidden"):
            check(getattr(self, name) >= 1, name, "an integer >= 1")
        check((self.num_envs * self.num_steps) % self.minibatches == 0, "minibatches",
              f"a divisor of num_envs x num_steps = {self.num_envs * self.num_steps}")

    @staticmethod
    def preset(name: str, **changes) -> "PPOConfig":
        """A preset of PPO_PRESETS with `changes` applied; a ValueError names a bad one."""
        if name not in PPO_PRESETS:
            raise ValueError(f"unknown PPO preset {name!r}; allowed: one of {tuple(PPO_PRESETS)}")
        return replace(PPO_PRESETS[name], **changes)


# gymnax-blines' MinAtar PPO (agents/<game>/ppo.yaml, utils/models.py): 64 envs x 128 steps,
# 8 minibatches, gamma 0.999, constant lr 5e-4, separate 2 x 256 ReLU MLPs with Flax's default
# kernels, a clipped value loss weighted 0.5 x 0.5 (its loss halves the squared error, then
# weighs it 0.5). On Breakout-MinAtar at 1M steps the init alone moved 3 seeds from 6.4-6.9
# (orthogonal) to 6.8-16.3 (benchmarks/README.md).
PPO_PRESETS = {
    "classic": PPOConfig(),
    "minatar": PPOConfig(num_envs=64, minibatches=8, gamma=0.999, lr=5e-4, lr_schedule="constant",
                         vf_coef=0.25, hidden=256, activation="relu", clip_value=True,
                         weight_init="lecun"),
}


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (2 hidden layers each)."""
    num_actions: int
    discrete: bool
    hidden: int = 64
    activation: str = "tanh"
    weight_init: str = "orthogonal"

    def _dense(self, width: int, gain: float) -> nn.Dense:
        if self.weight_init == "lecun":
            return nn.Dense(width, bias_init=nn.initializers.uniform(0.05))
        return nn.Dense(width, kernel_init=nn.initializers.orthogonal(gain))

    @nn.compact
    def __call__(self, x):
        act = getattr(nn, self.activation)

        def torso(x):
            for _ in range(2):
                x = act(self._dense(self.hidden, np.sqrt(2))(x))
            return x

        out = self._dense(self.num_actions, 0.01)(torso(x))
        value = self._dense(1, 1.0)(torso(x))[..., 0]
        log_std = self.param("log_std", nn.initializers.zeros, (self.num_actions,))
        return out, log_std, value


def _features(obs):
    """Vectors as they are; uint8 images (..., H, W, C) flattened and scaled to [0, 1]; dict
    observations as the concatenation of their keys' features."""
    if isinstance(obs, dict):
        return jnp.concatenate([_features(obs[k]) for k in sorted(obs)], -1)
    if obs.dtype == jnp.uint8:
        return (obs.astype(jnp.float32) / 255.0).reshape(obs.shape[:-3] + (-1,))
    return obs.astype(jnp.float32)


def _log_prob_entropy(out, log_std, action, discrete):
    if discrete:
        logp = jax.nn.log_softmax(out)
        lp = jnp.take_along_axis(logp, action[..., None], -1)[..., 0]
        return lp, -(jnp.exp(logp) * logp).sum(-1)
    std = jnp.exp(log_std)
    lp = (-0.5 * ((action - out) / std) ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)
    return lp, (log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e)).sum() * jnp.ones(out.shape[:-1])


def make_ppo(env_name: str, steps: int, config: PPOConfig = PPOConfig(),
             max_eval_steps: int = 100_000):
    """(run, env_steps, play).

    run(keys) trains one seed per key and returns (metrics, params): per-update metrics, each
    (seeds, U): episode_return and episode_length (means over the episodes that ended, NaN if
    none), episodes, and the env's episode statistics (`episode/<name>`), and each seed's final
    parameters. env_steps (U,) is the step count. play(params, keys, episodes) plays each seed's
    parameters frozen, sampling as in training: returns (seeds, episodes), and whether every
    episode finished."""
    env = make_env(env_name)
    spec, c = env.spec, config
    net = ActorCritic(spec.num_actions, spec.discrete, c.hidden, c.activation, c.weight_init)
    batch = c.num_envs * c.num_steps
    updates = max(1, steps // batch)
    mb = batch // c.minibatches
    schedule = (optax.linear_schedule(c.lr, 0.0, updates * c.epochs * c.minibatches)
                if c.lr_schedule == "linear" else c.lr)
    tx = optax.chain(optax.clip_by_global_norm(c.max_grad_norm), optax.adam(schedule, eps=1e-5))

    def sample(key, out, log_std):
        if spec.discrete:
            return jax.random.categorical(key, out)
        return out + jnp.exp(log_std) * jax.random.normal(key, out.shape)

    def run(key, params):
        _, k_env, key = jax.random.split(key, 3)  # the first key made `params` (init_params)
        opt = tx.init(params)
        env_state, ts = env.reset_batch(k_env, c.num_envs)

        def rollout_step(carry, _):
            params, env_state, ts, key = carry
            key, k_act, k_step = jax.random.split(key, 3)
            out, log_std, value = net.apply(params, _features(ts.obs))
            action = sample(k_act, out, log_std)
            logp, _ = _log_prob_entropy(out, log_std, action, spec.discrete)
            env_state, nts = env.step_batch(k_step, env_state, action)
            done = nts.is_last | nts.is_first  # no bootstrapping across an episode end
            finished = jnp.where(nts.is_last, env_state.episode_return, 0.0)
            lengths = jnp.where(nts.is_last, env_state.episode_length, 0).astype(jnp.float32)
            stats = {k: jnp.where(nts.is_last, v, 0.0)  # e.g. Craftax achievements
                     for k, v in jax.vmap(env.episode_stats)(env_state.inner).items()}
            tr = (ts.obs, action, logp, value, nts.reward, done, finished, lengths, nts.is_last,
                  stats)
            return (params, env_state, nts, key), tr

        def update(carry, _):
            params, opt, env_state, ts, key = carry
            (params, env_state, ts, key), tr = jax.lax.scan(
                rollout_step, (params, env_state, ts, key), None, c.num_steps)
            obs, action, logp, value, reward, done, finished, lengths, is_last, stats = tr
            _, _, last_value = net.apply(params, _features(ts.obs))

            def gae(carry, x):
                # Every episode end cuts the return (time limits included, as in PureJaxRL).
                adv, next_value = carry
                r, v, d = x
                delta = r + c.gamma * next_value * (1 - d) - v
                adv = delta + c.gamma * c.gae_lambda * (1 - d) * adv
                return (adv, v), adv

            _, adv = jax.lax.scan(gae, (jnp.zeros_like(last_value), last_value),
                                  (reward, value, done.astype(jnp.float32)), reverse=True)
            targets = adv + value

            def epoch(carry, _):
                params, opt, key = carry
                key, k_perm = jax.random.split(key)
                flat = jax.tree.map(lambda x: x.reshape((batch,) + x.shape[2:]),
                                    (obs, action, logp, value, adv, targets))
                perm = jax.random.permutation(k_perm, batch)
                shuffled = jax.tree.map(lambda x: x[perm].reshape((c.minibatches, mb) + x.shape[1:]), flat)

                def minibatch(carry, b):
                    params, opt = carry
                    o, a, old_logp, old_v, a_adv, tgt = b

                    def loss(p):
                        out, log_std, v = net.apply(p, _features(o))
                        lp, ent = _log_prob_entropy(out, log_std, a, spec.discrete)
                        ratio = jnp.exp(lp - old_logp)
                        norm_adv = (a_adv - a_adv.mean()) / (a_adv.std() + 1e-8)
                        pg = -jnp.minimum(ratio * norm_adv,
                                          jnp.clip(ratio, 1 - c.clip, 1 + c.clip) * norm_adv).mean()
                        v_loss = jnp.square(v - tgt)
                        if c.clip_value:
                            v_clipped = old_v + jnp.clip(v - old_v, -c.clip, c.clip)
                            v_loss = jnp.maximum(v_loss, jnp.square(v_clipped - tgt))
                        return pg + c.vf_coef * v_loss.mean() - c.ent_coef * ent.mean()

                    grads = jax.grad(loss)(params)
                    upd, opt = tx.update(grads, opt, params)
                    return (optax.apply_updates(params, upd), opt), None

                (params, opt), _ = jax.lax.scan(minibatch, (params, opt), shuffled)
                return (params, opt, key), None

            (params, opt, key), _ = jax.lax.scan(epoch, (params, opt, key), None, c.epochs)
            episodes = is_last.sum()
            mean = lambda x: jnp.where(episodes > 0, x.sum() / jnp.maximum(episodes, 1), jnp.nan)
            out = {"episode_return": mean(finished), "episode_length": mean(lengths),
                   "episodes": episodes,
                   **{EPISODE_PREFIX + k: mean(v) for k, v in stats.items()}}
            return (params, opt, env_state, ts, key), out

        (params, *_), out = jax.lax.scan(update, (params, opt, env_state, ts, key), None, updates)
        return out, params

    def play(params, key, episodes):
        """One seed's frozen policy in `episodes` vmapped envs until each has ended once."""
        def act(carry, obs, is_first, k):
            out, log_std, _ = net.apply(params, _features(obs))
            return sample(k, out, log_std), carry

        return play_episodes(env, act, (), episodes, key, max_eval_steps)

    def init_params(keys):
        """Per-seed parameters, made eagerly, outside the compiled program: the orthogonal
        initialiser runs a LAPACK QR, and a batched QR inside a jitted vmapped graph can deadlock
        XLA's CPU thread pool (each QR waits for pool threads that the others hold)."""
        x = _features(spec.zeros((1,)))
        inits = [net.init(jax.random.split(k, 3)[0], x) for k in keys]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *inits)

    env_steps = np.arange(1, updates + 1) * batch
    compiled = jax.jit(jax.vmap(run))
    played = jax.jit(jax.vmap(play, in_axes=(0, 0, None)), static_argnums=2)
    return (lambda keys: compiled(keys, init_params(keys))), env_steps, played


def train_ppo(env_name: str, steps: int, seeds: int, seed: int = 0,
              config: PPOConfig = PPOConfig(), eval_episodes: int = 0) -> dict:
    """Train `seeds` PPO seeds at once. Returns env steps, returns (seeds, updates), metrics
    rows like wmjax's metrics.jsonl (one per seed and update, with the env's episode
    statistics), wall time and the machine (wmjax.machine: the numbers repeat bit for bit on
    one kind of CPU only); with `eval_episodes`, also `final_policy`: each seed's final
    parameters played frozen for that many episodes (seed i with key i), their mean return."""
    if eval_episodes < 0:
        raise ValueError(f"eval_episodes={eval_episodes}; allowed: >= 0")
    run, env_steps, play = make_ppo(env_name, steps, config)
    start = time.time()
    out, params = run(jax.random.split(jax.random.key(seed), seeds))
    out = jax.device_get(out)
    wall = time.time() - start
    final_policy = None
    if eval_episodes:
        keys = jnp.stack([jax.random.key(i) for i in range(seeds)])
        returns, finished = play(params, keys, eval_episodes)
        if not bool(finished.all()):
            raise RuntimeError("PPO frozen play: episodes did not finish within max_eval_steps")
        final_policy = [float(r) for r in np.asarray(returns).mean(1)]
    clean = lambda v: None if np.isnan(v) else float(v)
    rows = [{"seed": s, "env_step": int(step),
             **{k: clean(float(v[s, u])) for k, v in out.items()}}
            for s in range(seeds) for u, step in enumerate(env_steps)]
    return dict(env=env_name, steps=int(env_steps[-1]), seeds=seeds, config=asdict(config),
                env_steps=env_steps.tolist(),
                returns=[[clean(v) for v in row] for row in np.asarray(out["episode_return"])],
                rows=rows, wall_s=wall, final_policy=final_policy, machine=describe_machine())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--preset", default="classic", choices=sorted(PPO_PRESETS))
    ap.add_argument("--num-envs", type=int, default=None, help="default: the preset's")
    ap.add_argument("--lr", type=float, default=None, help="default: the preset's")
    ap.add_argument("--eval-episodes", type=int, default=0,
                    help="play each seed's final parameters frozen for this many episodes")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    if args.eval_episodes < 0:
        ap.error(f"--eval-episodes {args.eval_episodes}; allowed: >= 0")
    changes = {k: v for k, v in (("num_envs", args.num_envs), ("lr", args.lr)) if v is not None}
    try:
        config = PPOConfig.preset(args.preset, **changes)
    except ValueError as e:
        ap.error(str(e))
    result = train_ppo(args.env, args.steps, args.seeds, config=config,
                       eval_episodes=args.eval_episodes)
    final = [np.nanmean([v for v in row[-5:] if v is not None] or [np.nan]) for row in result["returns"]]
    print(f"PPO {args.env}: {result['steps']:,d} steps x {args.seeds} seeds in "
          f"{result['wall_s']:.0f} s; final return per seed {np.round(final, 1).tolist()}")
    if result["final_policy"]:
        print(f"final parameters played frozen ({args.eval_episodes} episodes per seed): "
              f"{np.round(result['final_policy'], 1).tolist()}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f)
    return result


if __name__ == "__main__":
    start_command()  # huge pages (restarts once) and the compile cache, before any work
    main()
