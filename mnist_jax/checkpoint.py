"""Checkpoints with orbax: save, resume, and a one-call restore of a trained model.

Orbax writes each checkpoint into a temporary directory and renames it into place once
complete, so a crash mid-save never leaves a checkpoint that restores garbage; restore ignores
the unfinished temporaries. A checkpoint that exists but cannot be read, or that holds arrays
of other shapes than the model's, is a UserError naming it: never a silent fresh start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from mnist_jax import metrics
from mnist_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    """A CheckpointManager that is always waited for and closed (use it as a context manager)."""

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3):
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
                item_handlers=ocp.StandardCheckpointHandler(),
            )
        except OSError as e:
            raise UserError(f"cannot create checkpoint directory {self.directory}: {e}") from None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except UserError:
            if exc_type is None:
                raise
            logging.warning("a checkpoint save failed too while stopping on %s", exc_type.__name__)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        """Saves `state` at `step` (asynchronously; `wait`/`close` finish it)."""
        if step in self._manager.all_steps():
            return
        try:
            self._manager.save(step, args=ocp.args.StandardSave(state))
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

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restores `step` (default: the latest) into the structure, shapes and shardings of
        `abstract_state` (from `jax.eval_shape`); None when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        where = self.directory / str(step)
        try:
            metadata = self._manager.item_metadata(step)
        except Exception as e:  # Orbax raises many types for unreadable metadata.
            raise UserError(
                f"checkpoint {where} is unreadable ({_short(e)}); {_advice()}"
            ) from None
        _check_shapes(metadata, abstract_state, where)
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # Truncated or corrupted array data.
            raise UserError(f"checkpoint {where} is corrupt ({_short(e)}); {_advice()}") from None

    def close(self) -> None:
        """Finishes any pending save, then releases the manager's threads."""
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            except Exception as e:  # Closing re-raises a failed background save.
                logging.warning("closing the checkpoint manager: %s", _short(e))


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _advice() -> str:
    return "delete that step's directory to resume from an older one, or use a new --workdir"


def _check_shapes(metadata: Any, abstract_state: Any, where: Path) -> None:
    """Refuses a checkpoint whose arrays differ in structure or shape from the model's."""
    tree = getattr(metadata, "tree", metadata)
    expected = _shapes(abstract_state)
    try:
        found = _shapes(tree)
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


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'opt_state/count': (), ...}: paths spelled the same for dataclasses and saved dicts."""

    def name(k) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(map(name, p)): tuple(getattr(x, "shape", ())) for p, x in leaves}


def restore_model(
    workdir: str | os.PathLike, step: int | None = None
) -> tuple[Any, Any, ml_collections.ConfigDict]:
    """Restores (model, params, config) from a run's workdir, for evaluation and prediction."""
    from mnist_jax import models, train  # Deferred: train imports this module.

    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise UserError(f"{workdir} holds no config.json: not a mnist-jax run directory")
    config = config_from_json(config_path)
    model = models.create_model(config.model, int(_num_classes(workdir)))
    tx = train.make_optimizer(config.optimizer)
    abstract = jax.eval_shape(lambda: train.init_state(model, tx, config.seed))
    with Checkpointer(workdir, config.checkpoints_to_keep) as ckpt:
        state = ckpt.restore(abstract, step)
    if state is None:
        raise UserError(f"no checkpoint in {workdir / CHECKPOINT_DIR}: train first")
    logging.info("restored %s at step %d", workdir, int(state.step))
    return model, state.params, config


def _num_classes(workdir: Path) -> int:
    results = workdir / "results.json"
    if results.is_file():
        return metrics.read_json(results).get("num_classes", 10)
    return 10


def config_from_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads a config.json written by a run back into a ConfigDict (lists become tuples)."""
    d = metrics.read_json(path)

    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        return tuple(x) if isinstance(x, list) else x

    return ml_collections.ConfigDict(tuples(d))
