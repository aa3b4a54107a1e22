"""Zero-shot evaluator with an analytic fake model that knows the answer."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from focusclip_jax import sharding
from focusclip_jax.evaluators.zero_shot import ZeroShotClassifier, class_prompts, top_k_accuracy
from input_pipeline.pipeline import ZeroShotData
from input_pipeline.tokenizers import WordTokenizer

COLOURS = ("red", "green", "blue")


class ColourModel(nnx.Module):
    """Image embedding: one-hot of the brightest channel. Text: sum of colour-word one-hots."""

    def __init__(self, tokenizer: WordTokenizer):
        table = np.zeros((tokenizer.vocab_size, 3), np.float32)
        for channel, colour in enumerate(COLOURS):
            table[tokenizer.ids[colour], channel] = 1.0
        self.table = nnx.Param(jnp.asarray(table))

    def encode_image(self, images: jax.Array) -> jax.Array:
        return jax.nn.one_hot(jnp.argmax(images.mean(axis=(1, 2)), axis=-1), 3)

    def encode_text(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        return (self.table[...][tokens] * mask[..., None]).sum(axis=1)


def _images(labels: np.ndarray) -> np.ndarray:
    images = np.zeros((len(labels), 4, 4, 3), np.uint8)
    images[np.arange(len(labels)), :, :, labels] = 200
    return images


def test_class_prompts_are_class_major() -> None:
    assert class_prompts(["cat", "dog"], ["a {}.", "the {}"]) == [
        "a cat.",
        "the cat",
        "a dog.",
        "the dog",
    ]


def test_top_k_accuracy_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(50, 7)), rng.integers(0, 7, 50)
    for k in (1, 3):
        expected = np.mean([labels[i] in np.argsort(-scores[i])[:k] for i in range(50)])
        assert top_k_accuracy(scores, labels, k) == pytest.approx(expected)


def test_evaluator_on_eight_devices_with_padding(caplog: pytest.LogCaptureFixture) -> None:
    """21 images in batches of 8 over 8 devices: the 3 padding rows must not count."""
    tokenizer = WordTokenizer.fit(["a photo of something red green blue ."])
    model = ColourModel(tokenizer)
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    mesh = sharding.create_mesh({"data": -1})
    labels = np.arange(21) % 3
    truth = labels.copy()
    truth[[0, 4]] = (labels[[0, 4]] + 1) % 3  # two images whose colour disagrees with the label
    data = ZeroShotData(
        name="colours",
        images=_images(truth),
        labels=labels.astype(np.int32),
        class_names=COLOURS,
        templates=("a photo of {}.", "something {}"),
        top_k=(1, 3),
    )
    classifier = ZeroShotClassifier(
        data,
        graphdef=graphdef,
        param_shardings=jax.tree.map(lambda _: sharding.replicated(mesh), params),
        mesh=mesh,
        tokenizer=tokenizer,
        max_len=8,
        batch_size=8,
    )
    with caplog.at_level(logging.INFO):
        results = classifier.run(params)
    assert "colours: embedded 21/21 images (100%" in caplog.text  # progress, per ~10%
    # Classes 0 and 1 each lose one of their 7 images: per class 6/7, 6/7, 7/7 (mean 19/21).
    assert results.metrics == {
        "colours/top1": pytest.approx(19 / 21),
        "colours/top3": 1.0,
        "colours/mean_per_class_top1": pytest.approx((6 / 7 + 6 / 7 + 1) / 3),
    }
    matrix, names = results.confusions["colours"]
    np.testing.assert_array_equal(matrix, [[6, 1, 0], [0, 6, 1], [0, 0, 7]])
    assert names == COLOURS and results.datasets["colours"]["images"] == 21
    embedded = np.asarray(classifier.class_embeddings(params))
    np.testing.assert_allclose(embedded, np.eye(3), atol=1e-6)
