"""Losses against naive numpy implementations written from their definitions."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from focusclip_jax import losses


def _normalized(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def naive_nt_xent(a: np.ndarray, b: np.ndarray, temperature: float) -> float:
    """pytorch-metric-learning NTXentLoss via SelfSupervisedLoss, anchor by anchor.

    Samples: [a; b] with labels [0..B-1, 0..B-1]. For each anchor i and its positive j (same
    label, j != i): -log(exp(s_ij/t) / (exp(s_ij/t) + sum over k with another label exp(s_ik/t))),
    averaged over all positive pairs.
    """
    z = np.concatenate([a, b])
    labels = np.concatenate([np.arange(len(a)), np.arange(len(b))])
    terms = []
    for i in range(len(z)):
        for j in range(len(z)):
            if i == j or labels[i] != labels[j]:
                continue
            positive = math.exp(z[i] @ z[j] / temperature)
            negatives = sum(
                math.exp(z[i] @ z[k] / temperature) for k in range(len(z)) if labels[k] != labels[i]
            )
            terms.append(-math.log(positive / (positive + negatives)))
    return float(np.mean(terms))


def naive_clip(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    logits = scale * a @ b.T

    def cross_entropy(rows: np.ndarray) -> float:
        return float(np.mean([-(r[i] - np.log(np.sum(np.exp(r)))) for i, r in enumerate(rows)]))

    return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_naive_definition(temperature: float) -> None:
    rng = np.random.default_rng(0)
    a, b = _normalized(rng, 6, 5), _normalized(rng, 6, 5)
    got = float(losses.nt_xent(jnp.asarray(a), jnp.asarray(b), temperature))
    assert got == pytest.approx(naive_nt_xent(a, b, temperature), rel=1e-5)


def test_nt_xent_counts_same_modality_negatives() -> None:
    """Same-modality negatives make NT-Xent differ from the cross-modal-only loss."""
    rng = np.random.default_rng(1)
    a, b = _normalized(rng, 4, 8), _normalized(rng, 4, 8)
    got = float(losses.nt_xent(jnp.asarray(a), jnp.asarray(b), 0.5))
    # Cross-modal only, at the same temperature: CLIP's loss with scale 1 / t.
    cross_modal_only = naive_clip(a, b, 1 / 0.5)
    assert abs(got - cross_modal_only) > 0.05
    assert got == pytest.approx(naive_nt_xent(a, b, 0.5), rel=1e-5)


def test_clip_infonce_matches_naive_definition() -> None:
    rng = np.random.default_rng(2)
    a, b = _normalized(rng, 5, 7), _normalized(rng, 5, 7)
    got = float(losses.clip_infonce(jnp.asarray(a), jnp.asarray(b), 14.3))
    assert got == pytest.approx(naive_clip(a, b, 14.3), rel=1e-5)


def test_clip_infonce_is_symmetric_and_log_b_at_zero_scale() -> None:
    rng = np.random.default_rng(3)
    a, b = jnp.asarray(_normalized(rng, 8, 4)), jnp.asarray(_normalized(rng, 8, 4))
    assert float(losses.clip_infonce(a, b, 3.0)) == pytest.approx(
        float(losses.clip_infonce(b, a, 3.0)), rel=1e-6
    )
    assert float(losses.clip_infonce(a, b, 0.0)) == pytest.approx(math.log(8), rel=1e-6)


def test_focusclip_loss_is_weighted_sum_over_pairs() -> None:
    rng = np.random.default_rng(4)
    emb = {k: jnp.asarray(_normalized(rng, 4, 6)) for k in ("image", "focused", "text")}
    pairs = (("focused", "image"), ("focused", "text"), ("image", "text"))
    total, per_pair = losses.focusclip_loss(
        emb,
        {"logit_scale": jnp.asarray(1.0)},
        pairs=pairs,
        weights=(1.0, 2.0, 0.5),
        loss=losses.create(ml_collections.ConfigDict({"kind": "nt_xent", "temperature": 0.5})),
    )
    expected = {
        f"loss/{x}_{y}": naive_nt_xent(np.asarray(emb[x]), np.asarray(emb[y]), 0.5)
        for x, y in pairs
    }
    assert {k: float(v) for k, v in per_pair.items()} == pytest.approx(expected, rel=1e-5)
    weighted = sum(w * v for w, v in zip((1.0, 2.0, 0.5), expected.values(), strict=True))
    assert float(total) == pytest.approx(weighted, rel=1e-5)


def test_clip_pair_loss_gradient_reaches_the_scale() -> None:
    rng = np.random.default_rng(5)
    a, b = jnp.asarray(_normalized(rng, 4, 6)), jnp.asarray(_normalized(rng, 4, 6))
    clip = losses.create(ml_collections.ConfigDict({"kind": "clip", "temperature": 0.5}))
    grad = jax.grad(lambda s: clip(a, b, {"logit_scale": s}))(jnp.asarray(np.log(5.0)))
    assert np.isfinite(grad) and abs(float(grad)) > 1e-4
    assert float(clip(a, b, {"logit_scale": jnp.log(3.0)})) == pytest.approx(
        float(losses.clip_infonce(a, b, 3.0)), rel=1e-6
    )
    assert float(clip.metrics({"logit_scale": jnp.log(4.0)})["temperature"]) == pytest.approx(0.25)


def test_losses_are_built_from_config_and_check_their_keys() -> None:
    def config(**keys):
        return ml_collections.ConfigDict({"kind": "nt_xent", "temperature": 0.5, **keys})

    nt_xent = losses.create(config())
    # NT-Xent's fixed temperature is its zero-shot scale; the model's logit scale is unused.
    assert float(nt_xent.similarity_scale({"logit_scale": jnp.asarray(9.0)})) == 2.0
    assert float(nt_xent.metrics({"logit_scale": jnp.asarray(9.0)})["temperature"]) == 0.5
    with pytest.raises(ValueError, match=r"loss\.temperature=0"):
        losses.create(config(temperature=0))
    with pytest.raises(ValueError, match=r"loss\.kind='triplet'.*'clip', 'nt_xent'"):
        losses.create(config(kind="triplet"))
