"""Two processes on 127.0.0.1 (2 CPU devices each, gloo collectives) train like one with 4."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO

STEPS = 4  # tests/tiny.py: 64 records in batches of 16, so 4 steps are one epoch
ARGS = (
    "--config=tests/tiny.py",
    "--config.eval.datasets=()",
    "--config.optimizer.schedule=constant",
)


def _env(devices: int) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(REPO),
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        XLA_FLAGS="",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(name: str, tmp_path: Path, *args: str, devices: int) -> subprocess.Popen:
    """A training process; its digests go to <name>.json and its log (stderr) to <name>.log."""
    command = [sys.executable, "-m", "tests.multiprocess_worker", str(tmp_path / f"{name}.json")]
    with (tmp_path / f"{name}.log").open("w") as log:
        return subprocess.Popen(
            [*command, *ARGS, *args], cwd=REPO, env=_env(devices), stderr=log, text=True
        )


def _two_processes(tmp_path: Path, *args: str) -> list[subprocess.Popen]:
    port = _free_port()
    cluster = (f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2")
    workdir = f"--workdir={tmp_path / 'two'}"
    return [
        _worker(f"process{i}", tmp_path, workdir, *cluster, f"--process_id={i}", *args, devices=2)
        for i in range(2)
    ]


def _losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _finish(process: subprocess.Popen, log: Path, timeout: int = 300) -> str:
    returncode = process.wait(timeout=timeout)
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    return text


def test_two_processes_train_like_one_and_read_each_record_once(tmp_path: Path) -> None:
    steps = f"--config.train.num_steps={STEPS}"
    pair = _two_processes(tmp_path, steps)
    single = _worker("single", tmp_path, f"--workdir={tmp_path / 'one'}", steps, devices=4)
    for process, name in zip((*pair, single), ("process0", "process1", "single"), strict=True):
        _finish(process, tmp_path / f"{name}.log")

    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert list(two) == list(one) == list(range(1, STEPS + 1))
    for step in one:  # the global batch holds the same rows, in another order
        assert two[step] == pytest.approx(one[step], rel=1e-5), step

    rows = [json.loads((tmp_path / f"process{i}.json").read_text()) for i in range(2)]
    records = 64
    assert len(rows[0]) == len(rows[1]) == records // 2
    assert not set(rows[0]) & set(rows[1])
    assert Counter(rows[0] + rows[1]) == Counter(json.loads((tmp_path / "single.json").read_text()))
    assert len(set(rows[0] + rows[1])) == records  # one epoch: every record exactly once
    assert (tmp_path / "two" / "checkpoints" / str(STEPS)).is_dir()


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path: Path) -> None:
    """Preemption reaches one host: all agree on a step, save it together and exit 0."""
    args = ("--config.train.num_steps=500", "--config.checkpoint.every_steps=1000")
    pair = _two_processes(tmp_path, *args)
    deadline = time.monotonic() + 240
    while "step 3/500" not in (tmp_path / "process0.log").read_text():
        assert time.monotonic() < deadline and pair[0].poll() is None
        time.sleep(0.2)
    pair[1].send_signal(signal.SIGTERM)
    logs = [_finish(process, tmp_path / f"process{i}.log") for i, process in enumerate(pair)]
    saved = [int(p.name) for p in (tmp_path / "two" / "checkpoints").iterdir()]
    assert len(saved) == 1 and 3 <= saved[0] < 500
    assert f"Preempted: stopping after the checkpoint of step {saved[0]}" in logs[1]
    assert max(_losses(tmp_path / "two")) <= saved[0]
