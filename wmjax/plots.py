"""Pictures of runs: learning curves over seeds, and the world model's open-loop predictions.

    python -m wmjax plot runs/a runs/b --out plots/

- `curves.png`: a metric (default episode_return) against env steps, one line per run folder:
  the mean over seeds, shaded between the lowest and highest seed.
- `<run>_openloop.png`: from the run's newest checkpoint, a few sequences drawn from its own
  replay; the world model observes the first half and predicts the rest open loop under the
  recorded actions. One panel per observation dimension: truth, prediction, and the point where
  observing stops.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Sequence

import jax
import numpy as np

from wmjax import replay as rb
from wmjax.agents.dreamer.agent import Batch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a killed run
    return rows


def curve(rows: list[dict], metric: str = "episode_return") -> tuple[np.ndarray, ...]:
    """(env_steps, mean, low, high) over seeds; points where no seed has a value are dropped."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r.get(metric) is not None:
            by_step[int(r["env_step"])].append(float(r[metric]))
    steps = np.array(sorted(by_step))
    vals = [by_step[s] for s in steps]
    mean = np.array([np.mean(v) for v in vals])
    low = np.array([np.min(v) for v in vals])
    high = np.array([np.max(v) for v in vals])
    return steps, mean, low, high


def plot_curves(run_dirs: Sequence[str], path: str, metric: str = "episode_return") -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plotted = 0
    for run_dir in run_dirs:
        rows = read_metrics(run_dir)
        steps, mean, low, high = curve(rows, metric)
        if len(steps) == 0:
            continue
        seeds = len({r["seed"] for r in rows})
        label = f"{os.path.basename(os.path.normpath(run_dir))} ({seeds} seed{'s' * (seeds > 1)})"
        (line,) = ax.plot(steps, mean, label=label)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        plotted += 1
    if not plotted:
        plt.close(fig)
        raise ValueError(f"no run among {list(run_dirs)} has logged {metric!r} yet")
    ax.set_xlabel("env steps")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean over seeds, shaded min to max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def openloop(run_dir: str, seed: int = 0, sequences: int = 3, key: int = 0):
    """(truth, prediction, context) for `sequences` windows of the run's replay: arrays
    (sequences, T, obs...) with T = the agent's batch_length and context = T // 2."""
    from wmjax.policy import load_train_state, resolve_member
    from wmjax.run import cached_trainer

    run_dir, seed = resolve_member(run_dir, seed)
    config, _, state = load_train_state(run_dir)
    agent = cached_trainer(config).agent
    T = config.agent.batch_length
    replay = jax.tree.map(lambda x: x[seed], state.replay)
    if int(replay.count) < T:
        raise ValueError(f"{run_dir}: replay holds {int(replay.count)} steps per env, fewer than "
                         f"one sequence of {T}")
    params = jax.tree.map(lambda x: x[seed], state.agent.params)
    k_sample, k_model = jax.random.split(jax.random.key(key))
    batch = Batch(**rb.sample(replay, k_sample, sequences, T))
    context = T // 2
    pred = jax.jit(agent.open_loop, static_argnums=2)(params, batch, context, k_model)
    return np.asarray(batch.obs), np.asarray(pred), context


def plot_openloop(run_dir: str, path: str, seed: int = 0, sequences: int = 3) -> str:
    truth, pred, context = openloop(run_dir, seed, sequences)
    if truth.ndim != 3:
        raise ValueError(f"open-loop plots support vector observations; got shape {truth.shape[2:]}")
    plt = _pyplot()
    dims = truth.shape[-1]
    fig, axes = plt.subplots(dims, sequences, figsize=(3.2 * sequences, 1.9 * dims),
                             squeeze=False, sharex=True)
    t = np.arange(truth.shape[1])
    for d in range(dims):
        for s in range(sequences):
            ax = axes[d, s]
            ax.plot(t, truth[s, :, d], color="black", lw=1.2, label="truth")
            ax.plot(t, pred[s, :, d], color="tab:red", lw=1.0, ls="--", label="model")
            ax.axvline(context - 0.5, color="gray", lw=0.8)
            if s == 0:
                ax.set_ylabel(f"obs[{d}]")
            if d == 0:
                ax.set_title(f"sequence {s}: observe | imagine", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle(f"{os.path.basename(os.path.normpath(run_dir))}: open-loop prediction "
                 f"(seed {seed})", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
