"""Transformer pieces shared by the ViT, BERT and CLIP text towers.

Parameters carry logical axis names ('embed', 'mlp', 'heads', 'kv', 'vocab', 'patch', 'pos') that
`sharding.py` maps to mesh axes. Attention projections keep heads as their own axis
(`[embed, heads, kv]`) so that tensor parallelism can shard heads, and so that importing a
PyTorch `[out, in]` weight is a transpose and a reshape.
"""

from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]

# timm ViT and HF BERT initialise weights with N(0, 0.02); truncation keeps outliers away.
default_init = nnx.initializers.truncated_normal(stddev=0.02)
zeros_init = nnx.initializers.zeros_init()
ones_init = nnx.initializers.ones_init()


def partitioned(init: nnx.Initializer, names: Sequence[str | None]) -> nnx.Initializer:
    """Tags an initializer with logical axis names.

    `eager_sharding=False` because Flax 0.12 otherwise shards every annotated variable at creation
    and fails without a mesh; placement happens later, from these names, in `sharding.py`.
    """
    return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def activation_fn(name: Activation) -> Callable[[jax.Array], jax.Array]:
    """Returns the MLP non-linearity: BERT and timm use exact erf GELU, OpenAI CLIP quick_gelu."""
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    raise ValueError(f"unknown activation {name!r}; expected gelu, gelu_tanh or quick_gelu")


def layer_norm(
    width: int, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.LayerNorm:
    """LayerNorm with named axes; Flax computes its statistics in float32 whatever `dtype` is."""
    return nnx.LayerNorm(
        width,
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=partitioned(ones_init, ("embed",)),
        bias_init=partitioned(zeros_init, ("embed",)),
        rngs=rngs,
    )


class MultiHeadAttention(nnx.Module):
    """Multi-head self-attention with separate query/key/value/out projections (as HF BERT)."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        head_dim = width // num_heads

        def in_proj() -> nnx.Einsum:
            return nnx.Einsum(
                "...d,dhk->...hk",
                (width, num_heads, head_dim),
                (num_heads, head_dim),
                dtype=dtype,
                param_dtype=param_dtype,
                kernel_init=partitioned(default_init, ("embed", "heads", "kv")),
                bias_init=partitioned(zeros_init, ("heads", "kv")),
                rngs=rngs,
            )

        self.query = in_proj()
        self.key = in_proj()
        self.value = in_proj()
        self.out = nnx.Einsum(
            "...hk,hkd->...d",
            (num_heads, head_dim, width),
            (width,),
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=partitioned(default_init, ("heads", "kv", "embed")),
            bias_init=partitioned(zeros_init, ("embed",)),
            rngs=rngs,
        )

    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, *, is_causal: bool = False
    ) -> jax.Array:
        """x: [B, L, width]; mask: bool [B, L], True for real tokens (keys), or None."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        key_mask = None if mask is None else mask[:, None, None, :]
        y = jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=is_causal)
        return self.out(y)


class Mlp(nnx.Module):
    """Two-layer MLP (timm naming: fc1, fc2)."""

    def __init__(
        self,
        width: int,
        mlp_dim: int,
        *,
        activation: Activation = "gelu",
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.activation = activation
        self.fc1 = nnx.Linear(
            width,
            mlp_dim,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=partitioned(default_init, ("embed", "mlp")),
            bias_init=partitioned(zeros_init, ("mlp",)),
            rngs=rngs,
        )
        self.fc2 = nnx.Linear(
            mlp_dim,
            width,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=partitioned(default_init, ("mlp", "embed")),
            bias_init=partitioned(zeros_init, ("embed",)),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(activation_fn(self.activation)(self.fc1(x)))


class _Block(nnx.Module):
    """Attention + MLP sub-layers; subclasses decide where the LayerNorms sit."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_dim: int,
        *,
        activation: Activation = "gelu",
        eps: float = 1e-6,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = layer_norm(width, eps=eps, **kw)
        self.attn = MultiHeadAttention(width, num_heads, **kw)
        self.norm2 = layer_norm(width, eps=eps, **kw)
        self.mlp = Mlp(width, mlp_dim, activation=activation, **kw)


class PreNormBlock(_Block):
    """x + attn(LN(x)), then + mlp(LN(.)): timm ViT and CLIP blocks."""

    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, *, is_causal: bool = False
    ) -> jax.Array:
        x = x + self.attn(self.norm1(x), mask, is_causal=is_causal)
        return x + self.mlp(self.norm2(x))


class PostNormBlock(_Block):
    """LN(x + attn(x)), then LN(. + mlp(.)): BERT blocks (norm1 = attention.output.LayerNorm)."""

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = self.norm1(x + self.attn(x, mask))
        return self.norm2(x + self.mlp(x))
