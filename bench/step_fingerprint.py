"""A fingerprint of the training step a config compiles: did a refactor change the program?

    python -m bench.step_fingerprint --config=configs/bench.py:small
    python -m bench.step_fingerprint --config=configs/pretrain.py:siglip

Prints the SHA-256 of the lowered step (StableHLO before XLA's passes) with source locations
stripped, so moving or renaming Python code leaves it alone while any change to what the step
computes, its shapes or its shardings changes it. Nothing is compiled: seconds even for the
paper's model. Run it at two commits on one config; equal hashes mean the compiled programs, and
so their memory and speed on every target, are the same.
"""

import hashlib
import re

import jax
import ml_collections
from absl import app, flags

from focusclip_jax import aot, config_checks, train
from input_pipeline import cli

LOCATIONS = re.compile(r"loc\([^\n]*?\)|#loc[^\n]*")


def fingerprint(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> str:
    """The step's lowered text without source locations, hashed."""
    vocab, _ = aot.vocab_size(config)
    trainer = train.Trainer(config, mesh, vocab_size=vocab)
    lowered = trainer.step.lower(trainer.abstract_state, aot.abstract_batch(config, mesh))
    return hashlib.sha256(LOCATIONS.sub("", lowered.as_text()).encode()).hexdigest()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.FLAGS.config
    print(fingerprint(config, config_checks.validated_mesh(config)))


def define_flags() -> None:
    cli.define_config_file("config", None, "Config file (variants after a colon).")
    flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
    define_flags()
    cli.run(main)
