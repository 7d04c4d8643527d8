"""One process of tests/test_distributed.py's two-process run: argv = LOGDIR HOST:PORT PROCESS_ID.

Trains the tiny CartPole program (1 seed, data-parallel over the 4 devices of both processes)
through the CLI, then prints a checksum of this process's replica of the parameters.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

logdir, coordinator, pid = sys.argv[1], sys.argv[2], sys.argv[3]

from programs import TINY_FLAGS  # noqa: E402
from wmjax import cli  # noqa: E402

flags = list(TINY_FLAGS)
flags[flags.index("--seeds") + 1] = "1"
code = cli.main(["train", *flags, "--steps", "256", "--logdir", logdir, "--devices", "4",
                 "--coordinator", coordinator, "--num-processes", "2", "--process-id", pid,
                 "--quiet"])
assert code == 0, code

import jax  # noqa: E402
import numpy as np  # noqa: E402

from wmjax.checkpoint import Checkpointer  # noqa: E402
from wmjax.run import abstract_state, cached_trainer, load_config  # noqa: E402

config = load_config(logdir)
trainer = cached_trainer(config, 4)
ckpt = Checkpointer(logdir, read_only=True)
_, state = ckpt.restore(abstract_state(trainer, jax.random.key(config.seed), None))
ckpt.close()
local = [np.asarray(x.addressable_shards[0].data, np.float64) for x in jax.tree.leaves(state.agent.params)]
print(f"params checksum {sum(float(np.abs(x).sum()) for x in local):.6f} over "
      f"{jax.device_count()} devices, {jax.process_count()} processes")
