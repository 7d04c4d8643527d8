"""Image observations: DreamerV3's CNN encoder/decoder and the MinAtar adapters."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from programs import TINY
from wmjax.envs import make_env
from wmjax.models.heads import ImageDecoder, ImageEncoder, cnn_plan, cnn_stages


def test_cnn_stages_follow_dreamerv3():
    assert cnn_stages((64, 64), 4) == 4  # 64 -> 4x4, as DreamerV3
    assert cnn_stages((96, 96), 4) == 4  # -> 6x6
    assert cnn_stages((10, 10), 4) == 1  # MinAtar -> 5x5
    assert cnn_stages((64, 64), 2) == 2


def test_outer_cnn_keeps_the_first_stage_at_full_resolution():
    """DreamerV3's `outer`: MinAtar's 10x10 frame gets a full-resolution stage, then one pooled
    one (5x5); without it, one pooled stage; 64x64 pools three times instead of four."""
    assert cnn_plan((10, 10), (2, 3, 4, 4)) == ((2, True),)
    assert cnn_plan((10, 10), (2, 3, 4, 4), outer=True) == ((2, False), (3, True))
    assert cnn_plan((64, 64), (2, 3, 4, 4), outer=True) == ((2, False), (3, True), (4, True), (4, True))
    enc, dec = ImageEncoder(depth=2, outer=True), ImageDecoder((10, 10, 4), depth=2, outer=True)
    obs = jnp.zeros((2, 3, 10, 10, 4), jnp.uint8)
    params = enc.init(jax.random.key(0), obs)["params"]
    assert params["Conv_0"]["kernel"].shape == (5, 5, 4, 4)  # 2 * depth channels at 10x10
    assert enc.apply({"params": params}, obs).shape == (2, 3, 5 * 5 * 6)
    feat = jnp.zeros((2, 3, 40))
    dparams = dec.init(jax.random.key(1), feat)
    assert dec.apply(dparams, feat).shape == (2, 3, 10, 10, 4)
    assert dparams["params"]["Linear_0"]["kernel"].shape == (40, 5 * 5 * 6)
    # The option reaches the agent from the config and the command line.
    from wmjax.agents.dreamer import Dreamer
    from wmjax.cli import parse_override
    from wmjax.config import DreamerConfig

    assert parse_override("cnn_outer=true") == ("cnn_outer", True)
    assert parse_override("cnn_outer=0") == ("cnn_outer", False)
    with pytest.raises(ValueError, match="not a valid bool; allowed"):
        parse_override("cnn_outer=maybe")
    with pytest.raises(ValueError, match="cnn_outer"):
        DreamerConfig(cnn_outer="yes")
    agent = Dreamer(DreamerConfig.preset("tiny", cnn_outer=True), make_env("Breakout-MinAtar").spec)
    assert agent.encoder.outer and agent.decoder.outer


@pytest.mark.parametrize("shape", [(10, 10, 4), (64, 64, 3), (63, 63, 3)])  # MinAtar, DMC, Craftax
def test_encoder_decoder_shapes(shape):
    enc, dec = ImageEncoder(depth=2), ImageDecoder(shape, depth=2)
    obs = jnp.zeros((2, 3) + shape, jnp.uint8)
    params = enc.init(jax.random.key(0), obs)
    embed = enc.apply(params, obs)
    h, w = shape[:2]
    stages = cnn_stages((h, w), 4)
    assert embed.shape == (2, 3, (h >> stages) * (w >> stages) * 2 * (2, 3, 4, 4)[stages - 1])
    feat = jnp.zeros((2, 3, 40))
    out = dec.apply(dec.init(jax.random.key(1), feat), feat)
    assert out.shape == (2, 3) + shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert dec.loss(out, obs).shape == (2, 3)


@pytest.mark.parametrize("image_loss", ["mse", "bce"])
def test_autoencoder_reconstruction_loss_decreases(image_loss):
    env = make_env("Breakout-MinAtar")
    keys = jax.random.split(jax.random.key(0), 16)
    _, ts = jax.vmap(env.reset)(keys)
    obs = ts.obs  # (16, 10, 10, 4) uint8
    enc = ImageEncoder(depth=4)
    dec = ImageDecoder(env.spec.obs_shape, depth=4, image_loss=image_loss)
    enc_params = enc.init(jax.random.key(1), obs)
    embed = enc.apply(enc_params, obs)
    params = {"enc": enc_params, "dec": dec.init(jax.random.key(2), embed)}

    def loss(p):
        return dec.loss(dec.apply(p["dec"], enc.apply(p["enc"], obs)), obs).mean()

    opt = optax.adam(1e-3)

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s)
        return optax.apply_updates(p, updates), s, value

    state = opt.init(params)
    first = None
    for _ in range(150):
        params, state, value = step(params, state)
        first = value if first is None else first
    assert float(value) < 0.3 * float(first), (float(first), float(value))


def test_bce_image_loss_keeps_learning_a_missed_pixel():
    """image_loss="bce": the decoder outputs logits, the loss is binary cross-entropy against
    obs / 255 and `to_obs` maps back to pixels. On a lit pixel the decoder puts at 1% it pulls
    with gradient -0.99 per unit logit, where DreamerV3's sigmoid + squared error pulls with
    -0.02: the reason the option exists for one-pixel objects."""
    shape = (2, 2, 1)
    obs = jnp.zeros(shape, jnp.uint8).at[0, 0, 0].set(255)
    logits = jnp.full(shape, jnp.log(0.01 / 0.99))
    bce = ImageDecoder(shape, image_loss="bce")
    mse = ImageDecoder(shape)
    p = 0.01
    expected = -np.log(p) + 3 * -np.log(1 - p)
    np.testing.assert_allclose(bce.loss(logits, obs), expected, rtol=1e-5)
    np.testing.assert_allclose(mse.loss(jax.nn.sigmoid(logits), obs), (1 - p) ** 2 + 3 * p ** 2, rtol=1e-5)
    np.testing.assert_allclose(bce.to_obs(logits)[0, 0, 0], 2.55, rtol=1e-5)
    pull_bce = jax.grad(lambda x: bce.loss(x, obs))(logits)[0, 0, 0]
    pull_mse = jax.grad(lambda x: mse.loss(jax.nn.sigmoid(x), obs))(logits)[0, 0, 0]
    np.testing.assert_allclose(pull_bce, -(1 - p), rtol=1e-5)
    np.testing.assert_allclose(pull_mse, -2 * (1 - p) * p * (1 - p), rtol=1e-5)
    # The decoder itself: logits (unbounded) under "bce", a sigmoid under "mse".
    feat = jax.random.normal(jax.random.key(0), (3, 16))
    params = bce.init(jax.random.key(1), feat)
    out = bce.apply(params, feat)
    assert float(out.min()) < 0.0  # a logit; no sigmoid output is negative
    with pytest.raises(ValueError, match="image_loss='l1'; allowed"):
        ImageDecoder(shape, image_loss="l1").init(jax.random.key(1), feat)
    np.testing.assert_allclose(mse.apply(params, feat), jax.nn.sigmoid(out), rtol=1e-6)
    # The option reaches the agent (images and dict observations) and is validated.
    from wmjax.agents.dreamer import Dreamer
    from wmjax.cli import parse_override
    from wmjax.config import DreamerConfig

    assert parse_override("image_loss=bce") == ("image_loss", "bce")
    with pytest.raises(ValueError, match=r"image_loss='l1'; allowed: one of \('mse', 'bce'\)"):
        DreamerConfig(image_loss="l1")
    config = DreamerConfig.preset("tiny", image_loss="bce")
    assert Dreamer(config, make_env("Breakout-MinAtar").spec).decoder.image_loss == "bce"
    grid = Dreamer(config, make_env("Craftax-Classic-Symbolic-Grid-v1").spec).decoder
    assert grid.image_loss == "bce"
    # A dict decoder applies it to its image keys only.
    pred = {"map": jnp.zeros((7, 9, 21)), "state": jnp.zeros(22)}
    obs = {"map": jnp.full((7, 9, 21), 255, jnp.uint8), "state": jnp.zeros(22)}
    np.testing.assert_allclose(grid.loss(pred, obs), 7 * 9 * 21 * np.log(2.0), rtol=1e-4)
    assert float(grid.to_obs(pred)["map"].max()) == 127.5


@pytest.mark.parametrize("name,channels,actions", [
    ("Breakout-MinAtar", 4, 3), ("SpaceInvaders-MinAtar", 6, 4),
    ("Asterix-MinAtar", 4, 5), ("Freeway-MinAtar", 7, 3)])
def test_minatar_adapters(name, channels, actions):
    env = make_env(name)
    assert env.spec.obs_shape == (10, 10, channels) and env.spec.discrete
    assert env.spec.num_actions == actions
    state, ts = env.reset(jax.random.key(0))
    assert ts.obs.dtype == jnp.uint8 and set(np.unique(np.asarray(ts.obs))) <= {0, 255}
    assert bool(ts.is_first) and not bool(ts.is_last)
    step = jax.jit(env.step)
    for i in range(5):
        state, ts = step(jax.random.key(i), state, jnp.int32(i % actions))
        assert ts.obs.shape == (10, 10, channels) and ts.obs.dtype == jnp.uint8
        assert not bool(ts.is_first)


def test_breakout_actions_and_rewards_reach_the_game():
    """A policy that reads the frame and moves the paddle under the ball scores far above a
    random one: the adapter maps action 1 to left and 2 to right (gymnax's action set is
    [0, 1, 3]), and frames and rewards are the game's."""
    env = make_env("Breakout-MinAtar")
    n, steps = 16, 300

    def track(obs, key):  # channels: paddle, ball, trail, brick
        paddle = jnp.argmax(obs[:, 9, :, 0], -1)
        ball = jnp.argmax(obs[:, :, :, 1].max(1), -1)
        return jnp.where(ball < paddle, 1, jnp.where(ball > paddle, 2, 0))

    def wander(obs, key):
        return jax.random.randint(key, (n,), 0, 3)

    @functools.partial(jax.jit, static_argnums=0)
    def first_return(policy):
        state, ts = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), n))

        def body(carry, key):
            state, obs = carry
            k1, k2 = jax.random.split(key)
            state, ts = jax.vmap(env.step)(jax.random.split(k2, n), state, policy(obs, k1))
            return (state, ts.obs), (ts.reward, ts.is_last)

        _, (rewards, last) = jax.lax.scan(body, (state, ts.obs),
                                          jax.random.split(jax.random.key(1), steps))
        ended_before = jnp.cumsum(last, 0) - last  # episodes that ended before this step
        return jnp.where(ended_before == 0, rewards, 0.0).sum(0).mean()  # first episodes' return

    tracked, random = float(first_return(track)), float(first_return(wander))
    assert tracked > 10 and random < 2, (tracked, random)


def _breakout_frame(ball, paddle_col):
    frame = np.zeros((10, 10, 4), np.uint8)
    frame[9, paddle_col, 0] = 255
    frame[ball[0], ball[1], 1] = 255
    return frame


def test_breakout_view_reads_where_the_ball_was_lost():
    """benchmarks/breakout_view.py's offsets come from each episode's terminal frame (the record
    after the step that ended it), ball column minus paddle column."""
    from benchmarks.breakout_view import loss_offsets

    steps, envs = 4, 2
    obs = np.zeros((steps, envs, 10, 10, 4), np.uint8)
    obs[:, 0] = _breakout_frame((5, 5), 5)
    obs[:, 1] = _breakout_frame((5, 5), 5)
    obs[2, 0] = _breakout_frame((9, 7), 4)  # env 0 ends at step 1: terminal frame is record 2
    obs[3, 1] = _breakout_frame((9, 1), 3)  # env 1 ends at step 2
    ended = np.zeros((steps, envs), bool)
    ended[1, 0] = ended[2, 1] = True
    reward = np.zeros((steps, envs), np.float32)
    reward[0, 0] = reward[1, 1] = reward[2, 1] = 1.0
    offsets, returns = loss_offsets(dict(obs=obs, ended=ended, reward=reward))
    assert offsets == {-2: 1, 3: 1} and returns == [1.0, 2.0]


def test_breakout_view_on_a_trained_run(tmp_path):
    """The diagnosis end to end on a tiny Breakout run: episodes counted, reconstructions read
    for the frames that show the ball, rates between 0 and 1, a missing run refused by name."""
    from benchmarks.breakout_view import main
    from wmjax.config import DreamerConfig, TrainConfig
    from wmjax.run import RunDirError, train

    config = TrainConfig(env="Breakout-MinAtar", num_envs=4, seeds=1, steps=256, chunk_steps=128,
                         train_ratio=8, replay_size=1024,
                         agent=DreamerConfig.preset("tiny", warmup=10))
    train(config, str(tmp_path), verbose=False)
    out = main([str(tmp_path), "--envs", "16", "--steps", "80", "--out", str(tmp_path / "v.json")])
    assert out["episodes"] > 0 and sum(out["ball_minus_paddle_at_loss"].values()) <= out["episodes"]
    paddle = out["reconstruction"]["paddle | all"]
    assert 0 < paddle["seen"] <= 16 * 64 and 0.0 <= paddle["rate"] <= 1.0
    assert abs(sum(out["action_share"].values()) - 1.0) < 1e-6
    with pytest.raises(RunDirError, match="holds no run"):
        main([str(tmp_path / "nothing-here")])


@pytest.mark.parametrize("name", ["Breakout-MinAtar", "Freeway-MinAtar"])
def test_flat_minatar_is_the_same_game_as_one_vector(name):
    """`NAME-Flat` steps the same game and hands each frame over as its cells, 0/1 floats in
    row, column, channel order, so the MLP encoder and vector decoder read it."""
    image, flat = make_env(name), make_env(name + "-Flat")
    h, w, c = image.spec.obs_shape
    assert flat.spec.obs_shape == (h * w * c,) and flat.spec.obs_dtype == jnp.float32
    assert (flat.spec.discrete, flat.spec.num_actions) == (image.spec.discrete, image.spec.num_actions)
    key = jax.random.key(3)
    states, steps = image.reset_batch(key, 4), flat.reset_batch(key, 4)
    step_image, step_flat = jax.jit(image.step_batch), jax.jit(flat.step_batch)
    for t in range(40):
        action = jax.random.randint(jax.random.fold_in(key, t), (4,), 0, image.spec.num_actions)
        frames, vectors = states[1].obs, steps[1].obs
        assert vectors.dtype == jnp.float32 and set(np.unique(np.asarray(vectors))) <= {0.0, 1.0}
        np.testing.assert_array_equal(np.asarray(frames).reshape(4, -1) / 255, np.asarray(vectors))
        np.testing.assert_array_equal(states[1].reward, steps[1].reward)
        states = step_image(jax.random.fold_in(key, 100 + t), states[0], action)
        steps = step_flat(jax.random.fold_in(key, 100 + t), steps[0], action)
    assert np.asarray(frames).any(axis=(1, 2, 3)).all()  # the frames were not blank


def test_flat_minatar_is_read_by_the_mlp_and_drawn_as_cell_probabilities():
    """A Dreamer on a flat MinAtar env reads the frame with its MLP encoder and, with the bce
    vector loss, draws it back as one probability per cell."""
    from wmjax.agents.dreamer import Dreamer
    from wmjax.config import DreamerConfig
    from wmjax.models.heads import VectorDecoder, VectorEncoder

    agent = Dreamer(DreamerConfig.preset("tiny", vector_loss="bce"),
                    make_env("Freeway-MinAtar-Flat").spec)
    assert isinstance(agent.encoder, VectorEncoder) and isinstance(agent.decoder, VectorDecoder)
    params = agent.init(jax.random.key(0)).params
    drawn = agent.decode(params, jnp.zeros((2, agent.config.feat_size)))
    assert drawn.shape == (2, 700) and bool(((drawn > 0) & (drawn < 1)).all())


def _freeway_state(pos: int, car_x: dict[int, int]):
    """A Freeway-MinAtar state (batch of one): the chicken on row `pos`, its move timer at 0,
    car in row r at column car_x[r] (the others at column 0), no car moving this step."""
    env = make_env("Freeway-MinAtar")
    state, _ = env.reset(jax.random.key(0))
    cars = np.array(state.inner.cars)
    for car in range(8):  # car i drives on row i + 1; cars[i] = (x, row, timer, speed)
        cars[car, 0] = car_x.get(car + 1, 0)
        cars[car, 2] = 3
    inner = state.inner.replace(pos=jnp.int32(pos), move_timer=jnp.int32(0), cars=jnp.asarray(cars))
    return env, jax.tree.map(lambda x: jnp.asarray(x)[None], inner)


def test_freeway_view_labels_hits_from_the_true_dynamics():
    """benchmarks/freeway_view.py asks the game what "up" and "noop" would do: a car standing on
    the chicken's column one row up makes "up" a hit and "noop" safe (a dodgeable step); one on
    the chicken's own row hits it unless it moves up (the chicken moves before the cars); an
    empty road is safe."""
    from types import SimpleNamespace

    from benchmarks.freeway_view import make_probe

    for car_x, hit_up, hit_noop in (({4: 4}, True, False), ({5: 4}, False, True), ({}, False, False)):
        env, inner = _freeway_state(5, car_x)
        seen = make_probe(SimpleNamespace(env=env))(inner)
        assert (bool(seen["hit_up"][0]), bool(seen["hit_noop"][0])) == (hit_up, hit_noop), car_x
        assert int(seen["pos"][0]) == 5 and int(seen["timer"][0]) == 0


def test_freeway_view_counts_crossings_and_hits():
    """A hit is a step onto the bottom row without a reward where the chicken's own move would
    not have put it there (stepping down onto it is no hit; a hit while leaving it is); a
    crossing is a reward; both are counted per finished episode."""
    from benchmarks.freeway_view import DOWN, UP, episodes

    pos = np.array([[9], [8], [7], [9], [9], [9], [8], [9], [8], [9], [9]])  # (steps, envs)
    timer = np.zeros_like(pos)
    timer[3] = 2  # "up" does nothing while the timer runs: staying on row 9 is no hit
    action = np.full_like(pos, UP)
    action[6] = DOWN  # 8 -> 9 by stepping down: no hit
    reward = np.zeros(pos.shape, np.float32)
    reward[8] = 1.0  # a crossing puts it back on row 9: no hit
    ended = np.zeros(pos.shape, bool)
    ended[9] = True  # the next record starts a new episode
    out = episodes(dict(pos=pos, timer=timer, action=action, reward=reward, ended=ended))
    # hits: 7 -> 9 (step 2), and 9 -> 9 on "up" with the timer at 0 (step 4)
    assert out == dict(returns=[1.0], crossings=[1], hits=[2])


def test_freeway_view_scores_each_lane_of_a_drawn_frame():
    """A predicted frame is scored per object: a car drawn one cell off fails its lane only, a
    trail on the wrong speed channel fails its lane's trail, and a missing chicken fails it."""
    from benchmarks.freeway_view import lanes_right

    true = np.zeros((10, 10, 7), bool)
    true[9, 4, 0] = True  # the chicken
    for lane in range(1, 9):
        true[lane, lane, 1] = True  # its car
        true[lane, lane - 1, 2 + lane % 5] = True  # its trail
    pred = true.copy()
    pred[3, 3, 1], pred[3, 4, 1] = False, True  # lane 3's car one cell right
    pred[6, 5, 2 + 6 % 5], pred[6, 5, 2] = False, True  # lane 6's trail on another channel
    right = lanes_right(pred[None], true[None])
    assert right["cars"].tolist() == [[lane != 3 for lane in range(1, 9)]]
    assert right["trails"].tolist() == [[lane != 6 for lane in range(1, 9)]]
    assert right["chicken"].tolist() == [True]
    pred[9, 4, 0] = False
    assert lanes_right(pred, true)["chicken"].item() is False


def test_freeway_view_discounts_returns_within_each_episode():
    """The true return beside the critic's value: rewards discounted from each step on, cut at
    its episode's end, with the count of the episode's steps recorded from there."""
    from benchmarks.freeway_view import discounted_returns

    reward = np.array([[0.0], [1.0], [0.0], [1.0], [0.0]])
    ended = np.array([[False], [False], [True], [False], [False]])
    ret, ahead = discounted_returns(reward, ended, 0.5)
    np.testing.assert_allclose(ret[:, 0], [0.5, 1.0, 0.0, 1.0, 0.0])
    assert ahead[:, 0].tolist() == [3, 2, 1, 2, 1]


@pytest.mark.parametrize("env", ["Freeway-MinAtar", "Freeway-MinAtar-Flat"])
def test_freeway_view_on_a_trained_run(tmp_path, env):
    """The diagnosis end to end on a tiny Freeway run, on frames or on the flat vector: shares
    between 0 and 1, finite Q values for the picked steps, and a run on another env refused by
    name."""
    from benchmarks.freeway_view import main
    from wmjax.config import DreamerConfig, TrainConfig
    from wmjax.run import train

    loss = dict(vector_loss="bce") if env.endswith("-Flat") else {}
    config = TrainConfig(env=env, num_envs=4, seeds=1, steps=256, chunk_steps=128,
                         train_ratio=8, replay_size=1024,
                         agent=DreamerConfig.preset("tiny", warmup=10, **loss))
    train(config, str(tmp_path), verbose=False)
    out = main([str(tmp_path), "--envs", "8", "--steps", "96", "--samples", "2",
                "--max-picks", "16", "--out", str(tmp_path / "v.json")])
    assert abs(sum(out["action_share"].values()) - 1.0) < 1e-6
    assert 0.0 <= out["dodgeable_share_of_steps"] <= 1.0
    safe = out["world_model"]["safe"]
    assert 0 < safe["steps"] <= 16 and np.isfinite([safe["q_noop"], safe["q_up"], safe["q_down"]]).all()
    for key in ("posterior_row_right", "prior_row_after_up_is_bottom", "noop_valued_above_up"):
        assert 0.0 <= safe[key] <= 1.0
    frames = out["frames"]
    assert 0.0 < frames["cars_moving_per_step"] < 1.0  # some of the 8 cars move on a step
    assert np.isfinite(frames["posterior_rec_loss"]) and frames["posterior_rec_loss"] > 0.0
    # The replay figure is the training loss again: near what the last chunk logged.
    from wmjax.run import read_metrics

    logged = [r["loss/rec"] for r in read_metrics(str(tmp_path)) if r.get("loss/rec") is not None]
    replay = out["replay_frames"]
    assert abs(replay["posterior_rec_loss"] - logged[-1]) < 0.5 * logged[-1]
    assert set(replay) == set(frames)  # one scoring for fresh episodes and replay
    for scores in (frames, replay):
        for key in ("posterior_chicken_right", "posterior_car_right", "prior_car_right",
                    "prior_car_right_when_it_moves", "prior_trail_right"):
            assert 0.0 <= scores[key] <= 1.0, key
    values = out["values"]
    assert [r["row"] for r in values["by_row"]] == list(range(1, 10))
    assert sum(r["states"] for r in values["by_row"]) > 0
    for r in values["by_row"]:  # 96 steps hold no three discount horizons: no true return
        assert r["true_return"] is None
        assert (r["critic"] is None) == (r["states"] == 0)
    assert np.isfinite(values["reward_elsewhere"])
    if env.endswith("-Flat"):
        return
    other = tmp_path / "cartpole"
    train(TINY.replace(steps=128), str(other), verbose=False)  # the suite's shared program
    with pytest.raises(SystemExit):
        main([str(other)])
