"""Export one tower of a trained checkpoint for use elsewhere.

    python -m focusclip_jax.export --checkpoint=<workdir or step dir> --tower=image_tower \\
        --out=vit.safetensors
    python -m focusclip_jax.export --checkpoint=<workdir> --tower=text_tower --out=bert_dir/

`image_tower` / `focus_tower`: a timm ViT `.safetensors` file; `text_tower` (BERT): a Hugging Face
BERT directory (`weights.export_tower`). The model comes from the workdir's record
(`run_record`); `--config` describes it only for workdirs trained before runs were recorded.
"""

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from focusclip_jax import run_record, sharding, weights
from focusclip_jax.setup import load_trained
from input_pipeline import cli, errors

TOWERS = ("image_tower", "focus_tower", "text_tower")
FLAGS = flags.FLAGS


def export(
    config: ml_collections.ConfigDict | None,
    checkpoint: str,
    tower: str,
    out: str,
    overridden: Sequence[str] = (),
) -> int:
    """Writes `tower` of the checkpoint's parameters to `out`; returns the checkpoint's step."""
    if not Path(out).absolute().parent.is_dir():
        raise errors.InputDataError(f"--out={out}: its folder does not exist")
    mesh = sharding.create_mesh({"data": 1}, devices=jax.devices()[:1])
    trained = load_trained(checkpoint, config, overridden, mesh=mesh, batch_size=1)
    try:
        weights.export_tower(trained.params, tower, out)
    except ValueError as error:  # a tower the model does not have
        raise errors.InputDataError(f"--tower={tower}: {error}") from None
    return trained.step


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Only for a workdir without config.json: the config of its model."
    )
    flags.DEFINE_string("checkpoint", None, "Training workdir, its checkpoints/ or a step folder.")
    flags.DEFINE_enum("tower", None, list(TOWERS), "Which tower to export.")
    flags.DEFINE_string("out", None, "A .safetensors file (ViT) or a folder (BERT).")
    flags.mark_flags_as_required(["checkpoint", "tower", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.WARNING)
    overridden = run_record.command_line_overrides(sys.argv)
    step = export(FLAGS.config, FLAGS.checkpoint, FLAGS.tower, FLAGS.out, overridden)
    print(f"wrote {FLAGS.tower} of step {step} to {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
