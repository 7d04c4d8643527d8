import os

# Tests run on the CPU with few threads; keep XLA from grabbing every core per op.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
