"""The original FocusCLIP training step in PyTorch, timed: the reference bench/compare.py beats.

The architecture of the original code (github anon12620/FocusCLIP): one timm VisionTransformer
(CLS pooling) encodes both the image and the heatmap-focused image, an HF `BertModel` with masked
mean pooling the description, `Linear(width, embed_dim)` heads, NT-Xent (temperature 0.5, same-
modality negatives) summed over the configured pairs, SGD with momentum and gradient clipping.
Random weights at the sizes of configs/bench.py, which bench/compare.py resolves into `--spec`.

Settings (`--mode`):
  original  what the original code runs: float32, eager PyTorch, the two image passes as two
            calls, attention written out in matmuls (HF `eager`, timm `fused_attn=False`)
  tuned     bf16 autocast, SDPA attention in both towers, one concatenated image pass, and
            `--compile` for torch.compile

Heatmaps come precomputed with the batch (the original renders them in its data loader); the JAX
step renders its own on the device, so it does slightly more work. Runs in a Python with torch,
timm and transformers (`make reference-venv`; torch is not a dependency of the package):

    .venv-ref/bin/python -m bench.torch_reference --spec=spec.json --batch=batch.npz \
        --mode=original --threads=2 --steps=10

Prints one JSON line with the median step time.
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# PyPI's torchvision wheel for torch 2.13 does not load its C ops against the +cpu torch, and then
# fails on import registering fakes for two of them; timm only needs its Python parts.
if not hasattr(torch.ops.torchvision, "nms"):
    _TORCHVISION_OPS = torch.library.Library("torchvision", "DEF")
    for _op in ("nms", "qnms"):
        _TORCHVISION_OPS.define(f"{_op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

import timm
import transformers

MODES = ("original", "tuned")


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """pytorch-metric-learning `SelfSupervisedLoss(NTXentLoss(t))` on L2-normalised a, b."""
    batch = a.shape[0]
    z = torch.cat([a, b]).float()
    logits = z @ z.T / temperature
    eye = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(logits, positives)


class FocusCLIP(torch.nn.Module):
    """Shared timm ViT for image and focused image, HF BERT for text, linear heads, alpha."""

    def __init__(self, spec: dict[str, Any], mode: str):
        super().__init__()
        vit, text = spec["vit"], spec["text"]
        self.mode = mode
        self.image_tower = timm.models.vision_transformer.VisionTransformer(
            img_size=spec["image_size"],
            patch_size=vit["patch_size"],
            embed_dim=vit["width"],
            depth=vit["depth"],
            num_heads=vit["num_heads"],
            mlp_ratio=vit["mlp_dim"] / vit["width"],
            num_classes=0,
            global_pool="token",
        )
        for block in self.image_tower.blocks:
            block.attn.fused_attn = mode == "tuned"
        bert_config = transformers.BertConfig(
            vocab_size=spec["vocab_size"],
            hidden_size=text["width"],
            num_hidden_layers=text["depth"],
            num_attention_heads=text["num_heads"],
            intermediate_size=text["mlp_dim"],
            max_position_embeddings=spec["max_len"],
        )
        self.text_tower = transformers.BertModel._from_config(
            bert_config,
            add_pooling_layer=False,
            attn_implementation="sdpa" if mode == "tuned" else "eager",
        )
        self.image_proj = torch.nn.Linear(vit["width"], spec["embed_dim"])
        self.text_proj = torch.nn.Linear(text["width"], spec["embed_dim"])
        self.alpha = torch.nn.Parameter(torch.tensor(0.5))

    def forward(
        self, images: torch.Tensor, heatmaps: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """images [B, 3, H, W] in [0, 1], heatmaps [B, H, W] → L2-normalised embeddings."""
        focused = images * (self.alpha + (1 - self.alpha) * heatmaps[:, None])
        if self.mode == "tuned":
            image, focus = self.image_tower(torch.cat([images, focused])).chunk(2)
        else:
            image, focus = self.image_tower(images), self.image_tower(focused)
        hidden = self.text_tower(input_ids=tokens, attention_mask=mask).last_hidden_state
        weights = mask[..., None].to(hidden.dtype)
        text = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return {
            "image": F.normalize(self.image_proj(image).float(), dim=-1),
            "focused": F.normalize(self.image_proj(focus).float(), dim=-1),
            "text": F.normalize(self.text_proj(text).float(), dim=-1),
        }


def load_batch(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The .npz bench/compare.py writes: image uint8 NHWC, heatmaps, tokens, mask."""
    data = np.load(path)
    return {
        "image": torch.from_numpy(data["image"]).to(device),
        "heatmaps": torch.from_numpy(data["heatmaps"]).float().to(device),
        "tokens": torch.from_numpy(data["tokens"]).long().to(device),
        "mask": torch.from_numpy(data["mask"]).long().to(device),
    }


def run(
    spec: dict[str, Any],
    batch: dict[str, torch.Tensor],
    *,
    mode: str,
    compile_model: bool,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """Times `warmup + steps` training steps; returns the median and the last loss."""
    device = batch["image"].device
    torch.manual_seed(spec.get("seed", 42))
    model = FocusCLIP(spec, mode).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=spec["learning_rate"], momentum=0.9)
    forward = torch.compile(model) if compile_model else model
    pairs = [tuple(p) for p in spec["pairs"]]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "tuned")

    def step() -> torch.Tensor:
        images = batch["image"].permute(0, 3, 1, 2).float() / 255.0
        with autocast:
            emb = forward(images, batch["heatmaps"], batch["tokens"], batch["mask"])
            loss = sum(nt_xent(emb[a], emb[b], spec["temperature"]) for a, b in pairs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    loss = step()
    synchronize()
    first_s = time.perf_counter() - start
    times, cpu_times = [], []
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step()
        synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {
        "framework": "torch",
        "torch": torch.__version__,
        "mode": mode + ("+compile" if compile_model else ""),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "first_step_s": first_s,
        "step_s": statistics.median(times),
        "step_s_min": min(times),
        "step_s_max": max(times),
        "cpu_s_per_step": statistics.median(cpu_times),  # all threads; robust to a shared CPU
        "steps": steps,
        "final_loss": float(loss),
        "peak_memory_bytes": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--spec", required=True, help="model sizes as JSON (bench/compare.py)")
    parser.add_argument("--batch", required=True, help=".npz batch (bench/compare.py)")
    parser.add_argument("--mode", choices=MODES, default="original")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = json.loads(Path(args.spec).read_text())
    batch = load_batch(Path(args.batch), torch.device(args.device))
    result = run(
        spec,
        batch,
        mode=args.mode,
        compile_model=args.compile,
        steps=args.steps,
        warmup=args.warmup,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
