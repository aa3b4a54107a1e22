"""Image-text retrieval on held-out described images: recall@k both ways and the median rank.

`type="retrieval"`: for each dataset of the entry (`pipeline.RETRIEVAL_DATASETS`: `mpii_val`,
the prepared MPII validation split with its descriptions; `synthpose`, the held-out scenes),
every image
ranks every text by cosine similarity (image→text) and every text every image (text→image).
A text written for several images (SynthPose's rule-based descriptions can repeat) counts as
correct for each of them: the positives of image i are the texts equal to its own.
"""

import logging
from typing import Any

import jax
import numpy as np

from focusclip_jax.evaluators.base import Evaluator, Results
from focusclip_jax.evaluators.zero_shot import classifier_for
from input_pipeline import pipeline
from input_pipeline.eval_datasets import DatasetNotFoundError
from input_pipeline.pipeline import Tokenizer, ZeroShotData


def first_positive_ranks(similarity: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Per row, the 1-based rank of its best-scored positive: 1 + the columns scored above it
    (ties count against the query, so a constant model ranks last, not first)."""
    similarity = np.nan_to_num(similarity, nan=-np.inf)  # a NaN score never ranks first
    best = np.where(positives, similarity, -np.inf).max(axis=1, keepdims=True)
    above = ((similarity >= best) & ~positives).sum(axis=1)
    return 1 + above


def retrieval_metrics(
    similarity: np.ndarray, texts: tuple[str, ...], ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k and median rank, image→text on rows of `similarity` [images, texts], text→image
    on its columns."""
    same = np.asarray(texts, dtype=object)
    positives = same[:, None] == same[None, :]
    out: dict[str, float] = {}
    for direction, scores, truth in (
        ("image_to_text", similarity, positives),
        ("text_to_image", similarity.T, positives.T),
    ):
        ranks = first_positive_ranks(scores, truth)
        out |= {f"{direction}_R@{k}": float(np.mean(ranks <= k)) for k in ks}
        out[f"{direction}_median_rank"] = float(np.median(ranks))
    return out


class RetrievalEvaluator(Evaluator):
    """`type="retrieval"`: the entry's `datasets`, encoded in batches of `batch_size`."""

    @classmethod
    def check(cls, name: str, options: Any) -> None:
        cls.check_datasets(name, options, pipeline.RETRIEVAL_DATASETS)

    def __init__(self, name: str, options: Any, *, config: Any, setup: Any, tokenizer: Tokenizer):
        super().__init__(name, options, config=config, setup=setup, tokenizer=tokenizer)
        self.encoders = []
        self.skipped: dict[str, str] = {}
        for dataset in options.datasets:
            try:
                data = pipeline.retrieval_data(dataset, config.data)
            except DatasetNotFoundError as error:
                logging.warning("Retrieval dataset %s skipped: %s", dataset, error)
                self.skipped[dataset] = str(error)
                continue
            as_classes = ZeroShotData(  # the texts as "classes" with the template "{}"
                name=data.name,
                images=data.images,
                labels=np.zeros(len(data.images), np.int32),
                class_names=data.texts,
                templates=("{}",),
            )
            self.encoders.append((data, classifier_for(self, as_classes)))

    def run(self, params: Any) -> Results:
        metrics: dict[str, float] = {}
        for data, encoder in self.encoders:
            texts = np.asarray(jax.device_get(encoder.text_embeddings(params, data.texts)))
            similarity = encoder.image_embeddings(params) @ texts.T
            found = retrieval_metrics(similarity, data.texts)
            metrics |= {f"{data.name}/{key}": value for key, value in found.items()}
        return Results(metrics, skipped=dict(self.skipped))
