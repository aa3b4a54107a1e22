"""SigLIP's sigmoid loss (Zhai et al. 2023): every image-text pair is its own binary problem.

`loss = -1/B Σ_ij log σ(z_ij (t a_i·b_j + b))`, z_ij = 1 on the diagonal and -1 elsewhere, with
t = exp(logit_scale) (the model's, the paper's t' = log 10 at `:siglip`) and a learnable bias b
that starts at -10. `loss.chunked` picks the implementation; both give the same loss and
gradients: over the gathered batch (each of n devices holds its B/n rows against all B columns,
and all of `b`), or chunked, as the paper's Figure 1: each device keeps its rows of `a` and passes
its shard of `b` around the ring of the batch axes (`jax.lax.ppermute`), holding B/n × B/n
logits at a time.
"""

import functools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec

from focusclip_jax import sharding
from focusclip_jax.losses.base import ContrastiveLoss, Scalar, Scalars


def _pair_terms(a: jax.Array, b: jax.Array, scale: jax.Array, bias: jax.Array, own: bool):
    """Σ_ij -log σ(z_ij logits_ij) over one block; the diagonal is positive if `own`."""
    logits = scale * (a.astype(jnp.float32) @ b.astype(jnp.float32).T) + bias
    signs = -jnp.ones_like(logits)
    if own:
        signs = signs + 2 * jnp.eye(*logits.shape, dtype=logits.dtype)
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits))


def sigmoid_loss(a: jax.Array, b: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """Over the whole (gathered) batch: XLA gathers `b` to every device."""
    return _pair_terms(a, b, scale, bias, own=True) / a.shape[0]


def chunked_sigmoid_loss(
    a: jax.Array, b: jax.Array, scale: jax.Array, bias: jax.Array
) -> jax.Array:
    """The same loss with `b`'s shards passed around the batch axes of the context mesh (the
    mesh the step is compiled for); without one, or with one batch shard, `sigmoid_loss`."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else sharding.batch_axes(mesh)
    shards = math.prod(mesh.shape[axis] for axis in axes) if axes else 1
    if shards == 1 or a.shape[0] % shards:
        return sigmoid_loss(a, b, scale, bias)
    ring = [(i, (i + 1) % shards) for i in range(shards)]
    # Recomputed in the backward pass: otherwise autodiff keeps every step's logits block, as
    # many as the gathered loss holds; the loop then saves only the visiting shards of `b`.
    other_terms = jax.checkpoint(functools.partial(_pair_terms, own=False))

    def local(a: jax.Array, b: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
        def visit(_: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            total, visiting = carry
            visiting = jax.lax.ppermute(visiting, axes, ring)
            return total + other_terms(a, visiting, scale, bias), visiting

        own = _pair_terms(a, b, scale, bias, own=True)
        total, _ = jax.lax.fori_loop(1, shards, visit, (own, b))
        return jax.lax.psum(total, axes)

    rows = PartitionSpec(axes)
    total = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(rows, rows, PartitionSpec(), PartitionSpec()),
        out_specs=PartitionSpec(),
    )(a, b, scale, bias)
    return total / a.shape[0]


class SigLIP(ContrastiveLoss):
    """Learnable scale exp(logit_scale) and bias `logit_bias` (declared: the model carries it)."""

    scalars: ClassVar[dict[str, Scalar]] = {"logit_bias": Scalar(-10.0)}
    has_chunked_form: ClassVar[bool] = True

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        super().__init__(config)
        self.implementation = chunked_sigmoid_loss if config.chunked else sigmoid_loss

    def __call__(self, a: jax.Array, b: jax.Array, scalars: Scalars) -> jax.Array:
        scale = self.similarity_scale(scalars)
        return self.implementation(a, b, scale, scalars["logit_bias"].astype(jnp.float32))

    def metrics(self, scalars: Scalars) -> dict[str, jax.Array]:
        return super().metrics(scalars) | {"logit_bias": scalars["logit_bias"]}
