"""The model on a mesh, its encoder, and a trained model loaded from its workdir.

`ModelSetup` is what every user of the model shares — training, evaluation, `predict`, `export`,
the AOT tool and the notebook: the static graph, abstract parameters in their shardings, bounded
parameters and the built loss; no optimiser. `Encoder` turns images and texts into embeddings in
padded, sharded batches for every evaluator and `predict`. `load_trained` is the one way from a
workdir (or one step folder) to usable parameters: run record → mesh → tokenizer → setup →
restore (`checkpoint.restore_params`); `focusclip_jax.load` is its public name.
"""

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from focusclip_jax import checkpoint, config_checks, losses, models, run_record, sharding
from focusclip_jax.models import layers
from input_pipeline import pipeline
from input_pipeline.benchmarks import readers
from input_pipeline.errors import ConfigError, InputDataError, config_errors
from input_pipeline.tokenizers import Tokenizer

PROMPT_BUCKET = 64  # texts are encoded in multiples of this many rows: one compile for all


def param_bounds(abstract_params: nnx.State) -> dict[tuple[str, ...], tuple[float, float]]:
    """Parameters declared with `bounds=(lo, hi)` metadata (alpha, logit scale), by path."""
    return {
        tuple(str(k) for k in path): variable.get_metadata()["bounds"]
        for path, variable in nnx.to_flat_state(abstract_params)
        if "bounds" in variable.get_metadata()
    }


def resolved_model_config(
    config: ml_collections.ConfigDict, vocab_size: int, platform: str
) -> ml_collections.ConfigDict:
    """`config.model` with `text.vocab_size = -1` (take it from the tokenizer) and the compute
    dtype 'auto' (from the mesh's `platform`) resolved."""
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    if model_config.text.vocab_size == -1:
        model_config.text.vocab_size = vocab_size
    with config_errors():
        models.resolve_compute_dtypes(model_config, platform)
    return model_config


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """The model on a mesh, with nothing to train it: its static graph, abstract parameters in
    their shardings, bounded parameters and the loss (whose scalars the model carries)."""

    config: ml_collections.ConfigDict  # the run's (model, sharding and seed keys are read)
    model_config: ml_collections.ConfigDict  # `model.text.vocab_size` resolved
    mesh: Mesh
    graphdef: nnx.GraphDef
    abstract_params: Any  # pure dict of jax.ShapeDtypeStruct with their shardings
    param_shardings: Any
    bounds: dict[tuple[str, ...], tuple[float, float]]
    loss: losses.ContrastiveLoss

    @classmethod
    def create(
        cls, config: ml_collections.ConfigDict, mesh: Mesh, *, vocab_size: int
    ) -> "ModelSetup":
        model_config = resolved_model_config(config, vocab_size, mesh.devices.flat[0].platform)
        with config_errors():
            loss = losses.create(config.loss)
            losses.check_pairs(config.loss)
        new_model = lambda: models.create_model(
            model_config, nnx.Rngs(config.seed), loss_scalars=loss.scalars
        )
        try:  # the model and its towers check their options as they are built, for the mesh
            with layers.built_for(mesh.devices.flat[0]):
                graphdef, abstract = nnx.split(nnx.eval_shape(new_model), nnx.Param)
        except TypeError as error:  # a constructor argument the config should not have
            raise ConfigError(f"config model: {error}") from None
        except ValueError as error:
            raise ConfigError(str(error)) from None
        logical_specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract))
        pure = nnx.to_pure_dict(abstract)
        with config_errors():
            rules = sharding.check_rules(config.sharding.rules)
        shardings = sharding.tree_shardings(logical_specs, pure, mesh, rules)
        return cls(
            config=config,
            model_config=model_config,
            mesh=mesh,
            graphdef=graphdef,
            abstract_params=jax.tree.map(
                lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                pure,
                shardings,
            ),
            param_shardings=shardings,
            bounds=param_bounds(abstract),
            loss=loss,
        )

    def new_model(self) -> nnx.Module:
        """A freshly initialised model (the config's seed)."""
        return models.create_model(
            self.model_config, nnx.Rngs(self.config.seed), loss_scalars=self.loss.scalars
        )

    def similarity_scale(self, params: Any) -> float:
        """What multiplies cosine similarities into logits: the learnt CLIP scale, or 1 / the
        NT-Xent temperature."""
        scalars = jax.device_get(losses.scalars_of(params, self.loss))
        return float(self.loss.similarity_scale(scalars))


def _global_array(array: np.ndarray, array_sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from host data every process holds in full."""
    return jax.make_array_from_callback(array.shape, array_sharding, lambda index: array[index])


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    pad = [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, pad)


class Encoder:
    """Images and texts → L2-normalised embeddings with a setup's model. Images go in fixed-size,
    padded batches split over the mesh's data axes, texts in replicated multiples of
    `PROMPT_BUCKET` rows: one compile each, whatever the dataset."""

    def __init__(self, setup: ModelSetup, tokenizer: Tokenizer, *, batch_size: int, max_len: int):
        shards = sharding.data_parallel_size(setup.mesh)
        if batch_size % shards:
            raise ValueError(f"eval batch size {batch_size} must divide over {shards} data shards")
        self.setup, self.tokenizer = setup, tokenizer
        self.batch_size, self.max_len = batch_size, max_len

    @functools.cached_property
    def _encode_images(self) -> Callable[[Any, jax.Array], jax.Array]:
        graphdef = self.setup.graphdef

        def encode(params: Any, images: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, params).encode_image(images.astype(jnp.float32) / 255.0)

        # Replicated output: every process can read the embeddings, on one host or many.
        mesh = self.setup.mesh
        rows, everywhere = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        return jax.jit(
            encode, in_shardings=(self.setup.param_shardings, rows), out_shardings=everywhere
        )

    @functools.cached_property
    def _encode_texts(self) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
        graphdef = self.setup.graphdef

        def encode(params: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, params).encode_text(tokens, mask)

        everywhere = sharding.replicated(self.setup.mesh)
        return jax.jit(
            encode,
            in_shardings=(self.setup.param_shardings, everywhere, everywhere),
            out_shardings=everywhere,
        )

    def texts(self, params: Any, texts: Sequence[str]) -> jax.Array:
        """[N, D] for the texts, in chunks of at most `max(batch_size, PROMPT_BUCKET)` rows."""
        everywhere = sharding.replicated(self.setup.mesh)
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

    def images(self, params: Any, images: np.ndarray, name: str = "images") -> np.ndarray:
        """[N, D] for uint8 images [N, S, S, 3]. Logs progress with images/s about every 10% on
        process 0: large benchmarks (Kinetics, FairFace) take minutes per checkpoint."""
        rows = sharding.batch_sharding(self.setup.mesh)
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
                    name, done, len(images), 100 * done / len(images), done / seconds,
                )  # fmt: skip
        return np.concatenate(outputs)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained checkpoint, ready to embed and classify (`focusclip_jax.load(workdir)`)."""

    config: ml_collections.ConfigDict  # the run's, as recorded (evaluation keys as given)
    setup: ModelSetup
    tokenizer: Tokenizer
    params: Any
    step: int
    encoder: Encoder

    @property
    def image_size(self) -> int:
        return self.config.model.image_size

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and mask [N, model.text.max_len], as training tokenized its texts."""
        return self.tokenizer(list(texts), self.config.model.text.max_len)

    def read_images(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, list[Path]]:
        """The readable images among `paths`, squashed to the model's size (uint8), and the
        paths that could not be read."""
        images, unreadable = [], []
        for path in paths:
            image = readers.decode(readers.Sample(Path(path), 0), self.image_size)
            if image is None:
                unreadable.append(Path(path))
            else:
                images.append(image)
        empty = np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return (np.stack(images) if images else empty), unreadable

    def encode_image(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, S, S, 3] at the model's size (`read_images`) → L2-normalised
        embeddings [N, D]."""
        images = np.asarray(images)
        expected = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
            raise ValueError(
                f"images: expected uint8 [N, {', '.join(map(str, expected))}], got "
                f"{images.dtype} {list(images.shape)} (read files with read_images)"
            )
        return self.encoder.images(self.params, images)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → L2-normalised embeddings [N, D]."""
        return np.asarray(jax.device_get(self.encoder.texts(self.params, list(texts))))

    def classify(
        self, images: np.ndarray, labels: Sequence[str], template: str = "{}"
    ) -> np.ndarray:
        """Zero-shot: probabilities [N, len(labels)], a softmax over the cosine similarities of
        each image with `template` filled with each label, scaled as in training."""
        check_template(template)
        labels_embedded = self.encode_text([template.format(label) for label in labels])
        logits = self.setup.similarity_scale(self.params) * (
            self.encode_image(images) @ labels_embedded.T
        )
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        return probabilities / probabilities.sum(axis=1, keepdims=True)


def template_problem(template: str) -> str | None:
    """What is wrong with a prompt template, or None: it holds the label once (without `{}`
    every label gets the same prompt)."""
    if template.count("{}") != 1 or template.count("{") != 1 or template.count("}") != 1:
        return "must hold {} exactly once, where the label goes (e.g. 'a photo of a person {}')"
    return None


def check_template(template: str) -> None:
    problem = template_problem(template)
    if problem:
        raise InputDataError(f"--template={template!r}: {problem}")


def load_trained(
    checkpoint_path: str | Path,
    config: ml_collections.ConfigDict | None = None,
    overridden: Sequence[str] = (),
    *,
    mesh: Mesh | None = None,
    batch_size: int = 64,
) -> TrainedModel:
    """A training workdir, its checkpoints/ folder or one step folder → its trained model.

    The model, tokenizer, loss and heatmap settings come from the workdir's record
    (`run_record`); `config` gives the rest (evaluation keys, the mesh) and `overridden` names
    the keys its command line set (they may not contradict the record). Without a record (a
    workdir trained before runs were recorded) `config` must describe the model. The newest
    readable step is restored (`checkpoint.restore_params`), or the step folder given.
    """
    checkpoint_path = str(checkpoint_path)
    checkpoint.checkpoint_location(checkpoint_path)  # none there: named before anything is built
    config = run_record.config_for(checkpoint_path, config, overridden)
    if mesh is None:
        mesh = config_checks.validated_mesh(config, training=False)
    pipeline.check_tokenizer_files(config)
    workdir = str(run_record.workdir_of(checkpoint_path))
    tokenizer = pipeline.create_tokenizer(config, workdir, fit=False)
    setup = ModelSetup.create(config, mesh, vocab_size=tokenizer.vocab_size)
    params, step = checkpoint.restore_params(checkpoint_path, setup.abstract_params)
    try:
        encoder = Encoder(
            setup, tokenizer, batch_size=batch_size, max_len=config.model.text.max_len
        )
    except ValueError as error:
        raise InputDataError(f"batch size: {error}") from None
    return TrainedModel(config, setup, tokenizer, params, step, encoder)
