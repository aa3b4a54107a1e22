"""The exported models read by their own libraries (the reference Python: `make reference-venv`).

    .venv-ref/bin/python -m bench.export_reference --inputs=inputs.npz [--hf=<folder>] \\
        [--open_clip=<file.safetensors>]

`inputs.npz` (written by bench/export_roundtrip.py in the JAX venv) holds the image files, texts,
the JAX model's L2-normalised embeddings and zero-shot scale, and our tokenizer's ids. The Hugging
Face folder is loaded offline by `VisionTextDualEncoderModel.from_pretrained` with its processor
(tokenizer and PIL image processor, from the image files); the open_clip file by
`open_clip.create_model` with its model config. Prints, last, one JSON line: for each format, the
max absolute difference of the normalised image and text embeddings and of the zero-shot logits
from the JAX model's, and whether the tokenizers gave our ids.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# PyPI's torchvision for torch 2.13 does not load its C ops against the +cpu torch, and then fails
# on import registering fakes for two of them; transformers and open_clip need its Python parts.
_TORCHVISION_OPS = torch.library.Library("torchvision", "DEF")
for _op in ("nms", "qnms"):
    _TORCHVISION_OPS.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

import open_clip  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402


def _normalised(x: torch.Tensor) -> np.ndarray:
    x = x.detach().double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def hf_side(folder: str, inputs: dict[str, np.ndarray]) -> dict:
    """Embeddings and logits of the exported folder, through its own processor."""
    model, info = transformers.VisionTextDualEncoderModel.from_pretrained(
        folder, output_loading_info=True
    )
    model.eval()
    unread = {k: v for k, v in info.items() if v}
    processor = transformers.VisionTextDualEncoderProcessor(
        image_processor=transformers.AutoImageProcessor.from_pretrained(folder, backend="pil"),
        tokenizer=transformers.AutoTokenizer.from_pretrained(folder),
    )
    texts = [str(t) for t in inputs["texts"]]
    max_len = inputs["hf_tokens"].shape[1]
    images = [Image.open(p).convert("RGB") for p in inputs["image_paths"]]
    batch = processor(
        text=texts,
        images=images,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=max_len,
    )
    with torch.no_grad():
        features = model.get_image_features(pixel_values=batch["pixel_values"])
        image = _normalised(features.pooler_output)
        tokens = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        text = _normalised(model.get_text_features(**tokens).pooler_output)
        logits = model(**tokens, pixel_values=batch["pixel_values"]).logits_per_image.numpy()
    ours_logits = inputs["hf_scale"] * inputs["hf_image"] @ inputs["hf_text"].T
    return {
        "image": _max_diff(image, inputs["hf_image"]),
        "text": _max_diff(text, inputs["hf_text"]),
        "logits": _max_diff(logits, ours_logits),
        "same_token_ids": bool(np.array_equal(batch["input_ids"].numpy(), inputs["hf_tokens"])),
        "same_pixels": bool(
            np.allclose(
                batch["pixel_values"].numpy().transpose(0, 2, 3, 1),
                (inputs["hf_pixels"] / 255.0 - inputs["hf_mean"]) / inputs["hf_std"],
                atol=1e-6,
            )
        ),
        "loading_info": unread,
    }


def open_clip_side(path: str, inputs: dict[str, np.ndarray]) -> dict:
    """Embeddings and logits of the exported state dict in open_clip's `CLIP`, on our pixels
    (open_clip's own preprocessing crops where ours squashes) and, where the BPE is CLIP's
    full one, open_clip's own tokens."""
    with safe_open(path, "np") as f:
        metadata = f.metadata()
    name = metadata["open_clip_model"]
    if not name:  # not one of open_clip's configs: register the exported one
        name = "focusclip-export"
        configs = Path(tempfile.mkdtemp())
        (configs / f"{name}.json").write_text(metadata["open_clip_model_config"])
        open_clip.add_model_config(configs)
    model = open_clip.create_model(name, pretrained=path)  # strict: every key, every shape
    model.eval()
    mean, std = inputs["open_clip_mean"], inputs["open_clip_std"]
    pixels = (inputs["open_clip_pixels"] / 255.0 - mean) / std
    pixels = torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32))
    tokens = torch.from_numpy(inputs["open_clip_tokens"].astype(np.int64))
    context = json.loads(metadata["open_clip_model_config"])["text_cfg"]["context_length"]
    out: dict = {}
    if json.loads(metadata["open_clip_model_config"])["text_cfg"]["vocab_size"] == 49408:
        theirs = open_clip.get_tokenizer(name)([str(t) for t in inputs["texts"]], context)
        out["same_token_ids"] = bool(np.array_equal(theirs.numpy(), inputs["open_clip_tokens"]))
        tokens = theirs
    with torch.no_grad():
        image_features, text_features, scale = model(pixels, tokens)[:3]
        image, text = _normalised(image_features), _normalised(text_features)
        logits = (scale * image_features @ text_features.T).numpy()
    ours_logits = inputs["open_clip_scale"] * inputs["open_clip_image"] @ inputs["open_clip_text"].T
    return out | {
        "model": name,
        "image": _max_diff(image, inputs["open_clip_image"]),
        "text": _max_diff(text, inputs["open_clip_text"]),
        "logits": _max_diff(logits, ours_logits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", required=True, help="The .npz export_roundtrip.py wrote.")
    parser.add_argument("--hf", default="", help="A --format=hf export (folder).")
    parser.add_argument("--open_clip", default="", help="A --format=open_clip export.")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with np.load(args.inputs) as data:
        inputs = {k: data[k] for k in data.files}
    result = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    if args.hf:
        result["hf"] = hf_side(args.hf, inputs)
    if args.open_clip:
        result["versions"]["open_clip"] = open_clip.__version__
        result["open_clip"] = open_clip_side(args.open_clip, inputs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
