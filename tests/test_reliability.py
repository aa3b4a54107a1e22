"""What a user made is never lost: one training per workdir (its lock, `writer_lock`), one
restore path for every reader (a damaged newest step falls back to the one before), and a run
record that matches the checkpoints."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from focusclip_jax import checkpoint, run_record, train, workdir_lock
from focusclip_jax.setup import load_trained
from input_pipeline import pipeline
from input_pipeline.errors import ConfigError
from tests.conftest import FAST_COMPILE_FLAGS, REPO, tiny_config
from tests.test_writer_lock import hold_as_another_run

ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS)


def _config(num_steps: int = 4):
    config = tiny_config()
    config.mesh.data = 1  # orbax saves on one device are fast
    config.evals.zero_shot.datasets = ()
    config.train.num_steps = num_steps
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(_config(), workdir)
    return workdir


def test_a_second_training_on_a_held_workdir_stops_naming_the_holder(tmp_path: Path) -> None:
    """A live training holds the workdir: another exits 2 in one line naming it, and writes
    nothing there (no record, no checkpoints, the lock untouched)."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        hold_as_another_run(
            workdir_lock.lock_path(tmp_path), pid=holder.pid,
            command="python -m focusclip_jax.main (the first)",
        )  # fmt: skip
        before = sorted(p.name for p in tmp_path.iterdir())
        lock = (workdir_lock.lock_path(tmp_path)).read_text()
        done = subprocess.run(
            [sys.executable, "-m", "focusclip_jax.main", "--config=tests/tiny.py",
             f"--workdir={tmp_path}", "--config.mesh.data=1"],
            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path}: another training is writing it")
    assert f"pid {holder.pid}" in last and "(the first)" in last
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (workdir_lock.lock_path(tmp_path)).read_text() == lock


def _damage_newest_metadata(workdir: Path) -> Path:
    newest = workdir / "checkpoints" / "4"
    metadata = newest / "state" / "_METADATA"
    metadata.write_text(metadata.read_text()[:10])
    return newest


def test_readers_fall_back_to_the_step_before_a_damaged_one(trained: Path, caplog) -> None:
    """Evaluation, predict and export all restore through `load_trained`: a damaged newest step
    (its metadata cut short, a bare JSONDecodeError before) is named in one warning and the one
    before restored; nothing in the workdir is moved (readers only read)."""
    newest = _damage_newest_metadata(trained)
    with caplog.at_level(logging.WARNING):
        model = load_trained(trained)
    assert model.step == 2
    assert "checkpoints/4 is unreadable" in caplog.text and "trying the one before" in caplog.text
    assert newest.is_dir() and not (trained / checkpoint.UNREADABLE_DIR).exists()
    with pytest.raises(checkpoint.CheckpointNotFoundError, match="checkpoints/4 is unreadable"):
        load_trained(newest)  # the step folder named explicitly: no fallback


def test_a_rerun_before_the_first_checkpoint_records_the_new_model(tmp_path: Path) -> None:
    """A run killed before its first checkpoint left a record of another model: the rerun's
    record replaces it, so the finished workdir loads (it failed on shapes before)."""
    first = _config()
    first.model.embed_dim = 8
    run_record.write(str(tmp_path), first, pipeline.create_tokenizer(first))
    train.train_and_evaluate(_config(2), tmp_path)
    assert run_record.load(str(tmp_path)).model.embed_dim == _config().model.embed_dim
    assert load_trained(tmp_path).step == 2
    contradicting = _config(4)
    contradicting.model.embed_dim = 8
    with pytest.raises(ConfigError, match=r"^config model\.embed_dim=8: the checkpoints"):
        train.train_and_evaluate(contradicting, tmp_path)


def test_a_workdir_with_another_tools_config_json_is_refused(tmp_path: Path) -> None:
    """Training into an exported BERT folder replaced its config.json with the run's record."""
    config = _config(2)
    theirs = json.dumps({"architectures": ["BertModel"], "hidden_size": 768})
    (tmp_path / run_record.CONFIG_FILE).write_text(theirs)
    with pytest.raises(ConfigError, match=r"^--workdir=.*: holds a config.json that is not"):
        run_record.write(str(tmp_path), config, pipeline.create_tokenizer(config))
    assert (tmp_path / run_record.CONFIG_FILE).read_text() == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_record.CONFIG_FILE]
