"""Image-text retrieval on held-out described images: recall@k both ways and the median rank.

`type="retrieval"`: for each dataset of the entry (`registry.RETRIEVAL_DATASETS`: `mpii_val`,
the prepared MPII validation split with one description per image; `coco_val`, COCO's with every
caption; `synthpose`, the held-out scenes), every image ranks every text by cosine similarity
(image→text) and every text every image (text→image). COCO's protocol: every caption is a
query, and an image→text query is a hit at k when any of its captions ranks in the top k. A text
written for several images (SynthPose's rule-based descriptions can repeat) counts as correct
for each of them.
"""

from pathlib import Path
from typing import Any

import jax
import numpy as np

from focusclip_jax.evaluators.base import Evaluator, Results
from input_pipeline.benchmarks import registry
from input_pipeline.tokenizers import Tokenizer


def first_positive_ranks(similarity: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Per row, the 1-based rank of its best-scored positive: 1 + the columns scored above it
    (ties count against the query, so a constant model ranks last, not first)."""
    similarity = np.nan_to_num(similarity, nan=-np.inf)  # a NaN score never ranks first
    best = np.where(positives, similarity, -np.inf).max(axis=1, keepdims=True)
    above = ((similarity >= best) & ~positives).sum(axis=1)
    return 1 + above


def positives_of(texts: tuple[str, ...], text_image: np.ndarray | None, images: int) -> np.ndarray:
    """[images, texts]: whether text j is correct for image i — written for it, or equal to a
    text written for it."""
    owners = np.arange(len(texts)) if text_image is None else np.asarray(text_image)
    _, text_ids = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    has = np.zeros((images, text_ids.max() + 1), bool)
    has[owners, text_ids] = True
    return has[:, text_ids]


def retrieval_metrics(
    similarity: np.ndarray,
    texts: tuple[str, ...],
    ks: tuple[int, ...] = (1, 5, 10),
    text_image: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@k and median rank, image→text on rows of `similarity` [images, texts], text→image
    on its columns; text j describes image `text_image[j]` (default: image j)."""
    positives = positives_of(texts, text_image, similarity.shape[0])
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
    """`type="retrieval"`: the entry's `datasets`, encoded in batches of `batch_size`;
    `image_list` (a file of image names, one per line) keeps a prepared split's named images."""

    @classmethod
    def check(cls, name: str, options: Any) -> None:
        cls.check_datasets(name, options, registry.RETRIEVAL_DATASETS)
        image_list = options.get("image_list", "")
        if image_list and not Path(image_list).is_file():
            raise ValueError(f"config evals.{name}.image_list={image_list!r}: no such file")

    def __init__(self, name: str, options: Any, *, config: Any, setup: Any, tokenizer: Tokenizer):
        super().__init__(name, options, config=config, setup=setup, tokenizer=tokenizer)
        self.datasets = self.load_datasets(
            lambda dataset: registry.retrieval_data(dataset, config.data, options)
        )

    def run(self, params: Any) -> Results:
        metrics: dict[str, float] = {}
        for data in self.datasets:
            texts = np.asarray(jax.device_get(self.encoder.texts(params, data.texts)))
            similarity = self.encoder.images(params, data.images, data.name) @ texts.T
            found = retrieval_metrics(similarity, data.texts, text_image=data.text_image)
            metrics |= {f"{data.name}/{key}": value for key, value in found.items()}
        return Results(metrics, skipped=dict(self.skipped))
