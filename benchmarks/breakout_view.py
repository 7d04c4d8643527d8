"""What a trained Breakout-MinAtar agent sees and does: a diagnosis of the ladder's plateau.

Plays a run folder's final policy (sampling, as in training) in `--envs` envs for `--steps`
steps and reports two things:
- where the paddle was when the ball was lost: the ball's column minus the paddle's on each
  episode's last frame. A policy that tracks the ball loses it at offsets of 0 or ±1 (too late);
  one that does not loses it anywhere;
- whether the world model sees the ball: the posterior's reconstruction of each channel
  (paddle, ball, trail) over the first 64 steps of 16 envs, counted correct when the brightest
  decoded pixel is the true one, per row of the ball.

    python benchmarks/breakout_view.py runs/ladder/breakout/dreamer
    python benchmarks/breakout_view.py runs/ladder/breakout/dreamer --out benchmarks/results/breakout_view.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wmjax.policy import load_policy, record_rollout  # noqa: E402
from wmjax.startup import start_command  # noqa: E402

CHANNELS = {0: "paddle", 1: "ball", 2: "trail"}  # gymnax Breakout-MinAtar; 3 is the bricks


def _where(frame: np.ndarray, channel: int) -> tuple[int, int] | None:
    cells = np.argwhere(frame[..., channel] > 0)
    return (int(cells[0][0]), int(cells[0][1])) if len(cells) else None


def loss_offsets(rec: dict) -> tuple[dict, list[float]]:
    """Ball column minus paddle column on every episode's last frame, and episode returns."""
    offsets, returns = collections.Counter(), []
    steps, envs = rec["ended"].shape
    for e in range(envs):
        ret = 0.0
        for t in range(steps - 1):
            ret += float(rec["reward"][t, e])
            if rec["ended"][t, e]:
                last = rec["obs"][t + 1, e]
                ball, paddle = _where(last, 1), _where(last, 0)
                if ball and paddle:
                    offsets[ball[1] - paddle[1]] += 1
                returns.append(ret)
                ret = 0.0
    return dict(sorted(offsets.items())), returns


def reconstruction(policy, rec: dict, envs: int = 16, length: int = 64) -> dict:
    """Per channel and ball row: how often the posterior's decoded frame puts the channel's
    brightest pixel on the true cell."""
    agent, params = policy.agent, policy.state.params
    obs = jnp.asarray(rec["obs"][:length, :envs].swapaxes(0, 1))
    action = agent.action_vector(jnp.asarray(rec["action"][:length, :envs].T))
    is_first = jnp.asarray(rec["is_first"][:length, :envs].T)

    def decode(obs, action, is_first):
        _, _, _, feat = agent.observe(params, obs, action, is_first, jax.random.key(0))
        return agent.decode(params, feat)

    decoded = np.asarray(jax.jit(decode)(obs, action, is_first))
    obs = np.asarray(obs)
    counts = collections.defaultdict(lambda: [0, 0])  # (channel, ball row) -> [right, seen]
    for e in range(obs.shape[0]):
        for t in range(obs.shape[1]):
            ball = _where(obs[e, t], 1)
            for channel, name in CHANNELS.items():
                true = _where(obs[e, t], channel)
                if true is None or ball is None:
                    continue
                guess = np.unravel_index(np.argmax(decoded[e, t, ..., channel]), obs.shape[2:4])
                for key in ((name, "all"), (name, f"ball row {ball[0]}")):
                    counts[key][0] += int(tuple(int(g) for g in guess) == true)
                    counts[key][1] += 1
    return {f"{name} | {where}": dict(right=r, seen=n, rate=round(r / n, 3))
            for (name, where), (r, n) in sorted(counts.items())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--envs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    policy = load_policy(args.run_dir, args.seed, "train")
    if policy.config.env != "Breakout-MinAtar":
        ap.error(f"{args.run_dir} trained on {policy.config.env}; this diagnosis reads "
                 "Breakout-MinAtar frames")
    rec = record_rollout(policy, args.envs, args.steps, jax.random.key(args.seed))
    offsets, returns = loss_offsets(rec)
    seen = reconstruction(policy, rec)
    actions = np.bincount(rec["action"].reshape(-1), minlength=3) / rec["action"].size
    result = dict(run_dir=args.run_dir, seed=args.seed, checkpoint=policy.chunk,
                  episodes=len(returns), mean_return=float(np.mean(returns)) if returns else None,
                  ball_minus_paddle_at_loss=offsets,
                  action_share={"noop": actions[0], "left": actions[1], "right": actions[2]},
                  reconstruction=seen)
    print(f"{args.run_dir} (checkpoint {policy.chunk}): {len(returns)} episodes, mean return "
          f"{result['mean_return']:.2f}; actions noop/left/right {np.round(actions, 2).tolist()}")
    print("ball column - paddle column when the ball was lost:", offsets)
    for key, v in seen.items():
        print(f"  reconstructed {key}: {v['right']}/{v['seen']} ({100 * v['rate']:.0f}%)")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=float)
    return result


if __name__ == "__main__":
    start_command()
    main()
