"""One writer per output: a lock file names the run writing a workdir, a dataset or a file.

Training holds `<workdir>/lock.json` (`focusclip_jax.workdir_lock`, which adds the multi-host
answer), a preparation `<out>/<dataset>/lock.json`, the description writer `<out>.lock`. The lock
is taken before anything is written and removed when the run ends, however it ends. A second run
on the same output exits with one line naming the holder (host, process id, start time,
command). A lock left by a run that died (same host, its process gone) is taken over with a
warning; one from another host may belong to a run still going there, so taking it needs
`--takeover_lock`. Readers take no lock.

On a local filesystem the lock file is created exclusively (`O_CREAT | O_EXCL`): of two runs
started together exactly one gets it. On a bucket (gs://...) there is no exclusive create: the
lock is written if absent and read back, which catches all but near-simultaneous starts.
"""

import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from absl import flags
from etils import epath

from input_pipeline.errors import InputDataError

LOCK_FILE = "lock.json"


class OutputLockedError(InputDataError):
    """Another run is writing the output."""


@dataclasses.dataclass(frozen=True)
class Writer:
    """What kind of run writes an output, and the flag that names the output (for the messages)."""

    kind: str  # "training"
    flag: str  # "--workdir"


TRAINING = Writer("training", "--workdir")
PREPARATION = Writer("preparation", "--out")
DESCRIPTION = Writer("description run", "--out")


def define_takeover_flag() -> None:
    flags.DEFINE_bool(
        "takeover_lock",
        False,
        "Take the output's lock from a run on another host that is no longer running.",
    )


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


def _read(path: epath.PathLike) -> dict[str, Any] | None:
    try:
        found = json.loads(epath.Path(path).read_text())
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


def acquire(
    lock: epath.PathLike, output: str, writer: Writer, *, takeover: bool = False
) -> dict[str, Any]:
    """Take `lock` for this process; returns what it wrote. `output`: the output as the user named
    it. `OutputLockedError` naming the holder when another run holds it."""
    path = epath.Path(lock)
    path.parent.mkdir(parents=True, exist_ok=True)
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
                "%s: taking over the lock of a %s that is gone (%s)",
                path, writer.kind, describe(found),
            )  # fmt: skip
        elif not found:
            logging.warning("%s: unreadable lock file, taken over", path)
        elif takeover:
            logging.warning("%s: --takeover_lock: taking the lock of %s", path, describe(found))
        elif same_host:
            raise OutputLockedError(
                f"{output}: another {writer.kind} is writing it ({describe(found)}); wait for "
                f"it, stop it, or give another {writer.flag}"
            )
        else:
            raise OutputLockedError(
                f"{output}: locked by a {writer.kind} on another host ({describe(found)}); if it "
                "is no longer running, rerun with --takeover_lock"
            )
        path.unlink(missing_ok=True)
    raise OutputLockedError(f"{path}: could not take the lock (another run keeps taking it)")


def release(lock: epath.PathLike, holder: dict[str, Any]) -> None:
    """Remove the lock if it is still this process's (a takeover may have replaced it)."""
    found = _read(lock)
    if found is not None and found.get("token") == holder["token"]:
        epath.Path(lock).unlink(missing_ok=True)


@contextlib.contextmanager
def hold(
    lock: epath.PathLike, output: str, writer: Writer, *, takeover: bool = False
) -> Iterator[None]:
    """`lock` held by this process for the block's duration, released on every exit."""
    holder = acquire(lock, output, writer, takeover=takeover)
    try:
        yield
    finally:
        release(lock, holder)
