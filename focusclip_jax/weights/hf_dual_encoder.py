"""A whole model → a Hugging Face `VisionTextDualEncoderModel` folder (ViT + BERT), numpy only.

The folder loads offline with `transformers` (`VisionTextDualEncoderModel.from_pretrained`,
`VisionTextDualEncoderProcessor.from_pretrained`): `config.json` and `model.safetensors` in the
names `save_pretrained` writes, BERT's `vocab.txt` with its tokenizer config, and a ViT image
processor config (squash-resize, bicubic, our `pixel_mean`/`pixel_std`).

What equals what. `VisionTextDualEncoderModel` projects each tower's *pooled output* with a
bias-free Linear (`get_image_features`, `get_text_features`, and the `logits_per_image` of
`forward`, scaled by `exp(logit_scale)`); our towers end in a Linear with a bias. So:

- image: `ViTModel`'s pooled output is `pooler_act(dense(layernorm(x)[:, 0]))`, our CLS feature
  through a Linear. With `pooler_act='linear'` that dense layer holds our projection, bias
  included (padded with zero rows to the ViT's width, which `visual_projection` must take), and
  `visual_projection` keeps its first `embed_dim` outputs: `get_image_features` is our image
  embedding before L2 normalisation, the same float32 operations.
- text: `BertModel`'s pooled output is `tanh(dense(hidden[:, 0]))`, the tanh fixed in code. Only
  `model.text.pooling='cls'` can match: the dense layer holds our projection scaled by 2^-k and
  `text_projection` scales back by 2^k, so `get_text_features` is `2^k·tanh(2^-k·z)` for our
  embedding `z` before normalisation, which is `z` to a relative error of `(2^-k·|z|)²/3`. `k` is
  chosen from the weights (a bound on `|z|`, from the last LayerNorm's scale and shift) so that
  this stays below 2^-24, under float32 rounding. Mean pooling (the paper's) reads every token,
  which no stock BERT pooled output does: such a model is refused, as is any other tower kind, an
  `embed_dim` above a tower's width (the bias needs the padded rows), or a ViT with a LayerNorm
  before its blocks (CLIP-style, `model.image.pre_norm`: `--format=open_clip`).
- logit scale: `logit_scale` is log of the scale our zero-shot logits use (the learnt CLIP
  scale, or 1 / the NT-Xent temperature); a sigmoid loss's bias has no place there (it shifts
  every logit alike: softmax probabilities are unchanged).

The pooler and projection weights are thus a reparametrisation, not a trained pooler: the
per-tower export (`export_tower`) gives the towers alone with their own weights. Inputs: the
tokenizer gives our ids (CJK characters stay inside words, as in our WordPiece); the image
processor squashes as `TrainedModel.read_images` does, to the same pixels with its PIL backend
(`AutoImageProcessor.from_pretrained(folder, backend="pil")`); the default torchvision backend
resizes differently, by up to one grey level.
"""

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from flax.traverse_util import flatten_dict

from focusclip_jax.models import text, vit
from focusclip_jax.weights import common, hf_bert, timm_vit
from focusclip_jax.weights.common import ParamPath

ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}
FLOAT32_ROUNDING = 2.0**-24


def refusal(model: object, embed_dim: int) -> str | None:
    """Why the model (a `FocusCLIP`, parameters abstract or not) cannot be written in this
    format with its embeddings intact, or None."""
    image, text_tower = model.image_tower, model.text_tower
    if not isinstance(image, vit.ViT):
        return f"the image tower is a {type(image).__name__}; this format takes a ViT"
    if image.pre_norm is not None:
        return (
            "the ViT has a LayerNorm before its blocks (model.image.pre_norm=True, CLIP-style), "
            "which Hugging Face's ViTModel lacks: use --format=open_clip"
        )
    if not isinstance(text_tower, text.BertTextEncoder):
        return (
            f"the text tower is a {type(text_tower).__name__}, not BERT: use --format=open_clip "
            "for a CLIP-style causal text tower"
        )
    if text_tower.pooling != "cls":
        return (
            f"the text tower pools by {text_tower.pooling!r} (model.text.pooling), and "
            "VisionTextDualEncoderModel projects BertModel's pooled output, which reads the "
            "first token only: only model.text.pooling='cls' can be exported to this format "
            "(--format=tower writes the towers alone)"
        )
    for name, tower in (("image", image), ("text", text_tower)):
        if tower.stack.activation not in ACTIVATIONS:
            return f"the {name} tower's activation {tower.stack.activation!r} has no HF name"
        if embed_dim > tower.width:
            return (
                f"model.embed_dim={embed_dim} exceeds the {name} tower's width {tower.width}: "
                "the bias-free projection of Hugging Face cannot then carry our projection's bias"
            )
    return None


def _projection_pooler(
    kernel: np.ndarray, bias: np.ndarray, width: int, scale: float
) -> dict[str, np.ndarray]:
    """Our projection `[width, embed]` + bias as a `[width, width]` torch Linear (zero rows past
    `embed`), times `scale`."""
    embed = kernel.shape[1]
    weight = np.zeros((width, width), np.float64)
    weight[:embed] = kernel.T
    padded_bias = np.zeros(width, np.float64)
    padded_bias[:embed] = bias
    return {"pooler.dense.weight": weight * scale, "pooler.dense.bias": padded_bias * scale}


def _first_outputs(embed: int, width: int, scale: float) -> np.ndarray:
    """A bias-free `[embed, width]` torch Linear keeping the first `embed` inputs, times
    `scale`."""
    return np.eye(embed, width) * scale


def text_pooler_exponent(params: Mapping[ParamPath, np.ndarray]) -> int:
    """The `k` of `2^-k` (module docstring): `|z_i| <= sum_j |P_ji| (|g_j| sqrt(w) + |b_j|) + |c_i|`
    for a LayerNorm output (scale g, shift b; its normalised values are at most sqrt(w)) through
    our projection (kernel P, bias c); then `(2^-k |z|)² / 3 <= 2^-24`."""
    last = common.num_blocks(params["text_tower"]) - 1
    norm = {
        leaf: np.abs(np.asarray(params["text_tower"][("blocks", last, "norm2", leaf)], np.float64))
        for leaf in ("scale", "bias")
    }
    kernel = np.abs(np.asarray(params["text_proj"][("kernel",)], np.float64))
    bias = np.abs(np.asarray(params["text_proj"][("bias",)], np.float64))
    width = kernel.shape[0]
    feature_bound = norm["scale"] * math.sqrt(width) + norm["bias"]
    bound = float(np.max(feature_bound @ kernel + bias))
    allowed = math.sqrt(3 * FLOAT32_ROUNDING) / max(bound, 1e-30)
    return max(0, math.ceil(-math.log2(allowed)))


def vit_tensors(params: Mapping[ParamPath, np.ndarray]) -> dict[str, np.ndarray]:
    """`ViT` parameters (flat, per block) → `ViTModel` tensor names (no pooler)."""
    timm = timm_vit.from_params(params)
    width = timm["cls_token"].shape[-1]
    if "patch_embed.proj.bias" not in timm:  # model.image.patch_bias=False
        timm["patch_embed.proj.bias"] = np.zeros(width, np.float32)
    out = {
        "embeddings.cls_token": timm.pop("cls_token"),
        "embeddings.position_embeddings": timm.pop("pos_embed"),
        "embeddings.patch_embeddings.projection.weight": timm.pop("patch_embed.proj.weight"),
        "embeddings.patch_embeddings.projection.bias": timm.pop("patch_embed.proj.bias"),
        "layernorm.weight": timm.pop("norm.weight"),
        "layernorm.bias": timm.pop("norm.bias"),
    }
    renames = {
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
    }
    for name, value in timm.items():
        _, index, rest = name.split(".", 2)
        layer = f"encoder.layer.{index}"
        part, leaf = rest.rsplit(".", 1)
        if part == "attn.qkv":
            for qkv, chunk in zip(("query", "key", "value"), np.split(value, 3), strict=True):
                out[f"{layer}.attention.attention.{qkv}.{leaf}"] = chunk
        else:
            out[f"{layer}.{renames[part]}.{leaf}"] = value
    return out


def _subtree(flat: Mapping[ParamPath, np.ndarray], name: str) -> dict[ParamPath, np.ndarray]:
    tower = {path[1:]: np.asarray(v) for path, v in flat.items() if path[0] == name}
    return common.unstack_layers(tower) if common.is_scanned(tower) else tower


def tensors(
    model: object, flat: Mapping[ParamPath, np.ndarray], logit_scale: float
) -> tuple[dict[str, np.ndarray], int]:
    """Every tensor of the `VisionTextDualEncoderModel` state dict, and the text pooler's `k`."""
    parts = {n: _subtree(flat, n) for n in ("image_tower", "image_proj", "text_tower", "text_proj")}
    image_width, text_width = model.image_tower.width, model.text_tower.width
    embed = parts["image_proj"][("kernel",)].shape[1]
    k = text_pooler_exponent(parts)
    vision = vit_tensors(parts["image_tower"]) | _projection_pooler(
        parts["image_proj"][("kernel",)], parts["image_proj"][("bias",)], image_width, 1.0
    )
    bert = hf_bert.from_params(parts["text_tower"]) | _projection_pooler(
        parts["text_proj"][("kernel",)], parts["text_proj"][("bias",)], text_width, 2.0**-k
    )
    out = {f"vision_model.{name}": value for name, value in vision.items()}
    out |= {f"text_model.{name}": value for name, value in bert.items()}
    out["visual_projection.weight"] = _first_outputs(embed, image_width, 1.0)
    out["text_projection.weight"] = _first_outputs(embed, text_width, 2.0**k)
    out["logit_scale"] = np.asarray(math.log(logit_scale))
    return {name: np.array(v, np.float32, order="C") for name, v in out.items()}, k


def config(
    model: object,
    state: Mapping[str, np.ndarray],
    *,
    logit_scale: float,
    pad_token_id: int,
) -> dict:
    """`config.json` of `VisionTextDualEncoderModel` (a ViTModel and a BertModel inside)."""
    image, bert = model.image_tower, model.text_tower
    vision_config = {
        "model_type": "vit",
        "hidden_size": image.width,
        "num_hidden_layers": image.stack.depth,
        "num_attention_heads": image.stack.num_heads,
        "intermediate_size": image.stack.mlp_dim,
        "hidden_act": ACTIVATIONS[image.stack.activation],
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": image.stack.eps,
        "image_size": image.image_size,
        "patch_size": image.patch_size,
        "num_channels": 3,
        "qkv_bias": True,
        "pooler_act": "linear",
        "pooler_output_size": image.width,
    }
    text_config = {
        "model_type": "bert",
        "vocab_size": state["text_model.embeddings.word_embeddings.weight"].shape[0],
        "hidden_size": bert.width,
        "num_hidden_layers": bert.stack.depth,
        "num_attention_heads": bert.stack.num_heads,
        "intermediate_size": bert.stack.mlp_dim,
        "hidden_act": ACTIVATIONS[bert.stack.activation],
        "hidden_dropout_prob": bert.stack.dropout,
        "attention_probs_dropout_prob": bert.stack.dropout,
        "max_position_embeddings": bert.max_len,
        "type_vocab_size": state["text_model.embeddings.token_type_embeddings.weight"].shape[0],
        "layer_norm_eps": bert.stack.eps,
        "pad_token_id": pad_token_id,
        "position_embedding_type": "absolute",
    }
    return {
        "architectures": ["VisionTextDualEncoderModel"],
        "model_type": "vision-text-dual-encoder",
        "projection_dim": state["visual_projection.weight"].shape[0],
        "logit_scale_init_value": math.log(logit_scale),
        "dtype": "float32",
        "vision_config": vision_config,
        "text_config": text_config,
    }


def save(
    model: object,
    params: Mapping[str, object],
    directory: str | Path,
    *,
    logit_scale: float,
    vocab: Sequence[str],
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    step: int,
) -> None:
    """Writes the folder (module docstring). `model`: the `FocusCLIP` (its parameters may be
    abstract: its towers' options are read); `params`: its parameters (a pure dict); `vocab`:
    BERT's vocabulary, one token per id; `step`: recorded in the weights' metadata."""
    reason = refusal(model, np.shape(params["image_proj"]["kernel"])[1])
    if reason:
        raise ValueError(reason)
    flat = {path: np.asarray(value) for path, value in flatten_dict(params).items()}
    state, k = tensors(model, flat, logit_scale)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "focusclip_step": str(step), "text_pooler_exponent": str(k)}
    common.write_tensors(state, directory / "model.safetensors", metadata)
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]"}
    special |= {"cls_token": "[CLS]"} | ({"mask_token": "[MASK]"} if "[MASK]" in vocab else {})
    pad_token_id = list(vocab).index("[PAD]")
    files = {
        "config.json": config(model, state, logit_scale=logit_scale, pad_token_id=pad_token_id),
        "tokenizer_config.json": {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": True,
            "tokenize_chinese_chars": False,  # as focusclip_jax's WordPiece: CJK stays in words
            "strip_accents": None,
            "model_max_length": model.text_tower.max_len,
            "processor_class": "VisionTextDualEncoderProcessor",
            **special,
        },
        "special_tokens_map.json": special,
        "preprocessor_config.json": {
            "image_processor_type": "ViTImageProcessor",
            "processor_class": "VisionTextDualEncoderProcessor",
            "do_resize": True,
            "size": {"height": model.image_tower.image_size, "width": model.image_tower.image_size},
            "resample": 3,  # PIL bicubic, as focusclip_jax squashes images to the model's size
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(pixel_mean),
            "image_std": list(pixel_std),
        },
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
