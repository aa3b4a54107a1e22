"""What a contrastive loss is to the rest of the code: a class built from `config.loss`.

A loss compares two batches of L2-normalised embeddings (a dot product is a cosine similarity).
It may declare learnable scalars (a bias, a temperature of its own); the model carries them as
parameters beside its `logit_scale`, and every call gets them all by name. Training logs
`metrics(...)`, and zero-shot inference multiplies cosine similarities by `similarity_scale(...)`,
so no caller needs to know which loss it has.
"""

import abc
import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from input_pipeline.errors import check_number

Scalars = Mapping[str, jax.Array]  # "logit_scale" (the model's own) and the loss's declared ones


@dataclasses.dataclass(frozen=True)
class Scalar:
    """A learnable scalar a loss asks the model to carry: its initial value and, if bounded, the
    box it is projected back into after each update (as open_clip clamps its logit scale)."""

    init: float
    bounds: tuple[float, float] | None = None


class ContrastiveLoss(abc.ABC):
    """A loss over two embedding batches `a`, `b` ([B, D], row i of one pairs with row i of the
    other), built from `config.loss`; a wrong key raises ValueError naming it."""

    scalars: ClassVar[Mapping[str, Scalar]] = {}
    has_chunked_form: ClassVar[bool] = False  # `loss.chunked=True` picks it

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        chunked = config.get("chunked", False)
        if not isinstance(chunked, bool):
            raise ValueError(f"config loss.chunked={chunked!r}: must be True or False")
        if "temperature" in config:  # NT-Xent's; any other loss's config may still hold one
            check_number("config loss.temperature", config.temperature, above=0)
        if chunked and not self.has_chunked_form:
            raise ValueError(
                f"config loss.chunked=True: the {config.kind} loss has no chunked form "
                "(a loss declares one with has_chunked_form)"
            )
        self.config = config

    @abc.abstractmethod
    def __call__(self, a: jax.Array, b: jax.Array, scalars: Scalars) -> jax.Array:
        """The loss of one pair of modalities (a scalar)."""

    def forward_flops(self, batch: int, dim: int) -> int:
        """Matmul FLOPs of one pair's loss, forward: the [B, B] similarities of `a` and `b`."""
        return 2 * batch * batch * dim

    def similarity_scale(self, scalars: Scalars) -> jax.Array:
        """What multiplies cosine similarities into zero-shot logits: exp(logit_scale)."""
        return jnp.exp(scalars["logit_scale"])

    def metrics(self, scalars: Scalars) -> dict[str, jax.Array]:
        """Scalars worth logging at every step."""
        return {"temperature": 1.0 / self.similarity_scale(scalars)}
