"""Every command-line tool fails on a user's mistake like `main` does: one line naming the file,
flag or config key, exit status 2, no traceback (`input_pipeline.cli.run`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_COMPILE_FLAGS, REPO

ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "a_file").write_text("x")
    (root / "bad.json").write_text('{"image": ')  # truncated
    captions = {"annotations": [{"id": 1, "image_id": 1, "caption": "A person runs."}]}
    (root / "captions_train2017.json").write_text(json.dumps(captions))
    return root


CASES = [
    ("focusclip_jax.main", ["--config=configs/nope.py", "--workdir={r}/w"],
     "--config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    ("focusclip_jax.main", ["--config=tests/tiny.py", "--config.model.nope=3", "--workdir={r}/w"],
     "--config.model.nope: no such config key"),
    ("focusclip_jax.main", ["--config=configs/pretrain.py:nope", "--workdir={r}/w"],
     "unknown config variant 'nope'"),
    ("focusclip_jax.predict", ["--checkpoint={r}", "--images={r}", "--labels_file={r}/none.txt"],
     "{r}/none.txt: No such file or directory"),
    ("focusclip_jax.predict", ["--checkpoint={r}", "--images={r}", "--labels=,"],
     "--labels: no labels"),
    ("input_pipeline.prepare.mpii",
     ["--images={r}", "--annotations={r}/bad.json", "--descriptions={r}", "--out={r}/o"],
     "{r}/bad.json: not readable JSON"),
    ("input_pipeline.prepare.mpii",
     ["--images={r}/a_file", "--annotations={r}/bad.json", "--descriptions={r}", "--out={r}/o"],
     "--images={r}/a_file: not a folder"),
    ("input_pipeline.prepare.coco",
     ["--images={r}", "--annotations={r}/captions_train2017.json",
      "--captions={r}/captions_train2017.json", "--out={r}/o"],
     "--annotations={r}/captions_train2017.json: holds COCO captions"),
    ("input_pipeline.prepare.visualize",
     ["--annotations={r}/bad.json", "--images={r}", "--out={r}/v"],
     "{r}/bad.json: not readable JSON"),
    ("synthpose.scenes", ["--export={r}/a_file/x", "--num_images=2"],
     "{r}/a_file/x"),
    ("focusclip_jax.export", ["--checkpoint={r}", "--tower=nose", "--out={r}/x"],
     "flag --tower=nose: value should be one of"),
    ("focusclip_jax.export", ["--checkpoint={r}/none", "--tower=text_tower", "--out={r}/x"],
     "expected a training workdir"),
    ("bench.train_step", ["--config=configs/bench.py:tiny", "--nope=1"],
     "Unknown command line flag 'nope'"),
    ("focusclip_jax.plot", ["--workdir={r}/none"], "--workdir={r}/none: no such folder"),
    ("focusclip_jax.plot", ["--workdir={r}"], "{r}/metrics.jsonl: not found"),
]  # fmt: skip


@pytest.mark.parametrize(("module", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_mistake_gives_one_line_and_status_2(inputs, module, args, message) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, *(a.format(r=inputs) for a in args)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message.format(r=inputs) in last, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_help_keeps_each_usage_line() -> None:
    """A backslash at a line end of a non-raw docstring joined the usage lines of --help."""
    done = subprocess.run(
        [sys.executable, "-m", "focusclip_jax.predict", "--help"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    usage = [line for line in done.stdout.splitlines() if "--labels=" in line]
    assert usage and usage[0].rstrip().endswith("\\"), done.stdout[:2000]
