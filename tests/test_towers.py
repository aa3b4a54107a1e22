"""Towers against naive float64 numpy forward passes that read the same parameters.

The references below are written from the papers/reference libraries, not from `layers.py`: plain
loops over heads and positions, our own LayerNorm, softmax and erf GELU. Parameters are randomised
(not left at init, where LayerNorms are identity and attention is near-uniform) so that a swapped
scale/bias or a missing mask shows up.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from focusclip_jax.models import text, towers, vit

ALLOWED_AXES = {"embed", "mlp", "heads", "kv", "vocab", "patch", "pos", None}


# ----------------------------------------------------------------------------- numpy reference


def np_layernorm(x: np.ndarray, p: dict, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def np_quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-1.702 * x))


def np_attention(x: np.ndarray, p: dict, allowed: np.ndarray) -> np.ndarray:
    """x: [L, D]; allowed[t, s]: query t may attend key s. Heads handled one at a time."""
    length, width = x.shape
    heads = p["query"]["kernel"].shape[1]
    dh = width // heads
    out = np.zeros((length, width))
    for h in range(heads):
        q = x @ p["query"]["kernel"][:, h] + p["query"]["bias"][h]
        k = x @ p["key"]["kernel"][:, h] + p["key"]["bias"][h]
        v = x @ p["value"]["kernel"][:, h] + p["value"]["bias"][h]
        for t in range(length):
            logits = np.array([q[t] @ k[s] / math.sqrt(dh) for s in range(length)])
            logits = np.where(allowed[t], logits, -np.inf)
            w = np.exp(logits - logits.max())
            w /= w.sum()
            out[t] += (w @ v) @ p["out"]["kernel"][h]
    return out + p["out"]["bias"]


def np_mlp(x: np.ndarray, p: dict, act) -> np.ndarray:
    h = act(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def np_vit(images: np.ndarray, p: dict, patch: int, eps: float = 1e-6) -> np.ndarray:
    feats = []
    for img in images:
        h, w, _ = img.shape
        patches = [
            img[i : i + patch, j : j + patch].reshape(-1)
            for i in range(0, h, patch)
            for j in range(0, w, patch)
        ]
        x = np.stack(patches) @ p["patch_embed"]["kernel"]
        if "bias" in p["patch_embed"]:
            x = x + p["patch_embed"]["bias"]
        x = np.concatenate([p["cls_token"][None], x]) + p["pos_embed"]
        if "pre_norm" in p:
            x = np_layernorm(x, p["pre_norm"], eps)
        allowed = np.ones((len(x), len(x)), bool)
        for b in p["blocks"].values():
            x = x + np_attention(np_layernorm(x, b["norm1"], eps), b["attn"], allowed)
            x = x + np_mlp(np_layernorm(x, b["norm2"], eps), b["mlp"], np_gelu)
        feats.append(np_layernorm(x[0], p["norm"], eps))
    return np.stack(feats)


def np_bert_hidden(tokens: np.ndarray, mask: np.ndarray, p: dict) -> np.ndarray:
    """Final hidden states [B, L, D] of a post-norm BERT (HF BertModel.last_hidden_state)."""
    eps = 1e-12
    out = []
    for tok, m in zip(tokens, mask, strict=True):
        length = len(tok)
        x = (
            p["token_embed"]["embedding"][tok]
            + p["pos_embed"]["embedding"][:length]
            + p["type_embed"]["embedding"][0]
        )
        x = np_layernorm(x, p["embed_norm"], eps)
        allowed = np.broadcast_to(m[None, :], (length, length))
        for b in p["blocks"].values():
            x = np_layernorm(x + np_attention(x, b["attn"], allowed), b["norm1"], eps)
            x = np_layernorm(x + np_mlp(x, b["mlp"], np_gelu), b["norm2"], eps)
        out.append(x)
    return np.stack(out)


def np_clip_text(tokens: np.ndarray, mask: np.ndarray, p: dict) -> np.ndarray:
    eps = 1e-5
    feats = []
    for tok, m in zip(tokens, mask, strict=True):
        length = len(tok)
        x = p["token_embed"]["embedding"][tok] + p["pos_embed"]["embedding"][:length]
        allowed = np.tril(np.ones((length, length), bool))
        for b in p["blocks"].values():
            x = x + np_attention(np_layernorm(x, b["norm1"], eps), b["attn"], allowed)
            x = x + np_mlp(np_layernorm(x, b["norm2"], eps), b["mlp"], np_quick_gelu)
        eot = int(m.sum()) - 1
        feats.append(np_layernorm(x[eot], p["final_norm"], eps))
    return np.stack(feats)


# ----------------------------------------------------------------------------- helpers


def randomize_and_read(model: nnx.Module, seed: int = 0) -> dict:
    """Sets every parameter to random values of a sensible scale; returns them as float64 numpy."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)

    def draw(x: jax.Array) -> jax.Array:
        std = 0.5 if x.ndim == 1 else 1.0 / math.sqrt(x.shape[0])
        return jnp.asarray(rng.normal(0.0, std, x.shape), x.dtype)

    nnx.update(model, jax.tree.map(draw, state))
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return jax.tree.map(lambda x: np.asarray(x, np.float64), pure)


def padded_batch(rng: np.random.Generator, lengths: list[int], max_len: int, vocab: int):
    tokens = rng.integers(1, vocab, size=(len(lengths), max_len)).astype(np.int32)
    mask = np.arange(max_len)[None, :] < np.asarray(lengths)[:, None]
    tokens[~mask] = 0
    return tokens, mask


def n_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def named_vit(size: str, image_size: int, **options) -> nnx.Module:
    """A ViT as `config.model.image = {name: vit, size, **options}` builds it."""
    sub_config = {"name": "vit", "size": size, **options}
    return towers.create("image", sub_config, image_size=image_size, rngs=nnx.Rngs(0))


def named_text(kind: str, size: str, **options) -> nnx.Module:
    return towers.create("text", {"name": kind, "size": size, **options}, rngs=nnx.Rngs(0))


def tiny_text(kind: str, **kw) -> nnx.Module:
    return named_text(kind, "tiny", vocab_size=50, max_len=12, **kw)


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("clip_style", [False, True])
def test_vit_matches_numpy_reference(clip_style: bool):
    model = named_vit("tiny", 16, pre_norm=clip_style, patch_bias=not clip_style)
    p = randomize_and_read(model)
    images = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    got = np.asarray(model(jnp.asarray(images)))
    assert got.shape == (2, model.width)
    np.testing.assert_allclose(got, np_vit(images.astype(np.float64), p, patch=8), atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "mean_with_padding", "cls"])
def test_bert_matches_numpy_reference(pooling: str):
    model = tiny_text("bert", pooling=pooling)
    p = randomize_and_read(model)
    tokens, mask = padded_batch(np.random.default_rng(2), [3, 7, 1], 7, 50)
    hidden = np_bert_hidden(tokens, mask, p)
    want = {
        "mean": (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True),
        "mean_with_padding": hidden.mean(1),
        "cls": hidden[:, 0],
    }[pooling]
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_causal_matches_numpy_reference():
    model = tiny_text("clip")
    p = randomize_and_read(model)
    tokens, mask = padded_batch(np.random.default_rng(3), [4, 9, 1], 9, 50)
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(got, np_clip_text(tokens, mask, p), atol=1e-5)


# ----------------------------------------------------------------------------- behaviour


def test_bert_pooling_and_padding():
    """'mean' ignores padded ids; 'mean_with_padding' sees them, as the original code did."""
    mean, with_pad = tiny_text("bert"), tiny_text("bert", pooling="mean_with_padding")
    nnx.update(with_pad, nnx.state(mean))
    rng = np.random.default_rng(4)
    tokens, mask = padded_batch(rng, [2, 5], 8, 50)
    other = np.where(mask, tokens, rng.integers(1, 50, tokens.shape)).astype(np.int32)
    outs = {
        name: [np.asarray(m(jnp.asarray(t), jnp.asarray(mask))) for t in (tokens, other)]
        for name, m in (("mean", mean), ("with_pad", with_pad))
    }
    np.testing.assert_allclose(outs["mean"][0], outs["mean"][1], atol=1e-6)
    assert np.abs(outs["with_pad"][0] - outs["with_pad"][1]).max() > 1e-3
    assert np.abs(outs["mean"][0] - outs["with_pad"][0]).max() > 1e-3


def test_causal_ignores_tokens_after_eot():
    model = tiny_text("clip")
    rng = np.random.default_rng(5)
    tokens, mask = padded_batch(rng, [3, 6], 8, 50)
    other = np.where(mask, tokens, rng.integers(1, 50, tokens.shape)).astype(np.int32)
    a = model(jnp.asarray(tokens), jnp.asarray(mask))
    b = model(jnp.asarray(other), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
    model = named_vit("tiny", 16, dtype=jnp.bfloat16)
    ref = named_vit("tiny", 16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype(np.float32)}
    images = jnp.asarray(np.random.default_rng(6).normal(size=(2, 16, 16, 3)), jnp.float32)
    out = model(images)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref(images)), atol=0.1)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"model.image.patch_size=8: must divide the image size"):
        named_vit("tiny", 20)
    with pytest.raises(ValueError, match=r"model.image.size='H/14': sizes of the vit tower"):
        named_vit("H/14", 224)
    with pytest.raises(ValueError, match=r"model.text.pooling: the clip tower has no such option"):
        tiny_text("clip", pooling="mean")
    with pytest.raises(ValueError, match=r"model.image.name='resnet': image towers are \['vit'\]"):
        towers.create("image", {"name": "resnet", "size": "50"}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"model.text.pooling='max': expected one of"):
        tiny_text("bert", pooling="max")
    with pytest.raises(ValueError, match="exceeds max_len"):
        tiny_text("clip")(jnp.zeros((1, 13), jnp.int32), jnp.ones((1, 13), bool))


# ----------------------------------------------------------------------------- sizes and axes


def vit_count(width: int, depth: int, mlp_dim: int, patch_size: int, image_size: int, **_) -> int:
    block = 4 * (width * width + width) + 2 * width * mlp_dim + mlp_dim + width + 4 * width
    tokens = (image_size // patch_size) ** 2 + 1
    patch = 3 * patch_size**2 * width + width
    return patch + width + tokens * width + depth * block + 2 * width


def text_count(
    kind: str, width: int, depth: int, mlp_dim: int, vocab_size: int, max_len: int, **_
) -> int:
    block = 4 * (width * width + width) + 2 * width * mlp_dim + mlp_dim + width + 4 * width
    embed = (vocab_size + max_len) * width
    if kind == "bert":
        embed += 2 * width  # segment table with 2 types
    return embed + depth * block + 2 * width  # + embedding LN (BERT) or final LN (CLIP)


@pytest.mark.parametrize("name", sorted(vit.VIT_SIZES))
def test_vit_sizes_build_abstractly(name: str):
    model = nnx.eval_shape(lambda: named_vit(name, 224))
    assert n_params(model) == vit_count(**vit.VIT_SIZES[name], image_size=224)
    assert model.width == vit.VIT_SIZES[name]["width"]


def test_vit_b16_matches_timm_count_and_shape():
    """timm vit_base_patch16_224 with num_classes=0 has 85,798,656 parameters."""
    model = nnx.eval_shape(lambda: named_vit("B/16", 224))
    assert n_params(model) == 85_798_656
    out = jax.eval_shape(
        lambda x: named_vit("B/16", 224)(x),
        jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32),
    )
    assert out.shape == (2, 768)


@pytest.mark.parametrize(
    ("kind", "size"),
    [
        ("bert", "bert-base"),
        ("bert", "minilm-l6"),
        ("clip", "clip-b"),
        ("bert", "tiny"),
        ("clip", "tiny"),
    ],
)
def test_text_sizes_build_abstractly(kind: str, size: str):
    model = nnx.eval_shape(lambda: named_text(kind, size))
    assert n_params(model) == text_count(kind, **text.TEXT_SIZES[size])


def test_known_text_counts():
    """HF bert-base-uncased: 109,482,240 incl. the 590,592-parameter pooler we do not build;
    OpenAI CLIP ViT-B text tower without `text_projection`: 63,165,952."""
    bert = nnx.eval_shape(lambda: named_text("bert", "bert-base"))
    assert n_params(bert) == 109_482_240 - 590_592 == 108_891_648
    clip = nnx.eval_shape(lambda: named_text("clip", "clip-b"))
    assert n_params(clip) == 63_165_952


def test_params_carry_logical_axes_without_mesh():
    for model in (
        named_vit("tiny", 16),
        tiny_text("bert"),
        tiny_text("clip"),
    ):
        state = nnx.state(model, nnx.Param)
        specs = jax.tree.leaves(
            nnx.get_partition_spec(state),
            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
        )
        arrays = jax.tree.leaves(state)
        assert len(specs) == len(arrays)
        for spec, array in zip(specs, arrays, strict=True):
            assert len(spec) == array.ndim and set(spec) <= ALLOWED_AXES
    spec = nnx.get_partition_spec(nnx.state(tiny_text("clip"), nnx.Param))
    assert tuple(spec["blocks"][0]["attn"]["query"]["kernel"].get_value()) == (
        "embed",
        "heads",
        "kv",
    )
    assert tuple(spec["token_embed"]["embedding"].get_value()) == ("vocab", "embed")


# ----------------------------------------------------------------------------- registry


class MeanColourTower(nnx.Module):
    """A toy image tower: each image's mean colour through one Linear (no blocks)."""

    def __init__(self, *, width: int, image_size: int, rngs: nnx.Rngs):
        self.width = width
        self.colour = nnx.Linear(3, width, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.colour(images.mean(axis=(1, 2)))


def test_a_tower_registered_from_a_test_builds_into_the_model(monkeypatch) -> None:
    """One registry line (no edit of the package) and `model.image.name` picks the tower; its
    size table and sub-config options reach it, the model-wide options it does not take are
    left out; the image embedding is the tower's numbers, projected and normalised."""
    from focusclip_jax import models

    kind = towers.TowerKind(MeanColourTower, {"s": {"width": 4}, "m": {"width": 6}})
    monkeypatch.setitem(towers.IMAGE_TOWERS, "mean_colour", kind)
    model = models.FocusCLIP(
        image_size=8,
        image={"name": "mean_colour", "size": "s", "width": 5},
        text={"name": "bert", "size": "tiny", "vocab_size": 20, "max_len": 6},
        embed_dim=3,
        scan_layers=True,  # model-wide options the toy tower does not take
        dtype=jnp.float32,
        pixel_mean=(0.5, 0.5, 0.5),
        rngs=nnx.Rngs(0),
    )
    assert isinstance(model.image_tower, MeanColourTower) and model.image_tower.width == 5
    images = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    colour = (images - 0.5).mean(axis=(1, 2)) @ np.asarray(model.image_tower.colour.kernel[...])
    colour += np.asarray(model.image_tower.colour.bias[...])
    projected = colour @ np.asarray(model.image_proj.kernel[...]) + np.asarray(
        model.image_proj.bias[...]
    )
    expected = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
    got = model.encode_image(jnp.asarray(images))
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"model\.image\.depth: the mean_colour tower has no such"):
        towers.create("image", {"name": "mean_colour", "size": "m", "depth": 2}, rngs=nnx.Rngs(0))
