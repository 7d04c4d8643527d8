"""How a trained Craftax-Classic-Symbolic (or -Symbolic-Grid) agent dies, and whether its world model sees it coming.

Plays a run folder's final policy (sampling, as in training) in `--envs` envs for `--steps`
steps, reading the game state before every step, and reports:
- what ended each episode: a zombie (one within two cells and health at most 2 before the fatal
  step, or any zombie-adjacent death while asleep, where a hit costs 7), running out of food,
  water or energy, or lava and the rest;
- how the agent lives: episode length, share of steps asleep, with a zombie adjacent, and how
  often it strikes (DO) while a zombie is adjacent;
- the world model on the same frames: its continue head's mean prediction on the records that
  ended an episode against the others (DreamerV3 trains it towards 0 at a death, gamma elsewhere),
  and whether the posterior's decoded zombie channel puts its brightest cell on a true zombie;
- the reward head on the same frames, per achievement: its mean prediction on the records where
  that achievement was unlocked (true reward about +1), against its prediction elsewhere. An
  achievement the head misses is one imagination cannot value.

    python benchmarks/craftax_view.py runs/ladder/craftax/dreamer
    python benchmarks/craftax_view.py runs/ladder/craftax/dreamer --out benchmarks/results/craftax_view.json
    python benchmarks/craftax_view.py --random   # the baseline: uniform random actions, no model
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wmjax.envs.craftax import GRID, MOB_CHANNELS, achievement_names, split_symbolic  # noqa: E402
from wmjax.envs import make_env  # noqa: E402
from wmjax.policy import load_policy, record_rollout, record_steps  # noqa: E402
from wmjax.run import write_json  # noqa: E402
from wmjax.startup import start_command  # noqa: E402

ZOMBIE = MOB_CHANNELS["zombie"]
ENVS = ("Craftax-Classic-Symbolic-v1", GRID)
DO = 5  # the interact / attack action


def probe(inner) -> dict:
    """Per env, before a step: the player's vitals and the nearest zombie's Manhattan distance."""
    dist = jnp.abs(inner.zombies.position - inner.player_position[..., None, :]).sum(-1)
    nearest = jnp.where(inner.zombies.mask, dist, 99).min(-1)
    return dict(health=inner.player_health, food=inner.player_food, drink=inner.player_drink,
                energy=inner.player_energy, asleep=inner.is_sleeping, zombie=nearest,
                achievements=inner.achievements)


def random_act(num_actions: int) -> Callable:
    """Uniform random actions, as an `act(carry, obs, is_first, key)` that keeps no carry."""
    return lambda carry, obs, is_first, key: (
        jax.random.randint(key, is_first.shape, 0, num_actions), carry)


def cause_of_death(rec: dict, t: int, e: int) -> str:
    """What most likely ended an episode, from the state before its last step."""
    health, zombie = int(rec["health"][t, e]), int(rec["zombie"][t, e])
    if rec["asleep"][t, e] and zombie <= 2:
        return "zombie, asleep"
    if zombie <= 2 and health <= 2:
        return "zombie"
    if health <= 1:
        needs = [k for k in ("food", "drink", "energy") if rec[k][t, e] == 0]
        if needs:
            return "no " + " and ".join(needs)
    return "lava or other"


def episodes(rec: dict) -> tuple[collections.Counter, list[int], list[float]]:
    """Causes of the deaths, and each finished episode's length and return."""
    causes, lengths, returns = collections.Counter(), [], []
    steps, envs = rec["ended"].shape
    for e in range(envs):
        start, ret = None, 0.0
        for t in range(steps):
            if rec["is_first"][t, e]:
                start, ret = t, 0.0
            ret += float(rec["reward"][t, e])
            if rec["ended"][t, e] and start is not None:  # only episodes seen from their start
                lengths.append(t - start + 1)
                returns.append(ret)
                causes[cause_of_death(rec, t, e) if rec["terminal"][t, e] else "time limit"] += 1
    return causes, lengths, returns


def world_model_view(policy, rec: dict, envs: int = 16) -> dict:
    """The continue head and the decoded zombie channel on the first `envs` envs' records."""
    agent, params = policy.agent, policy.state.params
    obs = jax.tree.map(lambda x: jnp.asarray(x[:, :envs].swapaxes(0, 1)), rec["obs"])
    action = agent.action_vector(jnp.asarray(rec["action"][:, :envs].T))
    is_first = jnp.asarray(rec["is_first"][:, :envs].T)

    def view(obs, action, is_first):
        _, _, _, feat = agent.observe(params, obs, action, is_first, jax.random.key(0))
        decoded = agent.decode(params, feat)
        heads = agent.heads(params, feat)
        return decoded, heads["cont"], heads["reward"]

    decoded, cont, reward = jax.device_get(jax.jit(view)(obs, action, is_first))
    rewards = reward_view(rec, reward, envs)
    # A step from record t that ends the episode makes record t + 1 its last frame, where the
    # continue head is trained towards 0.
    ended = np.asarray(rec["terminal"][:, :envs].T)
    cont = cont[:, 1:]
    ended = ended[:, :-1]
    true, guess = (np.asarray(split_symbolic(x)["map"])[..., ZOMBIE] for x in (obs, decoded))
    shown = true.reshape(*true.shape[:2], -1).any(-1)  # (envs, steps)
    best = guess.reshape(*guess.shape[:2], -1).argmax(-1)
    hit = np.take_along_axis(true.reshape(*true.shape[:2], -1), best[..., None], -1)[..., 0] > 0
    return {"cont at deaths": float(cont[ended].mean()) if ended.any() else None,
            "deaths seen": int(ended.sum()),
            "cont elsewhere": float(cont[~ended].mean()),
            "frames with a zombie in view": int(shown.sum()),
            "zombie decoded on a true zombie cell": float(hit[shown].mean()) if shown.any() else None,
            "reward head": rewards}


def reward_view(rec: dict, predicted: np.ndarray, envs: int) -> dict:
    """The reward head's mean prediction (on record t + 1, which the step from t reaches) where
    each achievement was unlocked, with the number of unlocks seen, and on the other records."""
    names = achievement_names()
    ach = np.asarray(rec["achievements"][:, :envs]).swapaxes(0, 1).astype(bool)  # (envs, T, 22)
    fresh = ~np.asarray(rec["is_first"][:, :envs].T)[:, 1:]  # the next record is the same episode
    unlocked = ach[:, 1:] & ~ach[:, :-1] & fresh[..., None]  # (envs, T - 1, 22)
    pred, true = np.asarray(predicted)[:, 1:], np.asarray(rec["reward"][:, :envs].T)[:, :-1]
    per = {n: {"unlocks": int(unlocked[..., i].sum()),
               "predicted": round(float(pred[unlocked[..., i]].mean()), 3),
               "true": round(float(true[unlocked[..., i]].mean()), 3)}
           for i, n in enumerate(names) if unlocked[..., i].any()}
    quiet = ~unlocked.any(-1) & fresh
    return {"per achievement": per,
            "elsewhere predicted": round(float(pred[quiet].mean()), 4),
            "elsewhere true": round(float(true[quiet].mean()), 4),
            "elsewhere predicted above 0.5": round(float((pred[quiet] > 0.5).mean()), 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", help="a run folder (omit with --random)")
    ap.add_argument("--random", action="store_true",
                    help="play uniform random actions instead of a trained agent")
    ap.add_argument("--env", default=ENVS[0], choices=ENVS, help="the env for --random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--envs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.random == (args.run_dir is not None):
        ap.error("give a run folder, or --random for the random-action baseline (not both)")
    key = jax.random.key(args.seed)
    if args.random:
        policy, env = None, make_env(args.env)
        rec = record_steps(env, random_act(env.spec.num_actions), None, args.envs, args.steps, key,
                           probe)
        source = f"random actions on {args.env}"
    else:
        policy = load_policy(args.run_dir, args.seed, "train")
        env = policy.env
        if policy.config.env not in ENVS:
            ap.error(f"{args.run_dir} trained on {policy.config.env}; this diagnosis reads the "
                     f"states and observations of {' or '.join(ENVS)}")
        rec = record_rollout(policy, args.envs, args.steps, key, probe)
        source = f"{args.run_dir} (checkpoint {policy.chunk})"
    causes, lengths, returns = episodes(rec)
    adjacent = rec["zombie"] <= 1
    deaths = sum(v for k, v in causes.items() if k != "time limit")
    result = dict(
        run_dir=args.run_dir, env=env.spec.name, seed=args.seed,
        checkpoint=None if args.random else policy.chunk, episodes=len(lengths),
        mean_return=float(np.mean(returns)) if returns else None,
        mean_length=float(np.mean(lengths)) if lengths else None,
        causes=dict(causes.most_common()),
        share_of_deaths={k: round(v / deaths, 3) for k, v in causes.most_common() if k != "time limit"},
        asleep=float(rec["asleep"].mean()), zombie_adjacent=float(adjacent.mean()),
        strikes_when_adjacent=float((rec["action"][adjacent] == DO).mean()) if adjacent.any() else None,
        world_model=None if args.random else world_model_view(policy, rec))
    if args.out:
        write_json(args.out, result)
    if not lengths:
        print(f"{source}: no episode finished in {args.steps} steps; pass more --steps")
    else:
        print(f"{source}: {len(lengths)} episodes, mean return "
              f"{result['mean_return']:.2f}, mean length {result['mean_length']:.0f}")
    print("how episodes ended:", result["causes"])
    print(f"steps asleep {100 * result['asleep']:.1f}%, with a zombie adjacent "
          f"{100 * result['zombie_adjacent']:.1f}%, striking when one is adjacent "
          f"{100 * (result['strikes_when_adjacent'] or 0):.1f}%")
    if args.random:
        return result
    wm = dict(result["world_model"])
    rewards = wm.pop("reward head")
    print("world model:", wm)
    print("reward head where an achievement was unlocked (predicted / true, unlocks):")
    for name, r in rewards["per achievement"].items():
        print(f"  {name:24s} {r['predicted']:6.3f} / {r['true']:6.3f}  ({r['unlocks']})")
    print(f"  elsewhere: predicted {rewards['elsewhere predicted']:.4f}, true "
          f"{rewards['elsewhere true']:.4f}, predicted above 0.5 on "
          f"{100 * rewards['elsewhere predicted above 0.5']:.2f}% of records")
    return result


if __name__ == "__main__":
    start_command()
    main()
