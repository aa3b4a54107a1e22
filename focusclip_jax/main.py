"""Entry point: `python -m focusclip_jax.main --config=configs/pretrain.py --workdir=<dir>`.

With `--config=configs/eval_zeroshot.py --config.checkpoint=<dir>` (a config with `mode="eval"`)
it evaluates a checkpoint instead of training; `--workdir` is then optional.
"""

import logging
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from focusclip_jax import run_record, train, weights
from focusclip_jax.evaluators import checkpoint_eval
from input_pipeline import files

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pretrain.py[:variant].")
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard events go here.")
flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run found in the environment (TPU VM pods, SLURM, Open MPI, or"
    " JAX_COORDINATOR_ADDRESS with the flags below).",
)
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for a cluster JAX can't detect."
)
flags.DEFINE_integer("num_processes", None, "Processes in the run (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
flags.mark_flags_as_required(["config"])


def initialize_distributed() -> None:
    """`jax.distributed.initialize` when asked: auto-detected, or from the explicit flags.

    Must run before anything touches a device. Explicit flags override what detection finds.
    """
    explicit = {
        "coordinator_address": FLAGS.coordinator_address,
        "num_processes": FLAGS.num_processes,
        "process_id": FLAGS.process_id,
    }
    if not FLAGS.distributed and all(v is None for v in explicit.values()):
        return
    jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    initialize_distributed()
    logging.info(
        "JAX %s on %d process(es), devices: %s", jax.__version__, jax.process_count(), jax.devices()
    )
    eval_only = FLAGS.config.get("mode") == "eval"
    if not eval_only and not FLAGS.workdir:
        raise app.UsageError("--workdir is required for training")
    try:
        if eval_only:
            overridden = run_record.command_line_overrides(sys.argv)
            checkpoint_eval.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, overridden)
            return
        results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (weights.WeightImportError, train.NonFiniteLossError) as error:
        files.fail(str(error))
    if results and jax.process_index() == 0:
        print("\nEvaluation results\n" + train.results_table(results))


if __name__ == "__main__":
    files.run(main)
