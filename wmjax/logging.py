"""Host-side logging between chunks: metrics.jsonl (one object per seed per log point) and a
one-line progress report. Nothing here runs inside jit."""
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
    """Prints env steps, steps/s, recent mean return over seeds and ETA."""

    def __init__(self, total_steps: int, out=print):
        self.total = total_steps
        self.start = time.time()
        self.out = out

    def report(self, env_step: int, returns: list[float | None], extra: str = "") -> None:
        elapsed = time.time() - self.start
        rate = env_step / elapsed if elapsed > 0 else 0.0
        eta = (self.total - env_step) / rate if rate > 0 else math.inf
        vals = [r for r in returns if r is not None]
        ret = f"{sum(vals) / len(vals):8.2f}" if vals else "     n/a"
        eta_s = "?" if math.isinf(eta) else f"{eta / 60:5.1f}m"
        pct = 100.0 * env_step / max(1, self.total)
        self.out(
            f"[{pct:5.1f}%] step {env_step:>9,d}  {rate:8.1f} steps/s  return {ret}  "
            f"elapsed {elapsed / 60:5.1f}m  eta {eta_s}{extra}",
        )
