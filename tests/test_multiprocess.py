"""Two processes on 127.0.0.1 (2 CPU devices each, gloo collectives) train like one with 4."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from focusclip_jax import train
from tests import multiprocess_worker
from tests.conftest import FAST_COMPILE_FLAGS, REPO, tiny_config

# A constant schedule: the run length must not matter. SGD: Adam's normalisation would blow the
# last-bit differences between device layouts up past any tight tolerance within a few steps.
OVERRIDES = {
    "evals.zero_shot.datasets": (),
    "optimizer.schedule": "constant",
    "optimizer.name": "sgd",
    "optimizer.weight_decay": 0.0,
}
ARGS = ("--config=tests/tiny.py", *(f"--config.{k}={v}" for k, v in OVERRIDES.items()))
RECORDS, LOCAL_ROWS = 64, 8  # tests/tiny.py: 64 records, batches of 16 split over 2 processes


def _env(devices: int) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(REPO),
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        XLA_FLAGS=FAST_COMPILE_FLAGS,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(name: str, tmp_path: Path, *args: str, devices: int) -> subprocess.Popen:
    """A training process; its row digests go to <name>.json and its log (stderr) to <name>.log."""
    command = [sys.executable, "-m", "tests.multiprocess_worker", str(tmp_path / f"{name}.json")]
    with (tmp_path / f"{name}.log").open("w") as log:
        return subprocess.Popen(
            [*command, *ARGS, *args], cwd=REPO, env=_env(devices), stderr=log, text=True
        )


def _losses(workdir: Path) -> dict[int, float]:
    """Step → loss; a step logged twice (redone after a restart) keeps its last value."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _finish(process: subprocess.Popen, log: Path, timeout: int = 300) -> str:
    returncode = process.wait(timeout=timeout)
    text = log.read_text()
    assert returncode == 0, text[-3000:]
    return text


def _config(num_steps: int, **overrides):
    config = tiny_config()
    config.update_from_flattened_dict(OVERRIDES | overrides)
    config.train.num_steps = num_steps
    return config


def test_two_processes_train_like_one_and_stop_together_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same losses as 1 process × 4 devices; each record once per epoch; SIGTERM to one of them
    stops both at one agreed step, saved."""
    port, workdir = _free_port(), tmp_path / "two"
    cluster = (
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--workdir={workdir}",
    )
    long_run = ("--config.train.num_steps=500", "--config.checkpoint.every_steps=1000")
    pair = [
        _worker(f"process{i}", tmp_path, *cluster, f"--process_id={i}", *long_run, devices=2)
        for i in range(2)
    ]
    # Meanwhile, the reference in this process: the same model on 4 of the 8 fake devices.
    single_rows = tmp_path / "single.json"
    to_global_arrays = multiprocess_worker.recording(
        str(single_rows), train.pipeline.to_global_arrays
    )
    monkeypatch.setattr(train.pipeline, "to_global_arrays", to_global_arrays)
    train.train_and_evaluate(_config(6, **{"mesh.data": 4}), tmp_path / "one")

    log0 = tmp_path / "process0.log"
    # The pair stops after a step past 6, so that the first 6 steps compare with the reference.
    _wait_for(lambda: "step 6/500" in log0.read_text(), pair[0], log0)
    pair[1].send_signal(signal.SIGTERM)
    logs = [_finish(process, tmp_path / f"process{i}.log") for i, process in enumerate(pair)]

    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir()]
    assert len(saved) == 1 and 6 <= saved[0] < 500
    for log in logs:
        assert f"Preempted: stopping after the checkpoint of step {saved[0]}" in log
    two, one = _losses(workdir), _losses(tmp_path / "one")
    assert max(two) <= saved[0]
    for step in range(1, 7):  # the global batch holds the same rows, in another order
        assert two[step] == pytest.approx(one[step], rel=1e-5), step

    epoch = RECORDS // 2  # each process's rows of the first epoch
    rows = [json.loads((tmp_path / f"process{i}.json").read_text())[:epoch] for i in range(2)]
    single = json.loads(single_rows.read_text())
    assert len(set(rows[0] + rows[1])) == RECORDS  # together: every record exactly once
    assert sorted(rows[0] + rows[1]) == sorted(single[:RECORDS])


def test_kill_9_loses_only_the_steps_since_the_last_checkpoint(tmp_path: Path) -> None:
    """SIGKILL mid-run (maybe mid-save): the rerun resumes from the last complete checkpoint and
    its losses equal an uninterrupted run's."""
    workdir = tmp_path / "killed"
    args = (f"--workdir={workdir}", "--config.train.num_steps=500", "--config.mesh.data=1")
    args += ("--config.checkpoint.every_steps=2",)
    process = _worker("killed", tmp_path, *args, devices=1)
    log = tmp_path / "killed.log"
    _wait_for(lambda: (workdir / "checkpoints" / "4").is_dir(), process, log)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    last_saved = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    steps = last_saved + 3
    train.train_and_evaluate(_config(steps, **{"mesh.data": 1}), workdir)
    train.train_and_evaluate(_config(steps, **{"mesh.data": 1}), tmp_path / "straight")
    killed, straight = _losses(workdir), _losses(tmp_path / "straight")
    assert sorted(killed) == list(range(1, steps + 1))
    for step in range(1, steps + 1):  # before the kill, and after the resume
        assert killed[step] == pytest.approx(straight[step], rel=1e-5), step
    assert (workdir / "checkpoints" / str(steps)).is_dir()
