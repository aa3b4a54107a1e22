"""Text towers: a BERT-style bidirectional encoder (the paper's) and CLIP's causal transformer.

Both take `tokens: int32 [B, L]` and `mask: bool [B, L]` (True on real tokens, which form a prefix:
padding sits at the end) and return one feature per text, `[B, width]`. `attention`,
`scan_layers` and `remat`: see `layers.py`.
"""

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from focusclip_jax.models import layers
from focusclip_jax.models.layers import (
    BlockStack,
    PostNormBlock,
    PreNormBlock,
    apply_dropout,
    default_init,
    layer_norm,
    partitioned,
)
from focusclip_jax.sharding import constrain_batch
from input_pipeline.errors import check_choice, check_number

Pooling = Literal["mean", "mean_with_padding", "cls"]

# Architecture per size; `vocab_size` and `max_len` are defaults that configs may override.
TEXT_SIZES: dict[str, dict[str, int]] = {
    "bert-base": dict(
        width=768, depth=12, num_heads=12, mlp_dim=3072, vocab_size=30522, max_len=512
    ),
    "minilm-l6": dict(
        width=384, depth=6, num_heads=12, mlp_dim=1536, vocab_size=30522, max_len=512
    ),
    "clip-b": dict(width=512, depth=12, num_heads=8, mlp_dim=2048, vocab_size=49408, max_len=77),
    "tiny": dict(width=32, depth=2, num_heads=2, mlp_dim=64, vocab_size=1000, max_len=64),
}


def _embed(
    num: int, width: int, names: tuple[str, str], param_dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.Embed:
    return nnx.Embed(
        num,
        width,
        param_dtype=param_dtype,
        embedding_init=partitioned(default_init, names),
        rngs=rngs,
    )


def _check_length(tokens: jax.Array, max_len: int) -> None:
    if tokens.shape[1] > max_len:
        raise ValueError(f"text length {tokens.shape[1]} exceeds max_len {max_len}")


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        check_number(name, value, integer=True, at_least=1)


class BertTextEncoder(nnx.Module):
    """BERT: token + position + segment embeddings → LayerNorm → post-norm blocks → pooling.

    Padding is masked out of attention. `pooling`: 'mean' averages the real tokens; 'cls' takes
    the first token; 'mean_with_padding' averages all L positions, padding included — the original
    FocusCLIP code's behaviour, kept only to reproduce its numbers. `dropout`: BERT's training
    dropout (0.1 in bert-base-uncased), on the embeddings, each sub-layer's output and the
    attention probabilities, drawn from the `rng` the call is given (none: evaluation).
    """

    @staticmethod
    def forward_flops(*, width: int, depth: int, mlp_dim: int, max_len: int, **_: Any) -> dict:
        """Forward matmul FLOPs per text of `max_len` tokens (padding is computed too): the
        token embedding is a lookup (`input`: 0), the blocks the `rest`."""
        return {"input": 0, "rest": depth * layers.block_flops(max_len, width, mlp_dim)}

    def __init__(
        self,
        *,
        width: int,
        vocab_size: int,
        max_len: int,
        type_vocab_size: int = 2,
        pooling: Pooling = "mean",
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
        **stack_options: Any,
    ):
        check_choice("pooling", pooling, ("mean", "mean_with_padding", "cls"))
        _check_sizes(vocab_size=vocab_size, max_len=max_len, type_vocab_size=type_vocab_size)
        self.stack = BlockStack(block=PostNormBlock, **{"eps": 1e-12, **stack_options})
        self.stack.check_width(width)
        self.stack.check_attention(width, max_len)
        self.width = width
        self.max_len = max_len
        self.pooling = pooling
        self.dtype = dtype
        self.token_embed = _embed(vocab_size, width, ("vocab", "embed"), param_dtype, rngs)
        self.pos_embed = _embed(max_len, width, ("pos", "embed"), param_dtype, rngs)
        # Segment embeddings exist for weight import; FocusCLIP feeds a single segment (type 0).
        self.type_embed = _embed(type_vocab_size, width, (None, "embed"), param_dtype, rngs)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed_norm = layer_norm(width, eps=self.stack.eps, **kw)
        self.blocks = self.stack.build(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self, tokens: jax.Array, mask: jax.Array, rng: jax.Array | None = None
    ) -> jax.Array:
        _check_length(tokens, self.max_len)
        embed_key, blocks_key = (None, None) if rng is None else jax.random.split(rng)
        x = (
            self.token_embed(tokens)
            + self.pos_embed.embedding[: tokens.shape[1]]
            + self.type_embed.embedding[0]
        )
        x = self.embed_norm(constrain_batch(x.astype(self.dtype)))
        x = apply_dropout(x, self.stack.dropout, embed_key)
        x = self.stack(self.blocks, x, mask, rng=blocks_key)
        if self.pooling == "cls":
            return x[:, 0]
        # Averages accumulate in float32: a bfloat16 sum over hundreds of tokens loses digits.
        if self.pooling == "mean_with_padding":
            return x.mean(axis=1, dtype=jnp.float32).astype(x.dtype)
        weights = mask.astype(jnp.float32)[..., None]
        total = (x * weights.astype(x.dtype)).sum(axis=1, dtype=jnp.float32)
        return (total / jnp.maximum(weights.sum(axis=1), 1)).astype(x.dtype)


class CausalTextEncoder(nnx.Module):
    """CLIP text transformer: token + position embeddings → causal pre-norm blocks → LN → EOT.

    The feature is the hidden state at the last real token (index `sum(mask) - 1`), which is
    where CLIP's `argmax(tokens)` lands because its end-of-text id is the largest in the vocabulary.
    """

    @staticmethod
    def forward_flops(*, width: int, depth: int, mlp_dim: int, max_len: int, **_: Any) -> dict:
        """Forward matmul FLOPs per text of `max_len` tokens (padding is computed too): the
        token embedding is a lookup (`input`: 0), the blocks the `rest`."""
        return {"input": 0, "rest": depth * layers.block_flops(max_len, width, mlp_dim)}

    def __init__(
        self,
        *,
        width: int,
        vocab_size: int,
        max_len: int,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
        **stack_options: Any,
    ):
        defaults = {"activation": "quick_gelu", "eps": 1e-5}
        _check_sizes(vocab_size=vocab_size, max_len=max_len)
        self.stack = BlockStack(block=PreNormBlock, **{**defaults, **stack_options})
        self.stack.check_width(width)
        self.stack.check_attention(width, max_len)
        self.width = width
        self.max_len = max_len
        self.dtype = dtype
        self.token_embed = _embed(vocab_size, width, ("vocab", "embed"), param_dtype, rngs)
        self.pos_embed = _embed(max_len, width, ("pos", "embed"), param_dtype, rngs)
        self.blocks = self.stack.build(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.final_norm = layer_norm(width, eps=self.stack.eps, **kw)

    def __call__(
        self, tokens: jax.Array, mask: jax.Array, rng: jax.Array | None = None
    ) -> jax.Array:
        _check_length(tokens, self.max_len)
        embed_key, blocks_key = (None, None) if rng is None else jax.random.split(rng)
        x = self.token_embed(tokens) + self.pos_embed.embedding[: tokens.shape[1]]
        x = apply_dropout(constrain_batch(x.astype(self.dtype)), self.stack.dropout, embed_key)
        x = self.stack(self.blocks, x, mask, rng=blocks_key, is_causal=True)
        eot = jnp.maximum(mask.sum(axis=1) - 1, 0)
        x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        return self.final_norm(x)
