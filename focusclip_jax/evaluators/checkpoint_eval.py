"""Eval-only mode: restore a checkpoint's parameters and write the paper's zero-shot table.

`python -m focusclip_jax.main --config=configs/eval_zeroshot.py --config.checkpoint=<dir>
--config.data_root=<dir>` lands here. Outputs, under `--workdir` (default
`<checkpoint workdir>/zero_shot/step_<N>`): results.json, results.md and one confusion-matrix PNG
per dataset.
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict

from focusclip_jax import config_checks, evaluators, run_record, train, weights
from focusclip_jax.evaluators import confusion, table
from input_pipeline import pipeline
from input_pipeline.files import InputDataError


class CheckpointNotFoundError(InputDataError, FileNotFoundError):
    """The checkpoint path holds no orbax checkpoint of this project."""


def checkpoint_location(path: str | Path) -> tuple[Path, int]:
    """A training workdir, its checkpoints/ folder or one step folder → (checkpoints dir, step)."""
    path = Path(path).absolute()
    step = None
    if (path / "checkpoints").is_dir():
        directory = path / "checkpoints"
    elif path.name.isdigit() and (path / "state").is_dir():
        directory, step = path.parent, int(path.name)
    else:
        directory = path
    if step is None:
        steps = (
            [int(p.name) for p in directory.glob("*") if p.name.isdigit()] if path.is_dir() else []
        )
        if not steps:
            raise CheckpointNotFoundError(
                f"--config.checkpoint={path or '<unset>'}: expected a training workdir (with "
                "checkpoints/<step>/state), its checkpoints/ folder or one <step> folder"
            )
        step = max(steps)
    return directory, step


def restore_params(checkpoint: str | Path, setup: train.ModelSetup) -> tuple[Any, int]:
    """The parameters of the checkpoint's train state, sharded as `setup` shards them.

    Only `params` is read (a partial restore): the optimiser of the evaluating config need not be
    the one the checkpoint was trained with. The parameters must be the configured model's
    (checked as training checks them); given a workdir, a step that does not restore is named
    and the one before it used (a step folder given explicitly must restore).
    """
    directory, latest = checkpoint_location(checkpoint)
    explicit = Path(checkpoint).absolute().name.isdigit()
    item = {"params": setup.abstract_params}
    restore = ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,
    )
    handlers = {
        "state": ocp.PyTreeCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
    }
    manager = ocp.CheckpointManager(directory, item_handlers=handlers)
    steps = [latest] if explicit else sorted(manager.all_steps(), reverse=True)
    try:
        for step in steps:
            where = f"{directory}/{step}"
            saved = manager.item_metadata(step)["state"].tree["params"]
            weights.check_tree(flatten_dict(item["params"]), flatten_dict(saved), where)
            logging.info("Restoring parameters of step %d from %s", step, directory)
            try:
                restored = manager.restore(step, args=ocp.args.Composite(state=restore))
            except Exception as error:  # whatever the damage: the step before
                if explicit:
                    raise CheckpointNotFoundError(f"{where}: unreadable ({error})") from None
                logging.warning(
                    "Checkpoint %s is unreadable (%s); trying the one before", where, error
                )
                continue
            return restored.state["params"], step
    finally:
        manager.close()
    raise CheckpointNotFoundError(f"{directory}: no readable checkpoint")


def checkpoint_config(
    config: ml_collections.ConfigDict, checkpoint: str, overridden: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """`config` with the model, tokenizer and loss of the checkpoint's workdir when it recorded
    them (`run_record`); as given for a workdir from before records."""
    checkpoint_location(checkpoint)  # no checkpoint there: named before anything is built
    record = run_record.load(checkpoint)
    if record is None:
        logging.warning(
            "%s has no %s (trained before runs were recorded): the config given must describe "
            "its model",
            checkpoint,
            run_record.CONFIG_FILE,
        )
        return config
    return run_record.with_model_of(
        record, config, overridden, str(run_record.workdir_of(checkpoint))
    )


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str | None, overridden: Sequence[str] = ()
) -> dict[str, Any]:
    """Run every configured evaluator on the checkpoint; write and print the table.
    `overridden`: the config keys the command line set (they may not contradict the model)."""
    config = checkpoint_config(config, config.checkpoint, overridden)
    mesh = config_checks.validated_mesh(config, training=False)
    pipeline.check_input_files(config)
    tokenizer = pipeline.create_tokenizer(config, fit=False)
    setup = train.ModelSetup.create(config, mesh, vocab_size=tokenizer.vocab_size)
    params, step = restore_params(config.checkpoint, setup)
    out = Path(workdir or checkpoint_location(config.checkpoint)[0].parent / "zero_shot")
    if not workdir:
        out = out / f"step_{step}"
    found = evaluators.run_due(evaluators.create(config, setup, tokenizer), params, step, step)
    if jax.process_index() == 0:
        for name, (matrix, class_names) in found.confusions.items():
            confusion.save_png(matrix, class_names, out / f"{name}.png")
    report = table.report(found.metrics)
    summary = {
        "checkpoint": str(config.checkpoint),
        "step": step,
        "evals": config.evals.to_dict(),  # what was read, and how (splits, templates, ...)
        "results": found.metrics,
        "datasets": found.datasets,
        "skipped": found.skipped,
        "table": report,
    }
    text = table.markdown(report) + _others(found.metrics) + _notes(found.datasets, found.skipped)
    if jax.process_index() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(summary, indent=1))
        (out / "results.md").write_text(text + "\n")
        print(f"\nZero-shot results of step {step} ({out})\n{text}")
    return summary


def _others(metrics: dict[str, float]) -> str:
    """The metrics outside the paper's table (retrieval, linear probes, ...), as their own."""
    in_table = {row.dataset for row in table.ROWS}
    others = {
        key: value
        for key, value in metrics.items()
        if key.split("/")[0] not in in_table or "linear_probe" in key
    }
    return f"\n\nOther evaluations\n{train.results_table(others)}" if others else ""


def _notes(datasets: dict[str, dict[str, Any]], skipped: dict[str, str]) -> str:
    lines = [
        f"{name}: {info['unreadable']} unreadable images dropped ({info['images']} evaluated)."
        for name, info in datasets.items()
        if info["unreadable"]
    ]
    lines += [f"{name}: not evaluated: {message}" for name, message in skipped.items()]
    return "".join(f"\n{line}" for line in lines)
