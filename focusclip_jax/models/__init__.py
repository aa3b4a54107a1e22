"""Model registry: `config.model.name` picks the builder; the rest of `config.model` are kwargs."""

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from flax import nnx

from focusclip_jax.models.focusclip import FocusCLIP
from focusclip_jax.models.layers import compute_dtype

MODELS: dict[str, Callable[..., nnx.Module]] = {"focusclip": FocusCLIP}


def create_model(
    model_config: ml_collections.ConfigDict,
    rngs: nnx.Rngs,
    *,
    loss_scalars: Mapping[str, Any] | None = None,
) -> nnx.Module:
    """Build the configured model, carrying the loss's learnable scalars (`losses.Scalar` by
    name); an unknown name lists the registered ones."""
    kwargs = model_config.to_dict()
    name = kwargs.pop("name")
    if name not in MODELS:
        raise ValueError(f"config model.name={name!r}: registered models are {sorted(MODELS)}")
    return MODELS[name](**kwargs, loss_scalars=loss_scalars, rngs=rngs)


def resolve_compute_dtypes(model_config: ml_collections.ConfigDict, platform: str) -> None:
    """Makes `model.dtype` and a tower's own `dtype` concrete for the mesh's `platform`: 'auto'
    is bfloat16 on TPUs and GPUs, float32 on CPUs (`layers.compute_dtype`). Decided by the mesh,
    not the host: a step compiled on a CPU for a TPU computes in bfloat16."""
    for key, options in (
        ("model", model_config),
        ("model.image", model_config.image),
        ("model.text", model_config.text),
    ):
        if "dtype" in options:
            try:
                options.dtype = compute_dtype(options.dtype, platform).name
            except ValueError as error:  # `dtype=<value>: ...`
                raise ValueError(f"config {key}.{error}") from None
