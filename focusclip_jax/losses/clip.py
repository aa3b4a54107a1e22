"""CLIP's symmetric InfoNCE with the model's learnable logit scale (the CLIP baseline's loss)."""

import jax
import jax.numpy as jnp
import optax

from focusclip_jax.losses.base import ContrastiveLoss, Scalars


def clip_infonce(a: jax.Array, b: jax.Array, scale: jax.Array | float) -> jax.Array:
    """CLIP's symmetric cross-modal InfoNCE over `scale * cos` (scale = exp(logit_scale))."""
    logits = scale * (a.astype(jnp.float32) @ b.astype(jnp.float32).T)
    labels = jnp.arange(a.shape[0])
    a_to_b = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    b_to_a = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return (a_to_b + b_to_a) / 2


class CLIP(ContrastiveLoss):
    """Scale exp(logit_scale), learnt, the log clamped to [0, log 100] by the model."""

    def __call__(self, a: jax.Array, b: jax.Array, scalars: Scalars) -> jax.Array:
        return clip_infonce(a, b, self.similarity_scale(scalars))
