"""Dict observations mixing image and vector keys: spec checks, the agent, replay and the
open-loop report, on CartPole seen both as its state vector and as a small frame of the cart."""
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pytest

from wmjax.agents.dreamer import Dreamer
from wmjax.config import DreamerConfig, TrainConfig
from wmjax.envs import EnvAdapter, EnvSpec, make_env, register_env
from wmjax.run import train

NAME = "CartPoleFrame-test"


@dataclass(frozen=True)
class CartPoleWithFrame(EnvAdapter):
    """{"state": the 4-vector, "frame": an 8x8 uint8 image with the cart's column lit}."""

    def _obs(self, obs):
        column = jnp.clip(((obs[0] + 2.4) / 4.8 * 8).astype(jnp.int32), 0, 7)
        frame = jnp.broadcast_to((jnp.arange(8) == column)[None, :, None], (8, 8, 1))
        return {"state": obs.astype(jnp.float32), "frame": frame.astype(jnp.uint8) * 255}


def _make(name):
    base = make_env("CartPole-v1")
    spec = EnvSpec(name, {"state": (4,), "frame": (8, 8, 1)}, True, 2)
    return CartPoleWithFrame(base.env, base.params, spec)


register_env(NAME, _make)


def test_spec_keeps_sorted_pairs_and_rejects_bad_shapes():
    spec = _make(NAME).spec
    assert spec.is_dict and spec.obs_shape == (("frame", (8, 8, 1)), ("state", (4,)))
    assert spec.obs_dtype == {"frame": jnp.uint8, "state": jnp.float32}
    with pytest.raises(ValueError, match=r"allowed: \(D,\) vectors, \(H, W, C\) images"):
        EnvSpec("bad", {"a": (3,), "b": (2, 2)}, True, 2)
    mixed = EnvSpec("two-sizes", {"a": (8, 8, 1), "b": (4, 4, 3)}, True, 2)
    with pytest.raises(ValueError, match="differ in height x width"):
        Dreamer(DreamerConfig.preset("tiny"), mixed)
    with pytest.raises(TypeError, match="must be callable"):
        register_env("x", 3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("dict"))
    config = TrainConfig(env=NAME, num_envs=4, seeds=1, steps=256, chunk_steps=128,
                         train_ratio=32, replay_size=512, agent=DreamerConfig.preset("tiny", warmup=10))
    state, rows = train(config, logdir, verbose=False)
    return logdir, state, rows


def test_training_stores_each_key_with_its_dtype(run_dir):
    _, state, rows = run_dir
    obs = state.replay.data["obs"]
    assert obs["frame"].dtype == jnp.uint8 and obs["frame"].shape[-3:] == (8, 8, 1)
    assert obs["state"].dtype == jnp.float32 and obs["state"].shape[-1] == 4
    count = int(state.replay.count[0])
    frames = np.asarray(obs["frame"][0, :, :count])
    assert set(np.unique(frames)) == {0, 255} and (frames.sum((-3, -2, -1)) == 8 * 255).all()
    assert rows[-1]["updates"] > 0 and np.isfinite(rows[-1]["loss/rec"])
    # Both branches of the encoder were trained.
    enc = state.agent.params["encoder"]
    assert {"ImageEncoder_0", "VectorEncoder_0"} <= set(enc)


def test_open_loop_report_per_key(run_dir, tmp_path):
    from wmjax.plots import openloop, plot_openloop

    logdir, _, _ = run_dir
    truth, pred, context = openloop(logdir, sequences=2)
    assert set(truth) == set(pred) == {"frame", "state"}
    assert pred["frame"].shape == truth["frame"].shape == (2, 16, 8, 8, 1)
    assert pred["state"].shape == (2, 16, 4) and 0 <= pred["frame"].min() <= pred["frame"].max() <= 255
    paths = plot_openloop(logdir, str(tmp_path / "report.png"))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["report_frame.png", "report_state.png"]
    assert all(open(p, "rb").read(4) == b"\x89PNG" for p in paths)
