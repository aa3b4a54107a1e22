"""End to end through the trainer and `main`: resume equals an uninterrupted run; missing data."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from focusclip_jax import train, weights
from input_pipeline.errors import ConfigError
from tests.conftest import FAST_COMPILE_FLAGS, REPO, tiny_config


def _losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _resume_config(num_steps: int):
    config = tiny_config()
    config.mesh.data = 1  # orbax saves on one device are fast; resharding is another test's job
    config.evals.zero_shot.datasets = ()
    config.train.num_steps = num_steps
    config.optimizer.schedule = "constant"  # the run length must not change the learning rates
    config.checkpoint.every_steps = 3
    return config


def test_resume_continues_exactly_like_an_uninterrupted_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train.train_and_evaluate(_resume_config(6), tmp_path / "straight")
    train.train_and_evaluate(_resume_config(3), tmp_path / "resumed")  # stops after step 3
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["3"]
    # A save killed half-way leaves orbax's temporary folder: it must be ignored, not restored.
    half_written = tmp_path / "resumed" / "checkpoints" / "5.orbax-checkpoint-tmp" / "state"
    half_written.mkdir(parents=True)
    (half_written / "garbage").write_bytes(b"\0" * 100)
    train.train_and_evaluate(_resume_config(6), tmp_path / "resumed")
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert list(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):  # same parameters, optimiser state and next batches after the restart
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step
    with caplog.at_level("WARNING"):  # a rerun asking for fewer steps than were taken
        train.train_and_evaluate(_resume_config(3), tmp_path / "resumed")
    assert "checkpoint is at step 6, past config train.num_steps=3: nothing to train" in caplog.text
    assert list(_losses(tmp_path / "resumed")) == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_of_another_layout_is_named_not_restored(tmp_path: Path) -> None:
    """The record names the flipped key; without a record (a workdir from before records), the
    checkpoint's own layout names it."""
    config = _resume_config(3)
    config.model.scan_layers = False
    train.train_and_evaluate(config, tmp_path)
    config.model.scan_layers = True
    with pytest.raises(ConfigError, match=r"^config model\.scan_layers=True: the checkpoints"):
        train.train_and_evaluate(config, tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(weights.WeightImportError, match=r"--config\.model\.scan_layers=False"):
        train.train_and_evaluate(config, tmp_path)


ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS)
MAIN = [sys.executable, "-m", "focusclip_jax.main"]


def _main(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MAIN, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )


SMALL_DEMO = (
    "--config=configs/demo.py",
    "--config.model.image_size=32",
    "--config.model.image.depth=1",
    "--config.model.text.depth=1",
    "--config.data.train_records=16",
    "--config.data.eval_records=16",
    "--config.train.batch_size=16",
    "--config.train.num_steps=8",
    "--config.optimizer.warmup_steps=1",
    "--config.log_every_steps=1",
    "--config.evals.zero_shot.batch_size=16",
    "--config.evals.retrieval.batch_size=16",
)


def test_demo_through_main_learns_a_repeated_batch(tmp_path: Path) -> None:
    """A few steps of configs/demo.py (shrunk) on one repeated batch: the loss goes down."""
    result = _main(*SMALL_DEMO, f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| synthpose_pose/top1 |" in result.stdout
    assert "| synthpose/image_to_text_R@1 |" in result.stdout  # the demo's retrieval evaluator
    losses = _losses(tmp_path)
    assert len(losses) == 8 and losses[8] < losses[1] * 0.95
    assert (tmp_path / "checkpoints" / "8").is_dir()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    # The end: the curves drawn, where everything is and the next commands, on a quiet stderr.
    assert (tmp_path / "plots" / "losses.png").is_file()
    assert (tmp_path / "plots" / "eval_synthpose_pose.png").is_file()
    for line in (
        f"Results in {tmp_path}",
        f"python -m tensorboard.main --logdir={tmp_path}/tb",
        f"python -m focusclip_jax.evaluate --checkpoint={tmp_path} --config.data_root=",
        f"python -m focusclip_jax.predict --checkpoint={tmp_path} --images=",
        f"python -m focusclip_jax.export --checkpoint={tmp_path} --tower=image_tower",
        f"python -m focusclip_jax.plot --workdir={tmp_path}",
    ):
        assert line in result.stdout, line
    assert re.search(r"Evaluation zero_shot done in \d+\.\d s", result.stderr)
    assert "Evaluation linear_probe" not in result.stderr  # the demo has none: not told
    warnings = [line for line in result.stderr.splitlines() if re.match(r"W\d{4} |.*Warning", line)]
    assert not warnings, warnings


def test_pretrain_without_data_names_the_missing_files(tmp_path: Path) -> None:
    result = _main("--config=configs/pretrain.py:pretrained", f"--workdir={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for key in ("data.prepared", "tokenizer.vocab", "init.image", "init.text"):
        assert f"--config.{key}=" in result.stderr
    # The preparation's hint names the command and where its raw files come from.
    assert "python -m input_pipeline.prepare.mpii" in result.stderr
    assert "mpii_train.json" in result.stderr and "human-pose.mpi-inf.mpg.de" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.train.batch_size=12", "error: config train.batch_size=12: must be a multiple"),
        ("--config.train.batch_size=0", "error: config train.batch_size=0: must be a positive"),
    ],
)
def test_a_bad_batch_is_refused_before_anything_is_written(tmp_path, override, message) -> None:
    """On 8 devices a global batch of 12 does not split: one line, exit 2, no workdir files (it
    used to fail after ~80 s of compiling, leaving metrics.jsonl, tb/ and checkpoints/)."""
    env = ENV | {"XLA_FLAGS": f"{FAST_COMPILE_FLAGS} --xla_force_host_platform_device_count=8"}
    result = subprocess.run(
        [*MAIN, "--config=tests/tiny.py", override, f"--workdir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_sigterm_saves_at_the_next_step_and_a_rerun_resumes(tmp_path: Path) -> None:
    """Preemption: SIGTERM mid-run → checkpoint at the next step, exit 0; a rerun resumes."""
    args = [*SMALL_DEMO, f"--workdir={tmp_path}", "--config.train.num_steps=400"]
    args += ["--config.checkpoint.every_steps=1000", "--config.evals.zero_shot.datasets=()"]
    process = subprocess.Popen(
        [*MAIN, *args],
        cwd=REPO,
        env=ENV,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    for line in process.stderr:  # progress lines go to the log (stderr)
        if "step 3/400" in line:
            process.send_signal(signal.SIGTERM)
            break
    log = process.stderr.read()
    assert process.wait(timeout=120) == 0, log[-3000:]
    assert "Preempted" in log
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir()]
    assert len(saved) == 1 and 3 <= saved[0] < 400
    assert max(_losses(tmp_path)) <= saved[0]
    rerun = _main(*args, f"--config.train.num_steps={saved[0] + 2}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Restoring checkpoint of step {saved[0]}" in rerun.stderr
    assert max(_losses(tmp_path)) == saved[0] + 2


def _damaged_run(tmp_path: Path, damage) -> tuple[Path, dict[int, float]]:
    """4 steps saved at 3 and 4 (the end); `damage(step_4_folder)`; then a run to 6 resumes."""
    train.train_and_evaluate(_resume_config(4), tmp_path)
    damage(tmp_path / "checkpoints" / "4")
    train.train_and_evaluate(_resume_config(6), tmp_path)
    return tmp_path, _losses(tmp_path)


def _truncate_largest_array_file(step: Path) -> None:
    files = [p for p in (step / "state").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 3])


def _truncate_iterator_state(step: Path) -> None:
    state = next((step / "data").glob("process_0-of-*.json"))
    state.write_text(state.read_text()[:10])


@pytest.mark.parametrize("damage", [_truncate_largest_array_file, _truncate_iterator_state])
def test_an_unreadable_latest_step_is_set_aside(tmp_path: Path, damage, caplog) -> None:
    """Truncated arrays or iterator state: named in a warning, moved to
    unreadable_checkpoints/ (not deleted), and training resumes from step 3 (it used to stop
    with a tensorstore traceback or a bare JSONDecodeError)."""
    with caplog.at_level("INFO"):
        workdir, losses = _damaged_run(tmp_path, damage)
    assert re.search(r"Checkpoint \S*checkpoints/4 is unreadable", caplog.text)
    assert (workdir / "unreadable_checkpoints" / "4" / "state").is_dir()
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [3, 6]
    assert "Restoring checkpoint of step 3" in caplog.text and max(losses) == 6


def test_resuming_with_another_optimiser_names_it(tmp_path: Path) -> None:

    config = _resume_config(2)
    config.optimizer.name = "adamw"
    train.train_and_evaluate(config, tmp_path)
    config = _resume_config(4)
    config.optimizer.name = "sgd"
    with pytest.raises(ConfigError, match=r"optimizer\.name: 'adamw' → 'sgd'"):
        train.train_and_evaluate(config, tmp_path)


def test_the_run_record_matches_the_checkpoints(tmp_path: Path) -> None:
    """Written into a new workdir; written again while no checkpoint has landed (a run killed
    before its first save, rerun with another model); from the first checkpoint on, a config
    that contradicts it is an error naming the key, and the record stays."""
    from types import SimpleNamespace

    from focusclip_jax import run_record

    workdir = tmp_path / "new" / "run"  # `make demo` deletes its workdir first
    workdir.mkdir(parents=True)
    run_record.write(str(workdir), tiny_config(), SimpleNamespace(vocab_size=169))
    assert run_record.load(str(workdir)).model.text.vocab_size == 169
    other = tiny_config()
    other.model.embed_dim = 8
    run_record.write(str(workdir), other, SimpleNamespace(vocab_size=169))
    assert run_record.load(str(workdir)).model.embed_dim == 8
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    run_record.write(str(workdir), other, SimpleNamespace(vocab_size=169))  # a resume: agrees
    with pytest.raises(ConfigError, match=r"^config model\.text\.vocab_size=5: the checkp"):
        run_record.write(str(workdir), other, SimpleNamespace(vocab_size=5))
    with pytest.raises(ConfigError, match=r"^config model\.embed_dim=16: .* trained with 8"):
        run_record.write(str(workdir), tiny_config(), SimpleNamespace(vocab_size=169))
    two = tiny_config()  # every contradiction at once, as a changed default brings them
    two.model.scan_layers = not other.model.scan_layers
    scan = other.model.scan_layers
    with pytest.raises(ConfigError) as raised:
        run_record.write(str(workdir), two, SimpleNamespace(vocab_size=169))
    assert str(raised.value).startswith(
        f"config model.embed_dim=16, model.scan_layers={not scan}: the checkpoints in {workdir} "
        f"were trained with model.embed_dim=8, model.scan_layers={scan} ("
    )
    assert run_record.load(str(workdir)).model.embed_dim == 8


def test_a_config_file_of_another_model_is_named_when_the_record_replaces_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """predict and evaluate take the model from the record; a --config file that says otherwise
    is not used, and the log says so (a user's mistake is not silently accepted)."""
    from types import SimpleNamespace

    from focusclip_jax import run_record

    trained = tiny_config()
    trained.model.embed_dim = 8
    run_record.write(str(tmp_path), trained, SimpleNamespace(vocab_size=169))
    with caplog.at_level("WARNING"):
        same = run_record.config_for(str(tmp_path), trained)
    assert "differ from the checkpoint's record" not in caplog.text
    with caplog.at_level("WARNING"):
        merged = run_record.config_for(str(tmp_path), tiny_config())
    assert merged.model.embed_dim == same.model.embed_dim == 8
    assert "1 key(s) differ from the checkpoint's record" in caplog.text
    assert "model.embed_dim=16 (recorded 8)" in caplog.text
