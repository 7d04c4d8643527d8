"""One rung's results, run a seed (or a few) at a time, combined into one.

A 1M-step rung takes about two hours per seed on this CPU, so its seeds are run as separate
ladder runs (`ladder.py --seeds 1 --seed S`, each with its own PPO on the same seed). This reads
their RUNG.json files, checks that they are one rung with the same settings and different seeds,
and writes one RUNG.json and RUNG.png with every seed in them: each learner's final training
return and frozen play per seed and their mean, the mean return per tenth of the budget, and the
learning curve's mean over seeds with the spread between the files.

    python benchmarks/ladder_seeds.py benchmarks/results/ladder_X/spaceinvaders.json \\
        benchmarks/results/ladder_X_seed1/spaceinvaders.json --out benchmarks/results/ladder_X_2seeds
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.ladder import frozen_record, plot_rung  # noqa: E402
from wmjax.plots import achievements_table, bins_table  # noqa: E402

# Fields that must agree for results to be seeds of one experiment.
SAME = ("rung", "env", "steps", "preset", "train_ratio", "replay_online", "replay_priority",
        "overrides", "tunable_schedule")
# What a field means when a result lacks it (written before the field existed).
ABSENT = {"replay_online": False, "replay_priority": "uniform"}
LEARNERS = {"dreamer": "DreamerV3", "ppo": "PPO"}


def seed_ids(result: dict) -> list[int]:
    """The seeds a ladder result holds (results written before `--seed` start at 0)."""
    first = result.get("seed", 0)
    return list(range(first, first + result["seeds"]))


def combine(results: list[dict], sources: list[str] | None = None) -> dict:
    """Ladder results of one rung and different seeds as one result; each file's means weigh
    by its number of seeds. Raises ValueError naming what differs, or the seed run twice."""
    if len(results) < 2:
        raise ValueError(f"{len(results)} result(s); allowed: 2 or more to combine")
    sources = sources or [f"result {i}" for i in range(len(results))]
    first = results[0]
    for result, source in zip(results[1:], sources[1:]):
        for field in SAME:
            if _field(result, field) != _field(first, field):
                raise ValueError(f"{source} has {field}={_field(result, field)!r} where "
                                 f"{sources[0]} has {_field(first, field)!r}; allowed: seeds of "
                                 f"one rung with the same settings")
        if result["ppo"].get("config") != first["ppo"].get("config"):
            raise ValueError(f"{source} ran PPO with other settings than {sources[0]}")
        if result["per_bin"]["every"] != first["per_bin"]["every"]:
            raise ValueError(f"{source} bins per {result['per_bin']['every']} steps where "
                             f"{sources[0]} bins per {first['per_bin']['every']}")
    seen: dict[int, str] = {}
    for result, source in zip(results, sources):
        for s in seed_ids(result):
            if s in seen:
                raise ValueError(f"seed {s} is in both {seen[s]} and {source}; allowed: each "
                                 f"seed once (ladder.py --seed sets a run's first seed)")
            seen[s] = source
    weights = np.array([r["seeds"] for r in results], float)
    out = {field: _field(first, field) for field in SAME
           if field in first or field in ABSENT}
    out.update(seeds=int(weights.sum()), seed_ids=[s for r in results for s in seed_ids(r)],
               reduced_budget=any(r["reduced_budget"] for r in results),
               references=first.get("references", {}), sources=list(sources))
    if "score_references" in first:
        out["score_references"] = first["score_references"]
    for learner in LEARNERS:
        parts = [r[learner] for r in results]
        steps, mean, low, high = _merged_curve([p["curve"] for p in parts], weights)
        combined = dict(
            final=_weighted([p["final"] for p in parts], weights),
            final_per_file=[p["final"] for p in parts],
            wall_s=float(sum(p["wall_s"] for p in parts)),
            curve=[[int(s), float(m)] for s, m in zip(steps, mean)],
            spread=[[int(s), float(lo), float(hi)] for s, lo, hi in zip(steps, low, high)])
        frozen = [p.get("final_policy") for p in parts]
        if all(frozen):
            combined["final_policy"] = frozen_record([x for f in frozen for x in f["returns"]],
                                                     frozen[0]["episodes"])
        for per_seed in ("crafter_score", "achievements"):  # Craftax rungs; older files lack the rates
            if all(per_seed in p for p in parts):
                combined[per_seed] = [x for p in parts for x in p[per_seed]]
        if learner == "ppo":
            combined.update(env=parts[0]["env"], config=parts[0]["config"])
        out[learner] = combined
    out["per_bin"] = dict(every=first["per_bin"]["every"], **{
        learner: [_weighted(values, weights)
                  for values in zip(*(r["per_bin"][learner] for r in results))]
        for learner in LEARNERS})
    return out


def _field(result: dict, field: str):
    """A result's `field`, or what its absence means (ABSENT), or None."""
    return result.get(field, ABSENT.get(field))


def _weighted(values, weights) -> float | None:
    """The weighted mean of the values that are not None; None if there are none."""
    have = [(v, w) for v, w in zip(values, weights) if v is not None]
    if not have:
        return None
    v, w = map(np.array, zip(*have))
    return float((v * w).sum() / w.sum())


def _merged_curve(curves: list[list[list[float]]], weights: np.ndarray):
    """Steps logged in any file; at each, the weighted mean over the files that logged it and
    the min and max of those files' values."""
    steps = sorted({int(s) for c in curves for s, _ in c})
    by_file = [dict((int(s), v) for s, v in c) for c in curves]
    mean, low, high = [], [], []
    for s in steps:
        values = [f.get(s) for f in by_file]
        mean.append(_weighted(values, weights))
        present = [v for v in values if v is not None]
        low.append(min(present))
        high.append(max(present))
    return np.array(steps), np.array(mean), np.array(low), np.array(high)


def report(result: dict) -> str:
    """The combined result as the ladder prints a rung."""
    d, p = result["dreamer"], result["ppo"]
    per = lambda xs: [round(x, 1) for x in xs]
    lines = [f"{result['rung']} ({result['env']}, {result['steps']:,d} steps, seeds "
             f"{result['seed_ids']}{', reduced budget' if result['reduced_budget'] else ''}): "
             f"DreamerV3 {d['final']:.1f} (per file {per(d['final_per_file'])}) in "
             f"{d['wall_s'] / 60:.1f} min, PPO {p['final']:.1f} (per file "
             f"{per(p['final_per_file'])}); references {result['references']}"]
    every = result["per_bin"]["every"]
    lines.append(f"Mean training return per {every:,d} steps, mean over seeds:")
    lines.append(bins_table({name: result["per_bin"][learner]
                             for learner, name in LEARNERS.items()}, every))
    if "final_policy" in d and "final_policy" in p:
        lines.append(f"Final policies played frozen ({d['final_policy']['episodes']} episodes per "
                     f"seed): DreamerV3 {d['final_policy']['mean']:.1f} (per seed "
                     f"{per(d['final_policy']['returns'])}), PPO {p['final_policy']['mean']:.1f} "
                     f"(per seed {per(p['final_policy']['returns'])})")
    if "crafter_score" in d and "crafter_score" in p:
        lines.append(f"Crafter score (%): DreamerV3 {per(d['crafter_score'])}, PPO "
                     f"{per(p['crafter_score'])}")
    if "achievements" in d and "achievements" in p:
        lines.append("Success rate of each achievement over every training episode (%, mean "
                     "over seeds):")
        lines.append(achievements_table({name: result[learner]["achievements"]
                                         for learner, name in LEARNERS.items()}))
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="RUNG.json files written by ladder.py")
    ap.add_argument("--out", required=True, help="folder for the combined RUNG.json and RUNG.png")
    args = ap.parse_args(argv)
    results = []
    for path in args.results:
        try:
            with open(path) as f:
                results.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            ap.error(f"cannot read {path}: {e}")
        if not (isinstance(results[-1], dict)
                and {"rung", "seeds", "dreamer", "ppo", "per_bin"} <= set(results[-1])):
            ap.error(f"{path} is not a ladder result (RUNG.json with per_bin, from ladder.py)")
    try:
        result = combine(results, args.results)
    except ValueError as e:
        ap.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{result['rung']}.json"), "w") as f:
        json.dump(result, f, indent=2)
    curves = {}
    for learner in LEARNERS:
        steps = np.array([s for s, _ in result[learner]["curve"]])
        spread = np.array([[lo, hi] for _, lo, hi in result[learner]["spread"]]).reshape(-1, 2)
        curves[learner] = (steps, np.array([m for _, m in result[learner]["curve"]]),
                           spread[:, 0], spread[:, 1])
    plot_rung(result, curves["dreamer"], curves["ppo"],
              os.path.join(args.out, f"{result['rung']}.png"))
    print(report(result))
    return result


if __name__ == "__main__":
    main()
