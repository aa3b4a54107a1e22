"""Analytic model FLOPs of a FocusCLIP training step: the MFU and roofline numerator.

FLOPs count matrix multiplications only (2·M·N·K each, the MFU convention of PaLM, Chowdhery et
al. 2022), as each part declares them: a tower's `forward_flops` (its input layer and the rest),
the projection heads, a loss's `forward_flops` (its similarity matrices) and the on-device heatmap
render. The backward pass costs two matmuls per forward one (input and weight gradients), so the
step is 3x the forward, except where no input gradient exists: the heatmap render (keypoints are
data) and a tower's input layer whose input needs no gradient (the plain images' patch
embedding when nothing focused goes through that tower; focused pixels carry alpha's). XLA's
`cost_analysis()` also counts elementwise work (LayerNorm, GELU, softmax, the optimiser), so it
sits a few percent above this count.
"""

import ml_collections

from focusclip_jax import losses
from focusclip_jax.models import towers
from input_pipeline import sources


def tower_forward_flops(role: str, model: ml_collections.ConfigDict) -> dict[str, int]:
    """Per example, forward: {'input': the input layer's FLOPs, 'rest': the rest and the
    projection head}, as the `role` tower declares them (`forward_flops`)."""
    kind, options = towers.resolve(role, model[role].to_dict())
    declared = getattr(kind.module, "forward_flops", None)
    if declared is None:
        raise ValueError(
            f"config model.{role}.name={model[role].name!r}: the tower declares no FLOP count "
            "(a `forward_flops` static method)"
        )
    context = {"image_size": model.image_size} if role == "image" else {}
    counted = declared(**context, **options)
    head = 2 * options["width"] * model.embed_dim
    return {"input": counted["input"], "rest": counted["rest"] + head}


def train_step_flops(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Matmul FLOPs of one training step on the global batch, by part, and their 'total'."""
    model, batch = config.model, config.train.batch_size
    modalities = {m for pair in config.loss.pairs for m in pair}
    image = tower_forward_flops("image", model)
    out: dict[str, int] = {}
    images = batch * len(modalities & {"image", "focused"})
    # Focused pixels carry alpha's gradient, so their input layer has an input gradient; with
    # the shared tower, plain and focused images are one concatenated matmul (input grad for all).
    input_backward = 2 if "focused" in modalities else 1
    if "focused" in modalities and model.heatmap_tower == "separate" and "image" in modalities:
        out["image_tower"] = batch * (image["input"] * 2 + image["rest"] * 3)
        out["focus_tower"] = batch * (image["input"] + image["rest"]) * 3
    else:
        out["image_tower"] = images * (image["input"] * (1 + input_backward) + image["rest"] * 3)
    if "text" in modalities:
        text = tower_forward_flops("text", model)
        out["text_tower"] = 3 * batch * (text["input"] + text["rest"])
    loss = losses.create(config.loss)
    out["loss"] = 3 * len(config.loss.pairs) * loss.forward_flops(batch, model.embed_dim)
    if "focused" in modalities:
        skeleton = sources.skeleton_of(config.data.name)
        gaussians = len(skeleton.parts) if config.heatmaps.mode == "parts" else skeleton.num_joints
        people = config.data.max_people
        out["heatmaps"] = 2 * batch * people * gaussians * model.image_size**2
    out["total"] = sum(out.values())
    return out
