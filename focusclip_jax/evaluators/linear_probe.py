"""Linear probes: multinomial logistic regression on frozen image embeddings.

`type="linear_probe"`: for each dataset of the entry, the images of `fit_split` are embedded and
a softmax classifier with an L2 penalty is fitted to them (full-batch L-BFGS, optax); the
penalty is chosen among `l2` on a validation split carved from the fitting images (a fifth,
drawn with a fixed seed: datasets list their images by class),
then refitted on all of them and scored on `score_split`: top-1 and mean per-class accuracy,
the protocol of CLIP's and human-centric CLIP papers' linear-probe tables, next to zero-shot.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from focusclip_jax.evaluators import confusion
from focusclip_jax.evaluators.base import Evaluator, Results
from focusclip_jax.evaluators.zero_shot import top_k_accuracy
from input_pipeline.benchmarks import readers, registry
from input_pipeline.errors import check_choice
from input_pipeline.tokenizers import Tokenizer

VALIDATION_FRACTION = 0.2  # of the fitting images, chosen with a fixed seed, pick the penalty


def _objective(params, features, labels, l2: float):
    logits = features @ params["w"] + params["b"]
    data = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return data + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_logistic(
    features: jax.Array, labels: jax.Array, l2: jax.Array, *, num_classes: int, steps: int = 300
) -> dict[str, jax.Array]:
    """Weights `w` [D, C] and bias `b` [C] minimising mean cross-entropy + l2/2 ||w||²."""
    params = {
        "w": jnp.zeros((features.shape[1], num_classes), jnp.float32),
        "b": jnp.zeros((num_classes,), jnp.float32),
    }
    loss = functools.partial(_objective, features=features, labels=labels, l2=l2)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), length=steps)
    return params


def probe(
    fit_features: np.ndarray,
    fit_labels: np.ndarray,
    score_features: np.ndarray,
    score_labels: np.ndarray,
    num_classes: int,
    penalties: Sequence[float],
) -> dict[str, float]:
    """The penalty with the best validation accuracy (ties: the larger one), refitted on all the
    fitting data; its top-1 and mean per-class accuracy on the scored data."""
    if len(fit_labels) < 2:
        raise ValueError(f"a linear probe needs at least 2 fitting images, got {len(fit_labels)}")
    held = np.zeros(len(fit_labels), bool)
    count = max(1, int(VALIDATION_FRACTION * len(held)))
    held[np.random.default_rng(0).permutation(len(held))[:count]] = True
    fit = functools.partial(fit_logistic, num_classes=num_classes)
    chosen, best = penalties[0], -1.0
    for l2 in sorted(penalties, reverse=True):
        params = fit(fit_features[~held], fit_labels[~held], jnp.float32(l2))
        scores = np.asarray(fit_features[held] @ params["w"] + params["b"])
        accuracy = top_k_accuracy(scores, fit_labels[held], 1)
        if accuracy > best:
            chosen, best = l2, accuracy
    params = fit(fit_features, fit_labels, jnp.float32(chosen))
    scores = np.asarray(score_features @ params["w"] + params["b"])
    matrix = confusion.confusion_matrix(scores, score_labels, num_classes)
    return {
        "linear_probe_top1": top_k_accuracy(scores, score_labels, 1),
        "linear_probe_mean_per_class_top1": confusion.mean_per_class_accuracy(matrix),
        "linear_probe_l2": float(chosen),
    }


class LinearProbeEvaluator(Evaluator):
    """`type="linear_probe"`: the entry's `datasets` read as a zero-shot entry reads them (`root`,
    `splits`, `max_images`, `decode_threads`), `fit_split` to fit, `score_split` to score,
    penalties `l2`."""

    @classmethod
    def check(cls, name: str, options: Any) -> None:
        cls.check_datasets(name, options, registry.ZERO_SHOT_DATASETS)
        readers.check_options(options, f"evals.{name}")
        for key in ("fit_split", "score_split"):
            check_choice(f"config evals.{name}.{key}", options[key], readers.SPLITS)
        penalties = tuple(options.l2)
        if not penalties or not all(
            isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p < math.inf
            for p in penalties
        ):
            raise ValueError(
                f"config evals.{name}.l2={penalties!r}: penalties must be finite numbers >= 0"
            )

    def __init__(self, name: str, options: Any, *, config: Any, setup: Any, tokenizer: Tokenizer):
        super().__init__(name, options, config=config, setup=setup, tokenizer=tokenizer)
        self.datasets = self.load_datasets(
            lambda dataset: (
                dataset,
                *(
                    registry.zero_shot_data(dataset, config.data, _with_split(options, split))
                    for split in (options.fit_split, options.score_split)
                ),
            )
        )
        for dataset, fit, score in self.datasets:
            if fit.class_names != score.class_names:
                raise ValueError(
                    f"config evals.{name}: {dataset}'s {options.fit_split!r} and "
                    f"{options.score_split!r} splits list different classes"
                )
            if fit.images.shape == score.images.shape and np.array_equal(fit.images, score.images):
                raise ValueError(
                    f"config evals.{name}: {dataset} gives the same images for fit_split "
                    f"{options.fit_split!r} and score_split {options.score_split!r}"
                )

    def run(self, params: Any) -> Results:
        metrics: dict[str, float] = {}
        for dataset, fit, score in self.datasets:
            found = probe(
                self.encoder.images(params, fit.images, f"{dataset} ({self.options.fit_split})"),
                fit.labels,
                self.encoder.images(
                    params, score.images, f"{dataset} ({self.options.score_split})"
                ),
                score.labels,
                len(fit.class_names),
                tuple(self.options.l2),
            )
            metrics |= {f"{dataset}/{key}": value for key, value in found.items()}
        return Results(metrics, skipped=dict(self.skipped))


def _with_split(options: ml_collections.ConfigDict, split: str) -> ml_collections.ConfigDict:
    """The options with every dataset family reading `split`."""
    return ml_collections.ConfigDict({**options.to_dict(), "split": split, "splits": {}})
