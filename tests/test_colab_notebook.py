"""launch/colab_demo.ipynb runs headless on the tiny config: its training cell runs `main`, then it
shows pictures and prints zero-shot predictions whose probabilities sum to 1.

The workdir is handed over holding a checkpoint already at the requested step (the initial
parameters, saved here on one device), so `main` restores it and has nothing left to train: the
notebook's whole path runs without compiling a training step (`main`'s training is tested in
test_checkpoint_and_main.py).
"""

import re
from pathlib import Path

import jax.numpy as jnp
import nbformat
import pytest
from nbclient import NotebookClient

from focusclip_jax import run_record, sharding, train
from focusclip_jax.checkpoint import Checkpointer
from input_pipeline import pipeline
from tests.conftest import FAST_COMPILE_FLAGS, REPO
from tests.tiny import tiny_config

NOTEBOOK = REPO / "launch" / "colab_demo.ipynb"
LABELS = ["standing", "sitting", "raising both arms"]
STEPS = 1


def _save_trained_workdir(workdir: Path) -> None:
    """A checkpoint of the tiny config at step STEPS, as a finished `main` run leaves it."""
    config = tiny_config()
    config.mesh.data = 1  # one device: the notebook's kernel has one
    config.train.num_steps = STEPS
    tokenizer = pipeline.create_tokenizer(config, workdir=str(workdir))
    run_record.write(str(workdir), config, tokenizer)
    trainer = train.Trainer(
        config, sharding.create_mesh(config.mesh), vocab_size=tokenizer.vocab_size
    )
    state = trainer.init_state()
    state = state.replace(step=jnp.asarray(STEPS, state.step.dtype))
    checkpointer = Checkpointer(workdir, config.checkpoint)
    checkpointer.save(STEPS, state, pipeline.train_iterator(config, tokenizer), force=True)
    checkpointer.close()


def _outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [output for cell in notebook.cells for output in cell.get("outputs", [])]


def test_notebook_trains_visualises_and_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert "google.colab" in "".join(c.source for c in notebook.cells)  # install guarded
    workdir = tmp_path / "run"
    _save_trained_workdir(workdir)
    monkeypatch.setenv("FOCUSCLIP_CONFIG", "tests/tiny.py")
    monkeypatch.setenv("FOCUSCLIP_STEPS", str(STEPS))
    monkeypatch.setenv("FOCUSCLIP_WORKDIR", str(workdir))
    # Training skips its own evaluation; the notebook classifies the tiny config's held-out set.
    monkeypatch.setenv("FOCUSCLIP_OVERRIDES", "--config.evals.zero_shot.datasets=()")
    monkeypatch.setenv("FOCUSCLIP_HELD_OUT", tiny_config().evals.zero_shot.datasets[0])
    monkeypatch.setenv("FOCUSCLIP_LABELS", ", ".join(LABELS))
    monkeypatch.setenv("FOCUSCLIP_TEMPLATE", "a photo of a person {}.")
    monkeypatch.setenv("FOCUSCLIP_NUM_IMAGES", "4")
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE_FLAGS)  # one CPU device, as in Colab
    # predict() and the similarity matrix compile the same encoders: the second is a cache hit.
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # The kernel is the venv's own python (jupyter_client maps the native "python3" spec to it).
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()

    outputs = _outputs(notebook)
    assert not [o for o in outputs if o["output_type"] == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == 3  # examples with heatmaps, captioned predictions, similarity matrix
    text = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert f"--workdir={workdir} --config.train.num_steps={STEPS}" in text  # main ran
    assert f"restored step {STEPS} from {workdir}" in text
    predictions = re.findall(r"^(\d+_\w+\.png): (.*)$", text, re.M)
    assert len(predictions) == 4
    for _, line in predictions:
        probabilities = dict(re.findall(r"([a-z ]+?) (\d+\.\d+)%(?:, |$)", line))
        assert sorted(probabilities) == sorted(LABELS), line
        total = sum(float(p) for p in probabilities.values())
        assert abs(total - 100) <= 0.005 * len(LABELS), line  # each printed to 0.01%
    assert len(list((workdir / "held_out_images").glob("*.png"))) == 4
