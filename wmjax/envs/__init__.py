"""Environments: the Dreamer record layout over gymnax and Craftax, and `make_env(name)`."""
from wmjax.envs.core import (
    REGISTRY, EnvAdapter, EnvSpec, EnvState, Timestep, check_env_name, make_env, register_env,
)

__all__ = ["REGISTRY", "EnvAdapter", "EnvSpec", "EnvState", "Timestep", "check_env_name",
           "make_env", "register_env"]
