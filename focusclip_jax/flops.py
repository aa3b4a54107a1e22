"""Analytic model FLOPs of a FocusCLIP training step: the MFU and roofline numerator.

FLOPs count matrix multiplications only (2·M·N·K each, the MFU convention of PaLM, Chowdhery et
al. 2022): patch embedding, per block the Q/K/V/out projections, the two attention products and
the MLP, the projection heads, the loss's similarity matrices and the on-device heatmap render.
The backward pass costs two matmuls per forward one (input and weight gradients), so the step is
3x the forward, except where no input gradient exists: the heatmap render (keypoints are data) and
a patch embedding whose pixels need no gradient (the plain-image tower when nothing focused goes
through it; focused pixels do, for alpha). XLA's `cost_analysis()` also counts elementwise work
(LayerNorm, GELU, softmax, the optimiser), so it sits a few percent above this count.
"""

import ml_collections

from focusclip_jax.models import towers
from input_pipeline.heatmaps import NUM_JOINTS, PART_GROUPS


def block_flops(tokens: int, width: int, mlp_dim: int) -> int:
    """Forward matmul FLOPs of one transformer block over one sequence of `tokens`."""
    projections = 2 * tokens * width * width * 4  # query, key, value, out
    attention = 2 * 2 * tokens * tokens * width  # q·kᵀ and p·v, summed over heads
    mlp = 2 * 2 * tokens * width * mlp_dim
    return projections + attention + mlp


def vit_forward_flops(model: ml_collections.ConfigDict) -> dict[str, int]:
    """Per image: {'patch': patch-embedding FLOPs, 'rest': blocks + head}; forward only."""
    _, dims = towers.resolve("image", model.image.to_dict())
    patches = (model.image_size // dims["patch_size"]) ** 2
    patch = 2 * patches * 3 * dims["patch_size"] ** 2 * dims["width"]
    blocks = dims["depth"] * block_flops(patches + 1, dims["width"], dims["mlp_dim"])
    head = 2 * dims["width"] * model.embed_dim
    return {"patch": patch, "rest": blocks + head}


def text_forward_flops(model: ml_collections.ConfigDict) -> int:
    """Per text of `max_len` tokens (padding is computed too): blocks + head, forward only."""
    _, dims = towers.resolve("text", model.text.to_dict())
    blocks = dims["depth"] * block_flops(dims["max_len"], dims["width"], dims["mlp_dim"])
    return blocks + 2 * dims["width"] * model.embed_dim


def train_step_flops(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Matmul FLOPs of one training step on the global batch, by part, and their 'total'."""
    model, batch = config.model, config.train.batch_size
    modalities = {m for pair in config.loss.pairs for m in pair}
    vit = vit_forward_flops(model)
    out: dict[str, int] = {}
    images = batch * len(modalities & {"image", "focused"})
    # Focused pixels carry alpha's gradient, so their patch embedding has an input gradient; with
    # the shared tower, plain and focused images are one concatenated matmul (input grad for all).
    patch_backward = 2 if "focused" in modalities else 1
    if "focused" in modalities and model.heatmap_tower == "separate" and "image" in modalities:
        out["image_tower"] = batch * (vit["patch"] * 2 + vit["rest"] * 3)
        out["focus_tower"] = batch * (vit["patch"] + vit["rest"]) * 3
    else:
        out["image_tower"] = images * (vit["patch"] * (1 + patch_backward) + vit["rest"] * 3)
    if "text" in modalities:
        out["text_tower"] = 3 * batch * text_forward_flops(model)
    rows = 2 * batch if config.loss.kind == "nt_xent" else batch
    out["loss"] = 3 * len(config.loss.pairs) * 2 * rows * rows * model.embed_dim
    if "focused" in modalities:
        gaussians = len(PART_GROUPS) if config.heatmaps.mode == "parts" else NUM_JOINTS
        people = config.data.max_people
        out["heatmaps"] = 2 * batch * people * gaussians * model.image_size**2
    out["total"] = sum(out.values())
    return out
