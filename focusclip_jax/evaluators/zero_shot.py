"""Zero-shot classification: class names × prompt templates → class embeddings; top-k accuracy.

`ZeroShotClassifier` scores one dataset (and serves `predict`); `ZeroShotEvaluator` is the
`type="zero_shot"` evaluator over the datasets of its config entry. Images go through the image
tower in fixed-size, padded batches split over the mesh's data axes (one compiled function for
every batch); padding rows are masked out of the counts.
"""

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from focusclip_jax import sharding
from focusclip_jax.evaluators import confusion
from focusclip_jax.evaluators.base import Evaluator, Results
from input_pipeline import pipeline
from input_pipeline.eval_datasets import DatasetNotFoundError
from input_pipeline.pipeline import Tokenizer, ZeroShotData

PROMPT_BUCKET = 64


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompts in class-major order: row c * T + t is template t filled with class c."""
    return [template.format(name) for name in class_names for template in templates]


def _global_array(array: np.ndarray, array_sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from host data every process holds in full."""
    return jax.make_array_from_callback(array.shape, array_sharding, lambda index: array[index])


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    pad = [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, pad)


class ZeroShotClassifier:
    """One dataset's images against its class prompts. Compiled functions are built on first
    use."""

    def __init__(
        self,
        data: ZeroShotData,
        *,
        graphdef: nnx.GraphDef,
        param_shardings: Any,
        mesh: Mesh,
        tokenizer: Tokenizer,
        max_len: int,
        batch_size: int,
    ):
        dp = sharding.data_parallel_size(mesh)
        if batch_size % dp:
            raise ValueError(f"eval batch size {batch_size} must divide over {dp} data shards")
        self.data = data
        self.graphdef = graphdef
        self.param_shardings = param_shardings
        self.mesh = mesh
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.batch_size = batch_size

    @functools.cached_property
    def _encode_images(self) -> Callable[[Any, jax.Array], jax.Array]:
        def encode(params: Any, images: jax.Array) -> jax.Array:
            model = nnx.merge(self.graphdef, params)
            return model.encode_image(images.astype(jnp.float32) / 255.0)

        # Replicated output: every process can read the embeddings, on one host or many.
        rows, everywhere = sharding.batch_sharding(self.mesh), sharding.replicated(self.mesh)
        return jax.jit(encode, in_shardings=(self.param_shardings, rows), out_shardings=everywhere)

    @functools.cached_property
    def _encode_texts(self) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
        def encode(params: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
            return nnx.merge(self.graphdef, params).encode_text(tokens, mask)

        everywhere = sharding.replicated(self.mesh)
        return jax.jit(
            encode,
            in_shardings=(self.param_shardings, everywhere, everywhere),
            out_shardings=everywhere,
        )

    def class_embeddings(self, params: Any) -> jax.Array:
        """[C, D]: each class's prompt embeddings averaged over templates, re-normalised.

        Computed once per `run` and not cached across calls: every caller passes new parameters
        (training evaluates at a new step, eval-only once per checkpoint), and C × T short prompts
        cost a fraction of one image batch.
        """
        prompts = class_prompts(
            self.data.prompt_names or self.data.class_names, self.data.templates
        )
        embeddings = self.text_embeddings(params, prompts)
        per_class = embeddings.reshape(len(self.data.class_names), len(self.data.templates), -1)
        mean = per_class.mean(axis=1)
        return mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)

    def text_embeddings(self, params: Any, texts: Sequence[str]) -> jax.Array:
        """[N, D] for the texts, in chunks of at most `max(batch_size, PROMPT_BUCKET)` rows."""
        everywhere = sharding.replicated(self.mesh)
        chunk = max(self.batch_size, PROMPT_BUCKET)
        outputs = []
        for start in range(0, len(texts), chunk):
            part = list(texts[start : start + chunk])
            # Rounded up (repeating the first text): every chunk and dataset share one compile.
            rows = -(-len(part) // PROMPT_BUCKET) * PROMPT_BUCKET
            padded = part + part[:1] * (rows - len(part))
            encoded = self.tokenizer(padded, self.max_len)
            tokens, mask = (_global_array(a, everywhere) for a in encoded)
            outputs.append(self._encode_texts(params, tokens, mask)[: len(part)])
        return jnp.concatenate(outputs)

    def image_embeddings(self, params: Any) -> np.ndarray:
        """[N, D] for the dataset's images, in padded batches sharded over the data axes.

        Logs progress with images/s about every 10% on process 0: large benchmarks (Kinetics,
        FairFace) take minutes per checkpoint.
        """
        rows = sharding.batch_sharding(self.mesh)
        images = self.data.images
        num_batches = -(-len(images) // self.batch_size)
        log_every = max(1, num_batches // 10)
        outputs, start_time = [], time.perf_counter()
        for i, start in enumerate(range(0, len(images), self.batch_size)):
            chunk = images[start : start + self.batch_size]
            batch = _global_array(_pad_rows(chunk, self.batch_size), rows)
            outputs.append(
                np.asarray(jax.device_get(self._encode_images(params, batch)))[: len(chunk)]
            )
            if jax.process_index() == 0 and ((i + 1) % log_every == 0 or i + 1 == num_batches):
                done, seconds = start + len(chunk), time.perf_counter() - start_time
                logging.info(
                    "%s: embedded %d/%d images (%.0f%%, %.1f images/s)",
                    self.data.name, done, len(images), 100 * done / len(images), done / seconds,
                )  # fmt: skip
        return np.concatenate(outputs)

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


def classifier_for(evaluator: Evaluator, data: ZeroShotData) -> ZeroShotClassifier:
    """A classifier of `data` on the evaluator's model, in batches of its entry's size."""
    return ZeroShotClassifier(
        data,
        graphdef=evaluator.setup.graphdef,
        param_shardings=evaluator.setup.param_shardings,
        mesh=evaluator.setup.mesh,
        tokenizer=evaluator.tokenizer,
        max_len=evaluator.config.model.text.max_len,
        batch_size=evaluator.options.batch_size,
    )


class ZeroShotEvaluator(Evaluator):
    """`type="zero_shot"`: the entry's `datasets` (those not on disk are skipped and named),
    read as its `root`, `split`, `splits`, `templates`, `max_images` and `decode_threads` say, in
    batches of `batch_size`."""

    @classmethod
    def check(cls, name: str, options: Any) -> None:
        cls.check_datasets(name, options, pipeline.ZERO_SHOT_DATASETS)

    def __init__(self, name: str, options: Any, *, config: Any, setup: Any, tokenizer: Tokenizer):
        super().__init__(name, options, config=config, setup=setup, tokenizer=tokenizer)
        self.classifiers: list[ZeroShotClassifier] = []
        self.skipped: dict[str, str] = {}
        for dataset in options.datasets:
            try:
                data = pipeline.zero_shot_data(dataset, config.data, options)
            except DatasetNotFoundError as error:
                logging.warning("Zero-shot dataset %s skipped: %s", dataset, error)
                self.skipped[dataset] = str(error)
                continue
            self.classifiers.append(classifier_for(self, data))

    def run(self, params: Any) -> Results:
        results = Results({}, skipped=dict(self.skipped))
        for classifier in self.classifiers:
            results |= classifier.run(params)
        return results


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (ties broken by lower index)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))
