"""Host-side logging between chunks: metrics.jsonl (one object per seed per log point), optional
Weights & Biases, and a progress bar. Nothing here runs inside jit, and nothing here may stop a
training run: wandb failures are reported once and wandb is then switched off."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, TextIO


class JsonlWriter:
    """Appends one JSON object per line; flushes each write so a killed run keeps its log."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._file: TextIO = open(path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Progress:
    """A progress bar line per log point: env steps, steps/s, recent mean return over seeds, ETA.

    `start_step` is where a resumed run starts, so its rate counts only this process's steps.
    """

    def __init__(self, total_steps: int, out=print, start_step: int = 0, width: int = 20):
        self.total = total_steps
        self.start = time.time()
        self.start_step = start_step
        self.out = out
        self.width = width

    def report(self, env_step: int, returns: list[float | None], extra: str = "") -> None:
        elapsed = time.time() - self.start
        rate = (env_step - self.start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - env_step) / rate if rate > 0 else math.inf
        vals = [r for r in returns if r is not None]
        ret = f"{sum(vals) / len(vals):8.2f}" if vals else "     n/a"
        eta_s = "?" if math.isinf(eta) else f"{eta / 60:5.1f}m"
        frac = min(1.0, env_step / max(1, self.total))
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        self.out(
            f"[{bar}] {100 * frac:5.1f}% step {env_step:>9,d}  {rate:8.1f} steps/s  return {ret}  "
            f"elapsed {elapsed / 60:5.1f}m  eta {eta_s}{extra}",
        )


class WandbLogger:
    """One wandb run per training run; each log point logs every seed's metrics under
    `seed_<i>/` and their mean over seeds under `mean/`, at step = env steps.

    Offline unless the user set WANDB_MODE (e.g. `WANDB_MODE=online` after `wandb login`); files
    go to `<logdir>/wandb`. Any wandb error is printed once and disables the logger, so a broken
    or missing wandb never stops training.
    """

    def __init__(self, logdir: str, config: dict, project: str = "wmjax", group: str | None = None,
                 resume: bool = False, out=print):
        self.out = out
        self.run = None
        try:
            import wandb

            os.makedirs(logdir, exist_ok=True)
            run_id = _wandb_id(logdir)
            self.run = wandb.init(
                project=project, dir=os.path.abspath(logdir), config=config, group=group,
                name=os.path.basename(os.path.abspath(logdir)), id=run_id,
                resume="allow" if resume else None,
                mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
            )
        except Exception as e:  # noqa: BLE001 - any wandb failure must not stop training
            self._fail("init", e)

    def log(self, rows: list[dict[str, Any]]) -> None:
        if self.run is None or not rows:
            return
        data: dict[str, Any] = {}
        for row in rows:
            for k, v in row.items():
                if k != "seed" and isinstance(v, (int, float)) and v is not None:
                    data[f"seed_{row['seed']}/{k}"] = v
        for k in rows[0]:
            vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
            if k != "seed" and vals:
                data[f"mean/{k}"] = sum(vals) / len(vals)
        try:
            self.run.log(data, step=int(rows[0]["env_step"]))
        except Exception as e:  # noqa: BLE001
            self._fail("log", e)

    def close(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)

    def _fail(self, what: str, e: Exception) -> None:
        self.out(f"wmjax: warning: wandb {what} failed ({type(e).__name__}: {e}); "
                 f"continuing without wandb")
        self.run = None


def _wandb_id(logdir: str) -> str:
    """A run id stored in the run folder, so a resumed run continues the same wandb run."""
    path = os.path.join(logdir, "wandb_id.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    with open(path, "w", encoding="utf-8") as f:
        f.write(run_id)
    return run_id
