"""Contrastive losses by `config.loss.kind`, and FocusCLIP's weighted sum over modality pairs.

Losses are written over the global batch (XLA inserts the gathers). To add one: a file with a
`ContrastiveLoss` subclass (see `base.py`) and a line in `LOSSES`.
"""

from collections.abc import Mapping, Sequence

import jax
import ml_collections

from focusclip_jax.losses.base import ContrastiveLoss, Scalar, Scalars
from focusclip_jax.losses.clip import CLIP, clip_infonce
from focusclip_jax.losses.nt_xent import NTXent, nt_xent
from focusclip_jax.losses.siglip import SigLIP, chunked_sigmoid_loss, sigmoid_loss
from focusclip_jax.models.focusclip import MODALITIES

__all__ = [
    "ContrastiveLoss",
    "Scalar",
    "Scalars",
    "chunked_sigmoid_loss",
    "clip_infonce",
    "nt_xent",
    "sigmoid_loss",
]

LOSSES: dict[str, type[ContrastiveLoss]] = {
    "nt_xent": NTXent,
    "clip": CLIP,
    "siglip": SigLIP,
}

Pair = tuple[str, str]


def create(config: ml_collections.ConfigDict) -> ContrastiveLoss:
    """The loss `config.loss` describes; an unknown kind lists the registered ones."""
    if config.kind not in LOSSES:
        raise ValueError(f"config loss.kind={config.kind!r}: expected one of {sorted(LOSSES)}")
    return LOSSES[config.kind](config)


def check_pairs(config: ml_collections.ConfigDict) -> None:
    """`loss.pairs`: at least one pair of two different modalities, one weight each."""
    pairs = [tuple(pair) for pair in config.pairs]
    if not pairs or len(pairs) != len(config.weights):
        raise ValueError(
            f"config loss.pairs ({len(pairs)}) and loss.weights ({len(config.weights)}): one "
            "weight per pair, at least one pair"
        )
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(MODALITIES):
            raise ValueError(f"config loss.pairs: {pair} is not a pair of two of {MODALITIES}")


def scalars_of(params: Mapping[str, object], loss: ContrastiveLoss) -> dict[str, jax.Array]:
    """The loss's scalars from a model's parameters (a pure dict): its logit scale and the
    scalars the loss declared, kept at the top level."""
    return {name: params[name] for name in ("logit_scale", *loss.scalars)}


def focusclip_loss(
    embeddings: Mapping[str, jax.Array],
    scalars: Scalars,
    *,
    pairs: Sequence[Pair],
    weights: Sequence[float],
    loss: ContrastiveLoss,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of a contrastive loss over the configured embedding pairs.

    Returns the total and each pair's (unweighted) loss under `loss/<a>_<b>`, for logging.
    """
    if len(pairs) != len(weights):
        raise ValueError(f"loss.pairs has {len(pairs)} entries but loss.weights {len(weights)}")
    per_pair = {f"loss/{a}_{b}": loss(embeddings[a], embeddings[b], scalars) for a, b in pairs}
    total = sum(w * value for w, value in zip(weights, per_pair.values(), strict=True))
    return total, per_pair
