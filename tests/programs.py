"""The one small training program most tests share.

The suite's time goes into XLA compiling training programs, and a program is fixed by the
config's shapes and static settings, not by its step budget or its tunables (lr, actent, ...),
which are traced. So every test that only needs "a tiny DreamerV3 run" uses this config (or its
CLI flags), changing only `steps`, and the program compiles once per test session.
"""
from wmjax.config import DreamerConfig, TrainConfig

TINY = TrainConfig(env="CartPole-v1", num_envs=4, seeds=2, steps=512, chunk_steps=128,
                   train_ratio=24, replay_size=1024, agent=DreamerConfig.preset("tiny", warmup=10))

# The same program from the command line and the sweep/ladder scripts (add --steps, --logdir).
TINY_FLAGS = ["--env", "CartPole-v1", "--envs", "4", "--seeds", "2", "--chunk-steps", "128",
              "--train-ratio", "24", "--replay-size", "1024", "--preset", "tiny",
              "--set", "warmup=10"]


def run_chunks(trainer, chunks: int):
    """Train `chunks` chunks from key 0; returns (final state, per-chunk lists of seed rows)."""
    import jax

    from wmjax.loop import host_metrics

    state = trainer.init(jax.random.key(0))
    rows = []
    for _ in range(chunks):
        state, metrics = trainer.train_chunk(state)
        rows.append(host_metrics(metrics))
    return state, rows


def leaf_types(tree) -> list:
    """(path, shape, dtype, weak type) of every leaf of `tree` (arrays or ShapeDtypeStructs): a
    jitted program compiles again for a state whose list differs."""
    import jax

    return [(jax.tree_util.keystr(p), x.shape, x.dtype, x.weak_type)
            for p, x in jax.tree_util.tree_leaves_with_path(jax.eval_shape(lambda: tree))]


def walk_jaxpr(jaxpr, inside_scan=False):
    """Every equation of a jaxpr, nested ones included, with whether it is inside a scan."""
    for eqn in jaxpr.eqns:
        yield eqn, inside_scan
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from walk_jaxpr(sub, inside_scan or eqn.primitive.name == "scan")
