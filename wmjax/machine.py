"""Which machine and software a result came from, for the records runs and benchmarks keep.

XLA compiles for the CPU it runs on: its CPU programs use that CPU's vector instructions, and
the float arithmetic follows them. So a seeded run repeats bit for bit on one kind of CPU
(with or without the compilation cache, idle or busy) but not on another. For PPO on Craftax,
limiting XLA to AVX2 (`XLA_FLAGS=--xla_cpu_max_isa=AVX2`) on an AVX-512 machine changes the
parameters after 32 updates. `describe()` records what is needed to tell such cases apart: the
CPU's model and a hash of its feature flags, the core count, the jax and jaxlib versions and
XLA_FLAGS.
"""
from __future__ import annotations

import hashlib
import os
import platform

import jax
import jaxlib


def _cpuinfo_line(*prefixes: str) -> str:
    """The first /proc/cpuinfo line that starts with one of `prefixes` ('' where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith(prefixes)), "")
    except OSError:
        return ""


# The CPU flags on which XLA multiplies bfloat16 operands into float32 sums faster than float32
# ones: AMX's tiles (measured on an Intel Xeon) and AVX-512's bfloat16 dot product (measured
# on an AMD EPYC).
BF16_MATMUL_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16_matmul() -> bool:
    """Whether the CPU multiplies bfloat16 operands fast (a flag in `BF16_MATMUL_FLAGS`): with
    AMX 3-5x float32's matmul speed, with AVX-512 BF16 about 1.9x (DreamerConfig's
    `matmul_precision="auto"`)."""
    return not set(BF16_MATMUL_FLAGS).isdisjoint(_cpuinfo_line("flags").split())


def cpu_fingerprint() -> str:
    """A short hash of what the CPU can run: its architecture and /proc/cpuinfo feature flags
    (the whole line, as the compilation cache's folder names have always hashed it)."""
    flags = platform.machine() + platform.processor() + _cpuinfo_line("flags", "Features")
    return hashlib.sha256(flags.encode()).hexdigest()[:12]


def describe() -> dict:
    """This machine and software, as a JSON-ready dict."""
    model = _cpuinfo_line("model name").partition(":")[2].strip()
    return dict(cpu=model or platform.processor() or platform.machine(),
                cpu_features=cpu_fingerprint(), cores=os.cpu_count(),
                backend=jax.default_backend(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                xla_flags=os.environ.get("XLA_FLAGS", ""))
