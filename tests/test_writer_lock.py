"""One writer per output (`input_pipeline.writer_lock`): a dead holder's lock is taken over, one
from another host only with --takeover_lock, and of two runs started together exactly one writes.
Each writer's own refusal is tested beside it: training in tests/test_reliability.py, preparation
in tests/test_prepare_safety.py, descriptions in tests/test_describe_with_llm.py."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from input_pipeline import writer_lock
from tests.conftest import REPO


def hold_as_another_run(lock: Path, **holder) -> None:
    """The lock file another run on this host (by default) would have written."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    found = {"host": socket.gethostname(), "started": time.time(), "command": "another"} | holder
    lock.write_text(json.dumps(found))


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path: Path, caplog) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = tmp_path / writer_lock.LOCK_FILE
    hold_as_another_run(lock, pid=gone.pid)
    with caplog.at_level(logging.WARNING):
        holder = writer_lock.acquire(lock, "--out=x", writer_lock.PREPARATION)
    assert "taking over the lock of a preparation that is gone" in caplog.text
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    writer_lock.release(lock, holder)
    assert not lock.exists()


def test_a_live_holder_is_named_and_its_lock_kept(tmp_path: Path) -> None:
    lock = tmp_path / writer_lock.LOCK_FILE
    hold_as_another_run(lock, pid=os.getpid(), command="python -m the_first")
    before = lock.read_text()
    with pytest.raises(writer_lock.OutputLockedError) as refused:
        writer_lock.acquire(lock, "--out=x", writer_lock.PREPARATION)
    message = str(refused.value)
    assert message.startswith("--out=x: another preparation is writing it (host ")
    assert f"pid {os.getpid()}" in message and "(python -m the_first)" in message
    assert message.endswith("give another --out") and "\n" not in message
    assert lock.read_text() == before


def test_a_lock_from_another_host_needs_takeover(tmp_path: Path, caplog) -> None:
    lock = tmp_path / writer_lock.LOCK_FILE
    hold_as_another_run(lock, host="some-other-host", pid=1)
    with pytest.raises(writer_lock.OutputLockedError, match=r"another host.*--takeover_lock"):
        writer_lock.acquire(lock, "--workdir=x", writer_lock.TRAINING)
    with caplog.at_level(logging.WARNING):
        holder = writer_lock.acquire(lock, "--workdir=x", writer_lock.TRAINING, takeover=True)
    assert "--takeover_lock: taking the lock of host some-other-host" in caplog.text
    writer_lock.release(lock, holder)
    assert not lock.exists()


def test_two_writers_started_together_one_writes(tmp_path: Path) -> None:
    """Of two lock takers racing on one output (exclusive create), exactly one wins."""
    code = (
        "import sys; from input_pipeline import writer_lock as w\n"
        "try:\n    w.acquire(sys.argv[1], 'x', w.PREPARATION); print('won')\n"
        "except w.OutputLockedError: print('refused')\n"
        "import time; time.sleep(3)\n"
    )
    command = [sys.executable, "-c", code, str(tmp_path / writer_lock.LOCK_FILE)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    racers = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = sorted(racer.communicate(timeout=120)[0].strip() for racer in racers)
    assert results == ["refused", "won"]
