"""timm and big_vision ViT checkpoints ↔ our `ViT` (class token, learned positions, no head).

timm (`vit_base_patch16_224` and the other sizes; `.safetensors`, or `.pth` with torch) stores
PyTorch layouts: a fused `qkv` Linear and a patch conv `[width, 3, p, p]`. big_vision `.npz`
(the AugReg checkpoints) is already in Flax layout. A checkpoint trained at another resolution
gets its position grid resampled as timm does (bicubic, antialiased).
"""

from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from focusclip_jax.weights import common
from focusclip_jax.weights.common import Mapped, ParamPath


def resize_pos_embed(
    pos_embed: np.ndarray, num_positions: int, method: str = "bicubic", antialias: bool = True
) -> np.ndarray:
    """`[1 + g·g, D]` (class token first) → `[num_positions, D]` on a square grid.

    The default matches timm's `resample_abs_pos_embed` (torch bicubic with antialias, which uses
    the Keys a = -0.5 kernel and renormalises at the borders, as `jax.image.resize` does).
    """
    if pos_embed.shape[0] == num_positions:
        return pos_embed
    old, new = _grid(pos_embed.shape[0] - 1), _grid(num_positions - 1)
    grid = pos_embed[1:].reshape(old, old, -1).astype(np.float32)
    resized = jax.image.resize(grid, (new, new, grid.shape[-1]), method, antialias=antialias)
    return np.concatenate([pos_embed[:1], np.asarray(resized).reshape(new * new, -1)])


def _grid(num_patches: int) -> int:
    side = round(num_patches**0.5)
    if side * side != num_patches:
        raise common.WeightImportError(f"{num_patches} patch positions do not form a square grid")
    return side


def _patch_kernel(conv: np.ndarray) -> np.ndarray:
    """Conv `[width, 3, p, p]` → Linear `[(row, col, channel), width]` as `ViT.patchify` orders."""
    width, channels, p, _ = conv.shape
    return conv.transpose(2, 3, 1, 0).reshape(p * p * channels, width)


def patch_conv(kernel: np.ndarray) -> np.ndarray:
    """Inverse of `_patch_kernel`: Linear `[p·p·3, width]` → conv `[width, 3, p, p]`."""
    width = kernel.shape[1]
    patch = round((kernel.shape[0] // 3) ** 0.5)
    return kernel.reshape(patch, patch, 3, width).transpose(3, 2, 0, 1)


def _mapped_blocks(
    tensors: Mapping[str, np.ndarray],
    prefix: str,
    names: Mapping[str, str],
    heads: int,
    depth: int,
    source: str,
) -> Mapped:
    """Pre-norm blocks with fused `[3·width, width]` qkv (timm `blocks.i`, CLIP `resblocks.i`)."""
    out: Mapped = {}
    for i in range(depth):
        blk = f"{prefix}{i}."
        qkv_name = blk + names["qkv"]
        qkv_w = common.take(tensors, f"{qkv_name}{names['qkv_w']}", source)
        qkv_b = common.take(tensors, f"{qkv_name}{names['qkv_b']}", source)
        for j, part in enumerate(("query", "key", "value")):
            w = np.split(qkv_w, 3)[j]
            kernel = common.split_heads_in(w, heads)
            out[("blocks", i, "attn", part, "kernel")] = (qkv_name + names["qkv_w"], kernel)
            out[("blocks", i, "attn", part, "bias")] = (
                qkv_name + names["qkv_b"],
                np.split(qkv_b, 3)[j].reshape(heads, -1),
            )
        for ours, key in (("out", "proj"), ("fc1", "fc1"), ("fc2", "fc2")):
            name = blk + names[key]
            w = common.take(tensors, f"{name}.weight", source)
            kernel = common.split_heads_out(w, heads) if ours == "out" else w.T
            path = ("blocks", i, "attn" if ours == "out" else "mlp", ours)
            out[(*path, "kernel")] = (f"{name}.weight", kernel)
            out[(*path, "bias")] = common.entry(tensors, f"{name}.bias", source)
        for ours in ("norm1", "norm2"):
            name = blk + names[ours]
            out[("blocks", i, ours, "scale")] = common.entry(tensors, f"{name}.weight", source)
            out[("blocks", i, ours, "bias")] = common.entry(tensors, f"{name}.bias", source)
    return out


def block_tensors(
    params: Mapping[ParamPath, np.ndarray], prefix: str, names: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Inverse of `_mapped_blocks`: per-block parameters → fused-qkv PyTorch tensors."""
    out = {}
    for i in range(common.num_blocks(params)):
        blk, b = f"{prefix}{i}.", ("blocks", i)
        parts = ("query", "key", "value")
        qkv = blk + names["qkv"]
        out[qkv + names["qkv_w"]] = np.concatenate(
            [common.merge_heads_in(params[(*b, "attn", x, "kernel")]) for x in parts]
        )
        out[qkv + names["qkv_b"]] = np.concatenate(
            [params[(*b, "attn", x, "bias")].reshape(-1) for x in parts]
        )
        proj = blk + names["proj"]
        out[f"{proj}.weight"] = common.merge_heads_out(params[(*b, "attn", "out", "kernel")])
        out[f"{proj}.bias"] = params[(*b, "attn", "out", "bias")]
        for ours in ("fc1", "fc2"):
            out[f"{blk}{names[ours]}.weight"] = params[(*b, "mlp", ours, "kernel")].T
            out[f"{blk}{names[ours]}.bias"] = params[(*b, "mlp", ours, "bias")]
        for ours in ("norm1", "norm2"):
            out[f"{blk}{names[ours]}.weight"] = params[(*b, ours, "scale")]
            out[f"{blk}{names[ours]}.bias"] = params[(*b, ours, "bias")]
    return out


TIMM_BLOCK = dict(
    qkv="attn.qkv",
    qkv_w=".weight",
    qkv_b=".bias",
    proj="attn.proj",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
    norm1="norm1",
    norm2="norm2",
)


def to_params(
    tensors: Mapping[str, np.ndarray], target: Mapping[ParamPath, object], source: str
) -> Mapped:
    """timm VisionTransformer tensors → `ViT` parameters shaped like `target` (a flat tree)."""
    tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    if "reg_token" in tensors or "cls_token" not in tensors:
        raise common.WeightImportError(
            f"{source}: expected a class-token ViT without register tokens (timm `vit_*`)"
        )
    if "fc_norm.weight" in tensors:
        raise common.WeightImportError(
            f"{source}: an average-pooled ViT (fc_norm); our ViT pools the class token"
        )
    has_pre_norm = ("pre_norm", "scale") in target
    if ("norm_pre.weight" in tensors) != has_pre_norm:
        raise common.WeightImportError(
            f"{source}: the checkpoint {'has' if 'norm_pre.weight' in tensors else 'lacks'} a "
            f"LayerNorm before the blocks (timm norm_pre) and the model "
            f"{'has' if has_pre_norm else 'lacks'} one (model.image.pre_norm)"
        )
    heads, depth = common.num_heads(target), common.num_blocks(target)
    out = _mapped_blocks(tensors, "blocks.", TIMM_BLOCK, heads, depth, source)
    if has_pre_norm:  # timm's CLIP ViTs (vit_*_clip_*)
        out[("pre_norm", "scale")] = common.entry(tensors, "norm_pre.weight", source)
        out[("pre_norm", "bias")] = common.entry(tensors, "norm_pre.bias", source)
    conv = common.take(tensors, "patch_embed.proj.weight", source)
    out[("patch_embed", "kernel")] = ("patch_embed.proj.weight", _patch_kernel(conv))
    if ("patch_embed", "bias") in target:
        bias = common.take(tensors, "patch_embed.proj.bias", source)
        out[("patch_embed", "bias")] = ("patch_embed.proj.bias", bias)
    out[("cls_token",)] = ("cls_token", common.take(tensors, "cls_token", source).reshape(-1))
    pos = common.take(tensors, "pos_embed", source)[0]
    out[("pos_embed",)] = ("pos_embed", resize_pos_embed(pos, np.shape(target[("pos_embed",)])[0]))
    out[("norm", "scale")] = ("norm.weight", common.take(tensors, "norm.weight", source))
    out[("norm", "bias")] = ("norm.bias", common.take(tensors, "norm.bias", source))
    return out


def from_params(params: Mapping[ParamPath, np.ndarray]) -> dict[str, np.ndarray]:
    """`ViT` parameters (flat) → timm names, for `VisionTransformer(num_classes=0)`."""
    p = {k: np.asarray(v) for k, v in params.items()}
    out = {
        "cls_token": p[("cls_token",)][None, None],
        "pos_embed": p[("pos_embed",)][None],
        "patch_embed.proj.weight": patch_conv(p[("patch_embed", "kernel")]),
        "norm.weight": p[("norm", "scale")],
        "norm.bias": p[("norm", "bias")],
    }
    if ("patch_embed", "bias") in p:
        out["patch_embed.proj.bias"] = p[("patch_embed", "bias")]
    if ("pre_norm", "scale") in p:
        out["norm_pre.weight"] = p[("pre_norm", "scale")]
        out["norm_pre.bias"] = p[("pre_norm", "bias")]
    out |= block_tensors(p, "blocks.", TIMM_BLOCK)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def save(params: Mapping[ParamPath, np.ndarray], path: str | Path) -> None:
    """Writes a timm-loadable `.safetensors` (`timm.create_model(..., num_classes=0)`)."""
    common.write_tensors(from_params(params), path, {"format": "pt"})


def big_vision_to_params(
    tensors: Mapping[str, np.ndarray], target: Mapping[ParamPath, object], source: str
) -> Mapped:
    """ViT `.npz` in Flax layout → `ViT` parameters, read as timm's `_load_weights` reads it.

    Both the AugReg files (google-research/vision_transformer: `MultiHeadDotProductAttention_1`,
    `MlpBlock_3`, `LayerNorm_2`) and big_vision's (`..._0`, `LayerNorm_1`, blocks stacked under
    `Transformer/encoderblock/` when scanned), under an optional `params/` or `opt/target/` prefix.
    A position grid of another size is resampled bilinearly, as timm does for these files.
    """
    prefix = next(
        (
            p
            for p in ("", "opt/target/", "params/", "params/img/")
            if f"{p}embedding/kernel" in tensors
        ),
        None,
    )
    if prefix is None:
        raise common.WeightImportError(f"{source}: no 'embedding/kernel'; not a ViT .npz")
    g = lambda key: common.entry(tensors, prefix + key, source)
    scanned = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in tensors
    big_vision = scanned or prefix.startswith("params/") or f"{prefix}pos_embedding" in tensors
    mha, mlp, ln2 = ("_0", "_0", "_1") if big_vision else ("_1", "_3", "_2")
    out: Mapped = {}
    for i in range(common.num_blocks(target)):
        blk = "Transformer/encoderblock/" if scanned else f"Transformer/encoderblock_{i}/"
        names = {
            ("attn", part, leaf): f"MultiHeadDotProductAttention{mha}/{part}/{leaf}"
            for part in ("query", "key", "value", "out")
            for leaf in ("kernel", "bias")
        }
        for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            for leaf in ("kernel", "bias"):
                names[("mlp", ours, leaf)] = f"MlpBlock{mlp}/{theirs}/{leaf}"
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", f"LayerNorm{ln2}")):
            for leaf in ("scale", "bias"):
                names[(ours, leaf)] = f"{theirs}/{leaf}"
        for path, name in names.items():
            key, value = g(blk + name)
            out[("blocks", i, *path)] = (key, value[i] if scanned else value)
    key, kernel = g("embedding/kernel")
    out[("patch_embed", "kernel")] = (key, kernel.reshape(-1, kernel.shape[-1]))
    out[("patch_embed", "bias")] = g("embedding/bias")
    key, cls = g("cls")
    out[("cls_token",)] = (key, cls.reshape(-1))
    key, pos = g("pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding")
    size = np.shape(target[("pos_embed",)])[0]
    out[("pos_embed",)] = (key, resize_pos_embed(pos[0], size, "bilinear", antialias=False))
    out[("norm", "scale")] = g("Transformer/encoder_norm/scale")
    out[("norm", "bias")] = g("Transformer/encoder_norm/bias")
    return out
