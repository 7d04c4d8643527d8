"""Does a trained Freeway-MinAtar agent wait for cars, and does its world model know it should?

Freeway rewards each crossing; a car that hits the chicken sends it back to the bottom row.
Pressing "up" on every step scores about 18 per episode; waiting for a gap scores more. This
plays a run folder's final policy (sampling, as in training) in `--envs` envs for `--steps`
steps and, before every step, asks the game itself what "up" and "noop" would do (one step of
the true dynamics from the current state). A step is *dodgeable* when "up" would be hit and
"noop" would not. It reports:
- how the policy plays: return, crossings and hits per episode, action shares, and how often it
  presses "up" on dodgeable steps;
- how well the world model draws the frames (`frames`): its reconstruction loss on these
  fresh frames (`posterior_rec_loss`, the training loss's term); over every recorded window,
  the share of lanes whose car, and whose speed trail, its posterior's reconstruction puts on
  the right cells, and the same for its prior one step ahead under the action taken; the
  chicken likewise. Cars that move on that step are counted apart, as the model must know
  when they move. `replay_frames` gives the same figures on 1,024 windows of the checkpoint's
  own replay (its loss is what the run logs as `loss/rec`), so the gap shows how much of the
  model's fit to its replay carries over to new episodes;
- what the world model predicts there, from its posterior at that step:
  - whether the prior after "up" puts the chicken back on the bottom row (it foresees the hit);
  - the imagined value of each first action, Q(s, a) = r + c * R^lambda, where the rest of the
    rollout follows the actor for the imagination horizon and R^lambda is the actor-critic's
    lambda-return (averaged over `--samples` rollouts). If Q(noop) > Q(up) on dodgeable steps,
    the model and critic know waiting pays, and a policy that still presses "up" has stopped
    exploring; if not, the world model or critic is the limit;
- whether the critic knows that the chicken's row matters (`values`): per true row, the
  critic's value of the posterior states beside the discounted return the policy then got, and
  the reward head's prediction at the states a crossing led to and elsewhere.

    python benchmarks/freeway_view.py runs/ladder_freeway_bce_ent3e4/freeway/dreamer
    python benchmarks/freeway_view.py RUN_DIR --chunk 73 --out benchmarks/results/freeway_view.json

Runs on `Freeway-MinAtar-Flat` (the frames as one vector) are read the same way, their
observations and decoded vectors laid back out as frames.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wmjax import replay as rb  # noqa: E402
from wmjax.agents.dreamer.agent import Batch  # noqa: E402
from wmjax.agents.dreamer.losses import lambda_return  # noqa: E402
from wmjax.envs.core import FLAT_SUFFIX  # noqa: E402
from wmjax.models.rssm import RSSM  # noqa: E402
from wmjax.policy import (  # noqa: E402
    Policy, load_policy, load_train_state, record_rollout, resolve_member)
from wmjax.run import write_json  # noqa: E402
from wmjax.startup import start_command  # noqa: E402

ENVS = ("Freeway-MinAtar", "Freeway-MinAtar" + FLAT_SUFFIX)
FRAME = (10, 10, 7)  # rows, columns, channels
NOOP, UP, DOWN = 0, 1, 2  # the agent's actions (gymnax's minimal set 0, 2, 4)
BOTTOM = 9  # the chicken's start row
CHICKEN, CARS = 0, 1  # observation channels; 2-6 are the cars' trails, one per speed
LANES = slice(1, 9)  # rows 1-8 hold one car each


def moved_row(pos, timer, action):
    """Where the chicken's own move puts it, cars aside: one row up or down when its move timer
    is at 0 (row 0 is the far side), else where it is. Works on numpy and jax values."""
    xp = jnp if isinstance(pos, jax.Array) else np
    ready = timer == 0
    up = xp.where(ready & (action == UP), xp.maximum(pos - 1, 0), pos)
    return xp.where(ready & (action == DOWN), xp.minimum(up + 1, BOTTOM), up)


def make_probe(policy: Policy):
    """probe(inner) for record_rollout: the chicken's row and move timer, and whether one true
    step of "noop" or "up" from this state would end in a hit (back on the bottom row without
    a crossing, where the move alone would not have put it there)."""
    env = policy.env

    def hit(inner, action):
        def one(state):
            _, after, reward, _, _ = env.transition(jax.random.key(0), state, jnp.int32(action))
            expected = moved_row(state.pos, state.move_timer, action)
            return (after.pos == BOTTOM) & (reward == 0) & (expected != BOTTOM)
        return jax.vmap(one)(inner)

    def probe(inner) -> dict:
        return dict(pos=inner.pos, timer=inner.move_timer, hit_noop=hit(inner, NOOP),
                    hit_up=hit(inner, UP))
    return probe


def episodes(rec: dict) -> dict:
    """Per finished episode: return, crossings and hits. A hit is a step that ends on the bottom
    row without a crossing where the chicken's own move would not have put it there."""
    steps, envs = rec["ended"].shape
    hit = ((rec["pos"][1:] == BOTTOM) & (rec["reward"][:-1] == 0) & ~rec["ended"][:-1]
           & (moved_row(rec["pos"][:-1], rec["timer"][:-1], rec["action"][:-1]) != BOTTOM))
    out = dict(returns=[], crossings=[], hits=[])
    for e in range(envs):
        ret = hits = crossings = 0
        for t in range(steps - 1):
            ret += float(rec["reward"][t, e])
            crossings += int(rec["reward"][t, e] > 0)
            hits += int(hit[t, e])
            if rec["ended"][t, e]:
                out["returns"].append(ret)
                out["crossings"].append(crossings)
                out["hits"].append(hits)
                ret = hits = crossings = 0
    return out


def windows(x: np.ndarray, window: int) -> np.ndarray:
    """(steps, envs, ...) records -> (envs * steps // window, window, ...) replay-like windows,
    dropping the steps past the last whole window."""
    steps = x.shape[0] // window * window
    x = x[:steps].swapaxes(0, 1)
    return x.reshape((x.shape[0] * (steps // window), window) + x.shape[2:])


def laid_out(x, flat: bool):
    """Frames (..., 10, 10, 7) as they are, or the flat env's vectors laid back out as the
    frames they came from."""
    return x.reshape(x.shape[:-1] + FRAME) if flat else x


def cells(x, flat: bool):
    """Observations or decoded predictions as boolean frames (..., 10, 10, 7): pixels above half
    on, or, for the flat env, vector entries above 0.5."""
    return laid_out(x, flat) > (0.5 if flat else 127)


def lanes_right(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Which objects a predicted frame draws on exactly the right cells, against the true frame
    (both boolean (..., 10, 10, 7)): per frame the chicken (`chicken`, (...)), per lane its car
    (`cars`) and its speed trail over all trail channels (`trails`), both (..., 8)."""
    return dict(chicken=(pred[..., CHICKEN] == true[..., CHICKEN]).all((-1, -2)),
                cars=(pred[..., LANES, :, CARS] == true[..., LANES, :, CARS]).all(-1),
                trails=(pred[..., LANES, :, 2:] == true[..., LANES, :, 2:]).all((-1, -2)))


def observed(policy: Policy, obs, action, is_first):
    """The world model's posterior states over windows (B, T), each started fresh as in
    training (`action` as the agent's action vectors); fresh episodes and replay both go
    through this, with the same sampling key."""
    return policy.agent.observe(policy.state.params, obs, action, is_first, jax.random.key(1))[1]


def posterior(policy: Policy, rec: dict, window: int):
    """`observed` over the record's windows; both views read this one pass."""
    def observe(obs, action, is_first):
        return observed(policy, obs, policy.agent.action_vector(action), is_first)
    return jax.jit(observe)(*(jnp.asarray(windows(rec[k], window))
                              for k in ("obs", "action", "is_first")))


def rssm(policy: Policy, *args, method):
    """A method of the policy's RSSM with its trained parameters."""
    return policy.agent.rssm.apply({"params": policy.state.params["rssm"]}, *args, method=method)


def decoder(policy: Policy, feat: jax.Array) -> jax.Array:
    """The policy's decoder output (what its loss reads) from RSSM features."""
    return policy.agent.decoder.apply({"params": policy.state.params["decoder"]}, feat)


def _flat(policy: Policy) -> bool:
    """Whether the policy's env hands the frames over as one vector."""
    return policy.config.env.endswith(FLAT_SUFFIX)


def _mean(x: np.ndarray) -> float | None:
    """The mean of `x` (for booleans, the share of True), or None when it is empty."""
    return float(x.mean()) if x.size else None


def frame_scores(policy: Policy, post, obs, action, is_first) -> dict:
    """How well the world model draws Freeway's frames over windows (B, T) whose posterior
    states are `post`: its posterior reconstruction of each frame, and its prior's prediction of
    the next frame under the action taken (`action` as the agent's action vectors; pixels above
    half on). Fresh episodes (`frame_view`) and replay (`replay_view`) are scored by this one
    function, so the two sets of figures compare."""
    agent, flat = policy.agent, _flat(policy)

    def draw(post, action, obs):
        prior = rssm(policy, post, action, None, method=RSSM.img_step)
        out = [decoder(policy, rssm(policy, state, method=RSSM.feat)) for state in (post, prior)]
        loss = agent.decoder.loss(out[0], obs).mean()  # the training loss's term, on these frames
        return tuple(cells(agent.decoder.to_obs(x), flat) for x in out) + (loss,)

    recon, pred, loss = (np.asarray(x) for x in jax.jit(draw)(post, jnp.asarray(action),
                                                               jnp.asarray(obs)))
    obs, is_first = cells(np.asarray(obs), flat), np.asarray(is_first)
    same_episode = ~is_first[:, 1:]  # a prediction across a reset has nothing to match
    seen = lanes_right(recon, obs)
    ahead = {k: v[same_episode] for k, v in lanes_right(pred[:, :-1], obs[:, 1:]).items()}
    moves = (obs[:, :-1, LANES, :, CARS] != obs[:, 1:, LANES, :, CARS]).any(-1)[same_episode]
    return dict(
        posterior_rec_loss=float(loss),
        posterior_chicken_right=float(seen["chicken"].mean()),
        posterior_car_right=float(seen["cars"].mean()),
        posterior_trail_right=float(seen["trails"].mean()),
        prior_chicken_right=float(ahead["chicken"].mean()),
        prior_car_right=float(ahead["cars"].mean()),
        prior_car_right_when_it_moves=_mean(ahead["cars"][moves]),
        prior_car_right_when_it_stays=_mean(ahead["cars"][~moves]),
        prior_trail_right=float(ahead["trails"].mean()),
        cars_moving_per_step=float(moves.mean()))


def frame_view(policy: Policy, rec: dict, post, window: int) -> dict:
    """`frame_scores` over all recorded windows of fresh episodes (`post`, from `posterior`)."""
    obs, action, is_first = (windows(rec[k], window) for k in ("obs", "action", "is_first"))
    return frame_scores(policy, post, obs, policy.agent.action_vector(jnp.asarray(action)),
                        is_first)


def discounted_returns(reward: np.ndarray, ended: np.ndarray, gamma: float):
    """(steps, envs) records -> each step's discounted return within its episode, sum over k of
    gamma^k * reward[t + k] (reward[t] is the step's own reward, as the critic's target counts
    it), and how many steps of the episode the record holds from t on (the sum is cut there)."""
    ret = np.zeros(reward.shape, np.float64)
    ahead = np.zeros(reward.shape, np.int64)
    nxt, n = np.zeros(reward.shape[1:]), np.zeros(reward.shape[1:], np.int64)
    for t in range(reward.shape[0] - 1, -1, -1):
        live = ~ended[t]
        nxt = reward[t] + gamma * live * nxt
        n = 1 + live * n
        ret[t], ahead[t] = nxt, n
    return ret, ahead


def value_view(policy: Policy, rec: dict, post, window: int) -> dict:
    """Does the critic know that the chicken's row matters? Per true chicken row, the critic's
    value of the posterior states there beside the discounted return the policy then got (over
    states with at least three discount horizons of their episode recorded ahead, where the cut
    sum is within 5% of the whole); and the reward head's prediction at the states a crossing
    led to, against elsewhere (the truth: 1 and 0)."""
    agent, params, c = policy.agent, policy.state.params, policy.agent.config
    feat = rssm(policy, post, method=RSSM.feat)
    heads = agent.heads(params, feat)
    val, rew = np.asarray(heads["value"]), np.asarray(heads["reward"])
    ret, ahead = discounted_returns(rec["reward"], rec["ended"], c.gamma)
    counted = windows(ahead >= 3 * c.horizon, window)
    ret, row = windows(ret, window), windows(rec["pos"], window)
    got = np.zeros(rec["reward"].shape, bool)  # the state a crossing led to (same episode)
    got[1:] = (rec["reward"][:-1] > 0) & ~rec["ended"][:-1]
    got = windows(got, window)
    by_row = [dict(row=r, states=int((row == r).sum()),
                   critic=_mean(val[row == r]), true_return=_mean(ret[(row == r) & counted]))
              for r in range(1, BOTTOM + 1)]
    return dict(by_row=by_row, crossings=int(got.sum()), reward_at_crossings=_mean(rew[got]),
                reward_elsewhere=_mean(rew[~got]))


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def replay_view(policy: Policy, run_dir: str, seed: int, count: int = 1024) -> dict:
    """`frame_scores` on `count` windows sampled from the replay of seed `seed` in the policy's
    checkpoint: the data the model was trained on. Its `posterior_rec_loss` is what the run
    logged as `loss/rec`, measured again at this checkpoint; beside the same figures on fresh
    episodes, the gap shows how much of the model's fit to its replay carries over to new
    episodes (cars it has learnt to move, or only the car layouts it has seen)."""
    run_dir, member = resolve_member(run_dir, seed)
    _, _, state = load_train_state(run_dir, policy.chunk)
    replay = jax.tree.map(lambda x: x[member], state.replay)

    def sample(key):
        b = Batch(**rb.sample(replay, key, count, policy.agent.config.batch_length))
        return observed(policy, b.obs, b.action, b.is_first), b.obs, b.action, b.is_first
    return frame_scores(policy, *jax.jit(sample)(jax.random.key(seed)))


def model_view(policy: Policy, rec: dict, post, picks: dict[str, np.ndarray], samples: int,
               window: int, key: jax.Array) -> dict:
    """The world model's view at the picked steps (name -> (env, step) index pairs), from the
    posterior `post` over the record's windows: the chicken row decoded from the posterior (is
    it seen?) and from the prior after "up" (is the hit foreseen?), and the imagined Q of
    "noop", "up" and "down"."""
    agent, params, c = policy.agent, policy.state.params, policy.agent.config
    per_env = rec["ended"].shape[0] // window

    def value_of(start, action, key):
        """Q(start, action) for one sampled rollout, the actor choosing after the first action."""
        first = rssm(policy, start, agent.action_vector(jnp.full(start.deter.shape[:1], action)),
                     key, method=RSSM.img_step)
        feat, _ = agent.imagine(params, first, jax.random.fold_in(key, 1), time_major=True)
        heads = agent.heads(params, feat)
        rew, con, val = heads["reward"], heads["cont"], heads["value"]
        ret = lambda_return(jnp.zeros_like(con), 1.0 - con, rew, val, 1.0, c.lam, axis=0)
        return rew[0] + con[0] * ret[0]

    def chicken_row(state):  # the decoded frame's brightest chicken row
        frame = laid_out(agent.decode(params, rssm(policy, state, method=RSSM.feat)), _flat(policy))
        return jnp.argmax(frame[..., CHICKEN].max(-1), -1)

    def view(start, key):
        after_up = rssm(policy, start, agent.action_vector(jnp.full(start.deter.shape[:1], UP)),
                        None, method=RSSM.img_step)
        keys = jax.random.split(key, samples)
        q = [jax.vmap(lambda k, a=a: value_of(start, a, k))(keys).mean(0) for a in (NOOP, UP, DOWN)]
        return chicken_row(start), chicken_row(after_up), jnp.stack(q, -1)
    view = jax.jit(view)

    out = {}
    for name, idx in picks.items():
        if not len(idx):
            out[name] = dict(steps=0)
            continue
        e, t = idx[:, 0], idx[:, 1]
        flat = e * per_env + t // window
        start = jax.tree.map(lambda x: x[flat, t % window], post)
        now, row, q = (np.asarray(v) for v in view(start, key))
        out[name] = dict(
            steps=int(len(idx)),
            posterior_row_right=float((now == rec["pos"][t, e]).mean()),
            prior_row_after_up_is_bottom=float((row == BOTTOM).mean()),
            prior_row_after_up_is_one_higher=float((row == rec["pos"][t, e] - 1).mean()),
            q_noop=float(q[:, NOOP].mean()), q_up=float(q[:, UP].mean()), q_down=float(q[:, DOWN].mean()),
            noop_valued_above_up=float((q[:, NOOP] > q[:, UP]).mean()))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=None, help="a checkpoint to read (default: the last)")
    ap.add_argument("--envs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2560, help="one episode is 2500 steps")
    ap.add_argument("--samples", type=int, default=8, help="imagined rollouts per Q estimate")
    ap.add_argument("--max-picks", type=int, default=1024, help="steps per kind fed to the model")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    policy = load_policy(args.run_dir, args.seed, "train", args.chunk)
    if policy.config.env not in ENVS:
        ap.error(f"{args.run_dir} trained on {policy.config.env}; this diagnosis reads the "
                 f"states of {' or '.join(ENVS)}")
    key = jax.random.key(args.seed)
    rec = record_rollout(policy, args.envs, args.steps, key, make_probe(policy))
    eps = episodes(rec)
    window = policy.agent.config.batch_length
    usable = np.zeros_like(rec["ended"], bool)
    usable[: rec["ended"].shape[0] // window * window] = True
    dodgeable = rec["hit_up"] & ~rec["hit_noop"] & (rec["timer"] == 0)
    safe = ~rec["hit_up"] & ~rec["hit_noop"] & (rec["timer"] == 0) & (rec["pos"] != BOTTOM)
    rng = np.random.default_rng(args.seed)

    def pick(mask):  # (env, step) pairs, at most --max-picks
        idx = np.argwhere((mask & usable).T)
        return idx[rng.permutation(len(idx))[: args.max_picks]]
    shares = np.bincount(rec["action"].reshape(-1), minlength=3) / rec["action"].size
    post = posterior(policy, rec, window)
    result = dict(
        run_dir=args.run_dir, seed=args.seed, checkpoint=policy.chunk, episodes=len(eps["returns"]),
        mean_return=float(np.mean(eps["returns"])) if eps["returns"] else None,
        crossings_per_episode=float(np.mean(eps["crossings"])) if eps["returns"] else None,
        hits_per_episode=float(np.mean(eps["hits"])) if eps["returns"] else None,
        action_share=dict(noop=shares[NOOP], up=shares[UP], down=shares[DOWN]),
        dodgeable_share_of_steps=float(dodgeable.mean()),
        up_when_dodgeable=float((rec["action"][dodgeable] == UP).mean()) if dodgeable.any() else None,
        up_when_safe=float((rec["action"][safe] == UP).mean()) if safe.any() else None,
        frames=frame_view(policy, rec, post, window),
        replay_frames=replay_view(policy, args.run_dir, args.seed),
        world_model=model_view(policy, rec, post,
                               {"dodgeable": pick(dodgeable), "safe": pick(safe)},
                               args.samples, window, jax.random.fold_in(key, 7)),
        values=value_view(policy, rec, post, window))
    print(f"{args.run_dir} (checkpoint {policy.chunk}): {result['episodes']} episodes, mean return "
          f"{result['mean_return']}, crossings {result['crossings_per_episode']}, hits "
          f"{result['hits_per_episode']} per episode")
    def share(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"
    print("actions:", {k: round(float(v), 3) for k, v in result["action_share"].items()},
          f"| dodgeable steps {share(result['dodgeable_share_of_steps'])}, 'up' on them "
          f"{share(result['up_when_dodgeable'])}, 'up' on safe steps {share(result['up_when_safe'])}")
    for name in ("frames", "replay_frames"):
        print(f"  {name}:", {k: None if v is None else round(v, 3) for k, v in result[name].items()})
    for name, v in result["world_model"].items():
        print(f"  {name}:", {k: round(x, 3) if isinstance(x, float) else x for k, x in v.items()})
    values = result["values"]
    print("  critic value / true return by chicken row:", ", ".join(
        f"{r['row']}: {_fmt(r['critic'])} / {_fmt(r['true_return'])}" for r in values["by_row"]))
    print(f"  reward head at the {values['crossings']} states a crossing led to: "
          f"{_fmt(values['reward_at_crossings'])} (truth 1), elsewhere "
          f"{_fmt(values['reward_elsewhere'], 4)} (truth 0)")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    start_command()
    main()
