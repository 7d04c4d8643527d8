"""Time of one jitted DreamerV3 update on image observations, by preset and image size.

Shows what the CNN encoder/decoder cost on this machine (Atari and Craftax pixels are 64x64 or
63x63; MinAtar is 10x10):

    python benchmarks/image_update.py --presets tiny size1m --sizes 10 64
"""
import argparse
import time

import jax
import jax.numpy as jnp

from wmjax import Batch, Dreamer, DreamerConfig, EnvSpec
from wmjax.startup import start_command


def update_time(preset: str, size: int, repeats: int = 3) -> tuple[float, float]:
    """(seconds to compile and run once, seconds per update after that)."""
    spec = EnvSpec(f"image{size}", (size, size, 3), True, 6)
    agent = Dreamer(DreamerConfig.preset(preset), spec)
    B, T = agent.config.batch_size, agent.config.batch_length
    key = jax.random.key(0)
    zeros = lambda dtype: jnp.zeros((B, T), dtype)
    batch = Batch(jnp.zeros((B, T, size, size, 3), jnp.uint8),
                  jax.nn.one_hot(zeros(jnp.int32), 6), zeros(jnp.float32), zeros(bool),
                  zeros(bool), zeros(bool))
    state = agent.init(key)
    update = jax.jit(agent.update)
    t = time.perf_counter()
    jax.block_until_ready(update(state, batch, key))
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(update(state, batch, key))
    return first, (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "size1m"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10, 64])
    args = ap.parse_args()
    for preset in args.presets:
        for size in args.sizes:
            first, per = update_time(preset, size)
            print(f"{preset:8s} {size:3d}x{size:<3d} compile+first {first:6.1f} s   update {per:7.3f} s",
                  flush=True)


if __name__ == "__main__":
    start_command(cache=False)  # huge pages (restarts once); no cache: compile time is measured
    main()
