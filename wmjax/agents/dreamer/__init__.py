"""DreamerV3: world-model loss, imagination actor-critic, one optimizer."""
from wmjax.agents.dreamer.agent import TUNABLES, AgentState, Batch, Carry, Dreamer
from wmjax.agents.dreamer.losses import RetNormState, lambda_return
from wmjax.agents.dreamer.optim import clip_by_param_norm, dreamer_optimizer

__all__ = ["TUNABLES", "AgentState", "Batch", "Carry", "Dreamer", "RetNormState", "clip_by_param_norm",
           "dreamer_optimizer", "lambda_return"]
