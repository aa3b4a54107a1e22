"""Zero-shot classification: class names × prompt templates → class embeddings; top-k accuracy.

`ZeroShotClassifier` scores one dataset; `ZeroShotEvaluator` is the `type="zero_shot"` evaluator
over the datasets of its config entry. Images and prompts are embedded by the evaluator's
`setup.Encoder` (padded batches split over the mesh's data axes; padding rows are left out).
"""

import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from focusclip_jax.evaluators import confusion
from focusclip_jax.evaluators.base import Evaluator, Results
from focusclip_jax.setup import Encoder
from input_pipeline.benchmarks import readers, registry
from input_pipeline.benchmarks.registry import ZeroShotData
from input_pipeline.tokenizers import Tokenizer


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompts in class-major order: row c * T + t is template t filled with class c."""
    return [template.format(name) for name in class_names for template in templates]


class ZeroShotClassifier:
    """One dataset's images against its class prompts, embedded by `encoder`."""

    def __init__(self, data: ZeroShotData, encoder: Encoder):
        self.data, self.encoder = data, encoder

    def class_embeddings(self, params: Any) -> jax.Array:
        """[C, D]: each class's prompt embeddings averaged over templates, re-normalised.

        Computed once per `run` and not cached across calls: every caller passes new parameters
        (training evaluates at a new step, eval-only once per checkpoint), and C × T short prompts
        cost a fraction of one image batch.
        """
        prompts = class_prompts(
            self.data.prompt_names or self.data.class_names, self.data.templates
        )
        embeddings = self.encoder.texts(params, prompts)
        per_class = embeddings.reshape(len(self.data.class_names), len(self.data.templates), -1)
        mean = per_class.mean(axis=1)
        return mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)

    def image_embeddings(self, params: Any) -> np.ndarray:
        return self.encoder.images(params, self.data.images, self.data.name)

    def run(self, params: Any) -> Results:
        """Top-k and mean per-class top-1 accuracies, the confusion matrix and what was read."""
        start = time.perf_counter()
        data = self.data
        classes = np.asarray(jax.device_get(self.class_embeddings(params)))
        scores = self.image_embeddings(params) @ classes.T
        matrix = confusion.confusion_matrix(scores, data.labels, len(classes))
        metrics = {
            f"{data.name}/top{k}": top_k_accuracy(scores, data.labels, k) for k in data.top_k
        }
        metrics[f"{data.name}/mean_per_class_top1"] = confusion.mean_per_class_accuracy(matrix)
        seconds = time.perf_counter() - start
        logging.info("%s: %d images in %.1f s", data.name, len(data.labels), seconds)
        described = {
            "images": len(data.labels),
            "unreadable": data.unreadable,
            "classes": list(data.class_names),
            "first_class_prompts": [
                t.format((data.prompt_names or data.class_names)[0]) for t in data.templates
            ],
            "seconds": round(seconds, 2),
        }
        return Results(
            metrics,
            datasets={data.name: described},
            confusions={data.name: (matrix, tuple(data.class_names))},
        )


class ZeroShotEvaluator(Evaluator):
    """`type="zero_shot"`: the entry's `datasets` (those not on disk are skipped and named),
    read as its `root`, `split`, `splits`, `templates`, `max_images` and `decode_threads` say, in
    batches of `batch_size`."""

    @classmethod
    def check(cls, name: str, options: Any) -> None:
        cls.check_datasets(name, options, registry.ZERO_SHOT_DATASETS)
        readers.check_options(options, f"evals.{name}")

    def __init__(self, name: str, options: Any, *, config: Any, setup: Any, tokenizer: Tokenizer):
        super().__init__(name, options, config=config, setup=setup, tokenizer=tokenizer)
        self.classifiers = [
            ZeroShotClassifier(data, self.encoder)
            for data in self.load_datasets(
                lambda dataset: registry.zero_shot_data(dataset, config.data, options)
            )
        ]

    def run(self, params: Any) -> Results:
        results = Results({}, skipped=dict(self.skipped))
        for classifier in self.classifiers:
            results |= classifier.run(params)
        return results


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (ties broken by lower index)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))
