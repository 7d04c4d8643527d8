"""The benchmark ladder runs a rung end to end: DreamerV3 and the PPO baseline, JSON and PNG."""
import json
import os
from dataclasses import asdict

import jax
import numpy as np
import pytest

from benchmarks import ladder
from benchmarks.ladder import REFERENCES, RUNG_SETS, RUNGS, main
from benchmarks.ppo import PPOConfig, train_ppo
from wmjax.cli import parse_override
from wmjax.config import DreamerConfig
from wmjax.machine import cpu_fingerprint
from wmjax.policy import evaluate, load_policy
from wmjax.run import RunDirError, read_metrics


def test_tiny_rung_writes_json_and_png(tmp_path, monkeypatch):
    # The DreamerV3 side is the suite's shared program (tests/programs.py).
    argv = ["--rung", "cartpole", "--steps", "512", "--preset", "tiny", "--seeds", "2",
            "--train-ratio", "24", "--envs", "4", "--chunk-steps", "128",
            "--replay-size", "1024", "--set", "warmup=10", "--eval-episodes", "3",
            "--set-from", "384:actent=1e-3",
            "--logdir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    # Each learner alone (as two processes would run them side by side), then the rung joined.
    dreamer_only = main(argv + ["--only", "dreamer"])
    assert not os.path.exists(tmp_path / "runs" / "cartpole" / "ppo.json")
    ppo_only = main(argv + ["--only", "ppo"])
    assert os.path.exists(ppo_only["ppo_path"]) and not os.path.exists(tmp_path / "out")
    with pytest.raises(ValueError, match="only='both'; allowed"):
        ladder.run_rung("cartpole", 1, 512, "tiny", None, {}, str(tmp_path), str(tmp_path),
                        False, only="both")

    def no_training(*args, **kwargs):
        raise AssertionError("PPO trained again on a resume with the same settings")

    monkeypatch.setattr(ladder, "train_ppo", no_training)
    result = main(argv + ["--resume"])
    saved = json.load(open(tmp_path / "out" / "cartpole.json"))
    assert saved["ppo"]["final"] == ppo_only["ppo"]["final"]
    assert saved["dreamer"]["final"] == dreamer_only["dreamer"]["final"]
    config = json.load(open(tmp_path / "runs" / "cartpole" / "dreamer" / "config.json"))
    assert saved["tunable_schedule"] == config["tunable_schedule"] == [[384, "actent", 0.001]]
    assert saved["reduced_budget"] and saved["steps"] == 512 and saved["seeds"] == 2
    assert saved["references"] == REFERENCES["CartPole-v1"]
    for learner in ("dreamer", "ppo"):
        assert saved[learner]["curve"] and 5 < saved[learner]["final"] < 200, saved[learner]
    assert saved["dreamer"]["curve"][-1][0] == 512
    # Mean return per tenth of the budget: here each 128-step chunk lands in a bin of its own.
    per_bin = saved["per_bin"]
    assert per_bin["every"] == 51 and len(per_bin["dreamer"]) == len(per_bin["ppo"]) == 10
    rows = read_metrics(str(tmp_path / "runs" / "cartpole" / "dreamer"))
    by_step = {s: [r["episode_return"] for r in rows if r["env_step"] == s] for s in (128, 256, 384, 512)}
    for step, returns in by_step.items():
        assert per_bin["dreamer"][min((step - 1) // 51, 9)] == pytest.approx(np.mean(returns))
    png = tmp_path / "out" / "cartpole.png"
    assert os.path.getsize(png) > 10_000 and open(png, "rb").read(4) == b"\x89PNG"
    assert result["ppo"]["final"] == saved["ppo"]["final"]
    # Where each side ran: XLA's arithmetic follows the CPU (wmjax.machine).
    assert [m["chunk"] for m in saved["dreamer"]["machines"]] == [0]
    assert saved["ppo"]["machine"]["cpu_features"] == cpu_fingerprint()
    # benchmarks/ladder_seeds.py reads what the ladder writes (here, as if run twice).
    from benchmarks.ladder_seeds import combine

    twice = combine([saved, {**saved, "seed": 2}])
    assert twice["seed_ids"] == [0, 1, 2, 3] and twice["per_bin"]["ppo"] == pytest.approx(
        saved["per_bin"]["ppo"])
    assert twice["dreamer"]["final"] == pytest.approx(saved["dreamer"]["final"])
    # Each seed's final checkpoint played frozen, as wmjax.policy.evaluate plays it.
    frozen = saved["dreamer"]["final_policy"]
    run_dir = str(tmp_path / "runs" / "cartpole" / "dreamer")
    again = [float(np.mean(evaluate(load_policy(run_dir, s, "train"), 3, jax.random.key(s))))
             for s in range(2)]
    assert frozen["episodes"] == 3 and frozen["returns"] == again
    assert frozen["mean"] == np.mean(again) and all(r >= 8 for r in again)  # CartPole's minimum
    ppo_frozen = saved["ppo"]["final_policy"]
    assert ppo_frozen["episodes"] == 3 and len(ppo_frozen["returns"]) == 2
    assert all(r >= 8 for r in ppo_frozen["returns"])
    # --resume reuses the saved PPO result when its settings match, and only then.
    again = main(argv + ["--resume"])
    assert again["ppo"] == result["ppo"]
    assert again["dreamer"]["machines"] == saved["dreamer"]["machines"]  # nothing left to run
    for other in (["--ppo-envs", "8"], ["--ppo-preset", "minatar"]):
        with pytest.raises(AssertionError, match="PPO trained again"):
            main(argv + ["--resume"] + other)
    assert saved["ppo"]["config"] == asdict(PPOConfig())  # cartpole's preset: classic
    # --seed is DreamerV3's base seed: a seed-0 run is not resumed as seed 1.
    assert saved["seed"] == 0
    with pytest.raises(RunDirError, match="seed: 0 != 1"):
        main(argv + ["--resume", "--seed", "1"])


def test_ppo_baseline_takes_the_base_seed_and_caches_per_seed(tmp_path, monkeypatch, capsys):
    """--seed reaches PPO too, and a saved PPO result is reused only for its own base seed;
    files saved before --seed existed hold seed 0's."""
    seeds_trained = []

    def fake_train_ppo(env, steps, seeds, seed=0, config=None, eval_episodes=0):
        seeds_trained.append(seed)
        return dict(marker=seed)

    monkeypatch.setattr(ladder, "train_ppo", fake_train_ppo)
    path, config = str(tmp_path / "ppo.json"), PPOConfig()
    baseline = lambda seed, resume=True: ladder._ppo_baseline(
        "CartPole-v1", 512, 1, config, 0, path, resume, seed)
    assert baseline(1) == dict(marker=1) and seeds_trained == [1]
    assert baseline(1) == dict(marker=1) and seeds_trained == [1]  # reused
    assert baseline(0) == dict(marker=0) and seeds_trained == [1, 0]  # another seed: trained
    saved = json.load(open(path))
    del saved["request"]["seed"]  # as written before --seed
    json.dump(saved, open(path, "w"))
    assert baseline(0) == dict(marker=0) and seeds_trained == [1, 0]  # reused as seed 0's
    assert baseline(2) == dict(marker=2) and seeds_trained == [1, 0, 2]
    with pytest.raises(SystemExit):
        main(["--rung", "cartpole", "--seed", "-1", "--logdir", str(tmp_path / "none")])
    assert not os.path.exists(tmp_path / "none")
    # Another base seed gets folders of its own by default, so seed 0's results stay.
    monkeypatch.setattr(ladder, "run_rung", lambda *args: args[6:8] + args[-2:-1])
    assert main(["--rung", "cartpole"]) == ("runs/ladder", "benchmarks/results/ladder", False)
    assert main(["--rung", "cartpole", "--replay-online"])[2] is True
    assert main(["--rung", "cartpole", "--replay-priority", "curious"])[2] is False
    monkeypatch.setattr(ladder, "run_rung", lambda *args: args[-1])
    assert main(["--rung", "cartpole"]) == "uniform"
    assert main(["--rung", "cartpole", "--replay-priority", "curious"]) == "curious"
    monkeypatch.setattr(ladder, "run_rung", lambda *args: args[6:8] + args[-2:-1])
    assert main(["--rung", "cartpole", "--seed", "2"])[:2] == (
        "runs/ladder_seed2", "benchmarks/results/ladder_seed2")
    assert main(["--rung", "cartpole", "--seed", "2", "--out", "o"])[1] == "o"
    # The log names the agent overrides, and says when --set has replaced the rung's.
    assert "agent overrides " + " ".join(RUNG_SETS["cartpole"]) + " (the rung's)" \
        in capsys.readouterr().out
    main(["--rung", "cartpole", "--set", "lr=1e-3"])
    assert "agent overrides lr=1e-3 (given with --set, in place of the rung's imag_starts=256" \
        in capsys.readouterr().out


def test_ppo_baseline_learns_cartpole():
    result = train_ppo("CartPole-v1", 40_000, seeds=2, config=PPOConfig(), eval_episodes=8)
    first = [v for v in result["returns"][0][:3] if v is not None]
    last = [row[-1] for row in result["returns"]]
    assert max(first) < 40 and min(last) > 60, (first, last)  # random is ~22
    # The final parameters, played frozen, keep what training reached (an untrained net: ~22).
    assert len(result["final_policy"]) == 2 and min(result["final_policy"]) > 60, result["final_policy"]
    rows = result["rows"]  # metrics rows, as wmjax writes them, for the ladder's extra metrics
    assert len(rows) == 2 * len(result["env_steps"])
    assert rows[-1]["seed"] == 1 and rows[-1]["episode_return"] == result["returns"][1][-1]
    # CartPole pays 1 per step, so an episode's length is its return (the reset record adds none).
    ended = [r for r in rows if r["episodes"]]
    assert ended and all(r["episode_length"] == pytest.approx(r["episode_return"]) for r in ended)


def test_every_rung_has_references():
    assert {env for env, _, _ in RUNGS.values()} <= set(REFERENCES)


def test_every_rung_has_default_settings_that_make_a_valid_config():
    assert set(RUNG_SETS) == set(RUNGS)
    # DreamerConfig validates every field and value.
    configs = {rung: DreamerConfig.preset("size1m", **dict(map(parse_override, sets)))
               for rung, sets in RUNG_SETS.items()}
    assert all(c.imag_starts == 256 for c in configs.values())
    # The rungs' settings are the README table's (benchmarks/README.md has the runs).
    assert all(configs[rung].actent == 3e-3 for rung in ("cartpole", "acrobot", "craftax", "breakout"))
    assert configs["acrobot"].cont_terminal_weight == 10 and configs["pendulum"].actent == 3e-4
    assert configs["craftax"].lr == 6e-4 and configs["craftax"].cont_terminal_weight == 1
    assert configs["craftax"] == configs["breakout"].replace(
        lr=6e-4, reward_scale=10.0, image_loss="mse")
    assert configs["breakout"].lr == 3e-4 and configs["breakout"].image_loss == "bce"
    # Asterix: Breakout's settings, the bce image loss among them; SpaceInvaders and Freeway
    # change the bonus, and Freeway adds the self-imitation actor loss on replayed actions.
    assert configs["asterix"] == configs["breakout"]
    assert configs["spaceinvaders"] == configs["asterix"].replace(actent=1e-3)
    assert configs["freeway"] == configs["asterix"].replace(
        actent=DreamerConfig().actent, replay_policy_scale=1.0, replay_policy_positive=True)
    others = [c for rung, c in configs.items() if rung != "freeway"]
    assert all(c.replay_policy_scale == 0 and not c.replay_policy_positive for c in others)


def test_the_flat_freeway_rung_is_the_freeway_rung_read_as_a_vector():
    """freeway_flat trains DreamerV3 on Freeway's frames as one vector, with the freeway rung's
    budget and settings but the bce loss on the vector decoder and without the replay actor loss
    (its runs predate it); PPO (the MinAtar recipe, which flattens frames itself) trains on the
    game as it is and is compared with the same numbers."""
    from benchmarks.ladder import PPO_ENVS, PPO_RUNG_PRESETS

    flat, freeway = RUNGS["freeway_flat"], RUNGS["freeway"]
    assert flat[0] == "Freeway-MinAtar-Flat" and flat[1:] == freeway[1:]
    assert PPO_ENVS[flat[0]] == freeway[0] and REFERENCES[flat[0]] == REFERENCES[freeway[0]]
    assert PPO_RUNG_PRESETS["freeway_flat"] == PPO_RUNG_PRESETS["freeway"] == "minatar"
    sets = [dict(map(parse_override, RUNG_SETS[r])) for r in ("freeway_flat", "freeway")]
    assert sets[0].pop("vector_loss") == "bce" and sets[1].pop("image_loss") == "bce"
    assert sets[1].pop("replay_policy_scale") == 1.0 and sets[1].pop("replay_policy_positive")
    assert sets[0] == sets[1]


def test_the_grid_craftax_rung_is_the_craftax_rung_with_a_map_image():
    """craftax_grid trains DreamerV3 on the Grid view with craftax's settings and budget; its
    PPO reads the same numbers flat, as on the craftax rung."""
    from benchmarks.ladder import PPO_ENVS

    pytest.importorskip("craftax")
    from wmjax.envs import make_env

    grid, flat = RUNGS["craftax_grid"], RUNGS["craftax"]
    assert grid[1:] == flat[1:] and RUNG_SETS["craftax_grid"] == RUNG_SETS["craftax"]
    assert PPO_ENVS[grid[0]] == flat[0] and REFERENCES[grid[0]] == REFERENCES[flat[0]]
    assert make_env(grid[0]).spec.is_dict and make_env(PPO_ENVS[grid[0]]).spec.obs_shape == (1345,)


def test_ppo_config_refuses_bad_settings_by_name():
    for bad, field in ((dict(activation="gelu"), "activation"), (dict(lr_schedule="cosine"), "lr_schedule"),
                       (dict(weight_init="he"), "weight_init"), (dict(num_envs=0), "num_envs"),
                       (dict(num_envs=3, minibatches=7), "minibatches")):
        with pytest.raises(ValueError, match=f"invalid PPO config: {field}="):
            PPOConfig(**bad)
    with pytest.raises(ValueError, match="unknown PPO preset 'atari'; allowed"):
        PPOConfig.preset("atari")
    assert PPOConfig.preset("minatar", num_envs=8).num_envs == 8


def test_minatar_rungs_take_gymnax_blines_ppo(tmp_path, capsys):
    """The MinAtar rungs compare with gymnax's published PPO, so their baseline is the recipe
    that produced those numbers: 2 x 256 ReLU MLPs with Flax's default init, 64 envs, γ 0.999."""
    from benchmarks.ladder import PPO_RUNG_PRESETS
    from benchmarks.ppo import ActorCritic, PPO_PRESETS

    minatar = PPO_PRESETS["minatar"]
    assert {r for r, p in PPO_RUNG_PRESETS.items() if p == "minatar"} == {
        "breakout", "spaceinvaders", "asterix", "freeway", "freeway_flat"}
    assert PPO_RUNG_PRESETS["cartpole"] == PPO_RUNG_PRESETS["craftax"] == "classic"
    assert PPO_PRESETS["classic"] == PPOConfig()
    assert (minatar.num_envs, minatar.gamma, minatar.lr_schedule, minatar.clip_value) == (
        64, 0.999, "constant", True)
    x = np.ones((2, 400), np.float32)
    params = {}
    for name in ("classic", "minatar"):
        c = PPO_PRESETS[name]
        net = ActorCritic(3, True, c.hidden, c.activation, c.weight_init)
        params[name] = net.init(jax.random.key(0), x)["params"]
    dense = lambda p: [layer for layer in p.values() if isinstance(layer, dict)]  # not log_std
    widths = lambda p: sorted(layer["kernel"].shape for layer in dense(p))
    assert widths(params["minatar"]) == [(256, 1), (256, 3), (256, 256), (256, 256), (400, 256), (400, 256)]
    biases = lambda p: np.concatenate([np.ravel(layer["bias"]) for layer in dense(p)])
    assert 0 < biases(params["minatar"]).min() and biases(params["minatar"]).max() < 0.05
    assert not biases(params["classic"]).any()
    # A bad PPO override is refused by name before anything trains.
    with pytest.raises(SystemExit):
        main(["--rung", "breakout", "--ppo-envs", "0", "--logdir", str(tmp_path)])
    assert "num_envs=0; allowed: an integer >= 1" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def _fake_result(seed, seeds, final, per_bin, frozen, curve, ppo_final=1.0):
    learner = lambda f: dict(final=f, wall_s=60.0, curve=curve,
                             final_policy=dict(mode="train", episodes=4, returns=frozen,
                                               mean=float(np.mean(frozen))))
    return dict(rung="breakout", env="Breakout-MinAtar", steps=100, seed=seed, seeds=seeds,
                preset="size1m", train_ratio=32.0, overrides={"actent": 1e-3},
                reduced_budget=True, references={"random": 0.4},
                dreamer=learner(final), ppo=dict(learner(ppo_final), env="Breakout-MinAtar",
                                                 config={"lr": 1.0}),
                per_bin=dict(every=50, dreamer=per_bin, ppo=[1.0, None]))


def test_ladder_seeds_combines_runs_of_one_rung(tmp_path, capsys):
    """Seeds run one ladder run at a time combine into one result, each file weighed by its
    seeds; results that are not seeds of one experiment are refused by name."""
    from benchmarks.ladder_seeds import combine, main as combine_main

    one = _fake_result(0, 1, 4.0, [1.0, None], [5.0], [[50, 2.0], [100, 4.0]])
    two = _fake_result(1, 2, 10.0, [4.0, 7.0], [8.0, 11.0], [[50, 5.0], [100, 10.0], [150, 9.0]],
                       ppo_final=4.0)
    both = combine([one, two])
    assert both["seeds"] == 3 and both["seed_ids"] == [0, 1, 2]
    assert both["dreamer"]["final"] == pytest.approx(8.0)  # (4 + 2 * 10) / 3
    assert both["ppo"]["final"] == pytest.approx(3.0) and both["ppo"]["config"] == {"lr": 1.0}
    assert both["per_bin"]["dreamer"] == [pytest.approx(3.0), 7.0]  # None counts in no mean
    assert both["per_bin"]["ppo"] == [1.0, None]
    assert both["dreamer"]["final_policy"]["returns"] == [5.0, 8.0, 11.0]
    assert both["dreamer"]["final_policy"]["mean"] == pytest.approx(8.0)
    assert both["dreamer"]["curve"] == [[50, 4.0], [100, 8.0], [150, 9.0]]
    assert both["dreamer"]["spread"][0] == [50, 2.0, 5.0] and both["dreamer"]["wall_s"] == 120.0
    for bad, match in ((dict(seed=0), "seed 0 is in both"), (dict(steps=200), "steps=200"),
                       (dict(overrides={}), "overrides="),
                       (dict(tunable_schedule=[[500, "reward_scale", 10.0]]), "tunable_schedule="),
                       (dict(replay_online=True), "replay_online=True"),
                       (dict(replay_priority="curious"), "replay_priority='curious'")):
        with pytest.raises(ValueError, match=match):
            combine([one, {**two, **bad}])
    # A result written before replay_online existed ran without the online queue.
    assert combine([one, {**two, "replay_online": False}])["replay_online"] is False
    assert combine([one, {**two, "replay_priority": "uniform"}])["replay_priority"] == "uniform"
    with pytest.raises(ValueError, match="allowed: 2 or more"):
        combine([one])
    paths = []
    for i, result in enumerate((one, two)):
        paths.append(str(tmp_path / f"r{i}.json"))
        json.dump(result, open(paths[-1], "w"))
    combine_main(paths + ["--out", str(tmp_path / "both")])
    assert json.load(open(tmp_path / "both" / "breakout.json")) == json.loads(json.dumps(both)) | {
        "sources": paths}
    printed = capsys.readouterr().out
    assert "seeds [0, 1, 2]" in printed and "DreamerV3 8.0" in printed and "| 3.00 | 7.00 |" in printed
    assert open(tmp_path / "both" / "breakout.png", "rb").read(4) == b"\x89PNG"
    open(tmp_path / "broken.json", "w").write("{")
    with pytest.raises(SystemExit):
        combine_main([paths[0], str(tmp_path / "broken.json"), "--out", str(tmp_path / "x")])
    assert "cannot read" in capsys.readouterr().err and not os.path.exists(tmp_path / "x")
    json.dump([1, 2], open(tmp_path / "list.json", "w"))
    with pytest.raises(SystemExit):
        combine_main([paths[0], str(tmp_path / "list.json"), "--out", str(tmp_path / "x")])
    assert "is not a ladder result" in capsys.readouterr().err and not os.path.exists(tmp_path / "x")


def test_craftax_rungs_record_each_achievement_and_seeds_combine_them(capsys):
    """A Craftax rung keeps each learner's Crafter score and per-achievement success rates per
    seed (pooled over its training episodes); ladder_seeds carries and prints them."""
    pytest.importorskip("craftax")
    from benchmarks.ladder import crafter_fields
    from wmjax.plots import achievements_table
    from benchmarks.ladder_seeds import combine, report
    from wmjax.envs.craftax import achievement_names, score_from_rates

    names = achievement_names()
    row = lambda seed, episodes, wood: {"seed": seed, "episodes": episodes, **{
        f"episode/achievement/{n}": (wood if n == "collect_wood" else 0.0) for n in names}}
    rows = [row(0, 3, 100.0), row(0, 1, 0.0), row(1, 2, 50.0)]
    fields = crafter_fields(rows, seeds=3)
    wood = [r and r["collect_wood"] for r in fields["achievements"]]
    assert wood == [pytest.approx(75.0), pytest.approx(50.0), None]  # seed 2: no episode
    assert fields["crafter_score"][:2] == [pytest.approx(score_from_rates(np.r_[w, np.zeros(21)]))
                                           for w in (75.0, 50.0)]
    assert fields["crafter_score"][2] is None
    table = achievements_table({"A": fields["achievements"], "B": [None]})
    assert table.splitlines()[0] == "| achievement | A | B |"
    assert "| collect_wood | 62.5 | – |" in table and "| eat_cow | 0.0 | – |" in table
    assert len(table.splitlines()) == 2 + 22
    assert achievements_table({"A": [None]}) == "(no episode finished)"

    one = _fake_result(0, 1, 4.0, [1.0, None], [5.0], [[50, 2.0]])
    two = _fake_result(1, 1, 6.0, [2.0, None], [6.0], [[50, 3.0]])
    for result, wood_rate in ((one, 100.0), (two, 50.0)):
        for learner in ("dreamer", "ppo"):
            # A run's rows number its seeds from 0 whatever its base seed.
            result[learner].update(crafter_fields([row(0, 1, wood_rate if learner == "dreamer"
                                                       else 0.0)], 1))
    both = combine([one, two])
    assert [r["collect_wood"] for r in both["dreamer"]["achievements"]] == [100.0, 50.0]
    assert len(both["ppo"]["crafter_score"]) == 2
    assert "| collect_wood | 75.0 | 0.0 |" in report(both)
    del two["ppo"]["achievements"]  # a file from before the rates were kept: no table
    assert "achievements" not in combine([one, two])["ppo"]
    assert "collect_wood" not in report(combine([one, two]))
