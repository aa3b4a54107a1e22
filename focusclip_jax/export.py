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

import jax
from absl import app, flags
from ml_collections import config_flags

from focusclip_jax import run_record, sharding, train, weights
from focusclip_jax.evaluators import checkpoint_eval
from input_pipeline import files, pipeline

TOWERS = ("image_tower", "focus_tower", "text_tower")
FLAGS = flags.FLAGS


def export(config, checkpoint: str, tower: str, out: str, overridden=()) -> int:
    """Writes `tower` of the checkpoint's parameters to `out`; returns the checkpoint's step."""
    config = checkpoint_eval.checkpoint_config(config, checkpoint, overridden)
    mesh = sharding.create_mesh({"data": 1}, devices=jax.devices()[:1])
    tokenizer = pipeline.create_tokenizer(config, fit=False)
    setup = train.ModelSetup.create(config, mesh, vocab_size=tokenizer.vocab_size)
    params, step = checkpoint_eval.restore_params(checkpoint, setup)
    try:
        weights.export_tower(params, tower, out)
    except ValueError as error:  # a tower the model does not have
        raise files.InputDataError(f"--tower={tower}: {error}") from None
    return step


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", "configs/pretrain.py", "The model's config, for workdirs without a record."
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
    files.run(main)
