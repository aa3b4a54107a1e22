"""What an evaluator is to the training loop and to eval-only runs.

Each entry `config.evals.<name>` is `{type, every_steps, ...}`; `type` picks the class from the
registry in `evaluators/__init__.py`, which is built with the entry and the model's setup, and
`run(params)` returns a `Results` (big_vision's `evaluators/common.py`, with results returned
rather than yielded: eval-only runs write tables, figures and notes from them).
"""

import abc
import dataclasses
from typing import Any

import ml_collections
import numpy as np

from input_pipeline.pipeline import Tokenizer


@dataclasses.dataclass(frozen=True)
class Results:
    """What one run of an evaluator found."""

    metrics: dict[str, float]  # "<dataset>/<metric>": logged during training, tabled after
    datasets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per dataset
    confusions: dict[str, tuple[np.ndarray, tuple[str, ...]]] = dataclasses.field(
        default_factory=dict
    )  # per dataset: the confusion matrix and its class names (eval-only runs draw them)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # dataset → why not run

    def __or__(self, other: "Results") -> "Results":
        return Results(
            self.metrics | other.metrics,
            self.datasets | other.datasets,
            self.confusions | other.confusions,
            self.skipped | other.skipped,
        )


class Evaluator(abc.ABC):
    """Built from its config entry; `every_steps` 0 runs it at the end of training only."""

    def __init__(
        self,
        name: str,
        options: ml_collections.ConfigDict,
        *,
        config: ml_collections.ConfigDict,
        setup: Any,  # train.ModelSetup: the model's graph, parameter shardings and mesh
        tokenizer: Tokenizer,
    ) -> None:
        self.name = name
        self.options = options
        self.every_steps = options.every_steps
        self.config, self.setup, self.tokenizer = config, setup, tokenizer

    @classmethod
    def check(cls, name: str, options: ml_collections.ConfigDict) -> None:
        """Refuse a wrong entry before anything runs (ValueError naming the key); by default its
        datasets, if it has any, may be anything."""
        del name, options

    @staticmethod
    def check_datasets(name: str, options: ml_collections.ConfigDict, known: Any) -> None:
        unknown = [d for d in options.datasets if d not in known]
        if unknown:
            raise ValueError(
                f"config evals.{name}.datasets: {unknown[0]!r} is not one of {sorted(known)}"
            )

    def due(self, step: int, last_step: int) -> bool:
        """Whether training runs this evaluator after `step`."""
        return bool(self.every_steps and step % self.every_steps == 0) or step == last_step

    @abc.abstractmethod
    def run(self, params: Any) -> Results:
        """Evaluate the parameters (a pure dict, sharded as the setup shards them)."""
