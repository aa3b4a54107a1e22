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
from input_pipeline.errors import check_number

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
    """`loss.pairs`: at least one pair of two different modalities; `loss.weights`: one finite
    weight >= 0 per pair, not all 0."""
    pairs, weights = tuple(config.pairs), tuple(config.weights)
    if not pairs:
        raise ValueError("config loss.pairs=(): at least one pair of modalities")
    for pair in pairs:
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or pair[0] == pair[1]
            or not set(pair) <= set(MODALITIES)
        ):
            raise ValueError(f"config loss.pairs: {pair!r} is not a pair of two of {MODALITIES}")
    if len(weights) != len(pairs):
        raise ValueError(
            f"config loss.weights={weights!r}: one weight per pair of loss.pairs ({len(pairs)})"
        )
    for weight in weights:
        try:
            check_number("weight", weight, at_least=0)
        except ValueError as error:
            raise ValueError(f"config loss.weights={weights!r}: {error}") from None
    if not any(weights):
        raise ValueError(f"config loss.weights={weights!r}: all 0, nothing would be learnt")


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
