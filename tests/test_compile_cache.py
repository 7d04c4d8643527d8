"""The commands' persistent compilation cache: where it goes, the opt-out, and that it fills."""
import os
import subprocess
import sys

import jax
import pytest

from wmjax import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_dir_is_per_jaxlib_and_cpu(monkeypatch, tmp_path):
    import jaxlib

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = compile_cache.default_dir()
    assert path.startswith(str(tmp_path / "wmjax" / "xla"))
    assert f"jaxlib-{jaxlib.__version__}-" in os.path.basename(path)


def test_opt_out_and_a_users_folder_are_respected(monkeypatch, tmp_path):
    before = jax.config.jax_compilation_cache_dir  # the suite's own cache (conftest)
    monkeypatch.setenv("WMJAX_COMPILATION_CACHE", "0")
    assert compile_cache.enable(str(tmp_path)) is None
    assert jax.config.jax_compilation_cache_dir == before
    monkeypatch.delenv("WMJAX_COMPILATION_CACHE")
    assert compile_cache.enable() == before  # already chosen by the user: kept


def test_a_command_fills_the_cache(monkeypatch, tmp_path):
    """In a fresh process (as `python -m wmjax` starts): compiled programs land in the folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", WMJAX_HUGEPAGES="0")
    code = ("import jax, jax.numpy as jnp; from wmjax.startup import start_command; "
            "start_command(); print(jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((8, 8))).sum())")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    folder = compile_cache.default_dir()
    assert any(name.endswith("-cache") for name in os.listdir(folder)), os.listdir(folder)


def test_a_program_without_a_last_use_time_is_repaired(tmp_path):
    """A program cached without the size limit has no -atime file; JAX's eviction then fails on
    every later write. `repair` (run by `enable`) gives it one, so writes work again."""
    from jax._src.lru_cache import LRUCache

    (tmp_path / "old-program-cache").write_bytes(b"x" * 10)
    with pytest.raises(FileNotFoundError):  # what JAX does with such a folder
        LRUCache(str(tmp_path), max_size=1 << 20).put("new-program", b"y" * 10)
    assert compile_cache.repair(str(tmp_path)) == ["old-program"]
    assert compile_cache.repair(str(tmp_path)) == []
    cache = LRUCache(str(tmp_path), max_size=25)
    cache.put("new-program", b"y" * 20)  # evicts the old program, the least recently used
    assert cache.get("new-program") == b"y" * 20
    assert cache.get("old-program") is None
