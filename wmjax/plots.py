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

import functools
import os
from collections import defaultdict
from typing import Sequence

import jax
import numpy as np

from wmjax import replay as rb
from wmjax.agents.dreamer.agent import Batch
from wmjax.run import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def trailing_mean(steps, values, width: float) -> np.ndarray:
    """Each point's mean over the points logged in the `width` env steps up to it (steps in
    `(s - width, s]`, `steps` ascending): smooths curves logged at uneven rates (PPO per update,
    DreamerV3 per chunk) on one step scale, without looking ahead."""
    steps, values = np.asarray(steps), np.asarray(values, dtype=np.float64)
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(f"steps and values must be 1-D and alike, got {steps.shape} and "
                         f"{values.shape}")
    if np.any(np.diff(steps) < 0):
        raise ValueError("steps must be ascending")
    sums = np.concatenate([[0.0], np.cumsum(values)])
    start = np.searchsorted(steps, steps - width, side="right")
    end = np.arange(1, len(steps) + 1)
    return (sums[end] - sums[start]) / (end - start)


def binned(rows: list[dict], every: int, metric: str = "episode_return",
           bins: int | None = None) -> list[float | None]:
    """The mean of `metric` in each bin of `every` env steps, from 0 to the last logged step.

    A row logs the chunk that ends at its `env_step`, so it falls in the bin
    `start < env_step <= start + every`. With `bins`, there are that many and rows past the last
    one count in it (a budget rounded up to whole chunks ends a little past it).
    Each seed is binned alone and the seeds' values averaged.
    `episode_return` and `episode_length` are weighted by the row's `episodes` (so a bin's value
    is the mean over the episodes that ended in it; rows without the field weigh 1); other
    metrics are the plain mean of the bin's rows. None where no row of the bin has a value.
    """
    if every < 1:
        raise ValueError(f"bin width {every}; allowed: a positive number of env steps")
    logged = [r for r in rows if r.get(metric) is not None]
    last = max((int(r["env_step"]) for r in rows), default=0)
    bins = bins or -(-last // every)
    weighted = metric in ("episode_return", "episode_length")
    per_seed: dict[int, list[list[tuple[float, float]]]] = defaultdict(
        lambda: [[] for _ in range(bins)])
    for r in logged:
        weight = float(r.get("episodes", 1)) if weighted else 1.0
        per_seed[r.get("seed", 0)][min(max(int(r["env_step"]) - 1, 0) // every, bins - 1)].append(
            (float(r[metric]), weight))
    values = []
    for b in range(bins):
        means = []
        for seed_bins in per_seed.values():
            weights = sum(w for _, w in seed_bins[b])
            if weights > 0:
                means.append(sum(v * w for v, w in seed_bins[b]) / weights)
        values.append(float(np.mean(means)) if means else None)
    return values


def binned_table(named_rows: dict[str, list[dict]], every: int, metric: str = "episode_return",
                 bins: int | None = None) -> str:
    """A Markdown table of `binned` values, one line per name, one column per bin.

    A bin that one line's rows do not fill (its last logged step falls inside it) is marked `*`.
    """
    lines = {name: binned(rows, every, metric, bins) for name, rows in named_rows.items()}
    if not max((len(v) for v in lines.values()), default=0):
        raise ValueError(f"nothing logged to bin among {list(named_rows)}")
    last = {name: max((int(r["env_step"]) for r in rows), default=0)
            for name, rows in named_rows.items()}
    partial = {name: (step - 1) // every for name, step in last.items() if step % every}
    return bins_table(lines, every, partial)


def bins_table(named_values: dict[str, list[float | None]], every: int,
               partial: dict[str, int] | None = None) -> str:
    """A Markdown table of per-bin values (bin b covers env steps b*every to (b+1)*every), one
    line per name; None prints as `–`, and the bin `partial[name]` is marked `*`."""
    columns = max((len(v) for v in named_values.values()), default=0)
    unit, scale = ("k", 1000) if every % 1000 == 0 else ("", 1)
    edges = [f"{b * every // scale}–{(b + 1) * every // scale}" for b in range(columns)]
    out = [f"| steps{f' ({unit})' if unit else ''} | " + " | ".join(edges) + " |",
           "|---|" + "---:|" * columns]
    for name, values in named_values.items():
        cells = ["–" if v is None else f"{v:.2f}" for v in values] + [""] * (columns - len(values))
        bin_ = (partial or {}).get(name)
        if bin_ is not None and 0 <= bin_ < len(values):
            cells[bin_] += "*"
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def achievements_table(learners: dict[str, list[dict | None]]) -> str:
    """A Markdown table of each achievement's success rate (%) per learner, the mean over its
    seeds (seeds with no finished episode left out), in the achievements' own order."""
    names = next((list(r) for per_seed in learners.values() for r in per_seed if r), None)
    if names is None:
        return "(no episode finished)"
    lines = ["| achievement | " + " | ".join(learners) + " |",
             "|---|" + "---:|" * len(learners)]
    for name in names:
        cells = []
        for per_seed in learners.values():
            have = [r[name] for r in per_seed if r is not None]
            cells.append(f"{np.mean(have):.1f}" if have else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_curve(ax, points: tuple[np.ndarray, ...], label: str, smooth: float = 0):
    """One learner's (steps, mean, low, high) on `ax`: the mean with its spread shaded, or with
    `smooth` > 0 its `trailing_mean` over that many env steps drawn bold and the mean as logged
    faint behind it. Returns the main line."""
    steps, mean, low, high = points
    if smooth > 0 and len(steps):
        (line,) = ax.plot(steps, trailing_mean(steps, mean, smooth), lw=1.8,
                          label=f"{label}, mean over {smooth:,.0f} steps")
        ax.plot(steps, mean, color=line.get_color(), lw=0.6, alpha=0.35)
        alpha = 0.12
    else:
        (line,) = ax.plot(steps, mean, label=label)
        alpha = 0.2
    ax.fill_between(steps, low, high, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def plot_curves(run_dirs: Sequence[str], path: str, metric: str = "episode_return",
                smooth: float = 0) -> str:
    """The runs' `metric` against env steps (mean over seeds, shaded min to max), as a PNG at
    `path`; `smooth` > 0 draws each as its trailing mean over that many env steps."""
    if smooth < 0:
        raise ValueError(f"smooth must be 0 (as logged) or a positive number of env steps, "
                         f"got {smooth}")
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
        draw_curve(ax, (steps, mean, low, high), label, smooth)
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
    (sequences, T, obs...), or dicts of them for dict observations, with T = the agent's
    batch_length and context = T // 2."""
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
    pred = _open_loop_fn(agent)(params, batch, context, k_model)
    to_numpy = lambda tree: jax.tree.map(np.asarray, tree)  # arrays, or dicts of them
    return to_numpy(batch.obs), to_numpy(pred), context


@functools.lru_cache(maxsize=8)
def _open_loop_fn(agent):
    """Compiled once per agent (shared by runs of one program), not once per call."""
    return jax.jit(agent.open_loop, static_argnums=2)


def plot_openloop(run_dir: str, path: str, seed: int = 0, sequences: int = 3) -> list[str]:
    """The open-loop report of a run's newest checkpoint as PNGs: `path`, or for dict
    observations one file per key (`path` with `_<key>` before the suffix). Returns the paths."""
    truth, pred, context = openloop(run_dir, seed, sequences)
    title = (f"{os.path.basename(os.path.normpath(run_dir))}: open-loop prediction (seed {seed}); "
             f"observed steps 0..{context - 1}, imagined after")
    if not isinstance(truth, dict):
        return [draw_openloop(truth, pred, context, path, title)]
    stem, suffix = os.path.splitext(path)
    return [draw_openloop(truth[k], pred[k], context, f"{stem}_{k}{suffix}", f"{title}: {k}")
            for k in sorted(truth)]


def draw_openloop(truth: np.ndarray, pred: np.ndarray, context: int, path: str,
                  title: str = "open-loop prediction") -> str:
    """Vector observations (S, T, D): one panel per dimension and sequence, truth against
    prediction. Images (S, T, H, W, C), uint8 or floats in [0, 1]: per sequence, rows of
    truth, prediction and |error| frames over time."""
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    if truth.ndim == 3:
        fig = _draw_vectors(truth, pred, context)
    elif truth.ndim == 5:
        fig = _draw_frames(truth, pred, context)
    else:
        raise ValueError(f"open-loop report: observations must be vectors (S, T, D) or images "
                         f"(S, T, H, W, C); got shape {truth.shape}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _draw_vectors(truth, pred, context):
    plt = _pyplot()
    sequences, length, dims = truth.shape
    fig, axes = plt.subplots(dims, sequences, figsize=(3.2 * sequences, 1.9 * dims + 0.6),
                             squeeze=False, sharex=True)
    t = np.arange(length)
    for d in range(dims):
        for s in range(sequences):
            ax = axes[d, s]
            ax.plot(t, truth[s, :, d], color="black", lw=1.2, label="truth")
            ax.plot(t, pred[s, :, d], color="tab:red", lw=1.0, ls="--", label="model")
            ax.axvline(context - 0.5, color="gray", lw=0.8)
            if s == 0:
                ax.set_ylabel(f"obs[{d}]")
            if d == 0:
                ax.set_title(f"sequence {s}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    return fig


def _draw_frames(truth, pred, context, max_frames: int = 16):
    plt = _pyplot()
    scale = 255.0 if truth.dtype == np.uint8 else 1.0
    truth = np.clip(truth.astype(np.float32) / scale, 0, 1)
    pred = np.clip(pred.astype(np.float32) / scale, 0, 1)
    sequences, length = truth.shape[:2]
    steps = np.unique(np.linspace(0, length - 1, min(length, max_frames)).round().astype(int))
    rows = [(s, name, img) for s in range(sequences)
            for name, img in (("truth", truth[s]), ("model", pred[s]),
                              ("|error|", np.abs(truth[s] - pred[s])))]
    fig, axes = plt.subplots(len(rows), len(steps), squeeze=False,
                             figsize=(0.9 * len(steps) + 0.8, 0.95 * len(rows) + 0.6))
    for r, (s, name, frames) in enumerate(rows):
        for c, t in enumerate(steps):
            ax = axes[r, c]
            frame = frames[t]
            ax.imshow(frame[..., 0] if frame.shape[-1] == 1 else frame[..., :3],
                      cmap="gray" if frame.shape[-1] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if t >= context:
                for spine in ax.spines.values():
                    spine.set_color("tab:red")
            if r == 0:
                ax.set_title(f"t={t}{'*' if t >= context else ''}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{s}: {name}", fontsize=7)
    return fig
