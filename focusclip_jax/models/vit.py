"""Vision Transformer image tower (timm `vit_*_patch*_224` layout, CLS pooling, no head)."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from focusclip_jax.models import layers
from focusclip_jax.models.layers import (
    BlockStack,
    PreNormBlock,
    default_init,
    layer_norm,
    partitioned,
)
from focusclip_jax.sharding import constrain_batch
from input_pipeline.errors import check_number

# width, depth, heads, MLP hidden and patch size of the standard ViTs (Dosovitskiy et al.; timm).
_BASE = {
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}
VIT_SIZES: dict[str, dict[str, int]] = {
    f"{name}/{patch}": {**dims, "patch_size": patch}
    for patch in (16, 32)
    for name, dims in _BASE.items()
}
VIT_SIZES["tiny"] = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8)


class ViT(nnx.Module):
    """Patchify → [CLS] + patches + learned positions → pre-norm blocks → LayerNorm → CLS token.

    Patches are flattened in (row, column, channel) order and embedded by one Linear, which equals
    timm's stride-`patch` conv: its weight `[width, 3, p, p]` imports as
    `w.transpose(2, 3, 1, 0).reshape(p * p * 3, width)`.
    `pre_norm` adds the LayerNorm that CLIP's vision tower applies before the blocks (open_clip
    `ln_pre`); `patch_bias=False` matches CLIP's bias-free patch conv. The blocks' options
    (depth, heads, MLP, `attention`, `scan_layers`, `remat`, ...): `layers.BlockStack`.
    """

    @staticmethod
    def forward_flops(
        *, image_size: int, patch_size: int, width: int, depth: int, mlp_dim: int, **_: Any
    ) -> dict[str, int]:
        """Forward matmul FLOPs per image: `input`, the patch embedding (whose input, pixels,
        needs a gradient only when it is a focused image's), and `rest`, the blocks."""
        patches = (image_size // patch_size) ** 2
        return {
            "input": 2 * patches * 3 * patch_size**2 * width,
            "rest": depth * layers.block_flops(patches + 1, width, mlp_dim),
        }

    def __init__(
        self,
        *,
        width: int,
        patch_size: int,
        image_size: int,
        pre_norm: bool = False,
        patch_bias: bool = True,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
        **stack_options: Any,
    ):
        check_number("image_size", image_size, integer=True, at_least=1)
        check_number("patch_size", patch_size, integer=True, at_least=1)
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size}: must divide the image size {image_size}")
        for name, value in (("pre_norm", pre_norm), ("patch_bias", patch_bias)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r}: must be True or False")
        self.width = width
        self.patch_size = patch_size
        self.image_size = image_size
        self.dtype = dtype
        self.stack = BlockStack(block=PreNormBlock, **stack_options)
        self.stack.check_width(width)
        eps = self.stack.eps
        num_patches = (image_size // patch_size) ** 2
        self.stack.check_attention(width, num_patches + 1)  # the class token too
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_embed = nnx.Linear(
            patch_size * patch_size * 3,
            width,
            use_bias=patch_bias,
            kernel_init=partitioned(default_init, ("patch", "embed")),
            bias_init=partitioned(nnx.initializers.zeros_init(), ("embed",)),
            **kw,
        )
        # timm initialises the class token with N(0, 1e-6) and positions with trunc-N(0, 0.02).
        self.cls_token = nnx.Param(
            partitioned(nnx.initializers.normal(1e-6), ("embed",))(
                rngs.params(), (width,), param_dtype
            )
        )
        self.pos_embed = nnx.Param(
            partitioned(default_init, ("pos", "embed"))(
                rngs.params(), (num_patches + 1, width), param_dtype
            )
        )
        self.pre_norm = layer_norm(width, eps=eps, **kw) if pre_norm else None
        self.blocks = self.stack.build(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = layer_norm(width, eps=eps, **kw)

    def patchify(self, images: jax.Array) -> jax.Array:
        """[B, H, W, 3] → [B, (H/p)·(W/p), p·p·3], patches in raster order."""
        b, h, w, c = images.shape
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}px square images, got {h}x{w}")
        p = self.patch_size
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images: float [B, H, W, 3] (already normalised) → CLS features [B, width]."""
        x = constrain_batch(
            self.patch_embed(constrain_batch(self.patchify(images.astype(self.dtype))))
        )
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, self.width))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        x = self.stack(self.blocks, x)
        return self.norm(x[:, 0])
