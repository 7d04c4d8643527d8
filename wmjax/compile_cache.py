"""JAX's persistent compilation cache for wmjax's commands, so a resumed run starts at once.

A long run is resumed many times (every working session, after every preemption), and each new
process compiles its training program again: about half a minute for a size1m CartPole chunk
and several minutes for a Craftax-Classic one on a 2-core CPU. JAX can keep compiled programs on disk and load them instead. `enable()` points
it at a folder per jaxlib version and CPU (an XLA:CPU program is built for the CPU features of
the machine that compiled it, and a home folder may be shared by different machines).
The commands (`python -m wmjax`, benchmarks/, experiments/) call it at start-up; a library
import does not. WMJAX_COMPILATION_CACHE=0 opts out, and a cache folder set through JAX's own
JAX_COMPILATION_CACHE_DIR is left as it is. The folder is kept under 1 GiB (least recently
used programs are evicted first).
"""
from __future__ import annotations

import os

import jax

from wmjax.machine import cpu_fingerprint

# The folder's size limit; JAX evicts the least recently used programs beyond it. A size1m
# CartPole chunk takes about 2 MB, so this keeps hundreds of programs.
MAX_BYTES = 1 << 30

# How JAX's size-limited cache (jax/_src/lru_cache.py) names a program and its last-use time.
_CACHE_SUFFIX, _ATIME_SUFFIX = "-cache", "-atime"


def default_dir() -> str:
    """~/.cache/wmjax/xla/jaxlib-VERSION-CPUHASH (XDG_CACHE_HOME is honoured)."""
    import jaxlib

    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "wmjax", "xla", f"jaxlib-{jaxlib.__version__}-{cpu_fingerprint()}")


def repair(path: str) -> list[str]:
    """Give every program in `path` that lacks a last-use time its file's modification time.

    A program written while the cache had no size limit (by an older wmjax, or by JAX with
    the same folder and its default settings) has no `-atime` file. JAX's eviction reads one
    for every program before each write, so one such program makes every later write fail
    (a warning, and nothing more is cached): jax-ml/jax#39880, fixed upstream in #39883 but
    still present in the JAX installed here (0.10.2). Returns the keys repaired."""
    repaired = []
    for name in sorted(os.listdir(path)):
        if not name.endswith(_CACHE_SUFFIX):
            continue
        key = name[: -len(_CACHE_SUFFIX)]
        atime = os.path.join(path, key + _ATIME_SUFFIX)
        if os.path.exists(atime):
            continue
        try:
            stamp = os.stat(os.path.join(path, name)).st_mtime_ns
            with open(atime, "wb") as f:
                f.write(stamp.to_bytes(8, "little"))
        except OSError:  # evicted meanwhile by another process, or a read-only folder
            continue
        repaired.append(key)
    return repaired


def enable(path: str | None = None) -> str | None:
    """Use the persistent compilation cache in `path` (default: `default_dir()`). Returns the
    folder in use, or None when opted out with WMJAX_COMPILATION_CACHE=0."""
    if os.environ.get("WMJAX_COMPILATION_CACHE", "1") == "0":
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and path is None:  # set by the user (JAX_COMPILATION_CACHE_DIR or jax.config)
        return current
    path = path or default_dir()
    os.makedirs(path, exist_ok=True)
    repair(path)
    jax.config.update("jax_compilation_cache_dir", path)
    if jax.config.jax_compilation_cache_max_size < 0:  # JAX's default: no limit
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
