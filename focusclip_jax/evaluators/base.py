"""What an evaluator is to the training loop and to eval-only runs.

Each entry `config.evals.<name>` is `{type, every_steps, ...}`; `type` picks the class from the
registry in `evaluators/__init__.py`, which is built with the entry and the model's setup, and
`run(params)` returns a `Results` (big_vision's `evaluators/common.py`, with results returned
rather than yielded: eval-only runs write tables, figures and notes from them).
"""

import abc
import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from focusclip_jax.setup import Encoder, ModelSetup
from input_pipeline.benchmarks.readers import DatasetNotFoundError
from input_pipeline.tokenizers import Tokenizer


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
        setup: ModelSetup,
        tokenizer: Tokenizer,
    ) -> None:
        self.name = name
        self.options = options
        self.every_steps = options.every_steps
        self.config, self.setup, self.tokenizer = config, setup, tokenizer
        self.skipped: dict[str, str] = {}  # dataset → why it was not loaded

    @functools.cached_property
    def encoder(self) -> Encoder:
        """Embeds the entry's images and texts in batches of its `batch_size`."""
        return Encoder(
            self.setup,
            self.tokenizer,
            batch_size=self.options.batch_size,
            max_len=self.config.model.text.max_len,
        )

    @classmethod
    def check(cls, name: str, options: ml_collections.ConfigDict) -> None:
        """Refuse a wrong entry before anything runs (ValueError naming the key): its batch size
        and schedule; a type with datasets or options of its own checks them too."""
        for key, least in (("batch_size", 1), ("every_steps", 0)):
            value = options.get(key, least)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(
                    f"config evals.{name}.{key}={value!r}: must be an integer >= {least}"
                )

    def load_datasets[Loaded](self, load: Callable[[str], Loaded]) -> list[Loaded]:
        """`load(dataset)` for each of the entry's datasets; those not on disk are skipped, named
        in one log line and in `skipped` (eval-only runs list why under the table)."""
        loaded = []
        for dataset in self.options.datasets:
            try:
                loaded.append(load(dataset))
            except DatasetNotFoundError as error:
                self.skipped[dataset] = str(error)
        if self.skipped:
            logging.warning(
                "evals.%s: %d of %d datasets not found, skipped: %s (eval-only runs say why)",
                self.name, len(self.skipped), len(self.options.datasets), ", ".join(self.skipped),
            )  # fmt: skip
        return loaded

    @classmethod
    def check_datasets(cls, name: str, options: ml_collections.ConfigDict, known: Any) -> None:
        Evaluator.check(name, options)
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
