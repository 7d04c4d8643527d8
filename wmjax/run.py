"""Host driver: build the fused program, run it chunk by chunk, log between chunks."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax

from wmjax.config import TrainConfig
from wmjax.logging import JsonlWriter, Progress
from wmjax.loop import host_metrics, make_train, num_chunks


def train(config: TrainConfig, logdir: str | None = None, verbose: bool = True) -> tuple[Any, list[dict]]:
    """Train `config.seeds` seeds for `config.steps` env steps each.

    Writes `logdir/config.json` and `logdir/metrics.jsonl` (one object per seed per chunk, with
    env_step, seed, episode_return — the mean return of episodes finished in that chunk, or null).
    Returns the final (batched) TrainState and the logged rows.
    """
    trainer = make_train(config)
    writer = None
    if logdir:
        os.makedirs(logdir, exist_ok=True)
        with open(os.path.join(logdir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(config), f, indent=2)
        writer = JsonlWriter(os.path.join(logdir, "metrics.jsonl"))
    log = print if verbose else (lambda *a, **k: None)
    chunks = num_chunks(config)
    total = chunks * config.iters_per_chunk * config.num_envs
    log(f"wmjax: {config.env}, {config.seeds} seed(s) x {config.num_envs} envs, "
        f"{total:,d} env steps per seed in {chunks} chunks, train ratio {config.train_ratio:g} "
        f"({trainer.updates_per_env_step:.4f} updates per env step)")
    state = trainer.init(jax.random.key(config.seed))
    progress = Progress(total, log)
    rows: list[dict] = []
    start = time.time()
    for _ in range(chunks):
        state, metrics = trainer.train_chunk(state)
        chunk_rows = host_metrics(metrics)
        for row in chunk_rows:
            row["wall_time"] = round(time.time() - start, 3)
            if writer:
                writer.write(row)
        rows.extend(chunk_rows)
        progress.report(int(chunk_rows[0]["env_step"]), [r["episode_return"] for r in chunk_rows],
                        f"  updates {int(chunk_rows[0]['updates']):,d}")
    if writer:
        writer.close()
    return state, rows
