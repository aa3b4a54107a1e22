"""orbax checkpoints of the train state *and* the grain iterator: a resumed run sees the same data.

Saves are asynchronous (the step loop goes on while orbax writes), the last `keep` are retained,
and orbax's atomic temp-dir-then-rename protocol means a half-written step is never taken as done.
"""

import logging
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

from focusclip_jax import config_checks, run_record, weights
from focusclip_jax.run_record import workdir_path

UNREADABLE_DIR = "unreadable_checkpoints"  # <workdir>/<this>/<step>: steps that failed to restore


class Checkpointer:
    """Train state + data iterator under `<workdir>/checkpoints/<step>/{state,data}`."""

    def __init__(self, workdir: str | Path, config: ml_collections.ConfigDict):
        self.workdir = workdir_path(workdir)
        self.directory = self.workdir / "checkpoints"
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

        A step that fails to restore (a truncated array or iterator file) is named, moved to
        `<workdir>/unreadable_checkpoints/<step>` (kept, not deleted) and the next older one
        tried. A checkpoint of another model (e.g. `model.scan_layers` flipped) or optimiser is
        an error naming what differs (with `config`, the run's keys that do), not a traceback.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            where = f"{self.directory}/{step}"
            try:
                saved = self.manager.item_metadata(step)["state"].tree
            except Exception as error:  # whatever the damage: set it aside, try older
                self._set_aside(step, error)
                continue
            check_state_matches(abstract_state, saved, where, self.workdir, config)
            logging.info("Restoring checkpoint of step %d from %s", step, self.directory)
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=grain.checkpoint.CheckpointRestore(data_iterator),
                    ),
                )
            except Exception as error:  # whatever the damage: set it aside, try older
                self._set_aside(step, error)
                continue
            return restored.state
        return None

    def _set_aside(self, step: int, error: BaseException) -> None:
        aside = self.workdir / UNREADABLE_DIR / str(step)
        logging.warning(
            "Checkpoint of step %d is unreadable (%s: %s); moved to %s, trying the one before",
            step, type(error).__name__, _first_line(error), aside,
        )  # fmt: skip
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


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
    raise config_checks.ConfigError(
        f"{where}: its optimiser state does not fit the config's optimiser"
        + (f" ({'; '.join(changed)})" if changed else " (config optimizer.*)")
        + ": resume with the optimiser it was trained with, or start another workdir"
    )
