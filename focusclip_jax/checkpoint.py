"""orbax checkpoints of the train state *and* the grain iterator: a resumed run sees the same data.

Saves are asynchronous (the step loop goes on while orbax writes), the last `keep` are retained,
and orbax's atomic temp-dir-then-rename protocol means a half-written step is never taken as done.
"""

import logging
import os
from pathlib import Path
from typing import Any

import grain
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax.traverse_util import flatten_dict

from focusclip_jax import weights


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """A local folder (made absolute, as orbax requires) or a bucket URL (gs://..., s3://...)."""
    workdir = str(workdir)
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


class Checkpointer:
    """Train state + data iterator under `<workdir>/checkpoints/<step>/{state,data}`."""

    def __init__(self, workdir: str | Path, config: ml_collections.ConfigDict):
        self.directory = workdir_path(workdir) / "checkpoints"
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

    def restore(self, abstract_state: Any, data_iterator: grain.DatasetIterator) -> Any | None:
        """The latest state (sharded as `abstract_state`), the iterator moved in place; or None.

        A checkpoint of another model (e.g. `model.scan_layers` flipped) is a `WeightImportError`
        naming what differs, not an orbax traceback.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        logging.info("Restoring checkpoint of step %d from %s", step, self.directory)
        saved = self.manager.item_metadata(step)["state"].tree["params"]
        weights.check_tree(
            flatten_dict(abstract_state.params), flatten_dict(saved), f"{self.directory}/{step}"
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        return restored.state

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
