"""Optimisers from config: the paper's SGD with momentum, and AdamW with warmup + cosine."""

from typing import Any

import jax
import ml_collections
import optax


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """`optimizer.schedule`: `constant` (paper) or `warmup_cosine` (linear warmup, cosine to 0)."""
    if opt.schedule == "constant":
        return optax.constant_schedule(opt.learning_rate)
    if opt.schedule == "warmup_cosine":
        warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=opt.learning_rate,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=0.0,
        )
    raise ValueError(
        f"config optimizer.schedule={opt.schedule!r}: expected constant or warmup_cosine"
    )


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices and embedding tables only: not biases, norms, alpha, temperature.

    By name, not rank: attention biases are [heads, head_dim] and scanned blocks add a layer axis.
    """
    decayed = ("kernel", "embedding", "pos_embed")
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in decayed, params)


def make_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Gradient clipping by global norm, then the configured optimiser."""
    schedule = learning_rate_schedule(opt, total_steps)
    if opt.name == "sgd":
        core = optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
        )
    elif opt.name == "adamw":
        core = optax.adamw(
            schedule,
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            mask=decay_mask,
        )
    else:
        raise ValueError(f"config optimizer.name={opt.name!r}: expected sgd or adamw")
    clip = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm > 0 else []
    return optax.chain(*clip, core), schedule
