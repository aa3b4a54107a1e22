"""Model registry: `config.model.name` picks the builder; the rest of `config.model` are kwargs."""

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from flax import nnx

from focusclip_jax.models.focusclip import FocusCLIP

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
