"""Contrastive losses of FocusCLIP, written over the global batch (XLA inserts the gathers).

Embeddings passed in are already L2-normalised, so a dot product is a cosine similarity.
"""

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

Pair = tuple[str, str]


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


def clip_infonce(a: jax.Array, b: jax.Array, scale: jax.Array | float) -> jax.Array:
    """CLIP's symmetric cross-modal InfoNCE over `scale * cos` (scale = exp(logit_scale))."""
    logits = scale * (a.astype(jnp.float32) @ b.astype(jnp.float32).T)
    labels = jnp.arange(a.shape[0])
    a_to_b = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    b_to_a = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    return (a_to_b + b_to_a) / 2


PairLoss = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def pair_loss(kind: str, temperature: float) -> PairLoss:
    """The per-pair loss `loss(a, b, scale)` for a config's `loss.kind`.

    `nt_xent` uses the fixed `temperature` (the paper's 0.5) and ignores the learnable scale;
    `clip` uses the model's learnable scale exp(logit_scale), clamped at 100.
    """
    if kind == "nt_xent":
        return lambda a, b, scale: nt_xent(a, b, temperature)
    if kind == "clip":
        return clip_infonce
    raise ValueError(f"config loss.kind={kind!r}: expected 'nt_xent' or 'clip'")


def focusclip_loss(
    embeddings: Mapping[str, jax.Array],
    scale: jax.Array,
    *,
    pairs: Sequence[Pair],
    weights: Sequence[float],
    loss_fn: PairLoss,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of a contrastive loss over the configured embedding pairs.

    Returns the total and each pair's (unweighted) loss under `loss/<a>_<b>`, for logging.
    """
    if len(pairs) != len(weights):
        raise ValueError(f"loss.pairs has {len(pairs)} entries but loss.weights {len(weights)}")
    per_pair = {f"loss/{a}_{b}": loss_fn(embeddings[a], embeddings[b], scale) for a, b in pairs}
    total = sum(w * value for w, value in zip(weights, per_pair.values(), strict=True))
    return total, per_pair
