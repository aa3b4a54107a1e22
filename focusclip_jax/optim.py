"""Optimisers from config: the paper's SGD with momentum, and AdamW with warmup + cosine;
parameters matching `train.frozen` are left out of both (no update, no optimiser state)."""

import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import optax

from input_pipeline.errors import check_choice, check_number

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "warmup_cosine")


def check_options(opt: ml_collections.ConfigDict) -> None:
    """Every key of `config.optimizer`, whichever optimiser reads it (a value set for the other
    one is still a mistake): ValueError naming the first bad one."""
    key = lambda name: f"config optimizer.{name}"
    check_choice(key("name"), opt.name, OPTIMIZERS)
    check_choice(key("schedule"), opt.schedule, SCHEDULES)
    check_number(key("learning_rate"), opt.learning_rate, above=0)
    check_number(key("warmup_steps"), opt.warmup_steps, integer=True, at_least=0)
    check_number(key("weight_decay"), opt.weight_decay, at_least=0)
    check_number(key("grad_clip_norm"), opt.grad_clip_norm, at_least=0)  # 0: no clipping
    for name in ("momentum", "b1", "b2"):
        if name in opt:
            check_number(key(name), opt[name], at_least=0, below=1)
    if "eps" in opt:
        check_number(key("eps"), opt.eps, above=0)
    if "nesterov" in opt and not isinstance(opt.nesterov, bool):
        raise ValueError(f"{key('nesterov')}={opt.nesterov!r}: must be True or False")


def learning_rate_schedule(opt: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """`optimizer.schedule` (checked by `check_options`): `constant` (paper) or `warmup_cosine`
    (linear warmup, cosine to 0)."""
    if opt.schedule == "constant":
        return optax.constant_schedule(opt.learning_rate)
    warmup = min(opt.warmup_steps, max(total_steps - 1, 0))  # warmup_cosine (`check_options`)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=0.0,
    )


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices and embedding tables only: not biases, norms, alpha, temperature.

    By name, not rank: attention biases are [heads, head_dim] and scanned blocks add a layer axis.
    """
    decayed = ("kernel", "embedding", "pos_embed")
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in decayed, params)


def parameter_path(path: tuple[Any, ...]) -> str:
    """A parameter's '/'-joined path, as `train.frozen` patterns match it (`image_tower/...`)."""
    return "/".join(str(getattr(key, "key", key)) for key in path)


def frozen_mask(params: Any, patterns: Sequence[str]) -> Any:
    """True for each parameter whose path matches one of the regular expressions (in full)."""
    compiled = [re.compile(pattern) for pattern in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(p.fullmatch(parameter_path(path)) for p in compiled), params
    )


def check_frozen(params: Any, patterns: Sequence[str]) -> None:
    """Each pattern must be a regular expression that matches at least one parameter."""
    paths = [parameter_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(
                f"config train.frozen: {pattern!r} is no regular expression (a string)"
            )
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"config train.frozen: {pattern!r} is no regular expression ({error})"
            ) from None
        if not any(compiled.fullmatch(path) for path in paths):
            raise ValueError(
                f"config train.frozen: {pattern!r} matches no parameter (paths look like "
                f"{paths[0]!r}; the tower prefixes are "
                f"{sorted({path.split('/')[0] for path in paths})})"
            )


def make_optimizer(
    opt: ml_collections.ConfigDict, total_steps: int, frozen: Sequence[str] = ()
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Gradient clipping by global norm, then the configured optimiser, over the parameters
    that `frozen` does not match; the frozen ones get zero updates and hold no state."""
    check_options(opt)
    schedule = learning_rate_schedule(opt, total_steps)
    if opt.name == "sgd":
        core = optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
        )
    else:  # adamw (check_options refused any other name)
        core = optax.adamw(
            schedule,
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            mask=decay_mask,
        )
    clip = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm > 0 else []
    trained = optax.chain(*clip, core)
    if not frozen:
        return trained, schedule
    labels = lambda params: jax.tree.map(
        lambda is_frozen: "frozen" if is_frozen else "trained", frozen_mask(params, frozen)
    )
    return optax.multi_transform(
        {"trained": trained, "frozen": optax.set_to_zero()}, labels
    ), schedule
