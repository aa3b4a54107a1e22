"""The rules no component checks for itself, checked before anything is built, written or compiled.

Each component validates its own options once, where it is built from the config (the model and
its towers, the loss, the optimiser, the heatmaps, the data source, the evaluators: building the
`train.Trainer` builds them all, without a compile). What only surfaces later — when the step is
traced or the first batch is drawn — is checked here: sizes, and the batch's divisibility over
the mesh, the processes and the accumulation chunks.
"""

from collections.abc import Sequence

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from focusclip_jax import sharding
from focusclip_jax.models import layers
from input_pipeline.errors import ConfigError

POSITIVE = (
    "train.batch_size",
    "train.num_epochs",  # num_steps derives from it and data.train_records: named first
    "data.train_records",
    "train.num_steps",
    "train.accumulate_steps",
    "log_every_steps",
    "model.image_size",
    "model.text.max_len",
    "model.embed_dim",
    "data.max_people",
    "checkpoint.every_steps",
    "checkpoint.keep",
)
FOR_EVALUATION = ("model.image_size", "model.text.max_len")  # a checkpoint's evaluation reads
NON_NEGATIVE = ("seed",)  # the initialisation's, the data order's and the dropout's


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
    of a checkpoint) checks the sizes evaluation reads only."""
    rules = [(key, 1) for key in (POSITIVE if training else FOR_EVALUATION)]
    for key, least in rules + [(key, 0) for key in NON_NEGATIVE if training]:
        value = _get(config, key)
        integer = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and (not integer or value < least):
            rule = "a positive integer" if least else "an integer >= 0"
            raise ConfigError(f"config {key}={value!r}: must be {rule}")
    if not training:
        return
    _warn_of_scan_heavy_remat(config.model)
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
    if batch % (chunks * shards):
        raise ConfigError(
            f"config train.batch_size={batch}: must be a multiple of train.accumulate_steps "
            f"({chunks}) x the {shards} batch shards (each chunk splits over the devices)"
        )


def _warn_of_scan_heavy_remat(model: ml_collections.ConfigDict) -> None:
    """Scanned blocks under a remat that keeps every residual store them all, stacked (~3x the
    temporaries of unrolled blocks): legal, and what a run that flips only `scan_layers` gets."""
    remat = model.get("remat", "none")
    if model.get("scan_layers", False) and remat in layers.SCAN_HEAVY_REMATS:
        logging.warning(
            "config model.scan_layers=True with model.remat=%r: the scan stores every residual "
            "its blocks keep, about 3x the temporaries of unrolled blocks; "
            "--config.model.remat=%s keeps the weight matmuls' outputs only",
            remat, layers.SCAN_REMAT,
        )  # fmt: skip
