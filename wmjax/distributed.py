"""Beyond one device: a (seeds, data) device mesh for the fused program, and jax.distributed.

The fused program's state has a leading seed axis; its env-batched parts (env state, newest
timestep, acting carry, replay rows) have a second axis over the envs of a seed. On a mesh with
axes ("seeds", "data"):

- seeds are split over "seeds": independent programs, no communication between them;
- within a seed, envs and their replay rows are split over "data", and so is each update's
  replayed batch. The loss is a mean over that batch, so XLA all-reduces the gradient across
  "data": data-parallel training of one run. Parameters and optimizer state are replicated.

The sharded program is the same jitted function as the unsharded one, with shardings attached
(GSPMD inserts the collectives), so it computes the same result up to float rounding.

Several hosts: call `initialize(...)` first in every process (same flags, its own process id);
the mesh then spans the devices of all processes, and every process runs the same program.
"""
from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

SEEDS, DATA = "seeds", "data"

# TrainState fields whose leaves are batched over the envs of a seed (axis 1 after the seeds).
ENV_BATCHED = ("env_state", "timestep", "carry")


def mesh_shape(devices: int, seeds: int, num_envs: int, batch_size: int) -> tuple[int, int]:
    """(seed shards, data shards) for `devices`: as many on seeds as divide them, the rest on
    data. Raises ValueError naming what a data axis of that size cannot divide."""
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices={devices!r}; allowed: an integer >= 1")
    s = math.gcd(devices, seeds)
    d = devices // s
    for name, value in (("num_envs (--envs)", num_envs), ("batch_size", batch_size)):
        if value % d:
            raise ValueError(
                f"{devices} devices split as {s} (seeds) x {d} (data), but {name}={value} is not "
                f"divisible by {d}; allowed: seeds a multiple of {devices}, or num_envs and "
                f"batch_size multiples of {d}")
    return s, d


def make_mesh(devices: int, seeds: int, num_envs: int, batch_size: int) -> Mesh:
    """A ("seeds", "data") mesh over the first `devices` devices of all processes."""
    available = jax.devices()
    if isinstance(devices, int) and devices > len(available):
        raise ValueError(
            f"devices={devices}, but JAX sees {len(available)} {available[0].platform} device(s); "
            f"allowed: 1..{len(available)}. (To try sharding on one CPU, set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before starting Python.)")
    s, d = mesh_shape(devices, seeds, num_envs, batch_size)
    return Mesh(np.asarray(available[:devices]).reshape(s, d), (SEEDS, DATA))


def state_shardings(state: Any, mesh: Mesh, num_envs: int) -> Any:
    """NamedShardings for a batched TrainState (arrays or ShapeDtypeStructs): every leaf split
    over seeds; env-batched leaves and replay rows also over data; the rest replicated on data."""
    seeds_only = NamedSharding(mesh, P(SEEDS))
    per_env = NamedSharding(mesh, P(SEEDS, DATA))

    def env_axis(x):
        return per_env if len(x.shape) >= 2 and x.shape[1] == num_envs else seeds_only

    fields = {}
    for name in state._fields:
        value = getattr(state, name)
        if name in ENV_BATCHED:
            fields[name] = jax.tree.map(env_axis, value)
        elif name == "replay":  # its rows over data; its counters (pos, count, ...) over seeds
            fields[name] = jax.tree.map(lambda _: seeds_only, value)._replace(
                data=jax.tree.map(lambda _: per_env, value.data))
        else:
            fields[name] = jax.tree.map(lambda _: seeds_only, value)
    return type(state)(**fields)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The replayed batch of one seed, split over data on its batch axis (use inside a vmap
    with spmd_axis_name=SEEDS, which adds the seed axis)."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# --------------------------------------------------------------------------- several hosts

ENV_NUM_PROCESSES = "WMJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "WMJAX_PROCESS_ID"


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join a multi-process JAX run (call before any other JAX work, in every process).

    Each argument falls back to an environment variable: JAX_COORDINATOR_ADDRESS (host:port of
    process 0), WMJAX_NUM_PROCESSES, WMJAX_PROCESS_ID; whatever is still missing is left to JAX's
    cluster auto-detection (Slurm, Open MPI, Cloud TPU). On CPU, collectives across processes
    use gloo over TCP.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = _int_from_env(num_processes, ENV_NUM_PROCESSES)
    process_id = _int_from_env(process_id, ENV_PROCESS_ID)
    if coordinator is not None and ":" not in coordinator:
        raise ValueError(f"coordinator={coordinator!r}; allowed: host:port of process 0, "
                         f"e.g. 10.0.0.1:1234")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes={num_processes}; allowed: an integer >= 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id}; allowed: 0..{num_processes - 1}")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def _int_from_env(value: int | None, name: str) -> int | None:
    if value is not None or name not in os.environ:
        return value
    try:
        return int(os.environ[name])
    except ValueError:
        raise ValueError(f"{name}={os.environ[name]!r}; allowed: an integer") from None


def is_main_process() -> bool:
    """True in the process that writes the run folder's files (process 0)."""
    return jax.process_index() == 0
