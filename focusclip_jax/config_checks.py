"""A config checked before anything is built, written or compiled: each rule names its key.

Most choices are checked by building what the run builds, cheaply: the abstract model
(`nnx.eval_shape`: every model key, no weights), the optimiser, the loss and the MPII record
transform, so the rules live where they apply. What only surfaces later — when the step is traced
or the first batch is drawn — is checked here: sizes, divisibility over the mesh and processes,
the loss's pairs and the heatmap mode.
"""

from collections.abc import Sequence

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from focusclip_jax import evaluators, losses, models, optim, sharding
from focusclip_jax.models.focusclip import MODALITIES
from input_pipeline.files import InputDataError
from input_pipeline.heatmaps import HEATMAP_MODES

POSITIVE = (
    "train.batch_size",
    "train.num_steps",
    "log_every_steps",
    "model.image_size",
    "model.text.max_len",
    "model.embed_dim",
    "data.max_people",
    "checkpoint.every_steps",
    "checkpoint.keep",
)
NONFINITE_POLICIES = ("stop", "skip")


class ConfigError(InputDataError, ValueError):
    """A config key breaks a rule; `main` prints it in one line and exits 2."""


def _get(config: ml_collections.ConfigDict, key: str) -> object:
    value: object = config
    for part in key.split("."):
        if not isinstance(value, ml_collections.ConfigDict) or part not in value:
            return None
        value = value[part]
    return value


def validated_mesh(
    config: ml_collections.ConfigDict,
    devices: Sequence[jax.Device] | None = None,
    *,
    training: bool = True,
) -> Mesh:
    """The config's mesh over `devices` (default: all), once the config passes `validate`."""
    try:
        mesh = sharding.create_mesh(config.mesh, devices=devices)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    validate(config, mesh, jax.process_count(), training=training)
    return mesh


def validate(
    config: ml_collections.ConfigDict, mesh: Mesh, process_count: int = 1, *, training: bool = True
) -> None:
    """Raises ConfigError naming the first key that breaks a rule. `training=False` (evaluation
    of a checkpoint) checks the model and evaluation keys only."""
    evals = [f"evals.{name}.batch_size" for name in config.get("evals", {})]
    checked = POSITIVE if training else ("model.image_size", "model.text.max_len")
    for key in (*checked, *evals):
        value = _get(config, key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"config {key}={value!r}: must be a positive integer")
    for name, options in config.get("evals", {}).items():
        every = options.get("every_steps", 0)
        if not isinstance(every, int) or every < 0:
            raise ConfigError(f"config evals.{name}.every_steps={every!r}: must be 0 or more")
    try:
        evaluators.check_types(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if training:
        _check_training(config, mesh, process_count)
    try:
        model_config = ml_collections.ConfigDict(config.model.to_dict())
        text = model_config.get("text", {})
        if text.get("vocab_size") == -1:  # from the tokenizer, built later: any size checks keys
            text.vocab_size = 2
        scalars = losses.create(config.loss).scalars
        model = nnx.eval_shape(
            lambda: models.create_model(model_config, nnx.Rngs(0), loss_scalars=scalars)
        )
        if training:
            params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
            optim.check_frozen(params, tuple(config.train.get("frozen", ())))
    except TypeError as error:  # a constructor argument the config should not have
        raise ConfigError(f"config model: {error}") from None
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_training(config: ml_collections.ConfigDict, mesh: Mesh, process_count: int) -> None:
    batch = config.train.batch_size
    shards = sharding.data_parallel_size(mesh)
    if batch % shards:
        raise ConfigError(
            f"config train.batch_size={batch}: must be a multiple of the {shards} batch shards "
            f"of mesh {dict(mesh.shape)} (mesh.data x mesh.fsdp)"
        )
    if batch % process_count:
        raise ConfigError(
            f"config train.batch_size={batch}: must divide over the {process_count} processes"
        )
    chunks = config.train.get("accumulate_steps", 1)
    if not isinstance(chunks, int) or chunks < 1:
        raise ConfigError(f"config train.accumulate_steps={chunks!r}: must be a positive integer")
    if batch % (chunks * shards):
        raise ConfigError(
            f"config train.batch_size={batch}: must be a multiple of train.accumulate_steps "
            f"({chunks}) x the {shards} batch shards (each chunk splits over the devices)"
        )
    policy = config.train.get("on_nonfinite", "stop")
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(f"config train.on_nonfinite={policy!r}: expected stop or skip")
    _check_loss(config.loss)
    if config.heatmaps.mode not in HEATMAP_MODES:
        raise ConfigError(
            f"config heatmaps.mode={config.heatmaps.mode!r}: expected {HEATMAP_MODES}"
        )
    for key in ("heatmaps.min_sigma", "heatmaps.joint_sigma"):
        if not _get(config, key) > 0:
            raise ConfigError(f"config {key}={_get(config, key)!r}: must be > 0")
    try:
        optim.make_optimizer(config.optimizer, config.train.num_steps)
        if config.data.name == "mpii":
            from input_pipeline.transforms import MpiiTrainTransform

            MpiiTrainTransform.from_config(config.data)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_loss(loss: ml_collections.ConfigDict) -> None:
    try:
        losses.create(loss)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    pairs = [tuple(pair) for pair in loss.pairs]
    if not pairs or len(pairs) != len(loss.weights):
        raise ConfigError(
            f"config loss.pairs ({len(pairs)}) and loss.weights ({len(loss.weights)}): one weight "
            "per pair, at least one pair"
        )
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(MODALITIES):
            raise ConfigError(f"config loss.pairs: {pair} is not a pair of two of {MODALITIES}")
