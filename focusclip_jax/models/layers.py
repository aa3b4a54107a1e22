"""Transformer pieces shared by the ViT, BERT and CLIP text towers.

Parameters carry logical axis names ('embed', 'mlp', 'heads', 'kv', 'vocab', 'patch', 'pos') that
`sharding.py` maps to mesh axes. Attention projections keep heads as their own axis
(`[embed, heads, kv]`) so that tensor parallelism can shard heads, and so that importing a
PyTorch `[out, in]` weight is a transpose and a reshape.

Speed options shared by the towers (`config.model`): `attention` picks the kernel of
`jax.nn.dot_product_attention`; `scan_layers` stacks the blocks' parameters on a leading
'layers' axis (never sharded) and runs them with one `jax.lax.scan`, so compile time does not
grow with depth; `remat` recomputes each block's activations in the backward pass
(`jax.checkpoint` with the named policy) to trade compute for memory.

Dropout (BERT's, as Hugging Face trains it: hidden states and attention probabilities) draws from
a key passed at call time (`rng`), never from state in the module: the model stays a pure
function of its parameters, and no key means no dropout (evaluation).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from focusclip_jax.sharding import constrain_batch
from input_pipeline.errors import check_choice, check_number

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]
AttentionImpl = Literal["xla", "cudnn", "auto"] | None
Remat = Literal["none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"]

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
ATTENTION_IMPLS = ("xla", "cudnn", "auto", None)
# Which intermediates a rematerialised block keeps for the backward pass (the rest is recomputed).
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # keeps only the block's input
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
LAYER_AXIS = "layers"  # logical name of the stacked-blocks axis (no sharding rule: replicated)

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


def attention_implementation(
    requested: AttentionImpl, dtype: jnp.dtype, head_dim: int
) -> Literal["xla", "cudnn"] | None:
    """`implementation=` for `jax.nn.dot_product_attention`, decided while tracing.

    'auto' takes cuDNN's fused flash attention where it applies (NVIDIA GPUs, bfloat16/float16
    inputs, head dim a multiple of 8 up to 128) and XLA's einsum-softmax-einsum elsewhere (CPU,
    TPU, float32). The GPU is that of the mesh being compiled for (`sharding.traced_on`), so a
    step compiled ahead of time for an H100 from a CPU host gets cuDNN; outside a mesh, JAX's
    default device decides. None leaves the choice to JAX (XLA in jax 0.12). 'cudnn' where it
    cannot run fails at compile time with cuDNN's own message.
    """
    if requested not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention={requested!r}: expected xla, cudnn, auto or None")
    if requested != "auto":
        return requested
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    fits = head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if half and fits and compiling_for_nvidia_gpu() else "xla"


def compiling_for_nvidia_gpu() -> bool:
    """Whether the devices traced for are NVIDIA GPUs: the context mesh's, else the default's."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    if device is None:
        device = jax.devices()[0]
    return device.platform == "gpu" and "nvidia" in device.device_kind.lower()


def apply_dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero a `rate` fraction, scale the rest by 1 / (1 - rate); identity
    without a key (evaluation) or at rate 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _attention_with_dropout(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    is_causal: bool,
    rate: float,
    rng: jax.Array,
) -> jax.Array:
    """softmax(q·kᵀ/√d + mask), dropped out, times v: written out, since no fused kernel of
    `jax.nn.dot_product_attention` drops attention probabilities. Softmax in float32."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
    allowed = jnp.ones(logits.shape[-2:], bool)
    if is_causal:
        allowed = jnp.tril(allowed)
    allowed = allowed[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = apply_dropout(jax.nn.softmax(logits, axis=-1), rate, rng).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


# jax 0.12's cuDNN attention differentiates only even sequence lengths (its backward treats a
# missing bias as one, and biased training needs T % 2 == 0): odd lengths (ViT-B/16's 197 tokens,
# CLIP's 77) are padded by masked keys.
CUDNN_TRAINING_LENGTH_MULTIPLE = 2


def _cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, is_causal: bool
) -> jax.Array:
    """cuDNN flash attention; padding is given as key lengths (`mask.sum(-1)`), which assumes the
    real tokens form a prefix, as the tokenizers produce."""
    batch, length = q.shape[:2]
    lengths = (
        jnp.full((batch,), length, jnp.int32)
        if mask is None
        else mask.sum(axis=-1, dtype=jnp.int32)
    )
    extra = -length % CUDNN_TRAINING_LENGTH_MULTIPLE
    if extra:
        pad = lambda t: jnp.pad(t, ((0, 0), (0, extra), (0, 0), (0, 0)))
        q, k, v = pad(q), pad(k), pad(v)
    y = jax.nn.dot_product_attention(
        q, k, v, key_value_seq_lengths=lengths, is_causal=is_causal, implementation="cudnn"
    )
    return y[:, :length]


class MultiHeadAttention(nnx.Module):
    """Multi-head self-attention with separate query/key/value/out projections (as HF BERT)."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        attention: AttentionImpl = "xla",
        dropout_rate: float = 0.0,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        head_dim = width // num_heads
        attention_implementation(attention, dtype, head_dim)  # an unknown name fails here
        self.attention = attention
        self.dropout_rate = dropout_rate
        self.dtype = dtype
        self.head_dim = head_dim

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
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        is_causal: bool = False,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """x: [B, L, width]; mask: bool [B, L], True for real tokens (keys), or None; `rng`:
        drop attention probabilities (training), which takes the written-out attention."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        if rng is not None and self.dropout_rate > 0:
            y = _attention_with_dropout(q, k, v, mask, is_causal, self.dropout_rate, rng)
            return self.out(y)
        implementation = attention_implementation(self.attention, self.dtype, self.head_dim)
        if implementation == "cudnn":
            return self.out(_cudnn_attention(q, k, v, mask, is_causal))
        y = jax.nn.dot_product_attention(
            q,
            k,
            v,
            mask=None if mask is None else mask[:, None, None, :],
            is_causal=is_causal,
            implementation=implementation,
        )
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
        attention: AttentionImpl = "xla",
        dropout_rate: float = 0.0,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dropout_rate = dropout_rate
        self.norm1 = layer_norm(width, eps=eps, **kw)
        self.attn = MultiHeadAttention(
            width, num_heads, attention=attention, dropout_rate=dropout_rate, **kw
        )
        self.norm2 = layer_norm(width, eps=eps, **kw)
        self.mlp = Mlp(width, mlp_dim, activation=activation, **kw)

    def _sublayers(
        self, mask: jax.Array | None, is_causal: bool, rng: jax.Array | None
    ) -> tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
        """The attention and MLP sub-layers, each dropping out its output (as HF BERT's
        SelfOutput and Output do) when given a key; attention also drops its probabilities."""
        keys = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
        rate = self.dropout_rate

        def attend(h: jax.Array) -> jax.Array:
            return apply_dropout(
                self.attn(h, mask, is_causal=is_causal, rng=keys[0]), rate, keys[1]
            )

        return attend, lambda h: apply_dropout(self.mlp(h), rate, keys[2])


class PreNormBlock(_Block):
    """x + attn(LN(x)), then + mlp(LN(.)): timm ViT and CLIP blocks."""

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        is_causal: bool = False,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        attend, mlp = self._sublayers(mask, is_causal, rng)
        x = x + attend(self.norm1(x))
        return x + mlp(self.norm2(x))


class PostNormBlock(_Block):
    """LN(x + attn(x)), then LN(. + mlp(.)): BERT blocks (norm1 = attention.output.LayerNorm)."""

    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, *, rng: jax.Array | None = None
    ) -> jax.Array:
        attend, mlp = self._sublayers(mask, False, rng)
        x = self.norm1(x + attend(x))
        return self.norm2(x + mlp(x))


def block_flops(tokens: int, width: int, mlp_dim: int) -> int:
    """Forward matmul FLOPs of one transformer block over one sequence of `tokens` (2·M·N·K per
    matmul): the query/key/value/out projections, q·kᵀ and p·v over all heads, the MLP."""
    projections = 2 * tokens * width * width * 4
    attention = 2 * 2 * tokens * tokens * width
    mlp = 2 * 2 * tokens * width * mlp_dim
    return projections + attention + mlp


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockStack:
    """A tower's transformer blocks and how they run, defined once for every tower.

    `depth` blocks of one kind (`block`), built by `build` and kept by the tower as its `blocks`
    attribute: an `nnx.List` (parameters `blocks/<i>/...`), or with `scan_layers` one block whose
    parameters carry a leading `depth` axis named 'layers' (`blocks/...`), run by one
    `jax.lax.scan`. `remat` recomputes each block's activations in the backward pass with the named
    policy; `dropout` is the blocks' training dropout. Towers take these as keyword options
    (`**stack_options`) and keep only what is theirs (embeddings, pooling, final norm).
    """

    block: type[_Block]
    depth: int
    num_heads: int
    mlp_dim: int
    activation: Activation = "gelu"
    eps: float = 1e-6
    attention: AttentionImpl = "xla"
    dropout: float = 0.0
    scan_layers: bool = False
    remat: Remat = "none"

    def __post_init__(self) -> None:
        """Every option checked at model build, not at the first step: ValueError
        `<option>=<value>: ...` (the towers name the config key)."""
        for name in ("depth", "num_heads", "mlp_dim"):
            check_number(name, getattr(self, name), integer=True, at_least=1)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_number("eps", self.eps, above=0)
        check_choice("attention", self.attention, ATTENTION_IMPLS)
        check_number("dropout", self.dropout, at_least=0, below=1)
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"scan_layers={self.scan_layers!r}: must be True or False")
        check_choice("remat", self.remat, ("none", *REMAT_POLICIES))

    def check_width(self, width: int) -> None:
        """The tower's width: a positive integer that the heads split evenly."""
        check_number("width", width, integer=True, at_least=1)
        if width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads}: must divide the width {width}")

    def build(
        self, width: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs
    ) -> nnx.Module:
        """The blocks' parameters, in the layout `scan_layers` asks for."""
        options = dict(
            width=width,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            eps=self.eps,
            attention=self.attention,
            dropout_rate=self.dropout,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        if not self.scan_layers:
            return nnx.List([self.block(**options, rngs=rngs) for _ in range(self.depth)])

        @nnx.split_rngs(splits=self.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYER_AXIS})
        def stacked(layer_rngs: nnx.Rngs) -> nnx.Module:
            return self.block(**options, rngs=layer_rngs)

        return stacked(rngs)

    def __call__(
        self,
        blocks: nnx.Module,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        rng: jax.Array | None = None,
        **call_kwargs: bool,
    ) -> jax.Array:
        """Applies `build`'s blocks in order: `x = block(x, mask, rng=key, **call_kwargs)`, each
        with its own key split from `rng` (None: no dropout).

        Each block's parameters (and key) are passed in explicitly, so that `jax.checkpoint`
        (a recomputed block draws the same dropout) and `jax.lax.scan` see them as arguments.
        """

        def layer(graphdef: nnx.GraphDef, prevent_cse: bool) -> Callable:
            def apply(
                params: nnx.State, x: jax.Array, mask: jax.Array | None, key: jax.Array | None
            ) -> jax.Array:
                return nnx.merge(graphdef, params)(x, mask, rng=key, **call_kwargs)

            if self.remat == "none":
                return apply
            policy = REMAT_POLICIES[self.remat]
            return jax.checkpoint(apply, policy=policy, prevent_cse=prevent_cse)

        x = constrain_batch(x)
        if self.scan_layers:
            graphdef, stacked = nnx.split(blocks)
            keys = None if rng is None else jax.random.split(rng, self.depth)
            # Inside `scan` the recomputation cannot be merged into the forward pass: no CSE guard.
            step = layer(graphdef, prevent_cse=False)

            def body(h: jax.Array, xs: tuple) -> tuple[jax.Array, None]:
                params, key = xs
                return constrain_batch(step(params, h, mask, key)), None

            x, _ = jax.lax.scan(body, x, (stacked, keys))
            return x
        keys = [None] * self.depth if rng is None else list(jax.random.split(rng, self.depth))
        for block, key in zip(blocks, keys, strict=True):
            graphdef, params = nnx.split(block)
            x = constrain_batch(layer(graphdef, prevent_cse=True)(params, x, mask, key))
        return x
