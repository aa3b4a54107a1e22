"""Evaluators by `type`, built from the entries of `config.evals`.

To add one: a file with an `Evaluator` subclass (`base.py`) and a line in `EVALUATORS`; then
`config.evals.<name> = {"type": <type>, "every_steps": N, ...its own keys}`.
"""

import logging
import time
from typing import Any

import ml_collections

from focusclip_jax.evaluators.base import Evaluator, Results
from focusclip_jax.evaluators.linear_probe import LinearProbeEvaluator
from focusclip_jax.evaluators.retrieval import RetrievalEvaluator
from focusclip_jax.evaluators.zero_shot import ZeroShotEvaluator
from input_pipeline.tokenizers import Tokenizer

__all__ = ["EVALUATORS", "Evaluator", "Results", "create", "run_due"]

EVALUATORS: dict[str, type[Evaluator]] = {
    "zero_shot": ZeroShotEvaluator,
    "retrieval": RetrievalEvaluator,
    "linear_probe": LinearProbeEvaluator,
}


def check_types(config: ml_collections.ConfigDict) -> None:
    """Each `config.evals` entry names a registered type and passes its type's checks (its
    datasets registered, ...): ValueError naming the key if not."""
    for name, options in config.evals.items():
        kind = options.get("type")
        if kind not in EVALUATORS:
            raise ValueError(
                f"config evals.{name}.type={kind!r}: expected one of {sorted(EVALUATORS)}"
            )
        EVALUATORS[kind].check(name, options)


def create(config: ml_collections.ConfigDict, setup: Any, tokenizer: Tokenizer) -> list[Evaluator]:
    """One evaluator per `config.evals` entry, in the order of their names."""
    check_types(config)
    return [
        EVALUATORS[options.type](name, options, config=config, setup=setup, tokenizer=tokenizer)
        for name, options in sorted(config.evals.items())
    ]


def run_due(evaluators: list[Evaluator], params: Any, step: int, last_step: int) -> Results:
    """The evaluators due after `step`, their results merged; each one's start and duration are
    logged (a minute or more for the paper's datasets)."""
    results, reported_by = Results({}), {}
    for evaluator in evaluators:
        if evaluator.due(step, last_step):
            # An entry with no datasets is switched off: nothing to tell.
            told = bool(evaluator.options.get("datasets", True))
            if told:
                logging.info("Evaluation %s after step %d...", evaluator.name, step)
            start = time.perf_counter()
            found = evaluator.run(params)
            if told:
                logging.info(
                    "Evaluation %s done in %.1f s: %d results",
                    evaluator.name,
                    time.perf_counter() - start,
                    len(found.metrics),
                )
            for key in found.metrics:
                if key in reported_by:  # two entries reading the same dataset the same way
                    raise ValueError(
                        f"config evals.{reported_by[key]} and evals.{evaluator.name} both report "
                        f"{key}: give one of them other datasets"
                    )
                reported_by[key] = evaluator.name
            results |= found
    return results
