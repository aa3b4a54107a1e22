"""Zero-shot, retrieval and linear-probe evaluators, with an analytic fake model that knows
the answer."""

import logging
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import pretrain
from focusclip_jax import evaluators, sharding
from focusclip_jax.evaluators import linear_probe, retrieval
from focusclip_jax.evaluators.zero_shot import ZeroShotClassifier, class_prompts, top_k_accuracy
from focusclip_jax.setup import Encoder
from input_pipeline.benchmarks import registry
from input_pipeline.benchmarks.registry import RetrievalData, ZeroShotData
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
    setup = types.SimpleNamespace(
        graphdef=graphdef,
        param_shardings=jax.tree.map(lambda _: sharding.replicated(mesh), params),
        mesh=mesh,
    )
    classifier = ZeroShotClassifier(data, Encoder(setup, tokenizer, batch_size=8, max_len=8))
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


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_metrics_on_a_hand_built_similarity() -> None:
    """Three images, three distinct texts. Image→text ranks 1, 2 (0.8 above its 0.7) and 2 (its
    0.5 tied by another text's: ties count against the query); text→image ranks 1, 1, 1."""
    similarity = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.2], [0.1, 0.5, 0.5]])
    found = retrieval.retrieval_metrics(similarity, ("a", "b", "c"), ks=(1, 2))
    assert found == {
        "image_to_text_R@1": pytest.approx(1 / 3),
        "image_to_text_R@2": 1.0,
        "image_to_text_median_rank": 2.0,
        "text_to_image_R@1": 1.0,
        "text_to_image_R@2": 1.0,
        "text_to_image_median_rank": 1.0,
    }


def test_retrieval_evaluator_with_the_colour_model(monkeypatch) -> None:
    """Nine images (three per colour) described by their colour's name, except image 0: green,
    described "red". Image→text: image 0 ranks its text 7th (three green texts score above,
    three blue ones tie); text→image: each "green" text finds image 0 tied with its own."""
    tokenizer = WordTokenizer.fit(["red green blue"])
    model = ColourModel(tokenizer)
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    mesh = sharding.create_mesh({"data": -1})
    colours = np.arange(9) % 3
    drawn = colours.copy()
    drawn[0] = 1
    data = RetrievalData("colours", _images(drawn), tuple(COLOURS[c] for c in colours))
    monkeypatch.setitem(registry.RETRIEVAL_DATASETS, "colours", lambda data_, options: data)
    setup = types.SimpleNamespace(
        graphdef=graphdef,
        param_shardings=jax.tree.map(lambda _: sharding.replicated(mesh), params),
        mesh=mesh,
    )
    config = ml_collections.ConfigDict({"data": {}, "model": {"text": {"max_len": 4}}})
    options = ml_collections.ConfigDict(
        {"type": "retrieval", "datasets": ("colours",), "batch_size": 8, "every_steps": 0}
    )
    evaluator = evaluators.EVALUATORS["retrieval"](
        "retrieval", options, config=config, setup=setup, tokenizer=tokenizer
    )
    found = evaluator.run(params).metrics
    assert found == {
        "colours/image_to_text_R@1": pytest.approx(8 / 9),
        "colours/image_to_text_R@5": pytest.approx(8 / 9),
        "colours/image_to_text_R@10": 1.0,
        "colours/image_to_text_median_rank": 1.0,
        "colours/text_to_image_R@1": pytest.approx(6 / 9),
        "colours/text_to_image_R@5": 1.0,
        "colours/text_to_image_R@10": 1.0,
        "colours/text_to_image_median_rank": 1.0,
    }


# ----------------------------------------------------------------------------- linear probe


def test_logistic_fit_reaches_the_penalised_optimum() -> None:
    """At the returned weights the gradient of cross-entropy + l2/2 ||w||² vanishes."""
    rng = np.random.default_rng(3)
    features = jnp.asarray(rng.normal(size=(60, 5)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, 60))
    params = linear_probe.fit_logistic(features, labels, jnp.float32(1e-2), num_classes=3)
    grad = jax.grad(linear_probe._objective)(params, features, labels, 1e-2)
    assert float(optax.global_norm(grad)) < 1e-4


def test_probe_chooses_the_penalty_on_held_out_fitting_images() -> None:
    """Separable clusters, class 2 three times as frequent: the largest penalty flattens the
    weights and predicts the frequent class (60%); the validation split picks a small one and
    the score is perfect."""
    rng = np.random.default_rng(4)
    centres = np.eye(3, 8) * 4

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = (np.arange(n) % 5).clip(max=2)
        return (centres[labels] + rng.normal(scale=0.3, size=(n, 8))).astype(np.float32), labels

    (fit_x, fit_y), (score_x, score_y) = points(90), points(30)
    found = linear_probe.probe(fit_x, fit_y, score_x, score_y, 3, (1e-4, 1e-2, 1e6))
    assert found["linear_probe_top1"] == 1.0 and found["linear_probe_mean_per_class_top1"] == 1.0
    assert found["linear_probe_l2"] in (1e-4, 1e-2)


def test_linear_probe_evaluator_fits_train_and_scores_test(monkeypatch) -> None:
    """With the colour model's image embeddings and a dataset whose train and test images are
    different colours of the same classes, the probe is perfect; identical splits are refused."""
    tokenizer = WordTokenizer.fit(["red green blue"])
    graphdef, params = nnx.split(ColourModel(tokenizer), nnx.Param)
    params = nnx.to_pure_dict(params)
    mesh = sharding.create_mesh({"data": -1})

    def colours(data, options) -> ZeroShotData:
        labels = np.arange(30 if options.split == "train" else 12) % 3
        return ZeroShotData("colours", _images(labels), labels.astype(np.int32), COLOURS, ("{}",))

    monkeypatch.setitem(registry.ZERO_SHOT_DATASETS, "colours", colours)
    setup = types.SimpleNamespace(
        graphdef=graphdef,
        param_shardings=jax.tree.map(lambda _: sharding.replicated(mesh), params),
        mesh=mesh,
    )
    config = ml_collections.ConfigDict({"data": {}, "model": {"text": {"max_len": 4}}})
    options = pretrain.linear_probe_eval(("colours",), batch_size=8)
    probe_evaluator = evaluators.EVALUATORS["linear_probe"]
    found = probe_evaluator("probe", options, config=config, setup=setup, tokenizer=tokenizer)
    metrics = found.run(params).metrics
    assert metrics["colours/linear_probe_top1"] == 1.0
    assert metrics["colours/linear_probe_mean_per_class_top1"] == 1.0
    options.score_split = "train"
    with pytest.raises(ValueError, match="same images for fit_split 'train' and score_split"):
        probe_evaluator("probe", options, config=config, setup=setup, tokenizer=tokenizer)


def test_every_caption_is_a_query_as_in_coco() -> None:
    """Two images with two captions each (COCO: five): image→text is a hit at k when any of its
    captions ranks in the top k; every caption is a text→image query. Image 0's captions rank
    1st and 3rd (one of image 1's between them): a hit at 1; image 1's best ranks 2nd. Each
    caption as a query finds the other image scored above its own: rank 2."""
    similarity = np.array([[0.9, 0.1, 0.8, 0.5], [0.95, 0.2, 0.7, 0.1]])
    owners = np.array([0, 0, 1, 1])
    found = retrieval.retrieval_metrics(
        similarity, ("a", "b", "c", "d"), ks=(1, 2), text_image=owners
    )
    assert found == {
        "image_to_text_R@1": 0.5,
        "image_to_text_R@2": 1.0,
        "image_to_text_median_rank": 1.5,
        "text_to_image_R@1": 0.0,
        "text_to_image_R@2": 1.0,
        "text_to_image_median_rank": 2.0,
    }
    # A reference loop over the same definition, on random scores with repeated texts.
    rng = np.random.default_rng(0)
    scores, owners = rng.normal(size=(6, 15)), np.repeat(np.arange(6), [3, 2, 3, 2, 3, 2])
    texts = tuple(f"t{i % 11}" for i in range(15))  # some captions shared between images
    found = retrieval.retrieval_metrics(scores, texts, ks=(1, 5), text_image=owners)
    correct = np.array([[texts[j] in {texts[k] for k in np.flatnonzero(owners == i)}
                         for j in range(15)] for i in range(6)])  # fmt: skip
    best = [max(scores[i, correct[i]]) for i in range(6)]
    ranks = [1 + sum(scores[i, ~correct[i]] >= best[i]) for i in range(6)]
    assert found["image_to_text_R@1"] == pytest.approx(np.mean(np.array(ranks) <= 1))
    assert found["image_to_text_median_rank"] == np.median(ranks)


def test_a_nan_score_never_ranks_first_and_two_entries_may_not_report_one_metric() -> None:
    similarity = np.array([[np.nan, 0.1], [0.2, 0.9]])
    found = retrieval.retrieval_metrics(similarity, ("a", "b"), ks=(1,))
    assert found["image_to_text_R@1"] == 0.5  # image 0's own text scored NaN: ranked last

    class Constant(evaluators.Evaluator):
        def run(self, params):
            return evaluators.Results({"data/top1": 0.5})

    options = ml_collections.ConfigDict({"type": "constant", "every_steps": 0})
    made = [Constant(n, options, config=None, setup=None, tokenizer=None) for n in ("a", "b")]
    with pytest.raises(ValueError, match=r"evals\.a and evals\.b both report data/top1"):
        evaluators.run_due(made, {}, 1, 1)
