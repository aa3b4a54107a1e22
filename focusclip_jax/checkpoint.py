"""Every save and every restore: orbax checkpoints of the train state and the grain iterator.

Training saves asynchronously (the step loop goes on while orbax writes), keeps the last `keep`,
and orbax's temp-dir-then-rename protocol means a half-written step is never taken as done.
Restoring has one path for everyone (`_newest_readable`): training (`Checkpointer.restore`, state
and iterator), and evaluation, `predict`, `export` and the notebook (`restore_params`, the
parameters alone). Each takes the newest readable step, else the one before, logging why in one
line; a checkpoint of another model is an error naming what differs, never a fallback. Only
training, the workdir's one writer (`workdir_lock`), moves an unreadable step aside
(`<workdir>/unreadable_checkpoints/<step>`); readers leave the workdir as it is.
"""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils

from focusclip_jax import run_record, weights
from focusclip_jax.run_record import workdir_path
from input_pipeline.errors import ConfigError, InputDataError

UNREADABLE_DIR = "unreadable_checkpoints"  # <workdir>/<this>/<step>: steps that failed to restore
CHECKPOINTS_DIR = "checkpoints"


class CheckpointNotFoundError(InputDataError, FileNotFoundError):
    """The path holds no readable orbax checkpoint of this project."""


def checkpoint_location(path: str | Path) -> tuple[epath.Path, int | None]:
    """A training workdir, its checkpoints/ folder or one step folder → (checkpoints folder, the
    step folder's step or None: the newest readable). An error naming the path if none is there."""
    path = workdir_path(path)
    if (path / CHECKPOINTS_DIR).is_dir():
        directory, step = path / CHECKPOINTS_DIR, None
    elif path.name.isdigit() and (path / "state").is_dir():
        directory, step = path.parent, int(path.name)
    else:
        directory, step = path, None
    if step is None and not _steps_in(directory):
        raise CheckpointNotFoundError(
            f"--checkpoint={path}: no checkpoint there; expected a training workdir (with "
            "checkpoints/<step>/state), its checkpoints/ folder or one <step> folder"
        )
    return directory, step


def _steps_in(directory: epath.Path) -> list[int]:
    if not directory.is_dir():
        return []
    return [int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def _newest_readable[Restored](
    directory: epath.Path,
    steps: list[int],
    attempt: Callable[[int], Restored],
    on_unreadable: Callable[[int], None] | None = None,
) -> tuple[Restored, int] | None:
    """`attempt(step)` on the newest step, else the one before...: (its result, the step), or
    None when no step is readable. A step whose files fail to read (truncated, missing, not
    JSON) is named with the reason in one line and passed over (`on_unreadable` is told); a
    checkpoint that reads but does not fit (`InputDataError`) stops the search: it is an error."""
    for step in sorted(steps, reverse=True):
        try:
            return attempt(step), step
        except InputDataError:
            raise
        except Exception as error:  # whatever the damage: the step before
            logging.warning(
                "Checkpoint %s/%d is unreadable (%s: %s); trying the one before",
                directory, step, type(error).__name__, _first_line(error),
            )  # fmt: skip
            if on_unreadable is not None:
                on_unreadable(step)
    return None


def _params_metadata(manager: ocp.CheckpointManager, step: int) -> Any:
    return manager.item_metadata(step)["state"].tree["params"]


def restore_params(checkpoint: str | Path, abstract_params: Any) -> tuple[Any, int]:
    """The parameters of a checkpoint's train state, sharded as `abstract_params` (a pure dict
    of `jax.ShapeDtypeStruct`s with shardings), and the step.

    Only `params` is read (a partial restore): the optimiser of the reading config need not be
    the one the checkpoint was trained with. The parameters must be the configured model's;
    given a workdir, the newest readable step (`_newest_readable`); a step folder given
    explicitly must restore.
    """
    directory, named = checkpoint_location(checkpoint)
    item = {"params": abstract_params}
    restore = ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,
    )
    handlers = {
        "state": ocp.PyTreeCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
    }

    def attempt(step: int) -> Any:
        saved = _params_metadata(manager, step)
        where = f"{directory}/{step}"
        weights.check_tree(flatten_dict(abstract_params), flatten_dict(saved), where)
        logging.info("Restoring parameters of step %d from %s", step, directory)
        return manager.restore(step, args=ocp.args.Composite(state=restore)).state["params"]

    manager = ocp.CheckpointManager(directory, item_handlers=handlers)
    try:
        found = _newest_readable(
            directory, [named] if named is not None else manager.all_steps(), attempt
        )
    finally:
        manager.close()
    if found is None:
        which = f"{directory}/{named} is unreadable" if named is not None else "no readable step"
        raise CheckpointNotFoundError(f"--checkpoint={checkpoint}: {which} (the log says why)")
    return found


class Checkpointer:
    """Train state + data iterator under `<workdir>/checkpoints/<step>/{state,data}`."""

    def __init__(self, workdir: str | Path, config: ml_collections.ConfigDict):
        self.workdir = workdir_path(workdir)
        self.directory = self.workdir / CHECKPOINTS_DIR
        self.every_steps = config.every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep, enable_async_checkpointing=config.async_save
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(
        self,
        abstract_state: Any,
        data_iterator: grain.DatasetIterator,
        config: ml_collections.ConfigDict | None = None,
    ) -> Any | None:
        """The newest readable state (sharded as `abstract_state`), the iterator moved in place;
        or None when there is none.

        A step that fails to restore (a truncated array or iterator file) is moved to
        `<workdir>/unreadable_checkpoints/<step>` (kept, not deleted) and the one before tried.
        A checkpoint of another model (e.g. `model.scan_layers` flipped) or optimiser is an
        error naming what differs (with `config`, the run's keys that do), not a traceback.
        """

        def attempt(step: int) -> Any:
            where = f"{self.directory}/{step}"
            saved = self.manager.item_metadata(step)["state"].tree
            check_state_matches(abstract_state, saved, where, self.workdir, config)
            logging.info("Restoring checkpoint of step %d from %s", step, self.directory)
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                ),
            )
            return restored.state

        found = _newest_readable(
            self.directory, list(self.manager.all_steps()), attempt, self._set_aside
        )
        return None if found is None else found[0]

    def _set_aside(self, step: int) -> None:
        aside = self.workdir / UNREADABLE_DIR / str(step)
        logging.warning("Checkpoint of step %d moved to %s", step, aside)
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(aside)
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def save(
        self, step: int, state: Any, data_iterator: grain.DatasetIterator, *, force: bool = False
    ) -> bool:
        """Save if `step` is a multiple of `every_steps` or `force`; returns whether it saved.

        (orbax's own interval policy would also save the first step of every run.)
        """
        if not force and step % self.every_steps:
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            force=True,
        )

    def close(self) -> None:
        """Wait for pending asynchronous writes, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def check_state_matches(
    abstract_state: Any,
    saved: Any,
    where: str,
    workdir: epath.Path,
    config: ml_collections.ConfigDict | None,
) -> None:
    """The saved train state has the configured model's parameters (`weights.check_tree`) and
    optimiser state (the same arrays); else an error naming what differs."""
    weights.check_tree(flatten_dict(abstract_state.params), flatten_dict(saved["params"]), where)
    shapes = lambda tree: sorted(tuple(np.shape(x)) for x in jax.tree.leaves(tree))
    if shapes(abstract_state.opt_state) == shapes(saved["opt_state"]):
        return
    changed = []
    record = run_record.load(str(workdir)) if config is not None else None
    if record is not None:
        changed = [
            f"optimizer.{key}: {record.optimizer.get(key)!r} → {value!r}"
            for key, value in config.optimizer.items()
            if record.optimizer.get(key) != value
        ]
    raise ConfigError(
        f"{where}: its optimiser state does not fit the config's optimiser"
        + (f" ({'; '.join(changed)})" if changed else " (config optimizer.*)")
        + ": resume with the optimiser it was trained with, or start another workdir"
    )
