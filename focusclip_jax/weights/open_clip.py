"""OpenAI CLIP / open_clip checkpoints (ViT image tower, causal text tower, projections, scale).

Reads open_clip state dicts (`open_clip_pytorch_model.bin` needs torch; a `.safetensors` export
does not). Their projections are bias-free matrices applied as `x @ proj`: they become our
projection kernels with a zero bias. The towers must be built CLIP-style: ViT with
`pre_norm=True, patch_bias=False, eps=1e-5` (and `activation='quick_gelu'` for OpenAI weights),
the 'clip' text kind. The BPE tokenizer is `input_pipeline.tokenizers`' CLIP tokenizer.
"""

from collections.abc import Mapping

import numpy as np

from focusclip_jax.weights import common
from focusclip_jax.weights.common import Mapped, ParamPath
from focusclip_jax.weights.timm_vit import _mapped_blocks, _patch_kernel, resize_pos_embed

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
