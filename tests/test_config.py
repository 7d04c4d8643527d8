import json

import pytest

from wmjax.config import PRESETS, DreamerConfig, TrainConfig


def test_presets_match_dreamerv3_sizes():
    c = DreamerConfig.preset("size1m")
    assert (c.deter, c.hidden, c.classes, c.units, c.stoch, c.blocks) == (512, 64, 4, 64, 32, 8)
    c = DreamerConfig.preset("size12m")
    assert (c.deter, c.hidden, c.classes, c.units) == (2048, 256, 16, 256)
    d = DreamerConfig()
    assert (d.lr, d.warmup, d.agc, d.eps, d.imag_horizon, d.lam, d.actent) == \
        (4e-5, 1000, 0.3, 1e-20, 15, 0.95, 3e-4)
    assert (d.dyn_scale, d.rep_scale, d.repval_scale, d.slow_rate) == (1.0, 0.1, 0.3, 0.02)
    assert abs(d.gamma - (1 - 1 / 333)) < 1e-12
    assert set(PRESETS) >= {"tiny", "size1m", "size12m", "size25m", "size50m", "size100m",
                            "size200m", "size400m"}


@pytest.mark.parametrize("kwargs,match", [
    (dict(imag_horizon=0), "imag_horizon"),
    (dict(lr=-1.0), "lr"),
    (dict(deter=100, blocks=8), "deter"),
    (dict(num_bins=254), "num_bins"),
    (dict(compute_dtype="float64"), "compute_dtype"),
    (dict(imag_starts=10_000), "imag_starts"),
])
def test_bad_agent_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DreamerConfig(**kwargs)


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*size1m"):
        DreamerConfig.preset("huge")


@pytest.mark.parametrize("kwargs,match", [
    (dict(train_ratio=-2.0), "train_ratio"),
    (dict(num_envs=0), "num_envs"),
    (dict(replay_size=100, num_envs=16), "replay_size"),
    (dict(seeds=2, seed_ids=(0,)), "seed_ids.*2 integers"),
    (dict(seeds=2, seed_ids=(0, -1)), "seed_ids"),
    (dict(seeds=1, seed_ids=(True,)), "seed_ids"),
])
def test_bad_train_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_compute_dtype_auto_is_float32_on_cpu_bfloat16_on_accelerators():
    c = DreamerConfig()
    assert c.compute_dtype == "auto"
    assert c.resolved_dtype("cpu") == "float32"
    assert c.resolved_dtype("gpu") == "bfloat16" and c.resolved_dtype("tpu") == "bfloat16"
    assert DreamerConfig(compute_dtype="bfloat16").resolved_dtype("cpu") == "bfloat16"


def test_matmul_precision_auto_is_bfloat16_on_cpus_with_fast_bfloat16(monkeypatch):
    import wmjax.machine

    c = DreamerConfig()
    assert c.matmul_precision == "auto"
    flags = {"amx": "fpu avx512f amx_bf16 amx_tile", "zen4": "fpu avx512f avx512_bf16",
             "avx512": "fpu avx512f avx512_vnni", "avx2": "fpu avx2 fma"}
    for cpu, want in (("amx", "bfloat16"), ("zen4", "bfloat16"), ("avx512", "float32"),
                      ("avx2", "float32")):
        monkeypatch.setattr(wmjax.machine, "_cpuinfo_line", lambda *_, f=flags[cpu]: f"flags\t: {f}\n")
        assert c.resolved_matmul_precision("cpu") == want, cpu
    assert c.resolved_matmul_precision("gpu") == "float32"  # computes in bfloat16 there anyway
    assert DreamerConfig(matmul_precision="bfloat16").resolved_matmul_precision("gpu") == "bfloat16"
    with pytest.raises(ValueError, match="matmul_precision.*allowed"):
        DreamerConfig(matmul_precision="tf32")
    # A run's config saved before the field existed multiplied in float32 and resumes so.
    data = TrainConfig().to_dict()
    del data["agent"]["matmul_precision"]
    assert TrainConfig.from_dict(data).agent.matmul_precision == "float32"


def test_config_round_trips_through_dict_and_names_unknown_fields():
    config = TrainConfig(env="Acrobot-v1", seeds=3, agent=DreamerConfig.preset("tiny", lr=1e-3))
    assert TrainConfig.from_dict(config.to_dict()) == config
    data = config.to_dict()
    data["agent"]["learning_rate"] = 1.0
    with pytest.raises(ValueError, match="unknown DreamerConfig field.*learning_rate"):
        TrainConfig.from_dict(data)
    # A sweep program's seed ids come back from JSON as a list and are kept as a tuple.
    program = config.replace(seeds=4, seed_ids=[0, 1, 0, 1])
    assert program.seed_ids == (0, 1, 0, 1)
    assert TrainConfig.from_dict(json.loads(json.dumps(program.to_dict()))) == program
    # A run saved before replay_online existed had no online queue and resumes without it.
    online = config.replace(replay_online=True)
    assert TrainConfig.from_dict(online.to_dict()).replay_online is True
    del data["agent"]["learning_rate"], data["replay_online"]
    assert TrainConfig.from_dict(data).replay_online is False
    with pytest.raises(ValueError, match="replay_online.*True or False"):
        config.replace(replay_online="yes")
    # So did a run saved before replay_priority existed: it draws windows uniformly.
    assert "replay_priority" not in data or data.pop("replay_priority") == "uniform"
    assert TrainConfig.from_dict(data).replay_priority == "uniform"
    with pytest.raises(ValueError, match="replay_priority='rank'.*uniform, curious"):
        config.replace(replay_priority="rank")
    with pytest.raises(ValueError, match="replay_priority.*do not combine"):
        config.replace(replay_online=True, replay_priority="curious")
    other = config.replace(train_ratio=64.0, agent=config.agent.replace(lr=2e-3))
    assert config.differences(other) == ["agent.lr: 0.001 != 0.002", "train_ratio: 32.0 != 64.0"]


def test_batch_length_longer_than_replay_is_rejected():
    with pytest.raises(ValueError, match="replay_size"):
        TrainConfig(num_envs=1, replay_size=64, agent=DreamerConfig(batch_length=64))


def test_cli_flags_reach_the_train_config():
    from wmjax.cli import build_config, build_parser

    args = build_parser().parse_args(["train", "--env", "Acrobot-v1", "--replay-obs-dtype",
                                      "bfloat16", "--steps", "4096", "--set", "lr=1e-4",
                                      "--replay-online"])
    config = build_config(args)
    assert (config.env, config.replay_obs_dtype, config.steps, config.agent.lr,
            config.replay_online) == ("Acrobot-v1", "bfloat16", 4096, 1e-4, True)
    default = build_config(build_parser().parse_args(["train"]))
    assert (default.replay_obs_dtype, default.replay_online) == ("float32", False)
    assert default.replay_priority == "uniform"
    curious = build_config(build_parser().parse_args(["train", "--replay-priority", "curious"]))
    assert curious.replay_priority == "curious"
    with pytest.raises(SystemExit):  # argparse names the allowed choices
        build_parser().parse_args(["train", "--replay-obs-dtype", "int8"])


@pytest.mark.parametrize("schedule,match", [
    (((100, "units", 32.0),), "tunable_schedule entry.*name one of lr"),
    (((-1, "lr", 1e-3),), "tunable_schedule entry"),
    (((100, "lr"),), "tunable_schedule entry"),
    (((1.5, "lr", 1e-3),), "tunable_schedule entry"),
    (((100, "reward_scale", -1.0),), "reward_scale"),  # DreamerConfig's own check of the value
    # The default agent compiles no replay actor loss for a schedule to switch on.
    (((100, "replay_policy_scale", 1.0),),
     "entry.*in a run whose agent config has replay_policy_scale > 0"),
    ("lr", "tunable_schedule"),
])
def test_bad_tunable_schedule_names_the_entry(schedule, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(tunable_schedule=schedule)


def test_tunable_schedule_sorts_round_trips_and_reads_by_step():
    config = TrainConfig(tunable_schedule=[[500, "reward_scale", 10], (100, "actent", 1e-3),
                                           (800, "reward_scale", 1)])
    assert config.tunable_schedule == ((100, "actent", 1e-3), (500, "reward_scale", 10.0),
                                       (800, "reward_scale", 1.0))
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.tunables_at(99) == {}
    assert config.tunables_at(100) == {"actent": 1e-3}
    assert config.tunables_at(500) == {"actent": 1e-3, "reward_scale": 10.0}
    assert config.tunables_at(10**6) == {"actent": 1e-3, "reward_scale": 1.0}
    # A run with the replay actor loss compiled in may schedule it off (not on, above).
    off = TrainConfig(agent=DreamerConfig(replay_policy_scale=1.0, replay_policy_positive=True),
                      tunable_schedule=[(200_000, "replay_policy_scale", 0)])
    assert off.tunables_at(200_000) == {"replay_policy_scale": 0.0}
    # A config.json from before the field existed reads as an empty schedule.
    data = TrainConfig().to_dict()
    del data["tunable_schedule"]
    assert TrainConfig.from_dict(data).tunable_schedule == ()


def test_cli_set_from_reaches_the_schedule_and_names_bad_entries():
    from wmjax.cli import build_config, build_parser

    parse = lambda *flags: build_config(build_parser().parse_args(["train", *flags]))
    config = parse("--set-from", "500_000:reward_scale=10", "--set-from", "0:actent=3e-3")
    assert config.tunable_schedule == ((0, "actent", 3e-3), (500_000, "reward_scale", 10.0))
    for text, match in [("500000reward_scale=10", "expects STEP:NAME=VALUE"),
                        ("5:units=3", "'units' is not a tunable"),
                        ("x:lr=1", "STEP must be an integer"),
                        ("5:lr=fast", "VALUE a number")]:
        with pytest.raises(ValueError, match=match):
            parse("--set-from", text)
