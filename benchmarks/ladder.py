"""The benchmark ladder: wmjax's DreamerV3 beside a same-budget PPO and published numbers.

One command runs one rung: DreamerV3 (the fused loop, all seeds in one program) and the PPO
baseline (benchmarks/ppo.py) for the same env-step budget and seeds, then writes
`OUT/RUNG.json` and `OUT/RUNG.png`: both learning curves (mean over seeds, shaded min to max)
with the reference numbers of benchmarks/REFERENCE.md drawn as horizontal lines. It also
prints, and saves as `per_bin`, both learners' mean training return per tenth of the budget.

    python benchmarks/ladder.py --rung cartpole --seeds 3
    python benchmarks/ladder.py --rung breakout --seeds 1                 # 1M steps: hours
    python benchmarks/ladder.py --rung breakout --seeds 1 --resume        # continue it
    python benchmarks/ladder.py --rung cartpole --steps 2048 --preset tiny  # a smoke test
    python benchmarks/ladder.py --rung breakout --seeds 1 --seed 1        # one more seed, in
                                              # runs/ladder_seed1 and benchmarks/results/ladder_seed1
    python benchmarks/ladder.py --rung breakout --seeds 1 --only ppo      # PPO alone, e.g. in a
                                              # second process while DreamerV3 trains

Runs that use less than the published protocol (model size, train ratio, steps) are labelled
"reduced budget" in the JSON and on the plot. The DreamerV3 run is checkpointed (run folder
`LOGDIR/RUNG/dreamer`), so `--resume` continues a long rung after an interruption; it reuses
the PPO result saved in `LOGDIR/RUNG/ppo.json` when that was made with the same settings.
`--only dreamer` or `--only ppo` trains one learner and stops; once both have finished, the
rung's command with `--resume` (and without `--only`) joins the two and writes the results.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.ppo import PPO_PRESETS, PPOConfig, train_ppo  # noqa: E402
from wmjax.cli import parse_override, parse_schedule_entry  # noqa: E402
from wmjax.config import REPLAY_PRIORITIES, DreamerConfig, TrainConfig  # noqa: E402
from wmjax.envs.core import FLAT_SUFFIX, REGISTRY  # noqa: E402
from wmjax.plots import achievements_table, binned, binned_table, curve  # noqa: E402
from wmjax.policy import seed_returns  # noqa: E402
from wmjax.run import (holds_run, read_machines, read_metrics, stop_on_sigterm,  # noqa: E402
                       train, training_wall_time)
from wmjax.startup import start_command  # noqa: E402

# name -> (env, env steps, train ratio). Budgets from the issue; see REFERENCE.md for sources.
RUNGS = {
    "cartpole": ("CartPole-v1", 50_000, 64.0),
    "acrobot": ("Acrobot-v1", 50_000, 64.0),
    "pendulum": ("Pendulum-v1", 50_000, 64.0),
    "breakout": ("Breakout-MinAtar", 1_000_000, 32.0),
    "spaceinvaders": ("SpaceInvaders-MinAtar", 1_000_000, 32.0),
    "asterix": ("Asterix-MinAtar", 1_000_000, 32.0),
    "freeway": ("Freeway-MinAtar", 1_000_000, 32.0),
    "freeway_flat": ("Freeway-MinAtar-Flat", 1_000_000, 32.0),
    "craftax": ("Craftax-Classic-Symbolic-v1", 1_000_000, 32.0),
    "craftax_grid": ("Craftax-Classic-Symbolic-Grid-v1", 1_000_000, 32.0),
}

# The env PPO trains on where it differs from the rung's: the Grid variant is the symbolic
# env's numbers with the map laid out for a CNN; PPO's MLP reads the same numbers flat.
PPO_ENVS = {"Craftax-Classic-Symbolic-Grid-v1": "Craftax-Classic-Symbolic-v1"}
# A `-Flat` MinAtar env is its game's frames as one vector for DreamerV3's MLP encoder; PPO's
# MinAtar recipe flattens the frames itself, so it trains on the game as it is.
PPO_ENVS |= {env: env.removesuffix(FLAT_SUFFIX) for env in REGISTRY if env.endswith(FLAT_SUFFIX)}

# The PPO preset a rung uses (benchmarks/ppo.py): the MinAtar games take gymnax-blines' recipe,
# which produced the published MinAtar PPO numbers the rungs are compared with; the rest take
# PureJaxRL's classic-control settings.
PPO_RUNG_PRESETS = {rung: "minatar" if "-MinAtar" in env else "classic"
                    for rung, (env, _, _) in RUNGS.items()}

# Agent overrides a rung uses when no --set is given: the settings of the README's ladder table
# (benchmarks/README.md has the runs that chose them). Classic control takes the learning
# benchmark's reduced-compute settings; CartPole and Acrobot, whose terminations are rare and
# whose policies stopped exploring at DreamerV3's bonus (3e-4), add a continue-loss weight on
# terminal records and a larger entropy bonus. Craftax takes the bonus and twice that learning
# rate: at DreamerV3's lr its policy stayed uniform under the larger bonus and collapsed under the
# small one; at 3e-4 it learnt, and 6e-4 beat 3e-4 at 150k steps on two seeds and at 1M on one
# (return 3.77 against 3.39, Crafter score 3.41% against 3.12%). It also weights the reward loss
# 10x: at 1M steps the rung's reward head predicted 0.16 for a table and 0.015 for a wood pickaxe
# where the reward is 1, and with reward_scale=10 from the start seeds 0 and 1 ran ahead of the
# lr 6e-4 rung from 400k steps on (900k-1M: 4.20 and 4.49 against 3.41 and 3.31); switched on
# at 131k instead it trailed the rung from 400k on (seed 0, session 38), and so did a weight of 3
# from the start (seed 0, session 39) and 3 switched to 10 at 307k (seed 0, session 40).
# Breakout takes the bonus and lr 3e-4: at DreamerV3's lr and bonus it plateaued at PPO's 5.5,
# with them it went past gymnax's published PPO. Since session 75 it also takes the binary
# cross-entropy image loss: with DreamerV3's loss two seeds scored 11.1 and 20.0 at 1M, with bce
# 77.4 and 67.8 (a third seed 71.2). Asterix takes Breakout's settings: with DreamerV3's loss it
# stayed at random for 471k steps, with bce it reached 9.0. SpaceInvaders takes the same with a
# bonus of 1e-3: with DreamerV3's loss it flattened at 24, with bce it reached 41.6 at Breakout's
# bonus and 70.8 at 1e-3 (2 seeds).
# Freeway takes bce with DreamerV3's bonus: under Breakout's its policy stayed uniform for 199k
# steps (the reward head had seen 34 rewards). It also takes the self-imitation actor loss on
# replayed actions: imagining only, its policy settled on always "up" (16.8 at 1M); with the
# loss the mean of four seeds held 26-29 per 100k from 100k on (28.4 at 1M and 28.4 frozen,
# PPO 27.9 / 28.8). Freeway-Flat keeps the imagination-only settings its runs used. Every rung
# imagines from 256 of the 1024 replayed states, which halves the update's time.
_EVERY = ("imag_starts=256",)
_CLASSIC = _EVERY + ("lr=3e-4", "warmup=200")
_EXPLORE = _CLASSIC + ("actent=3e-3",)
_MID_BONUS = _CLASSIC + ("actent=1e-3",)
_RARE_ENDS = _EXPLORE + ("cont_terminal_weight=10",)
_CRAFTAX = _EVERY + ("lr=6e-4", "warmup=200", "actent=3e-3", "reward_scale=10")
_BCE = ("image_loss=bce",)
_FLAT_BCE = ("vector_loss=bce",)
_SELF_IMITATION = ("replay_policy_scale=1", "replay_policy_positive=true")
RUNG_SETS = {rung: _EVERY for rung in RUNGS} | {
    "cartpole": _RARE_ENDS, "acrobot": _RARE_ENDS, "pendulum": _CLASSIC, "craftax": _CRAFTAX,
    "craftax_grid": _CRAFTAX, "breakout": _EXPLORE + _BCE, "spaceinvaders": _MID_BONUS + _BCE,
    "asterix": _EXPLORE + _BCE, "freeway": _CLASSIC + _BCE + _SELF_IMITATION,
    "freeway_flat": _CLASSIC + _FLAT_BCE,
}

# Published reference returns (label -> value) per env, from benchmarks/REFERENCE.md.
REFERENCES = {
    "CartPole-v1": {"random": 22.2, "gymnax PPO @104k": 475.5},
    "Acrobot-v1": {"random": -499.7, "gymnax PPO @96k": -122.7, "gymnax PPO @496k": -78.9},
    "Pendulum-v1": {"random": -1224.0, "gymnax PPO @1M": -200.6},
    "Breakout-MinAtar": {"random": 0.42, "gymnax PPO @1M": 16.6, "gymnax PPO @10M": 22.9},
    "SpaceInvaders-MinAtar": {"random": 4.15, "gymnax PPO @1M": 50.4, "gymnax PPO @10M": 131.6},
    "Asterix-MinAtar": {"random": 0.49, "gymnax PPO @1M": 1.8, "gymnax PPO @10M": 15.0},
    "Freeway-MinAtar": {"random": 0.32, "gymnax PPO @1M": 29.0, "gymnax PPO @10M": 58.8},
    # Returns (max 22). Crafter rewards @1M; Craftax-Classic pixels 47.18% of 22 (Dedieu et al.).
    "Craftax-Classic-Symbolic-v1": {"DreamerV2 Crafter @1M": 9.0, "DreamerV3 Crafter @1M": 11.7,
                                    "DreamerV3 Craftax-Classic @1M": 10.38},
}
REFERENCES["Craftax-Classic-Symbolic-Grid-v1"] = REFERENCES["Craftax-Classic-Symbolic-v1"]
REFERENCES |= {flat: REFERENCES[env] for flat, env in PPO_ENVS.items() if flat.endswith(FLAT_SUFFIX)}

# Crafter scores (%, geometric mean of achievement success rates) @1M, for Craftax rungs.
SCORE_REFERENCES = {"PPO (Crafter paper)": 4.6, "DreamerV2": 10.0, "DreamerV3": 14.5}

# DreamerV3's published protocol is size200m at train ratio 512 (Atari-like) or more; every
# rung here is smaller, so every result is labelled reduced budget unless it matches.
PUBLISHED = dict(preset="size200m", train_ratio=512.0)


def final_value(steps: np.ndarray, mean: np.ndarray, last: int = 3) -> float | None:
    return float(np.mean(mean[-last:])) if len(mean) else None


def _shown(value: float | None) -> str:
    return "no finished episode" if value is None else f"{value:.1f}"


def run_rung(rung: str, seeds: int, steps: int | None, preset: str, ratio: float | None,
             overrides: dict, logdir: str, out: str, resume: bool,
             ppo_config: PPOConfig | None = None, envs: int = 16, chunk_steps: int | None = None,
             replay_size: int | None = None, eval_episodes: int = 32, seed: int = 0,
             schedule: tuple = (), only: str | None = None, replay_online: bool = False,
             replay_priority: str = "uniform") -> dict:
    """Train DreamerV3 and the PPO baseline (`ppo_config`, default the rung's preset) on one
    rung; write RUNG.json and RUNG.png to `out`; return the JSON's contents. `only` ("dreamer"
    or "ppo") trains that learner alone and returns its summary without writing results.
    `seed` is both learners' base seed (TrainConfig.seed, train_ppo's seed), so a rung can add
    seeds one run at a time: `seeds=1, seed=1` is a second seed, not a repeat of the first.
    `schedule`: DreamerV3's TrainConfig.tunable_schedule, (env_step, name, value) entries.
    `replay_online`: TrainConfig.replay_online (DreamerV3's online queue); `replay_priority`:
    TrainConfig.replay_priority ("curious": Curious Replay)."""
    env, budget, default_ratio = RUNGS[rung]
    steps = steps or budget
    ratio = ratio or default_ratio
    agent = DreamerConfig.preset(preset, **overrides)
    config = TrainConfig(env=env, num_envs=envs, seeds=seeds, seed=seed, steps=steps,
                         train_ratio=ratio,
                         replay_size=replay_size or max(steps, envs * (agent.batch_length + 1)),
                         chunk_steps=chunk_steps or min(2048 if steps <= 100_000 else 16_384, steps),
                         replay_online=replay_online, replay_priority=replay_priority, agent=agent,
                         tunable_schedule=tuple(schedule))
    run_dir = os.path.join(logdir, rung, "dreamer")
    ppo_env = PPO_ENVS.get(env, env)
    ppo_config = ppo_config or PPOConfig.preset(PPO_RUNG_PRESETS[rung])
    ppo_path = os.path.join(logdir, rung, "ppo.json")
    if only not in (None, "dreamer", "ppo"):
        raise ValueError(f"run_rung: only={only!r}; allowed: None, 'dreamer', 'ppo'")
    about = f"{env}, {steps:,d} steps, {seeds} seed(s){f' from seed {seed}' if seed else ''}"
    label = f"{rung} ({about})"
    head = dict(rung=rung, env=env, steps=steps, seeds=seeds, seed=seed)
    if only == "ppo":  # e.g. beside a long DreamerV3 run; the joined command reuses the file
        ppo = _ppo_baseline(ppo_env, steps, seeds, ppo_config, eval_episodes, ppo_path, resume, seed)
        final = final_value(*ppo_curve(ppo)[:2])
        print(f"{label}: PPO {_shown(final)} in {ppo['wall_s'] / 60:.1f} min, "
              f"saved in {ppo_path}; run the rung without --only, with --resume, to join it")
        return head | dict(ppo_path=ppo_path,
                           ppo=dict(env=ppo_env, final=final, wall_s=ppo["wall_s"]))
    train(config, run_dir, resume=resume and holds_run(run_dir), checkpoint_every=5)
    d_rows = read_metrics(run_dir)
    dreamer_wall = training_wall_time(d_rows)  # summed over every resume of a long rung
    d_steps, d_mean, d_low, d_high = curve(d_rows)
    if only == "dreamer":
        final = final_value(d_steps, d_mean)
        print(f"{label}: DreamerV3 {_shown(final)} in {dreamer_wall / 60:.1f} "
              f"min, in {run_dir}; run the rung without --only, with --resume, to join PPO")
        return head | dict(dreamer=dict(final=final, wall_s=dreamer_wall, run_dir=run_dir))
    frozen = seed_returns(run_dir, eval_episodes) if eval_episodes else None
    ppo = _ppo_baseline(ppo_env, steps, seeds, ppo_config, eval_episodes, ppo_path, resume, seed)
    p_steps, p_mean, p_low, p_high = ppo_curve(ppo)
    reduced = preset != PUBLISHED["preset"] or ratio < PUBLISHED["train_ratio"]
    result = head | dict(
        preset=preset, train_ratio=ratio, replay_online=replay_online,
        overrides=overrides, reduced_budget=reduced,
        # Absent for uniform windows, as in the files written before the option existed.
        **({} if replay_priority == "uniform" else {"replay_priority": replay_priority}),
        dreamer=dict(final=final_value(d_steps, d_mean), wall_s=dreamer_wall,
                     curve=[[int(s), float(m)] for s, m in zip(d_steps, d_mean)], run_dir=run_dir,
                     final_policy=frozen_record(frozen, eval_episodes),
                     machines=read_machines(run_dir)),
        ppo=dict(env=ppo_env, final=final_value(p_steps, p_mean), wall_s=ppo["wall_s"],
                 config=asdict(ppo_config), final_policy=frozen_record(ppo["final_policy"], eval_episodes),
                 curve=[[int(s), float(m)] for s, m in zip(p_steps, p_mean)],
                 machine=ppo.get("machine")),  # None in files from before it was recorded
        references=REFERENCES.get(env, {}),
    )
    if config.tunable_schedule:  # absent otherwise, as in the files written before it existed
        result["tunable_schedule"] = [list(e) for e in config.tunable_schedule]
    # Mean training return per tenth of the budget, over the episodes that ended in it.
    every, p_rows = max(steps // 10, 1), ppo.get("rows", [])
    result["per_bin"] = dict(every=every, dreamer=binned(d_rows, every, bins=10),
                             ppo=binned(p_rows, every, bins=10))
    if env.startswith("Craftax"):
        for learner, rows in (("dreamer", d_rows), ("ppo", p_rows)):
            result[learner].update(crafter_fields(rows, seeds))
        result["score_references"] = SCORE_REFERENCES
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{rung}.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot_rung(result, (d_steps, d_mean, d_low, d_high), (p_steps, p_mean, p_low, p_high),
              os.path.join(out, f"{rung}.png"))
    d, p = result["dreamer"]["final"], result["ppo"]["final"]
    print(f"{rung} ({about}{', reduced budget' if reduced else ''}): "
          f"DreamerV3 {d:.1f} in {dreamer_wall / 60:.1f} min, PPO {p:.1f} in {ppo['wall_s'] / 60:.1f} min; "
          f"references {result['references']}")
    print(f"Mean training return per {every:,d} steps (over the episodes that ended in each):")
    print(binned_table({"DreamerV3": d_rows, "PPO": p_rows}, every, bins=10))
    if frozen:
        print(f"Final policies played frozen ({eval_episodes} episodes per seed): DreamerV3 "
              f"{np.mean(frozen):.1f} (per seed {[round(r, 1) for r in frozen]}), PPO "
              f"{np.mean(ppo['final_policy']):.1f} (per seed "
              f"{[round(r, 1) for r in ppo['final_policy']]})")
    if "score_references" in result:
        print(f"Crafter score (%): DreamerV3 {result['dreamer']['crafter_score']}, PPO "
              f"{result['ppo']['crafter_score']}; references {result['score_references']}")
        print("Success rate of each achievement over every training episode (%, mean over seeds):")
        print(achievements_table({"DreamerV3": result["dreamer"]["achievements"],
                                  "PPO": result["ppo"]["achievements"]}))
    return result


def ppo_curve(ppo: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PPO's learning curve from `train_ppo`'s result: (env steps, mean, low, high) over seeds,
    at the log points where at least one seed finished an episode."""
    returns = np.array([[np.nan if v is None else v for v in row] for row in ppo["returns"]])
    keep = ~np.all(np.isnan(returns), 0)
    returns = returns[:, keep]
    return (np.asarray(ppo["env_steps"])[keep], np.nanmean(returns, 0), np.nanmin(returns, 0),
            np.nanmax(returns, 0))


def crafter_fields(rows: list[dict], seeds: int) -> dict:
    """A Craftax learner's Crafter score and the success rate of each achievement, per seed, over
    every episode of its training (metrics rows), as the Crafter paper reports them."""
    from wmjax.envs.craftax import achievement_rates, crafter_score

    return dict(crafter_score=[crafter_score(rows, s) for s in range(seeds)],
                achievements=[achievement_rates(rows, s) for s in range(seeds)])


def _ppo_baseline(env: str, steps: int, seeds: int, config: PPOConfig, eval_episodes: int,
                  path: str, resume: bool, seed: int = 0) -> dict:
    """`train_ppo`'s result, saved at `path`. A resumed rung reuses a saved result made with the
    same env, budget, seeds, base seed, PPO settings and frozen play, instead of training PPO
    again (it takes minutes on Craftax, and is not bit-reproducible across machines)."""
    wanted = dict(env=env, steps=steps, seeds=seeds, seed=seed, config=asdict(config),
                  eval_episodes=eval_episodes)
    if resume and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if {"seed": 0} | saved.get("request", {}) == wanted:  # files before --seed: seed 0
            print(f"PPO baseline: reusing {path} (same env, steps, seeds and settings)")
            return saved["result"]
        print(f"PPO baseline: {path} was made with other settings; training again")
    print(f"PPO baseline: {env}, {steps:,d} steps x {seeds} seed(s) from seed {seed}")
    result = train_ppo(env, steps, seeds, seed=seed, config=config, eval_episodes=eval_episodes)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(request=wanted, result=result), f)
    os.replace(tmp, path)  # never a half-written file where a finished one was
    return result


def frozen_record(returns: list[float] | None, episodes: int) -> dict | None:
    """The JSON record of a frozen play: per-seed mean returns, sampling as in training."""
    if returns is None:
        return None
    return dict(mode="train", episodes=episodes, returns=returns, mean=float(np.mean(returns)))


def plot_rung(result, dreamer, ppo, path):
    """Both learners' curves (steps, mean, low, high): the mean as logged, faint, with its
    spread, and its trailing mean over a fiftieth of the budget drawn bold (PPO logs every
    update, so its raw curve would hide DreamerV3's); frozen plays as stars and the references
    as horizontal lines, saved as a PNG at `path`."""
    from wmjax.plots import _pyplot, draw_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, label, (s, m, lo, hi) in (
            ("dreamer", f"wmjax DreamerV3 ({result['preset']}, ratio {result['train_ratio']:g})",
             dreamer), ("ppo", "PPO baseline", ppo)):
        line = draw_curve(ax, (s, m, lo, hi), label, smooth=result["steps"] / 50)
        frozen = result[name].get("final_policy")
        if frozen:  # at the last step, each seed's final policy played frozen
            x = s[-1] if len(s) else result["steps"]
            ax.scatter([x] * len(frozen["returns"]), frozen["returns"], marker="*", s=70,
                       color=line.get_color(), edgecolor="black", linewidth=0.5, zorder=3,
                       label=f"{label.split(' (')[0]}: final policy played frozen")
    for i, (label, value) in enumerate(result["references"].items()):
        ax.axhline(value, color="gray", ls=[":", "--", "-."][i % 3], lw=1, label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    tag = " (reduced budget)" if result["reduced_budget"] else ""
    ax.set_title(f"{result['env']}: {result['seeds']} seed(s), mean and min-max{tag}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rung", required=True, choices=sorted(RUNGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0,
                    help="base seed of both learners: --seeds 1 --seed 1 adds a second seed")
    ap.add_argument("--steps", type=int, default=None, help="default: the rung's budget")
    ap.add_argument("--preset", default="size1m")
    ap.add_argument("--train-ratio", type=float, default=None, help="default: the rung's")
    ap.add_argument("--set", action="append", default=None, metavar="NAME=VALUE",
                    help="agent overrides, replacing the rung's defaults: " + "; ".join(
                        f"{rung} {' '.join(sets)}" for rung, sets in RUNG_SETS.items()))
    ap.add_argument("--set-from", action="append", default=[], metavar="STEP:NAME=VALUE",
                    help="change a tunable from env step STEP on, e.g. 500000:reward_scale=10 "
                         "(as `python -m wmjax train --set-from`)")
    ap.add_argument("--envs", type=int, default=16, help="DreamerV3's vmapped envs per seed")
    ap.add_argument("--chunk-steps", type=int, default=None,
                    help="env steps per compiled chunk (default: 2048, 16384 above 100k steps)")
    ap.add_argument("--replay-size", type=int, default=None,
                    help="replay capacity per seed (default: the whole run)")
    ap.add_argument("--replay-online", action="store_true",
                    help="DreamerV3's online replay queue (TrainConfig.replay_online)")
    ap.add_argument("--replay-priority", choices=REPLAY_PRIORITIES, default="uniform",
                    help="how replay windows are drawn (TrainConfig.replay_priority): uniform, "
                         "or curious (Curious Replay)")
    ap.add_argument("--ppo-preset", default=None, choices=sorted(PPO_PRESETS),
                    help="PPO's settings (default: the rung's: " + ", ".join(
                        f"{r} {p}" for r, p in PPO_RUNG_PRESETS.items()) + ")")
    ap.add_argument("--ppo-envs", type=int, default=None, help="default: the PPO preset's")
    ap.add_argument("--eval-episodes", type=int, default=32,
                    help="play each seed's final DreamerV3 checkpoint and final PPO parameters "
                         "frozen for this many episodes (0: skip)")
    ap.add_argument("--logdir", default=None,
                    help="default: runs/ladder, or runs/ladder_seedS with --seed S > 0")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/ladder, or "
                                                "benchmarks/results/ladder_seedS with --seed S > 0")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--only", choices=("dreamer", "ppo"), default=None,
                    help="train one learner and stop before the results (e.g. PPO in a second "
                         "process beside a long DreamerV3 run); the full command with --resume "
                         "then reuses both")
    args = ap.parse_args(argv)
    if args.eval_episodes < 0:
        ap.error(f"--eval-episodes {args.eval_episodes}; allowed: >= 0")
    if args.seed < 0:
        ap.error(f"--seed {args.seed}; allowed: an integer >= 0")
    # Another base seed gets folders of its own, so it never writes over seed 0's results.
    suffix = f"_seed{args.seed}" if args.seed else ""
    logdir = args.logdir or "runs/ladder" + suffix
    out = args.out or "benchmarks/results/ladder" + suffix
    sets = RUNG_SETS[args.rung] if args.set is None else args.set
    try:
        overrides = dict(parse_override(s) for s in sets)
        schedule = tuple(parse_schedule_entry(s) for s in args.set_from)
    except ValueError as e:
        ap.error(str(e))
    # --set replaces the rung's settings as a whole; say so, so a run's log shows what it ran.
    source = ("the rung's" if args.set is None else
              f"given with --set, in place of the rung's {' '.join(RUNG_SETS[args.rung])}")
    print(f"ladder: {args.rung}: agent overrides {' '.join(sets) or '(none)'} ({source})",
          flush=True)
    try:
        ppo = PPOConfig.preset(args.ppo_preset or PPO_RUNG_PRESETS[args.rung],
                               **({} if args.ppo_envs is None else {"num_envs": args.ppo_envs}))
    except ValueError as e:
        ap.error(str(e))
    return run_rung(args.rung, args.seeds, args.steps, args.preset, args.train_ratio, overrides,
                    logdir, out, args.resume, ppo, args.envs, args.chunk_steps,
                    args.replay_size, args.eval_episodes, args.seed, schedule, args.only,
                    args.replay_online, args.replay_priority)


if __name__ == "__main__":
    start_command()  # huge pages (restarts once) and the compile cache, before any work
    stop_on_sigterm()  # SIGTERM checkpoints the chunk in flight; --resume continues
    try:
        main()
    except KeyboardInterrupt:  # train has saved what it could and said how to continue
        sys.exit(130)
