"""Evaluate a trained checkpoint: the paper's zero-shot table and every other configured evaluation.

    python -m focusclip_jax.evaluate --checkpoint=<workdir or step dir> \\
        [--config=configs/eval_zeroshot.py[:variant]] [--config.data_root=<dir>] [--out=<dir>]

The model, tokenizer, loss and training data come from the checkpoint's workdir (`load_trained`);
the config gives the evaluations (`config.evals`) and where their data is. Outputs, under `--out`
(default `<workdir>/zero_shot/step_<N>`): results.json, results.md (the paper's table with its
numbers alongside, then the other evaluations) and one labelled confusion-matrix PNG per
zero-shot dataset. An evaluation that evaluates nothing (no dataset found) is an error.
"""

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import app, flags

from focusclip_jax import evaluators, run_record
from focusclip_jax.evaluators import confusion, table
from focusclip_jax.setup import load_trained
from input_pipeline import cli
from input_pipeline.errors import ConfigError, InputDataError, config_errors


class NothingEvaluatedError(InputDataError):
    """Every configured dataset was skipped: the run would write an empty table."""


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    out: str | None = None,
    overridden: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every configured evaluator on the checkpoint; write and print the table.
    `overridden`: the config keys the command line set (they may not contradict the model)."""
    check_config(config)
    trained = load_trained(checkpoint, config, overridden)
    config = trained.config
    found = evaluators.run_due(
        evaluators.create(config, trained.setup, trained.tokenizer),
        trained.params,
        trained.step,
        trained.step,
    )
    if not found.metrics:
        skipped = "; ".join(f"{name}: {why}" for name, why in found.skipped.items())
        raise NothingEvaluatedError(
            f"nothing was evaluated ({skipped or 'config evals is empty'}); point "
            "--config.data_root at the evaluation datasets (docs/evaluation.md)"
        )
    where = Path(out) if out else _default_out(checkpoint, trained.step)
    report = table.report(found.metrics)
    summary = {
        "checkpoint": str(checkpoint),
        "step": trained.step,
        "evals": config.evals.to_dict(),  # what was read, and how (splits, templates, ...)
        "results": found.metrics,
        "datasets": found.datasets,
        "skipped": found.skipped,
        "table": report,
    }
    text = table.markdown(report) + _others(found.metrics) + _notes(found.datasets, found.skipped)
    if jax.process_index() == 0:
        for name, (matrix, class_names) in found.confusions.items():
            confusion.save_png(matrix, class_names, where / f"{name}.png", title=name)
        _write_text(where / "results.json", json.dumps(summary, indent=1))
        _write_text(where / "results.md", text + "\n")
        print(f"\nResults of step {trained.step} ({where})\n{text}")
    return summary


def check_config(config: ml_collections.ConfigDict) -> None:
    """The evaluation's own keys, before the checkpoint is loaded: every `config.evals` entry
    (`evaluators.check_types`) and `data_root`, which must be a folder (the training keys come
    from the checkpoint's record)."""
    if "data_root" in config:
        root = config.data_root
        if not isinstance(root, str) or not root or not Path(root).is_dir():
            is_file = bool(root) and Path(str(root)).is_file()
            problem = "a file, not a folder" if is_file else "no such folder"
            raise ConfigError(
                f"--config.data_root={root!r}: {problem}; point it at the folder of the "
                "evaluation datasets (docs/evaluation.md)"
            )
    with config_errors():
        evaluators.check_types(config)


def _default_out(checkpoint: str, step: int) -> Path:
    return Path(str(run_record.workdir_of(checkpoint))) / "zero_shot" / f"step_{step}"


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cli.write_whole(path, text)


def _others(metrics: dict[str, float]) -> str:
    """The metrics outside the paper's table (retrieval, linear probes, ...), as their own."""
    in_table = {row.dataset for row in table.ROWS}
    others = {
        key: value
        for key, value in metrics.items()
        if key.split("/")[0] not in in_table or "linear_probe" in key
    }
    return f"\n\nOther evaluations\n{table.results_table(others)}" if others else ""


def _notes(datasets: dict[str, dict[str, Any]], skipped: dict[str, str]) -> str:
    lines = [
        f"{name}: {info['unreadable']} unreadable images dropped ({info['images']} evaluated)."
        for name, info in datasets.items()
        if info.get("unreadable")
    ]
    lines += [f"{name}: not evaluated: {message}" for name, message in skipped.items()]
    return "".join(f"\n{line}" for line in lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined only when run as a program: importing this module must not claim flag names."""
    cli.define_config_file(
        "config",
        cli.project_path("configs/eval_zeroshot.py"),
        "The evaluations (config.evals) and their data.",
    )
    flags.DEFINE_string("checkpoint", None, "Training workdir, its checkpoints/ or a step folder.")
    flags.DEFINE_string("out", None, "Where results go (default <workdir>/zero_shot/step_<N>).")
    flags.mark_flags_as_required(["checkpoint"])
    cli.check_flags(checkpoint=cli.Path("folder"), out=cli.Path("new_folder"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.info("JAX %s, devices: %s", jax.__version__, jax.devices())
    overridden = run_record.command_line_overrides(sys.argv)
    evaluate_checkpoint(FLAGS.config, FLAGS.checkpoint, FLAGS.out, overridden)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
