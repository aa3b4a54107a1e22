"""One training writes a workdir at a time: `<workdir>/lock.json` names the one that does.

Training takes the lock (`input_pipeline.writer_lock`) before it writes anything: process 0 takes
it, and on multi-host runs the other processes wait for its answer, so all fail together. It is
removed when the training ends, however it ends. Evaluation, `predict`, `export` and `plot` only
read, and take no lock.
"""

import contextlib
from collections.abc import Iterator

import jax
from etils import epath
from jax.experimental import multihost_utils

from input_pipeline import writer_lock


def lock_path(workdir: epath.Path) -> epath.Path:
    return workdir / writer_lock.LOCK_FILE


@contextlib.contextmanager
def hold(workdir: epath.Path, *, takeover: bool = False) -> Iterator[None]:
    """The workdir's lock for the block's duration: taken by process 0, whose answer every
    process waits for (all fail together); released on every exit."""
    holder, error = None, None
    if jax.process_index() == 0:
        try:
            holder = writer_lock.acquire(
                lock_path(workdir), str(workdir), writer_lock.TRAINING, takeover=takeover
            )
        except writer_lock.OutputLockedError as refused:
            error = refused
    taken = int(multihost_utils.broadcast_one_to_all(int(error is None)))
    if error is not None:
        raise error
    if not taken:
        raise writer_lock.OutputLockedError(
            f"{workdir}: process 0 could not take the workdir's lock"
        )
    try:
        yield
    finally:
        if holder is not None:
            writer_lock.release(lock_path(workdir), holder)
