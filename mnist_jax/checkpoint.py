"""Checkpoints with orbax, each carrying a digest of its arrays that restore verifies.

Layout (plain orbax can read it): `<workdir>/checkpoints/<step>/state` is a
`StandardCheckpointHandler` item holding {step, params, opt_state, rng, loss_sum} and, for a
model with variable collections besides params (BatchNorm's batch_stats), model_state; and
`<workdir>/checkpoints/<step>/digest` a JSON item {"sha256": ...} over every array's path, dtype,
shape and bytes. Orbax writes a step into a temporary directory and renames it into place once
complete, so a crash mid-save never leaves a half checkpoint; but orbax does not checksum array
bytes, so the digest is what catches a corrupted or truncated file. A checkpoint that cannot be
read, does not match the model, or fails its digest is a UserError naming its directory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mnist_jax.errors import UserError
from mnist_jax.inputs import check_tree

STATE, DIGEST = "state", "digest"


def _host(x: Any) -> np.ndarray:
    """A leaf as a host array (a replicated multi-process array: this process's copy)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def _name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _leaves(tree: Any) -> dict[str, Any]:
    """{'opt_state/1/count': leaf}: paths spelled the same for dataclasses and saved dicts."""
    return {"/".join(map(_name, p)): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def digest(tree: Any) -> str:
    """SHA-256 over every array's path, dtype, shape and bytes, in path order."""
    h = hashlib.sha256()
    for path, x in sorted(_leaves(tree).items()):
        a = np.ascontiguousarray(_host(x))
        h.update(f"{path}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def as_dict(state: Any) -> dict[str, Any]:
    """A TrainState as the dict that is saved (so that plain orbax restores it as a dict).
    An empty model_state (a stateless model) is left out: such a checkpoint is laid out, and
    digested, as before model state existed."""
    saved = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
             "rng": state.rng, "loss_sum": state.loss_sum}  # fmt: skip
    if state.model_state:
        saved["model_state"] = state.model_state
    return saved


class Checkpointer:
    """A CheckpointManager that is always waited for and closed (use it as a context manager)."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3, create: bool = True):
        self.directory = Path(directory).absolute()
        if self.directory.is_dir():  # A FIFO in a crafted checkpoint would block orbax.
            check_tree(self.directory)
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    create=create,
                    cleanup_tmp_directories=create,  # The writer (locked) clears a killed save's.
                ),
                item_handlers={
                    STATE: ocp.StandardCheckpointHandler(),
                    DIGEST: ocp.JsonCheckpointHandler(),
                },
            )
        except Exception as e:  # OSError, or orbax's ValueError for a file in the way.
            raise UserError(
                f"cannot open checkpoint directory {self.directory}: {_short(e)}"
            ) from None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except UserError:
            if exc_type is None:
                raise
            logging.warning("a checkpoint save failed too while stopping on %s", exc_type.__name__)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Saves `state` at `step` with its digest (arrays written asynchronously)."""
        if step in self._manager.all_steps():
            return
        tree = as_dict(state)
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE: ocp.args.StandardSave(tree),
                        DIGEST: ocp.args.JsonSave({"sha256": digest(tree)}),
                    }
                ),
            )
        except Exception as e:  # OSError, or tensorstore's ValueError from a failed write.
            raise UserError(
                f"cannot save checkpoint {self.directory / str(step)}: {_short(e)}"
            ) from None

    def wait(self) -> None:
        """Blocks until pending saves are on disk; a failed one is a UserError."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # Re-raised from orbax's background save thread.
            raise UserError(f"checkpoint save in {self.directory} failed: {_short(e)}") from None

    def restore(self, abstract_state: Any | None, step: int | None = None) -> Any:
        """Restores `step` (default: the latest) into the structure and shapes of
        `abstract_state` (from `jax.eval_shape`), or as saved when it is None, every array
        replicated over this process's devices whatever device count wrote it; checks the
        digest. Returns the saved dict, or None when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        where = self.directory / str(step)
        try:
            metadata = self._manager.item_metadata(step)[STATE]
        except Exception as e:  # Orbax raises many types for unreadable metadata.
            raise UserError(f"checkpoint {where} is unreadable ({_short(e)}); {ADVICE}") from None
        metadata = getattr(metadata, "tree", metadata)
        if abstract_state is not None:
            _check_shapes(metadata, as_dict(abstract_state), where)
        try:
            target = on_these_devices(
                metadata if abstract_state is None else as_dict(abstract_state)
            )
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{STATE: ocp.args.StandardRestore(target), DIGEST: ocp.args.JsonRestore()}
                ),
            )
        except Exception as e:  # Truncated or corrupted array data or metadata.
            raise UserError(f"checkpoint {where} is corrupt ({_short(e)}); {ADVICE}") from None
        saved = (restored[DIGEST] or {}).get("sha256")
        if saved != digest(restored[STATE]):
            raise UserError(
                f"checkpoint {where} is corrupt (its arrays do not match their digest); {ADVICE}"
            )
        return restored[STATE]

    def close(self) -> None:
        """Finishes any pending save, then releases the manager's threads."""
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            except Exception as e:  # Closing re-raises a failed background save.
                logging.warning("closing the checkpoint manager: %s", _short(e))


def on_these_devices(tree: Any) -> Any:
    """`tree`'s arrays as restore targets (shape, dtype) replicated over the devices of this
    process: a checkpoint written on 8 devices (its metadata names them) restores on 1, and
    one written on 1 restores on a pod."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def target(x: Any) -> Any:
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            return x
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=replicated)

    return jax.tree_util.tree_map(target, tree)


ADVICE = (
    "move that step directory away, or resume training with --fallback_checkpoint (it sets "
    "corrupt steps aside and resumes from the newest intact one)"
)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _check_shapes(metadata: Any, target: Any, where: Path) -> None:
    """Refuses a checkpoint whose arrays differ in structure or shape from the model's."""
    tree = metadata
    expected = {k: tuple(getattr(x, "shape", ())) for k, x in _leaves(target).items()}
    try:
        found = {k: tuple(getattr(x, "shape", ())) for k, x in _leaves(tree).items()}
    except Exception:
        found = None
    if found != expected:
        diff = ""
        if found is not None:
            keys = sorted(set(found) ^ set(expected)) or [
                k for k in expected if found.get(k) != expected[k]
            ]
            k = keys[0]
            diff = f": {k} is {found.get(k, 'missing')} there, {expected.get(k, 'absent')} here"
        raise UserError(
            f"checkpoint {where} does not match this config's model/optimizer{diff}; "
            "use a new --workdir for a different model"
        )


def finalized_steps(directory: str | os.PathLike) -> list[int]:
    """The complete checkpoint steps in `directory` (none if it is absent), read from the
    file system alone: no orbax manager, so no collective, for one process to call."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(ocp.utils.checkpoint_steps(directory))


def restore_latest(
    ckpt: Checkpointer,
    abstract_state: Any | None,
    fallback: bool = False,
    steps: list[int] | None = None,
    agree: Callable[[UserError | None], UserError | None] = lambda e: e,
) -> tuple[dict[str, Any] | None, int | None, list[int]]:
    """The newest of `steps` (default: all) that restores; with `fallback`, a bad one is
    skipped (and said), else its error stands. `agree` turns this process's outcome of each
    restore into every process's (`distributed.first_error`). Returns (saved dict, step,
    skipped steps); (None, None, ...) when there is none."""
    skipped = []
    for step in reversed(ckpt.all_steps() if steps is None else sorted(steps)):
        saved, error = None, None
        try:
            saved = ckpt.restore(abstract_state, step)
        except UserError as e:
            error = e
        error = agree(error)
        if error is None:
            return saved, step, skipped
        if not fallback:
            raise error
        logging.warning("skipping checkpoint %d: %s", step, error)
        skipped.append(step)
    return None, None, skipped
