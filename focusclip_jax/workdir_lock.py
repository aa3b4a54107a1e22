"""One training writes a workdir at a time: `<workdir>/lock.json` names the one that does.

Training takes the lock before it writes anything (process 0 takes it; on multi-host runs the
other processes wait for its answer) and removes it when it ends, however it ends. A second
training on the same workdir exits with one line naming the holder (host, process id, start
time, command). A lock left by a training that died (same host, its process gone) is taken over
with a warning; one from another host may belong to a training still running there, so taking it
needs `--takeover_lock`. Evaluation, `predict`, `export` and `plot` only read, and take no lock.

On a local filesystem the lock file is created exclusively (`O_CREAT | O_EXCL`): of two trainings
started together exactly one gets it. On a bucket (gs://...) there is no exclusive create: the
lock is written if absent and read back, which catches all but near-simultaneous starts.
"""

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jax
from etils import epath
from jax.experimental import multihost_utils

from input_pipeline.errors import InputDataError

LOCK_FILE = "lock.json"


class WorkdirLockedError(InputDataError):
    """Another training holds the workdir."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process `pid` (Linux), telling a reused process id from the
    holder; None where /proc is not there, or the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder (a process on this host) still runs."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


def describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (
        f"host {holder.get('host')}, pid {holder.get('pid')}, started {started}"
        f" ({holder.get('command', '?')})"
    )


def _this_holder() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "started": time.time(),
        "command": " ".join(sys.argv)[:500],
        "token": uuid.uuid4().hex,
    }


def _read(path: epath.Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable (a holder killed while writing it): held by nobody we can name
    return found if isinstance(found, dict) else {}


def _create(path: epath.Path, holder: dict[str, Any]) -> bool:
    """Write the lock if there is none; whether this call wrote it."""
    text = json.dumps(holder, indent=1)
    if "://" in str(path):  # a bucket: no exclusive create
        if path.exists():
            return False
        path.write_text(text)
        return (_read(path) or {}).get("token") == holder["token"]
    try:
        descriptor = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return True


def acquire(workdir: epath.Path, *, takeover: bool = False) -> dict[str, Any]:
    """Take the workdir's lock for this process; returns what it wrote. `WorkdirLockedError`
    naming the holder when another training holds it."""
    path = workdir / LOCK_FILE
    workdir.mkdir(parents=True, exist_ok=True)
    holder = _this_holder()
    for _ in range(3):  # a stale lock removed, then created again
        if _create(path, holder):
            return holder
        found = _read(path)
        if found is None:
            continue  # released meanwhile
        same_host = found.get("host") == holder["host"]
        if same_host and not _alive(found):
            logging.warning(
                "%s: taking over the lock of a training that is gone (%s)", path, describe(found)
            )
        elif not found:
            logging.warning("%s: unreadable lock file, taken over", path)
        elif takeover:
            logging.warning("%s: --takeover_lock: taking the lock of %s", path, describe(found))
        elif same_host:
            raise WorkdirLockedError(
                f"{workdir}: another training is writing this workdir ({describe(found)}); "
                "wait for it, stop it, or give another --workdir"
            )
        else:
            raise WorkdirLockedError(
                f"{workdir}: locked by a training on another host ({describe(found)}); if it is "
                "no longer running, rerun with --takeover_lock"
            )
        path.unlink(missing_ok=True)
    raise WorkdirLockedError(f"{path}: could not take the lock (another training keeps taking it)")


def release(workdir: epath.Path, holder: dict[str, Any]) -> None:
    """Remove the lock if it is still this process's (a takeover may have replaced it)."""
    path = workdir / LOCK_FILE
    found = _read(path)
    if found is not None and found.get("token") == holder["token"]:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(workdir: epath.Path, *, takeover: bool = False) -> Iterator[None]:
    """The workdir's lock for the block's duration: taken by process 0, whose answer every
    process waits for (all fail together); released on every exit."""
    holder, error = None, None
    if jax.process_index() == 0:
        try:
            holder = acquire(workdir, takeover=takeover)
        except WorkdirLockedError as refused:
            error = refused
    taken = int(multihost_utils.broadcast_one_to_all(int(error is None)))
    if error is not None:
        raise error
    if not taken:
        raise WorkdirLockedError(f"{workdir}: process 0 could not take the workdir's lock")
    try:
        yield
    finally:
        if holder is not None:
            release(workdir, holder)
