"""Has the world model learned when episodes end? The continue head on a run's own replay.

Loads the newest checkpoint of a run folder (a `python -m wmjax train` folder, a ladder rung's
`dreamer/` folder or a sweep program), runs each seed's world model over its replay (posterior
states, as in training, in windows that start from a fresh state) and compares the continue
head's prediction at the records that ended an episode by termination with the rest. The head
is trained towards gamma (~0.997) where an episode goes on and 0 where it terminates; an
imagined rollout only sees an end coming if the head predicts it, so a head that stays near
gamma at the terminal records leaves the critic blind to them. CartPole-v1 runs also split
the terminal records by cause (the cart left the track, or the pole fell).

    python benchmarks/continue_head.py runs/ladder/cartpole/dreamer
    python benchmarks/continue_head.py RUN_DIR --last 4096     # the newest 4096 records per env
    python benchmarks/continue_head.py RUN_DIR --fit-steps 3125  # then train the head alone

`--fit-steps` asks whether the head is short of updates or the features cannot tell the ends
apart: it trains a copy of the head alone on the frozen features and reports again.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from wmjax.agents.dreamer.agent import Dreamer  # noqa: E402
from wmjax.policy import load_train_state  # noqa: E402
from wmjax.run import cached_trainer  # noqa: E402
from wmjax.startup import start_command  # noqa: E402

# CartPole-v1's termination thresholds (gymnax EnvParams): obs[0] is x, obs[2] the pole angle.
CARTPOLE_LIMITS = {"cart position": (0, 2.4), "pole angle": (2, 12 * 2 * np.pi / 360)}


def replay_in_order(replay, seed: int, last: int | None = None):
    """One seed's replay fields, oldest record first: every leaf (num_envs, records, ...)."""
    cap = jax.tree.leaves(replay.data)[0].shape[2]
    count = int(replay.count[seed])
    take = count if last is None else min(last, count)
    idx = (int(replay.pos[seed]) - take + np.arange(take)) % cap
    return jax.tree.map(lambda x: np.asarray(x[seed][:, idx]), replay.data)


@functools.lru_cache(maxsize=8)
def _programs(agent: Dreamer):
    """The jitted feature and head functions of one agent, with parameters as arguments, so
    another seed or checkpoint reuses the compiled program instead of baking in constants."""

    def feat(params, obs, action, is_first):
        return agent.observe(params, obs, action, is_first, jax.random.key(0))[3]

    def cont(head, feats):
        return jax.nn.sigmoid(agent.cont.apply({"params": head}, feats)[..., 0])

    return jax.jit(feat), jax.jit(cont)


def features(agent: Dreamer, params: dict, records, window: int = 1024) -> np.ndarray:
    """Posterior features at every record (num_envs, records, feat), computed window by window,
    each window starting from a fresh state as a replayed training window does."""
    feat = _programs(agent)[0]
    n = records["is_first"].shape[1]
    window = min(window, n)
    out = np.zeros(records["is_first"].shape + (agent.config.feat_size,), np.float32)
    for start in range(0, n, window):
        lo = min(start, n - window)  # the last window ends at n and keeps its shape
        part = jax.tree.map(lambda x: x[:, lo:lo + window], records)
        out[:, start:lo + window] = np.asarray(feat(params, part["obs"], part["action"],
                                                    part["is_first"]))[:, start - lo:]
    return out


def continue_head(agent: Dreamer, head: dict, feats: np.ndarray) -> np.ndarray:
    """The continue head's probability that the episode goes on, at every feature."""
    return np.asarray(_programs(agent)[1](head, feats))


def continue_predictions(agent: Dreamer, params: dict, records, window: int = 1024) -> np.ndarray:
    """The continue head's probability at every record (num_envs, records)."""
    return continue_head(agent, params["cont"], features(agent, params, records, window))


def fit_head(agent: Dreamer, head: dict, feats: np.ndarray, is_terminal: np.ndarray, steps: int,
             lr: float = 3e-4, batch: int = 1024, key: jax.Array | None = None) -> dict:
    """Train the continue head alone on frozen features (Adam, uniform batches of records,
    DreamerV3's targets: gamma where an episode goes on, 0 where it terminates). Says whether
    the head is short of updates or the features cannot tell the ends apart."""
    feats = jnp.asarray(feats.reshape(-1, feats.shape[-1]))
    target = jnp.asarray((1.0 - is_terminal.reshape(-1)) * agent.config.gamma, jnp.float32)
    key = jax.random.key(0) if key is None else key
    return _fitter(agent, lr, batch)(head, feats, target, jax.random.split(key, steps))


@functools.lru_cache(maxsize=8)
def _fitter(agent: Dreamer, lr: float, batch: int):
    """fit_head's whole loop as one program; features and targets are arguments, not constants."""
    opt = optax.adam(lr)

    @jax.jit
    def fit(head, feats, target, keys):
        def loss(h, idx):
            logit = agent.cont.apply({"params": h}, feats[idx])[..., 0]
            return optax.sigmoid_binary_cross_entropy(logit, target[idx]).mean()

        def step(carry, k):
            h, opt_state = carry
            grads = jax.grad(loss)(h, jax.random.randint(k, (batch,), 0, feats.shape[0]))
            updates, opt_state = opt.update(grads, opt_state)
            return (optax.apply_updates(h, updates), opt_state), None

        (head, _), _ = jax.lax.scan(step, (head, opt.init(head)), keys)
        return head

    return fit


def summarise(cont: np.ndarray, records, env: str) -> dict:
    """Mean prediction at terminal records and elsewhere; for CartPole also per cause."""
    term = np.asarray(records["is_terminal"], bool)
    row = dict(records=int(term.size), terminals=int(term.sum()),
               cont_at_terminals=float(cont[term].mean()) if term.any() else None,
               terminals_below_half=float((cont[term] < 0.5).mean()) if term.any() else None,
               cont_elsewhere=float(cont[~term].mean()))
    if env == "CartPole-v1":
        obs = np.asarray(records["obs"])
        for cause, (dim, limit) in CARTPOLE_LIMITS.items():
            hit = term & (np.abs(obs[..., dim]) > limit)
            row[f"terminals/{cause}"] = int(hit.sum())
            row[f"cont_at/{cause}"] = float(cont[hit].mean()) if hit.any() else None
    return row


def _print(seed: int, chunk: int, row: dict, gamma: float, tag: str = "") -> None:
    fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"
    causes = "".join(f"  {c}: {row[f'terminals/{c}']} at {fmt(row[f'cont_at/{c}'])}"
                     for c in CARTPOLE_LIMITS if f"terminals/{c}" in row)
    print(f"seed {seed} (chunk {chunk}){tag}: {row['terminals']} terminal records of "
          f"{row['records']}; continue {fmt(row['cont_at_terminals'])} at them "
          f"({fmt(row['terminals_below_half'])} below 0.5), {row['cont_elsewhere']:.4f} "
          f"elsewhere (target {gamma:.4f}){causes}")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--last", type=int, default=None,
                    help="only the newest LAST records of each env (default: the whole replay)")
    ap.add_argument("--window", type=int, default=1024, help="records per observed window")
    ap.add_argument("--fit-steps", type=int, default=0,
                    help="then train the head alone on the frozen features for this many Adam "
                         "steps (batches of 1024 records) and report again")
    ap.add_argument("--fit-lr", type=float, default=3e-4)
    args = ap.parse_args(argv)
    if (args.last is not None and args.last < 1) or args.window < 1 or args.fit_steps < 0:
        ap.error(f"--last {args.last} --window {args.window} --fit-steps {args.fit_steps}; "
                 f"allowed: --last and --window >= 1, --fit-steps >= 0")
    config, chunk, state = load_train_state(args.run_dir)
    agent = cached_trainer(config).agent
    rows = []
    for seed in range(config.seeds):
        records = replay_in_order(state.replay, seed, args.last)
        params = jax.tree.map(lambda x: x[seed], state.agent.params)
        feats = features(agent, params, records, args.window)
        row = dict(seed=seed, chunk=chunk,
                   **summarise(continue_head(agent, params["cont"], feats), records, config.env))
        _print(seed, chunk, row, config.agent.gamma)
        if args.fit_steps:
            head = fit_head(agent, params["cont"], feats, np.asarray(records["is_terminal"]),
                            args.fit_steps, args.fit_lr, key=jax.random.key(seed))
            row["fitted"] = summarise(continue_head(agent, head, feats), records, config.env)
            _print(seed, chunk, row["fitted"], config.agent.gamma,
                   f", head alone after {args.fit_steps} steps")
        rows.append(row)
    return rows


if __name__ == "__main__":
    start_command()
    main()
