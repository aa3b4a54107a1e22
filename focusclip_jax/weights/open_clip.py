"""OpenAI CLIP / open_clip checkpoints (ViT image tower, causal text tower, projections, scale).

Reads open_clip state dicts (`open_clip_pytorch_model.bin` needs torch; a `.safetensors` export
does not). Their projections are bias-free matrices applied as `x @ proj`: they become our
projection kernels with a zero bias. The towers must be built CLIP-style: ViT with
`pre_norm=True, patch_bias=False, eps=1e-5` (and `activation='quick_gelu'` for OpenAI weights),
the 'clip' text kind. The BPE tokenizer is `input_pipeline.tokenizers`' CLIP tokenizer.
"""

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flax.traverse_util import flatten_dict

from focusclip_jax.models import text, vit
from focusclip_jax.weights import common
from focusclip_jax.weights.common import Mapped, ParamPath
from focusclip_jax.weights.timm_vit import (
    _mapped_blocks,
    _patch_kernel,
    block_tensors,
    patch_conv,
    resize_pos_embed,
)

CLIP_BLOCK = dict(
    qkv="attn.in_proj",
    qkv_w="_weight",
    qkv_b="_bias",
    proj="attn.out_proj",
    fc1="mlp.c_fc",
    fc2="mlp.c_proj",
    norm1="ln_1",
    norm2="ln_2",
)


def _norm(tensors: Mapping[str, np.ndarray], ours: str, name: str, source: str) -> Mapped:
    return {
        (ours, "scale"): common.entry(tensors, f"{name}.weight", source),
        (ours, "bias"): common.entry(tensors, f"{name}.bias", source),
    }


def projection(tensors: Mapping[str, np.ndarray], name: str, source: str) -> Mapped:
    """A bias-free `[width, embed]` projection → our Linear with a zero bias."""
    kernel = common.take(tensors, name, source)
    return {("kernel",): (name, kernel), ("bias",): (name, np.zeros(kernel.shape[1], kernel.dtype))}


def image_params(
    tensors: Mapping[str, np.ndarray], target: Mapping[ParamPath, object], source: str
) -> Mapped:
    """`visual.*` tensors → `ViT(pre_norm=True, patch_bias=False)` parameters."""
    if "visual.conv1.weight" not in tensors:
        raise common.WeightImportError(f"{source}: no 'visual.conv1.weight'; not a CLIP ViT")
    v = "visual."
    heads, depth = common.num_heads(target), common.num_blocks(target)
    out = _mapped_blocks(tensors, v + "transformer.resblocks.", CLIP_BLOCK, heads, depth, source)
    conv = common.take(tensors, v + "conv1.weight", source)
    out[("patch_embed", "kernel")] = (v + "conv1.weight", _patch_kernel(conv))
    out[("cls_token",)] = (
        v + "class_embedding",
        common.take(tensors, v + "class_embedding", source),
    )
    pos = common.take(tensors, v + "positional_embedding", source)
    out[("pos_embed",)] = (
        v + "positional_embedding",
        resize_pos_embed(pos, np.shape(target[("pos_embed",)])[0]),
    )
    out |= _norm(tensors, "pre_norm", v + "ln_pre", source)
    out |= _norm(tensors, "norm", v + "ln_post", source)
    return out


def text_params(
    tensors: Mapping[str, np.ndarray], target: Mapping[ParamPath, object], source: str
) -> Mapped:
    """Text tensors → `CausalTextEncoder` parameters (a shorter context keeps the first rows)."""
    heads, depth = common.num_heads(target), common.num_blocks(target)
    out = _mapped_blocks(tensors, "transformer.resblocks.", CLIP_BLOCK, heads, depth, source)
    out[("token_embed", "embedding")] = (
        "token_embedding.weight",
        common.take(tensors, "token_embedding.weight", source),
    )
    pos = common.take(tensors, "positional_embedding", source)
    out[("pos_embed", "embedding")] = (
        "positional_embedding",
        pos[: np.shape(target[("pos_embed", "embedding")])[0]],
    )
    out |= _norm(tensors, "final_norm", "ln_final", source)
    return out


# ----------------------------------------------------------------------------- export

OPEN_CLIP_EPS = 1e-5  # open_clip's LayerNorms
OPEN_CLIP_ACTIVATIONS = ("gelu", "quick_gelu")  # nn.GELU, or QuickGELU with `quick_gelu: true`
# open_clip's own configs of the same architecture (model_configs/<name>.json).
NAMED_CONFIGS = {
    "ViT-B-16": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": {
            "context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12
        },
    },
}  # fmt: skip


def export_refusal(model: object) -> str | None:
    """Why the model (a `FocusCLIP`) is not an open_clip CLIP, or None."""
    image, text_tower = model.image_tower, model.text_tower
    if not isinstance(image, vit.ViT) or image.pre_norm is None or image.patch_embed.use_bias:
        return (
            "open_clip's image tower is a ViT with a LayerNorm before its blocks and a bias-free "
            "patch embedding (model.image.pre_norm=True, model.image.patch_bias=False)"
        )
    if not isinstance(text_tower, text.CausalTextEncoder):
        return (
            f"the text tower is a {type(text_tower).__name__}; open_clip's is causal "
            "(model.text.name='clip'): use --format=hf for BERT"
        )
    for name, tower in (("image", image), ("text", text_tower)):
        if tower.stack.eps != OPEN_CLIP_EPS:
            return f"model.{name}.eps={tower.stack.eps}: open_clip's LayerNorms use 1e-5"
        if tower.stack.activation not in OPEN_CLIP_ACTIVATIONS:
            return (
                f"model.{name}.activation={tower.stack.activation!r}: open_clip has "
                f"{' and '.join(OPEN_CLIP_ACTIVATIONS)}"
            )
        if int(tower.width * (tower.stack.mlp_dim / tower.width)) != tower.stack.mlp_dim:
            return f"the {name} tower's MLP width is no open_clip mlp_ratio of its width"
    if image.stack.activation != text_tower.stack.activation:
        return "the towers' activations differ; open_clip uses one for both (quick_gelu or not)"
    return None


def model_config(model: object, embed_dim: int, vocab_size: int) -> dict:
    """open_clip's model config (`model_configs/<name>.json` layout) of the model."""
    image, text_tower = model.image_tower, model.text_tower
    config = {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image.image_size,
            "layers": image.stack.depth,
            "width": image.width,
            "patch_size": image.patch_size,
            "head_width": image.width // image.stack.num_heads,
            "mlp_ratio": image.stack.mlp_dim / image.width,
        },
        "text_cfg": {
            "context_length": text_tower.max_len,
            "vocab_size": vocab_size,
            "width": text_tower.width,
            "heads": text_tower.stack.num_heads,
            "layers": text_tower.stack.depth,
            "mlp_ratio": text_tower.stack.mlp_dim / text_tower.width,
        },
    }
    if image.stack.activation == "quick_gelu":
        config["quick_gelu"] = True
    return config


def named_config(config: Mapping) -> str | None:
    """The name of open_clip's config with this architecture (open_clip's defaults: 64-wide
    heads and MLP ratio 4 in the ViT, MLP ratio 4 in the text tower), if one is known."""
    vision, texts = dict(config["vision_cfg"]), dict(config["text_cfg"])
    defaults = (vision.pop("head_width"), vision.pop("mlp_ratio"), texts.pop("mlp_ratio"))
    if defaults != (64, 4, 4):
        return None
    plain = {"embed_dim": config["embed_dim"], "vision_cfg": vision, "text_cfg": texts}
    for name, known in NAMED_CONFIGS.items():
        if plain == known:
            return name + ("-quickgelu" if config.get("quick_gelu") else "")
    return None


def fold_bias(
    kernel: np.ndarray, bias: np.ndarray, norm_bias: np.ndarray, where: str
) -> np.ndarray:
    """A LayerNorm shift `b'` with `b' @ kernel = norm_bias @ kernel + bias` (least squares in
    float64): open_clip's projections have no bias, the LayerNorm before them carries ours.
    Raises ValueError unless the fold holds to float32 rounding of the embedding."""
    kernel64, bias64 = kernel.astype(np.float64), bias.astype(np.float64)
    if not bias64.any():
        return norm_bias
    if kernel.shape[1] > kernel.shape[0]:
        raise ValueError(
            f"model.embed_dim={kernel.shape[1]} exceeds the width {kernel.shape[0]} of {where}: "
            "open_clip's bias-free projection cannot carry the projection's bias"
        )
    shift = np.linalg.lstsq(kernel64.T, bias64, rcond=None)[0]
    folded = (norm_bias.astype(np.float64) + shift).astype(np.float32)
    wanted = norm_bias.astype(np.float64) @ kernel64 + bias64
    error = np.max(np.abs(folded.astype(np.float64) @ kernel64 - wanted))
    scale = np.max(np.abs(folded.astype(np.float64)) @ np.abs(kernel64))
    if error > 1e-6 * scale:
        raise ValueError(
            f"the projection bias after {where} does not fold into its LayerNorm (error "
            f"{error:.1e}): its projection is not of full rank"
        )
    return folded


def from_params(
    params: Mapping[ParamPath, np.ndarray], logit_scale: float
) -> dict[str, np.ndarray]:
    """A `FocusCLIP`'s parameters (flat, towers per block) → an open_clip `CLIP` state dict:
    the inverse of `image_params`, `text_params`, `projection` and the logit scale (log of our
    zero-shot scale), the projections' biases folded into `ln_post` / `ln_final`."""
    sub = lambda name: {p[1:]: np.asarray(v) for p, v in params.items() if p[0] == name}
    image, text_tower = sub("image_tower"), sub("text_tower")
    image_proj, text_proj = sub("image_proj"), sub("text_proj")
    v = "visual."
    out = {
        v + "class_embedding": image[("cls_token",)],
        v + "positional_embedding": image[("pos_embed",)],
        v + "conv1.weight": patch_conv(image[("patch_embed", "kernel")]),
        v + "ln_pre.weight": image[("pre_norm", "scale")],
        v + "ln_pre.bias": image[("pre_norm", "bias")],
        v + "ln_post.weight": image[("norm", "scale")],
        v + "ln_post.bias": fold_bias(
            image_proj[("kernel",)], image_proj[("bias",)], image[("norm", "bias")], "ln_post"
        ),
        v + "proj": image_proj[("kernel",)],
        "token_embedding.weight": text_tower[("token_embed", "embedding")],
        "positional_embedding": text_tower[("pos_embed", "embedding")],
        "ln_final.weight": text_tower[("final_norm", "scale")],
        "ln_final.bias": fold_bias(
            text_proj[("kernel",)],
            text_proj[("bias",)],
            text_tower[("final_norm", "bias")],
            "ln_final",
        ),
        "text_projection": text_proj[("kernel",)],
        "logit_scale": np.asarray(math.log(logit_scale)),
    }
    out |= block_tensors(image, v + "transformer.resblocks.", CLIP_BLOCK)
    out |= block_tensors(text_tower, "transformer.resblocks.", CLIP_BLOCK)
    return {k: np.array(x, np.float32, order="C") for k, x in out.items()}


def save(
    model: object, params: Mapping[str, object], path: str | Path, *, logit_scale: float, step: int
) -> str | None:
    """Writes the open_clip `.safetensors` of a model `export_refusal` accepts (its model
    config in the metadata, `open_clip_model_config`); returns the name of open_clip's config
    it fits (e.g. 'ViT-B-16'), or None (then register the metadata's config with open_clip)."""
    reason = export_refusal(model)
    if reason:
        raise ValueError(reason)
    flat = {}
    for path_, value in flatten_dict(params).items():
        flat[path_] = np.asarray(value)
    for tower in ("image_tower", "text_tower"):
        own = {p[1:]: x for p, x in flat.items() if p[0] == tower}
        if common.is_scanned(own):
            flat = {p: x for p, x in flat.items() if p[0] != tower}
            flat |= {(tower, *p): x for p, x in common.unstack_layers(own).items()}
    state = from_params(flat, logit_scale)
    embed_dim = state["text_projection"].shape[1]
    config = model_config(model, embed_dim, state["token_embedding.weight"].shape[0])
    name = named_config(config)
    metadata = {
        "format": "pt",
        "focusclip_step": str(step),
        "open_clip_model_config": json.dumps(config),
        "open_clip_model": name or "",
    }
    common.write_tensors(state, path, metadata)
    return name
