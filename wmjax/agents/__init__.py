"""Agents: each is `init / act / update` over explicit state."""
from wmjax.agents.dreamer import Dreamer

__all__ = ["Dreamer"]
