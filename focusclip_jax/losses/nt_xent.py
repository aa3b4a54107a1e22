"""NT-Xent with a fixed temperature: the paper's loss (pytorch-metric-learning's NTXentLoss)."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from focusclip_jax.losses.base import ContrastiveLoss, Scalars


def nt_xent(a: jax.Array, b: jax.Array, temperature: jax.Array | float) -> jax.Array:
    """NT-Xent over the 2B samples [a; b]: pytorch-metric-learning SelfSupervisedLoss(NTXentLoss).

    Each of the 2B samples is an anchor whose one positive is its partner in the other view; every
    other sample (same-modality ones included) is a negative. Mean over the 2B positive pairs.
    """
    batch = a.shape[0]
    z = jnp.concatenate([a, b], axis=0).astype(jnp.float32)
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * batch, dtype=bool), -jnp.inf, logits)
    positives = jnp.concatenate([jnp.arange(batch, 2 * batch), jnp.arange(batch)])
    return optax.softmax_cross_entropy_with_integer_labels(logits, positives).mean()


class NTXent(ContrastiveLoss):
    """`loss.temperature` (the paper's 0.5) is fixed; the model's logit scale is not used."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        super().__init__(config)  # checks `loss.temperature`
        self.temperature = float(config.temperature)

    def __call__(self, a: jax.Array, b: jax.Array, scalars: Scalars) -> jax.Array:
        return nt_xent(a, b, self.temperature)

    def forward_flops(self, batch: int, dim: int) -> int:
        """The [2B, 2B] similarities of [a; b] with themselves."""
        return 2 * (2 * batch) ** 2 * dim

    def similarity_scale(self, scalars: Scalars) -> jax.Array:
        return jnp.asarray(1.0 / self.temperature, jnp.float32)
