"""Training: `python -m focusclip_jax.main --config=configs/pretrain.py --workdir=<dir>`.

Rerunning with the same workdir resumes. Evaluating a trained checkpoint is
`python -m focusclip_jax.evaluate --checkpoint=<workdir>`.
"""

import logging

import jax
from absl import app, flags
from ml_collections import config_flags

from focusclip_jax import train
from focusclip_jax.evaluators import table
from input_pipeline import cli

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
flags.DEFINE_bool(
    "takeover_lock",
    False,
    "Take the workdir's lock from a training on another host that is no longer running.",
)
flags.mark_flags_as_required(["config", "workdir"])


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
    results = train.train_and_evaluate(
        FLAGS.config, FLAGS.workdir, takeover_lock=FLAGS.takeover_lock
    )
    if results and jax.process_index() == 0:
        print("\nEvaluation results\n" + table.results_table(results))


if __name__ == "__main__":
    cli.run(main)
