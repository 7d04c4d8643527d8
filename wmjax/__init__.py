"""wmjax: world-model reinforcement learning in JAX.

A DreamerV3-class agent whose whole training run is one jit-compiled XLA program, built from parts
(RSSM, heads, distributions, replay, loop) that can be imported into other JAX code.
"""
from wmjax import distributed, nn, replay
from wmjax.agents.dreamer import AgentState, Batch, Carry, Dreamer
from wmjax.config import PRESETS, DreamerConfig, TrainConfig
from wmjax.envs import EnvSpec, Timestep, make_env
from wmjax.host_loop import make_host_train
from wmjax.loop import TrainState, make_train
from wmjax.models import RSSM, RSSMState
from wmjax.policy import Policy, evaluate, load_policy, record_rollout, seed_returns
from wmjax.run import load_config, train

__version__ = "0.1.0"


__all__ = [
    "AgentState", "Batch", "Carry", "Dreamer", "DreamerConfig", "EnvSpec", "PRESETS", "Policy",
    "RSSM", "RSSMState", "Timestep", "TrainConfig", "TrainState", "evaluate", "load_config",
    "distributed", "load_policy", "make_env", "make_host_train", "make_train", "nn", "record_rollout",
    "replay", "seed_returns", "train",
]
