"""Fine-tune a pretrained CLIP with FocusCLIP's guidance: open_clip ViT-B/16 on MPII.

Both towers, their projections and the logit scale start from an open_clip checkpoint
(`init.*`: `data/weights/open_clip_vit_b16.safetensors`, e.g. the `open_clip_model.safetensors`
of `laion/CLIP-ViT-B-16-laion2B-s34B-b88K` or OpenAI's ViT-B/16 converted by open_clip; no
download at run time): CLIP's vision tower (LayerNorm before the blocks, bias-free patches,
quick-GELU as OpenAI's), its causal text tower with CLIP's BPE (`data/clip/`), CLIP's pixel
normalisation. The focus branch (alpha) is new; the paper's three pairs train with CLIP's InfoNCE
from the checkpoint's temperature, AdamW at a fine-tuning learning rate.

Variants, comma-separated: `lit` locks the image tower and its projection (LiT: the text side
learns to read the pretrained image embeddings); of configs/pretrain.py's, those that keep the
checkpoint's towers: `clip` (the (image, text) pair alone), `separate` (a focus tower, also
started from the checkpoint) and `siglip` (the sigmoid loss; the scale is the checkpoint's, the
bias starts at -10). The others would replace what fine-tuning sets and are refused.
"""

import ml_collections

from configs import pretrain

CHECKPOINT = "open_clip:data/weights/open_clip_vit_b16.safetensors"
OWN_VARIANTS = ("lit",)
PRETRAIN_VARIANTS = ("clip", "separate", "siglip")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
    refused = [v for v in variants if v not in OWN_VARIANTS + PRETRAIN_VARIANTS]
    if refused:
        raise ValueError(
            f"configs/finetune.py: variant {refused[0]!r} would replace what fine-tuning sets; "
            f"expected some of {OWN_VARIANTS + PRETRAIN_VARIANTS}"
        )
    config = pretrain.base_config()
    pretrain.apply_variants(config, "causal")  # CLIP's text tower and BPE, context 77
    config.model.image.update(
        {"pre_norm": True, "patch_bias": False, "eps": 1e-5, "activation": "quick_gelu"}
    )
    config.model.embed_dim = 512
    config.model.pixel_mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
    config.model.pixel_std = (0.26862954, 0.26130258, 0.27577711)
    config.init.image = CHECKPOINT
    config.init.text = CHECKPOINT
    config.loss.kind = "clip"  # the checkpoint's logit scale goes on learning
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-5
    config.optimizer.weight_decay = 0.1
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 500
    config.train.num_epochs = 10
    if "lit" in variants:
        config.train.frozen = ("image_tower/.*", "image_proj/.*")
    return pretrain.finish(config, ",".join(v for v in variants if v not in OWN_VARIANTS))
