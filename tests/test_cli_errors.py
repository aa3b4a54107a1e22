"""Every command-line tool fails on a user's mistake like `main` does: one line naming the file,
flag or config key, exit status 2, no traceback, nothing written (`input_pipeline.cli.run`).

The hand-written cases (tests/test_bad_inputs.py generates the rest), run with each tool's real
main in one process (tests/bad_flags.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    (root / "empty.safetensors").write_bytes(b"")
    (root / "labels.csv").write_text("running\ncooking\n")
    (root / "results.csv").write_text("subject,score\n1,0.5\n")
    joints = {"joints": [[1, 1]] * 16, "joints_vis": [1] * 16}
    (root / "mpii_train.json").write_text(json.dumps([{"image": 123, **joints}]))
    (root / "described.json").write_text(json.dumps([{"image": "x.jpg", "description": "A."}]))
    images = [{"id": 7, "file_name": None}]
    keypoints = {"images": images, "annotations": [{"id": 1, "image_id": 7, "keypoints": []}]}
    (root / "person_keypoints_train2017.json").write_text(json.dumps(keypoints))
    (root / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    return root


PREDICT = ["--checkpoint={r}", "--images={r}"]
TINY = ["--config=tests/tiny.py", "--workdir={r}/w"]
CASES = [
    ("focusclip_jax.main", ["--config=configs/nope.py", "--workdir={r}/w"],
     "--config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    ("focusclip_jax.main", [*TINY, "--config.model.nope=3"],
     "--config.model.nope: no such config key"),
    ("focusclip_jax.main", ["--config=configs/pretrain.py:nope", "--workdir={r}/w"],
     "unknown config variant 'nope'"),
    ("focusclip_jax.main", [*TINY, "--config.init.image=nope:{r}/a_file"],
     "config init.image='nope:{r}/a_file': expected '<format>:<path>'"),
    ("focusclip_jax.main", [*TINY, "--config.init.image=timm_vit:{r}/empty.safetensors"],
     "--config.init.image={r}/empty.safetensors: an empty file"),
    pytest.param("focusclip_jax.main",
                 [*TINY, "--config.init.image=timm_vit:{r}/garbage.safetensors"],
                 "{r}/garbage.safetensors: not a readable safetensors file"),
    ("focusclip_jax.evaluate", ["--checkpoint={r}", "--config.data_root={r}/none"],
     "--config.data_root='{r}/none': no such folder"),
    ("focusclip_jax.predict", [*PREDICT, "--labels_file={r}/none.txt"],
     "flag --labels_file={r}/none.txt: no such file"),
    ("focusclip_jax.predict", [*PREDICT, "--labels=,"], "flag --labels=['', '']: an empty label"),
    ("focusclip_jax.predict", [*PREDICT, "--labels=a", "--template=a photo"],
     "flag --template=a photo: must hold {{}} exactly once"),
    ("focusclip_jax.predict", [*PREDICT, "--labels=a", "--template={{}} and {{}}"],
     "flag --template={{}} and {{}}: must hold {{}} exactly once"),
    ("focusclip_jax.predict", [*PREDICT, "--labels=a", "--top_k=0"],
     "flag --top_k=0: must be an integer >= 1"),
    ("focusclip_jax.predict", [*PREDICT, "--labels=a", "--batch_size=0"],
     "flag --batch_size=0: must be an integer >= 1"),
    ("focusclip_jax.predict", ["--checkpoint={r}/none", "--images={r}", "--labels=a"],
     "flag --checkpoint={r}/none: no such folder"),
    ("focusclip_jax.predict", [*PREDICT, "--labels_file={r}/labels.csv", "--out={r}/labels.csv"],
     "--out={r}/labels.csv: is --labels_file={r}/labels.csv, which this run reads"),
    ("focusclip_jax.predict", [*PREDICT, "--labels=a", "--out={r}/results.csv"],
     "--out={r}/results.csv: exists and is not a predictions file"),
    ("input_pipeline.prepare.mpii",
     ["--images={r}", "--annotations={r}/bad.json", "--descriptions={r}", "--out={r}/o"],
     "{r}/bad.json: not readable JSON"),
    ("input_pipeline.prepare.mpii",
     ["--images={r}/a_file", "--annotations={r}/bad.json", "--descriptions={r}", "--out={r}/o"],
     "flag --images={r}/a_file: is a file, expected a folder"),
    ("input_pipeline.prepare.mpii",
     ["--images={r}", "--annotations={r}/mpii_train.json", "--descriptions={r}/described.json",
      "--out={r}/o"],
     "{r}/mpii_train.json [record 0]: 'image' must be a file name, got 123"),
    ("input_pipeline.prepare.coco",
     ["--images={r}", "--annotations={r}/person_keypoints_train2017.json",
      "--captions={r}/captions_train2017.json", "--out={r}/o"],
     "{r}/person_keypoints_train2017.json: images[0] (id 7).file_name=None: expected a file name"),
    ("input_pipeline.prepare.coco",
     ["--images={r}", "--annotations={r}/captions_train2017.json",
      "--captions={r}/captions_train2017.json", "--out={r}/o"],
     "--annotations={r}/captions_train2017.json: holds COCO captions"),
    ("input_pipeline.prepare.visualize",
     ["--annotations={r}/bad.json", "--images={r}", "--out={r}/v"],
     "{r}/bad.json: not readable JSON"),
    ("input_pipeline.prepare.describe_with_llm",
     ["--annotations={r}/bad.json", "--out={r}/d.json", "--model=m",
      "--base_url=http://127.0.0.1:9/v1", "--api_key_env=NO_SUCH_KEY_VARIABLE"],
     "flag --api_key_env=NO_SUCH_KEY_VARIABLE: the environment variable NO_SUCH_KEY_VARIABLE"),
    ("synthpose.scenes", ["--export={r}/a_file/x", "--num_images=2"], "{r}/a_file"),
    ("focusclip_jax.export", ["--checkpoint={r}", "--tower=nose", "--out={r}/x"],
     "flag --tower=nose: value should be one of"),
    ("focusclip_jax.export", ["--checkpoint={r}/none", "--tower=text_tower", "--out={r}/x"],
     "flag --checkpoint={r}/none: no such folder"),
    ("focusclip_jax.aot", ["--config=tests/tiny.py", "--topology=v5e-8", "--batch_tolerance=1.5"],
     "flag --batch_tolerance=1.5: must be a finite number > 0 and < 1"),
    ("focusclip_jax.aot", ["--config=tests/tiny.py", "--topology=v5e-8", "--batch_tolerance=0"],
     "flag --batch_tolerance=0.0: must be a finite number > 0 and < 1"),
    ("bench.train_step", ["--config=configs/bench.py:tiny", "--nope=1"],
     "Unknown command line flag 'nope'"),
    ("focusclip_jax.plot", ["--workdir={r}/none"], "--workdir={r}/none: no such folder"),
    ("focusclip_jax.evaluate", ["--checkpoint={r}", "--config.data_root={r}/a_file"],
     "--config.data_root='{r}/a_file': a file, not a folder"),
    ("focusclip_jax.predict", [*PREDICT, "--labels=a,b,a"], "--labels: 'a' given more than once"),
    ("focusclip_jax.export", ["--checkpoint={r}", "--tower=text_tower", "--out={r}/t.safetensors"],
     "--out={r}/t.safetensors: this export is a folder"),
    ("focusclip_jax.plot", ["--workdir={r}"], "{r}/metrics.jsonl: not found"),
]  # fmt: skip


def _values(case: Any) -> tuple[str, list[str], str]:
    return tuple(case.values) if hasattr(case, "values") else case


@pytest.fixture(scope="module")
def results(inputs: Path) -> list[dict[str, Any]]:
    """Every case run once, in one process, with each tool's real main (tests/bad_flags.py)."""
    cases = [(tool, [a.format(r=inputs) for a in args]) for tool, args, _ in map(_values, CASES)]
    done = subprocess.run(
        [sys.executable, "-m", "tests.bad_flags", str(inputs), "--explicit", json.dumps(cases)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def _params() -> list[Any]:
    params = []
    for index, case in enumerate(CASES):
        tool, _, message = _values(case)
        marks = case.marks if hasattr(case, "marks") else ()
        params.append(pytest.param(index, message, id=f"{tool}-{index}", marks=marks))
    return params


@pytest.mark.parametrize(("index", "message"), _params())
def test_a_mistake_gives_one_line_and_status_2(results, inputs, index, message) -> None:
    result = results[index]
    stderr = result["stderr"].strip()
    assert result["status"] == 2, (result["status"], stderr[-3000:])
    last = stderr.splitlines()[-1]
    assert last.startswith("error: ") and message.format(r=inputs) in last, stderr[-3000:]
    assert "Traceback" not in stderr
    assert not result["wrote"], result["wrote"]


def test_help_keeps_each_usage_line() -> None:
    """A backslash at a line end of a non-raw docstring joined the usage lines of --help."""
    done = subprocess.run(
        [sys.executable, "-m", "focusclip_jax.predict", "--help"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    usage = [line for line in done.stdout.splitlines() if "--labels=" in line]
    assert usage and usage[0].rstrip().endswith("\\"), done.stdout[:2000]


def test_a_failed_whole_write_names_the_destination_and_leaves_nothing(tmp_path: Path) -> None:
    """The error names the file the user gave, not the hidden temporary beside it; a temporary
    written before the rename failed is removed."""
    from input_pipeline import cli

    missing = tmp_path / "no_such_folder" / "p.csv"
    with pytest.raises(FileNotFoundError) as error:
        cli.write_whole(missing, "a,b\n")
    assert cli._one_line(error.value) == f"{missing}: No such file or directory"
    folder = tmp_path / "p.csv"  # a folder where the file should go: the rename fails
    (folder / "kept").mkdir(parents=True)
    with pytest.raises(OSError) as error:
        cli.write_whole(folder, b"a,b\n")
    assert error.value.filename == str(folder) and ".tmp" not in cli._one_line(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # no .p.csv.tmp
    assert [p.name for p in folder.iterdir()] == ["kept"]
