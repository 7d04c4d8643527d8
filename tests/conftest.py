import os

# Tests run on the CPU with few threads; keep XLA from grabbing every core per op.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests build the same tiny programs (also in subprocesses, e.g. the SIGKILL resume test):
# JAX's persistent compilation cache compiles each once per machine.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite is bound by XLA compile time of many small programs, not by running them. LLVM
# optimisation level 1 compiles ~30% faster and runs the tiny presets as fast as level 2.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()

# Four CPU devices, so the sharded programs (tests/test_distributed.py) have a mesh to run on.
# Unsharded programs run on the first device, as before.
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"

import sys

# benchmarks/ and experiments/ are folders of scripts; tests import them from the repo root.
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop JAX's in-memory compiled programs. Every loaded XLA:CPU
    program holds memory mappings for its compiled kernels, and the whole suite in one process
    loads thousands of programs: it reached Linux's default limit of 65,530 mappings per
    process (vm.max_map_count), where loading the next program segfaults. Programs a later
    module needs again come back from the persistent cache above."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
