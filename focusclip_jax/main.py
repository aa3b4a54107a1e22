"""Training: `python -m focusclip_jax.main --config=configs/pretrain.py --workdir=<dir>`.

Rerunning with the same workdir resumes. At its end the run draws its curves (`plot`) and says
where its results are and the commands that evaluate, use, export and replot it.
"""

import logging

import jax
from absl import app, flags

from focusclip_jax import plot, run_record, train
from focusclip_jax.evaluators import table
from input_pipeline import cli, writer_lock

FLAGS = flags.FLAGS
cli.define_config_file("config", None, "Config file, e.g. configs/pretrain.py[:variant].")
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
writer_lock.define_takeover_flag()
flags.mark_flags_as_required(["config", "workdir"])
cli.check_flags(
    workdir=cli.Path("new_folder"),
    coordinator_address=cli.Text(cli.address_problem),
    num_processes=cli.Number(integer=True, at_least=1),
    process_id=cli.Number(integer=True, at_least=0),
)


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
    if jax.process_index() == 0:
        if results:
            print("\nEvaluation results\n" + table.results_table(results))
        print(where_and_next(str(run_record.workdir_path(FLAGS.workdir)), _plots(FLAGS.workdir)))


def _plots(workdir: str) -> bool:
    """Draws the run's curves; a failure to draw them must not fail the finished training."""
    try:
        plot.write_plots(workdir)
    except Exception as error:  # the checkpoints and metrics are saved: a warning is enough
        logging.warning("Plots not drawn (%s: %s)", type(error).__name__, error)
        return False
    return True


def where_and_next(workdir: str, plotted: bool) -> str:
    """Where the run's results are and the commands that use them (printed at its end)."""
    plots = "curves of the losses, alpha, temperature, lr and evaluations (PNG)"
    module = "python -m focusclip_jax."
    return "\n".join(
        (
            f"\nResults in {workdir}",
            "  metrics.jsonl    every logged step and evaluation, one JSON object a line",
            f"  plots/           {plots if plotted else 'not drawn: see the warning above'}",
            f"  tb/              TensorBoard: python -m tensorboard.main --logdir={workdir}/tb",
            "  checkpoints/     the trained state; rerunning the same command resumes",
            "  config.json      the run's full config; parameters.txt: every parameter's shape",
            "Next",
            f"  {module}evaluate --checkpoint={workdir} --config.data_root=<eval data>",
            f"  {module}predict --checkpoint={workdir} --images=<files> --labels=a,b,c",
            f"  {module}export --checkpoint={workdir} --tower=image_tower --out=<file>.safetensors",
            f"  {module}plot --workdir={workdir}",
        )
    )


if __name__ == "__main__":
    cli.run(main)
