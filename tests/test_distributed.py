"""Sharded training on a device mesh (4 CPU devices, set in conftest) and several processes.

Sharding must not change what is computed: the same env streams, actions and replay, the same
number of updates, and the same world model up to float rounding.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from programs import TINY, run_chunks
from wmjax.distributed import DATA, SEEDS, initialize, make_mesh, mesh_shape
from wmjax.run import cached_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD_MODEL = ("encoder", "rssm", "decoder", "reward", "cont")


def _run(devices, chunks=2):
    trainer = cached_trainer(TINY, devices)
    return (trainer, *run_chunks(trainer, chunks))


@pytest.fixture(scope="module")
def runs():
    assert jax.device_count() >= 4, "conftest sets 4 CPU devices"
    return _run(None), _run(4)


def test_mesh_places_seeds_then_data(runs):
    _, (trainer, state, _) = runs
    assert dict(trainer.mesh.shape) == {SEEDS: 2, DATA: 2}  # 2 seeds over 2, 4 envs over 2
    replay = jax.tree.leaves(state.replay.data)[0]
    assert replay.sharding.spec == P(SEEDS, DATA)
    assert state.agent.step.sharding.spec == P(SEEDS)
    # Each device holds one seed's half of the envs' replay rows.
    shard = replay.addressable_shards[0].data
    assert shard.shape[:2] == (1, TINY.num_envs // 2)


def test_sharded_equals_unsharded(runs):
    (_, ref, ref_rows), (_, got, got_rows) = runs
    # bfloat16 matmul operands (`matmul_precision`, the default on CPUs with AMX or AVX-512
    # BF16) round each product's inputs to 8 bits, so another summation order shows ten times
    # more.
    tol = 1e-4 if TINY.agent.resolved_matmul_precision() == "float32" else 1e-3
    # The same env streams: identical replay contents, returns and update counts.
    for name in ("obs", "action", "reward", "is_first"):
        np.testing.assert_array_equal(np.asarray(ref.replay.data[name]), np.asarray(got.replay.data[name]))
    for a, b in zip(ref_rows, got_rows):
        for ra, rb in zip(a, b):
            assert (ra["env_step"], ra["updates"], ra["episode_return"]) == \
                   (rb["env_step"], rb["updates"], rb["episode_return"])
            if ra["chunk_updates"]:
                np.testing.assert_allclose(rb["loss/world_model"], ra["loss/world_model"], rtol=tol)
                np.testing.assert_allclose(rb["grad_norm"], ra["grad_norm"], rtol=10 * tol)
    assert ref_rows[-1][0]["chunk_updates"] > 0
    # The world model, trained on the data-parallel batch with the all-reduced gradient, matches.
    # (The actor and critic start from zero-init outputs, where LaProp's eps=1e-20 turns float
    # rounding of near-zero gradients into +-lr steps, so only their losses are compared.)
    for group in WORLD_MODEL:
        for x, y in zip(jax.tree.leaves(ref.agent.params[group]), jax.tree.leaves(got.agent.params[group])):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=tol)


def test_mesh_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_envs.*not divisible by 3"):
        mesh_shape(3, seeds=1, num_envs=4, batch_size=6)
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by 4"):
        mesh_shape(4, seeds=1, num_envs=8, batch_size=6)
    assert mesh_shape(4, seeds=2, num_envs=6, batch_size=6) == (2, 2)
    with pytest.raises(ValueError, match="JAX sees 4 cpu device.*allowed: 1..4"):
        make_mesh(8, seeds=8, num_envs=4, batch_size=8)
    with pytest.raises(ValueError, match="host:port"):
        initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match="process_id=2; allowed: 0..1"):
        initialize("127.0.0.1:1234", 2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_run(tmp_path):
    """Two processes with 2 CPU devices each train one seed data-parallel over all 4 devices,
    through the CLI, into one run folder; they end with the same parameters."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                                     "--xla_backend_optimization_level=1")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    logdir = tmp_path / "run"
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "multihost_worker.py"), str(logdir),
         f"127.0.0.1:{port}", str(pid)], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
        assert p.returncode == 0, out[-3000:]
    sums = [[line for line in out.splitlines() if line.startswith("params checksum")] for out in outs]
    assert sums[0] and sums[0] == sums[1], outs
    # One run folder: process 0 wrote the metrics once, both wrote the (one) checkpoint.
    rows = [line for line in (logdir / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 2  # 2 chunks x 1 seed
    assert (logdir / "checkpoints" / "2").is_dir()
