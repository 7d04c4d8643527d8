"""Checkpoints of a whole training run with orbax's CheckpointManager.

A checkpoint is the complete `TrainState` of the fused program (parameters, optimizer, return
normaliser, env states, replay, PRNG keys, counters), batched over seeds, saved under
`RUN_DIR/checkpoints/<chunk>`. orbax writes each step to a temporary directory and renames it
when complete, so a run killed mid-save leaves the previous checkpoint intact; incomplete
directories are ignored and cleaned up. Restoring needs the state's abstract structure, which
`make_train(config)` gives without computing anything, and a mismatch is reported by name.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, broken, or from an incompatible config."""


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(os.path.abspath(run_dir), CHECKPOINT_DIR)


class Checkpointer:
    """Save and restore numbered checkpoints (the number is the chunks done) of one run."""

    def __init__(self, run_dir: str, max_to_keep: int = 2, read_only: bool = False):
        self.directory = checkpoint_dir(run_dir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            read_only=read_only,
            # The train state is donated to the next chunk, so the save must finish first.
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
        )
        # The handler is named so that a checkpoint's array metadata can be read before restoring.
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=ocp.StandardCheckpointHandler())

    def latest(self) -> int | None:
        """The newest complete checkpoint's chunk number, or None if there is none."""
        return self._manager.latest_step()

    def save(self, chunk: int, state: Any) -> None:
        self._manager.save(chunk, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def restore(self, like: Any, chunk: int | None = None) -> tuple[int, Any]:
        """Restore checkpoint `chunk` (default: the newest) into the structure of `like`, a pytree
        of arrays or ShapeDtypeStructs. Raises CheckpointError naming what does not match."""
        chunk = self.latest() if chunk is None else chunk
        if chunk is None:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        saved = sorted(self._manager.all_steps())
        if chunk not in saved:  # older ones are rotated out (max_to_keep)
            raise CheckpointError(f"no checkpoint {chunk} in {self.directory}; saved: {saved}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        _check_saved_arrays(abstract, self._saved_arrays(chunk), chunk)
        try:
            restored = self._manager.restore(chunk, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax raises many types; report them as one, with the cause
            raise CheckpointError(
                f"checkpoint {chunk} in {self.directory} does not match this run's state "
                f"({type(e).__name__}: {_first_line(e)})"
            ) from e
        _check_shapes(abstract, restored, chunk)
        return chunk, restored

    def saved_names(self, chunk: int | None = None) -> set[str] | None:
        """Dotted names of the arrays in checkpoint `chunk` (default: the newest), read from its
        metadata; None if there is no such checkpoint or its metadata cannot be read."""
        chunk = self.latest() if chunk is None else chunk
        if chunk is None or chunk not in self._manager.all_steps():
            return None
        saved = self._saved_arrays(chunk)
        return None if saved is None else set(saved)

    def _saved_arrays(self, chunk: int) -> dict[str, tuple] | None:
        """{name: (shape, dtype)} of the arrays in checkpoint `chunk`, read from its metadata
        without restoring anything; None if the metadata cannot be read."""
        try:
            meta = self._manager.item_metadata(chunk)
        except Exception:  # an unreadable or older layout: let the restore itself report it
            return None
        leaves = [m for m in jax.tree.leaves(meta) if hasattr(m, "shape") and hasattr(m, "name")]
        return {m.name: (tuple(m.shape), m.dtype) for m in leaves} or None

    def close(self) -> None:
        self._manager.close()


def _array_name(path) -> str:
    """orbax's dotted name of a tree path: agent.params.encoder.Dense_0.kernel."""
    parts = []
    for entry in path:
        for attr in ("name", "key", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return ".".join(parts)


def _check_saved_arrays(expected: Any, saved: dict[str, tuple] | None, chunk: int) -> None:
    """Before restoring: every array this config needs must be in the checkpoint with the same
    shape and dtype. Raises CheckpointError naming the first few differences."""
    if saved is None:
        return
    problems = []
    for path, want in jax.tree_util.tree_flatten_with_path(expected)[0]:
        name = _array_name(path)
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            continue  # stored as raw key data; its shape follows the PRNG implementation
        if name not in saved:
            problems.append(f"{name} is missing")
        elif tuple(saved[name][0]) != tuple(want.shape) or saved[name][1] != want.dtype:
            shape, dtype = saved[name]
            problems.append(f"{name} is {dtype}{list(shape)}, this config needs "
                            f"{want.dtype}{list(want.shape)}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"checkpoint {chunk} does not fit this config: "
                              f"{'; '.join(problems[:3])}{more}")


def _check_shapes(expected: Any, restored: Any, chunk: int) -> None:
    paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    got = jax.tree.leaves(restored)
    if len(paths) != len(got):
        raise CheckpointError(f"checkpoint {chunk} has {len(got)} arrays, expected {len(paths)}")
    for (path, want), have in zip(paths, got):
        if tuple(want.shape) != tuple(have.shape) or want.dtype != have.dtype:
            name = jax.tree_util.keystr(path)
            raise CheckpointError(
                f"checkpoint {chunk}: {name} is {have.dtype}{list(have.shape)}, this config "
                f"needs {want.dtype}{list(want.shape)}"
            )


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
