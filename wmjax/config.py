"""Frozen, validated configs and DreamerV3's size presets.

`DreamerConfig` holds the agent (model sizes, losses, imagination, optimizer); `TrainConfig` holds
the run (environment, number of envs and seeds, train ratio, replay size, steps). Both are frozen
dataclasses checked at construction: a bad value raises `ValueError` naming the field and what is
allowed. Shape-deciding fields are plain Python values, so they are static under jit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Sizes of DreamerV3's `sizeXm` presets (dreamerv3/configs.yaml), plus `tiny` for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(deter=64, hidden=32, classes=4, stoch=8, blocks=4, units=32, depth=2,
                 batch_size=8, batch_length=16, imag_horizon=5, num_bins=63),
    "size1m": dict(deter=512, hidden=64, classes=4, units=64, depth=4),
    "size12m": dict(deter=2048, hidden=256, classes=16, units=256, depth=16),
    "size25m": dict(deter=3072, hidden=384, classes=24, units=384, depth=24),
    "size50m": dict(deter=4096, hidden=512, classes=32, units=512, depth=32),
    "size100m": dict(deter=6144, hidden=768, classes=48, units=768, depth=48),
    "size200m": dict(deter=8192, hidden=1024, classes=64, units=1024, depth=64),
    "size400m": dict(deter=12288, hidden=1536, classes=96, units=1536, depth=96),
}

COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
MATMUL_PRECISIONS = ("auto", "float32", "bfloat16")
IMAGE_LOSSES = ("mse", "bce")  # the image decoder's pixel loss (see models.heads.ImageDecoder)
VECTOR_LOSSES = ("mse", "bce")  # the vector decoder's loss (see models.heads.VectorDecoder)


# DreamerConfig fields read from `AgentState.hyper` rather than from the static config, so that
# a grid over them is a vmap over states of one compiled program (see experiments/lr_entropy.py)
# and a run may change them between chunks (TrainConfig.tunable_schedule) without recompiling.
TUNABLES = ("lr", "actent", "rec_scale", "reward_scale", "cont_scale", "dyn_scale", "rep_scale",
            "policy_scale", "value_scale", "repval_scale", "slowreg", "replay_policy_scale")


def _check(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ValueError(f"invalid config: {name}={value!r}; allowed: {allowed}")


@dataclass(frozen=True)
class DreamerConfig:
    """DreamerV3 hyperparameters. Defaults are the official ones (size200m model sizes aside:
    the default sizes here are size1m, the preset that fits a CPU)."""

    # RSSM and networks
    deter: int = 512
    hidden: int = 64
    stoch: int = 32
    classes: int = 4
    blocks: int = 8
    units: int = 64
    # CNN for image observations: channels depth * cnn_mults, one conv + 2x2 max-pool stage per
    # mult while the image stays at least cnn_minres wide (64x64 -> 4x4; MinAtar 10x10 -> 5x5)
    depth: int = 4
    cnn_mults: tuple = (2, 3, 4, 4)
    cnn_minres: int = 4
    # DreamerV3's `outer`: the first stage keeps full resolution (no pool), the others pool; for
    # small frames (MinAtar) whose objects are one pixel, which a first 2x2 pool blurs
    cnn_outer: bool = False
    # The image decoder's pixel loss: "mse" (DreamerV3's, a sigmoid and squared error) or "bce"
    # (binary cross-entropy on the sigmoid's logits; for binary frames, see ImageDecoder)
    image_loss: str = "mse"
    # The vector decoder's loss: "mse" (DreamerV3's, squared error on symlog(obs)) or "bce"
    # (binary cross-entropy against obs clipped to [0, 1]; for one-hot views, see VectorDecoder)
    vector_loss: str = "mse"
    enc_layers: int = 3
    dec_layers: int = 3
    reward_layers: int = 1
    cont_layers: int = 1
    actor_layers: int = 3
    critic_layers: int = 3
    num_bins: int = 255
    unimix: float = 0.01
    # Uniform share mixed into a discrete policy: 0 as in the current DreamerV3 code (its config
    # names 0.01 but the categorical head ignores it); 0.01 is the 2023 paper's one-hot actor.
    actor_unimix: float = 0.0
    free_nats: float = 1.0
    minstd: float = 0.1
    maxstd: float = 1.0
    # "auto": bfloat16 on GPU/TPU (as DreamerV3), float32 on CPU, where bfloat16 is ~2x slower.
    compute_dtype: str = "auto"
    # The matmuls' operands when computing in float32: "bfloat16" multiplies bfloat16 operands
    # and sums in float32 (JAX's `default_matmul_precision("bfloat16")`; everything else stays
    # float32); "auto" picks it on CPUs with AMX or AVX-512 BF16, where such matmuls run 2-5x
    # faster (`wmjax.machine.cpu_has_bf16_matmul`), and "float32" elsewhere. Config files
    # saved before this field read as "float32".
    matmul_precision: str = "auto"
    # world-model and actor-critic loss scales
    rec_scale: float = 1.0
    reward_scale: float = 1.0
    cont_scale: float = 1.0
    # Weight of terminal records in the continue loss; 1 is DreamerV3's loss. A static field
    # (not a tunable), so checkpoints keep their layout. Raise it where terminations are too
    # rare for the head to learn (see the continue-head diagnosis in the README).
    cont_terminal_weight: float = 1.0
    dyn_scale: float = 1.0
    rep_scale: float = 0.1
    policy_scale: float = 1.0
    value_scale: float = 1.0
    repval_scale: float = 0.3
    # Weight of an actor loss on the replayed sequences, beside imagination's: REINFORCE on the
    # actions taken there, with the replay value loss's lambda-returns as targets (a Dyna-style
    # term that DreamerV3 does not have; 0 is DreamerV3's loss). Replayed actions come from
    # older policies, so it is off-policy and uncorrected. A tunable, but the loss is compiled
    # in only when the config's value is above 0 (DreamerV3's program is unchanged by default):
    # a run may schedule it down to 0, not up from 0.
    replay_policy_scale: float = 0.0
    # Self-imitation (Oh et al. 2018): the replay actor loss keeps only positive advantages, so
    # it raises replayed actions that beat the critic and never pushes down the ones an older
    # policy took that fell short (which, uncorrected off-policy, collapsed Freeway's policy).
    # Static: it shapes the loss that replay_policy_scale > 0 compiles in.
    replay_policy_positive: bool = False
    # imagination and returns
    imag_horizon: int = 15
    imag_starts: int = 0  # 0 = every posterior state of the batch (DreamerV3's default)
    horizon: float = 333.0  # discount gamma = 1 - 1/horizon
    lam: float = 0.95
    actent: float = 3e-4
    slow_rate: float = 0.02
    slowreg: float = 1.0
    retnorm_rate: float = 0.01
    retnorm_limit: float = 1.0
    retnorm_low: float = 5.0
    retnorm_high: float = 95.0
    # optimizer (LaProp + adaptive gradient clipping, one optimizer for everything)
    lr: float = 4e-5
    warmup: int = 1000
    agc: float = 0.3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-20
    # replayed batch
    batch_size: int = 16
    batch_length: int = 64

    def __post_init__(self) -> None:
        # JSON gives lists; keep a hashable tuple so configs stay usable as cache keys.
        object.__setattr__(self, "cnn_mults", tuple(self.cnn_mults))
        _check(all(isinstance(m, int) and m >= 1 for m in self.cnn_mults) and self.cnn_mults,
               "cnn_mults", self.cnn_mults, "a non-empty tuple of integers >= 1")
        _check(isinstance(self.cnn_outer, bool), "cnn_outer", self.cnn_outer, "True or False")
        _check(self.image_loss in IMAGE_LOSSES, "image_loss", self.image_loss,
               f"one of {IMAGE_LOSSES}")
        _check(self.vector_loss in VECTOR_LOSSES, "vector_loss", self.vector_loss,
               f"one of {VECTOR_LOSSES}")
        for name in ("deter", "hidden", "stoch", "classes", "blocks", "units", "num_bins",
                     "imag_horizon", "batch_size", "batch_length", "depth", "cnn_minres"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 1, name, v, "an integer >= 1")
        for name in ("enc_layers", "dec_layers", "reward_layers", "cont_layers",
                     "actor_layers", "critic_layers", "warmup", "imag_starts"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 0, name, v, "an integer >= 0")
        _check(self.deter % self.blocks == 0, "deter", self.deter,
               f"a multiple of blocks={self.blocks}")
        _check(self.num_bins % 2 == 1 and self.num_bins >= 3, "num_bins", self.num_bins,
               "an odd integer >= 3")
        _check(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype", self.compute_dtype,
               f"one of {COMPUTE_DTYPES}")
        _check(self.matmul_precision in MATMUL_PRECISIONS, "matmul_precision",
               self.matmul_precision, f"one of {MATMUL_PRECISIONS}")
        _check(0.0 <= self.unimix < 1.0, "unimix", self.unimix, "0 <= unimix < 1")
        _check(0.0 <= self.actor_unimix < 1.0, "actor_unimix", self.actor_unimix,
               "0 <= actor_unimix < 1")
        _check(self.horizon > 1.0, "horizon", self.horizon, "> 1 (gamma = 1 - 1/horizon)")
        _check(0.0 <= self.lam <= 1.0, "lam", self.lam, "0 <= lam <= 1")
        _check(self.lr > 0.0, "lr", self.lr, "> 0")
        _check(0.0 < self.slow_rate <= 1.0, "slow_rate", self.slow_rate, "0 < slow_rate <= 1")
        _check(0.0 < self.retnorm_rate <= 1.0, "retnorm_rate", self.retnorm_rate, "(0, 1]")
        _check(0.0 <= self.retnorm_low < self.retnorm_high <= 100.0, "retnorm_low/high",
               (self.retnorm_low, self.retnorm_high), "0 <= low < high <= 100")
        _check(0.0 < self.minstd <= self.maxstd, "minstd/maxstd", (self.minstd, self.maxstd),
               "0 < minstd <= maxstd")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, name, v, "0 <= beta < 1")
        for name in ("rec_scale", "reward_scale", "cont_scale", "dyn_scale", "rep_scale",
                     "policy_scale", "value_scale", "repval_scale", "actent", "slowreg",
                     "free_nats", "agc", "eps"):
            v = getattr(self, name)
            _check(v >= 0.0, name, v, ">= 0")
        _check(self.cont_terminal_weight > 0.0, "cont_terminal_weight", self.cont_terminal_weight,
               "> 0")
        _check(self.replay_policy_scale >= 0.0, "replay_policy_scale", self.replay_policy_scale,
               ">= 0 (0: DreamerV3's imagination-only actor)")
        _check(not self.replay_policy_positive or self.replay_policy_scale > 0.0,
               "replay_policy_positive", self.replay_policy_positive,
               "True only with replay_policy_scale > 0 (it shapes that loss)")
        starts = self.batch_size * self.batch_length
        _check(self.imag_starts <= starts, "imag_starts", self.imag_starts,
               f"0 (all) or at most batch_size*batch_length={starts}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DreamerConfig":
        """A preset's sizes with optional overrides, e.g. `DreamerConfig.preset('size1m', lr=1e-4)`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> "DreamerConfig":
        return dataclasses.replace(self, **changes)

    def check_tunable(self, name: str, value: float) -> None:
        """Raises ValueError unless `value` may be tunable `name`'s value in a program compiled
        from this config (a grid's, an override's or a schedule's): the field's own range, and
        replay_policy_scale > 0 only where this config's value compiles that loss in."""
        _check(name in TUNABLES, "tunable", name, f"one of {', '.join(TUNABLES)}")
        if name != "replay_policy_scale":
            self.replace(**{name: float(value)})  # __post_init__ checks the range
            return
        _check(value == 0 or (value > 0 and self.replay_policy_scale > 0), name, value,
               "0, or > 0 in a run whose agent config has replay_policy_scale > 0 (only that "
               "compiles the replay actor loss in)")

    def resolved_dtype(self, backend: str | None = None) -> str:
        """The compute dtype to use on `backend` (default: JAX's default backend)."""
        if self.compute_dtype != "auto":
            return self.compute_dtype
        if backend is None:
            import jax

            backend = jax.default_backend()
        return "float32" if backend == "cpu" else "bfloat16"

    def resolved_matmul_precision(self, backend: str | None = None) -> str:
        """The matmul precision to use on `backend` (default: JAX's default backend); "float32"
        means the matmuls take the compute dtype's operands."""
        if self.matmul_precision != "auto":
            return self.matmul_precision
        import jax

        from wmjax.machine import cpu_has_bf16_matmul

        backend = jax.default_backend() if backend is None else backend
        return "bfloat16" if backend == "cpu" and cpu_has_bf16_matmul() else "float32"

    @property
    def gamma(self) -> float:
        return 1.0 - 1.0 / self.horizon

    @property
    def feat_size(self) -> int:
        return self.deter + self.stoch * self.classes


REPLAY_OBS_DTYPES = ("float32", "float16", "bfloat16")
REPLAY_PRIORITIES = ("uniform", "curious")


@dataclass(frozen=True)
class TrainConfig:
    """One training run of the fused loop: environment, parallelism, budget and train ratio.

    train_ratio is DreamerV3's: replayed steps (batch_size * batch_length per update) per env
    step, counted over all vectorised envs of one seed.
    """

    env: str = "CartPole-v1"
    num_envs: int = 16
    seeds: int = 1
    seed: int = 0
    # The seed index each member of the program trains with (one per member); None: member m is
    # seed m. A tunables sweep (wmjax.sweep.train_grid) sets it so that every grid point trains
    # seeds 0..n-1, the random streams of a plain run with n seeds (wmjax.loop.member_keys).
    seed_ids: tuple[int, ...] | None = None
    steps: int = 50_000  # env steps per seed
    train_ratio: float = 32.0
    replay_size: int = 1_000_000  # steps per seed, split evenly over the envs
    chunk_steps: int = 2048  # env steps per seed between host callbacks (logging)
    # How replay stores floating-point observations; "float16"/"bfloat16" halve its memory (a
    # 1M-step Craftax-Classic-Symbolic replay is 5.4 GB per seed in float32). Images stay uint8.
    replay_obs_dtype: str = "float32"
    # DreamerV3's online queue (its replay.online, on there): each new non-overlapping window of
    # every env is served once, in the first rows of a batch, before uniform sampling fills the
    # rest (wmjax.replay.sample_online). Off by default here: every published wmjax figure was
    # measured without it, and runs saved before it existed resume without it.
    replay_online: bool = False
    # How windows are drawn: "uniform" (DreamerV3's), or "curious", Curious Replay (Kauvar et al.
    # 2023): by priority, favouring records not yet trained on and those the world model still
    # predicts badly (wmjax.replay.sample_curious). Not with replay_online.
    replay_priority: str = "uniform"
    agent: DreamerConfig = field(default_factory=DreamerConfig)
    # Tunables changed during the run: (env_step, name, value) entries, each applied for every
    # seed from the first chunk that starts at or after env_step (chunk boundaries are
    # multiples of env_steps_per_chunk). E.g. ((500_000, "reward_scale", 10.0),) trains with
    # agent.reward_scale until 500k steps and with 10 after. No recompile: tunables are traced.
    tunable_schedule: tuple[tuple[int, str, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("num_envs", "seeds", "steps", "replay_size", "chunk_steps"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 1, name, v, "an integer >= 1")
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        if self.seed_ids is not None:
            ids = self.seed_ids
            _check(isinstance(ids, (list, tuple)) and len(ids) == self.seeds
                   and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids),
                   "seed_ids", ids, f"None or {self.seeds} integers >= 0, one per member (seeds)")
            object.__setattr__(self, "seed_ids", tuple(ids))  # a JSON list becomes a tuple
        _check(self.train_ratio > 0, "train_ratio", self.train_ratio, "> 0")
        _check(isinstance(self.replay_online, bool), "replay_online", self.replay_online,
               "True or False")
        _check(self.replay_priority in REPLAY_PRIORITIES, "replay_priority", self.replay_priority,
               f"one of {', '.join(REPLAY_PRIORITIES)}")
        _check(not (self.replay_online and self.replay_priority != "uniform"), "replay_priority",
               self.replay_priority, "'uniform' when replay_online is True (they do not combine)")
        _check(self.replay_obs_dtype in REPLAY_OBS_DTYPES, "replay_obs_dtype",
               self.replay_obs_dtype, f"one of {', '.join(REPLAY_OBS_DTYPES)}")
        _check(isinstance(self.agent, DreamerConfig), "agent", type(self.agent).__name__,
               "a DreamerConfig")
        object.__setattr__(self, "tunable_schedule", self._checked_schedule())
        per_env = self.replay_size // self.num_envs
        _check(per_env >= self.agent.batch_length + 1, "replay_size", self.replay_size,
               f">= num_envs * (batch_length + 1) = {self.num_envs * (self.agent.batch_length + 1)}")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def _checked_schedule(self) -> tuple[tuple[int, str, float], ...]:
        """tunable_schedule as sorted (int, str, float) tuples (a JSON list of lists becomes
        one); raises ValueError naming a malformed entry, an unknown name or a bad value."""
        allowed = (f"(env_step, name, value) entries with env_step an integer >= 0 and name one "
                   f"of {', '.join(TUNABLES)}")
        _check(isinstance(self.tunable_schedule, (list, tuple)), "tunable_schedule",
               self.tunable_schedule, allowed)
        entries = []
        for entry in self.tunable_schedule:
            ok = isinstance(entry, (list, tuple)) and len(entry) == 3
            step, name, value = entry if ok else (None, None, None)
            ok = ok and isinstance(step, int) and not isinstance(step, bool) and step >= 0
            ok = ok and name in TUNABLES and isinstance(value, (int, float))
            _check(ok and not isinstance(value, bool), "tunable_schedule entry", entry, allowed)
            try:
                self.agent.check_tunable(name, value)
            except ValueError as error:
                raise ValueError(f"tunable_schedule entry {entry!r}: {error}") from None
            entries.append((step, name, float(value)))
        return tuple(sorted(entries, key=lambda e: e[0]))  # stable: same steps keep their order

    def tunables_at(self, env_step: int) -> dict[str, float]:
        """The scheduled tunable values in force from env_step on (the latest entry per name
        at or before it); tunables not yet scheduled are absent."""
        return {name: value for step, name, value in self.tunable_schedule if step <= env_step}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict` (e.g. a run's config.json); unknown or invalid fields raise."""
        data = dict(data)
        agent = data.pop("agent", {})
        _check_fields(cls, data, "TrainConfig")
        _check_fields(DreamerConfig, agent, "DreamerConfig")
        # Saved before the field existed, when every matmul took float32 operands.
        agent = {"matmul_precision": "float32", **agent}
        return cls(**data, agent=DreamerConfig(**agent))

    def differences(self, other: "TrainConfig", ignore: tuple[str, ...] = ()) -> list[str]:
        """Fields whose values differ, as 'name: mine != other' lines (agent fields as agent.x)."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in sorted(mine)
                if k not in ignore and mine[k] != theirs[k]]

    @property
    def iters_per_chunk(self) -> int:
        """Vector-env steps per chunk (each steps every env once)."""
        return max(1, self.chunk_steps // self.num_envs)

    @property
    def env_steps_per_chunk(self) -> int:
        """Env steps per seed in one chunk: chunk_steps rounded down to whole vector steps."""
        return self.iters_per_chunk * self.num_envs


def _check_fields(cls: type, data: dict[str, Any], what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"invalid config: unknown {what} field(s) {unknown}; "
                         f"allowed: {', '.join(sorted(known))}")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
