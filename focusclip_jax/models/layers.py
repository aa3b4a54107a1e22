"""Transformer pieces shared by the ViT, BERT and CLIP text towers.

Parameters carry logical axis names ('embed', 'mlp', 'heads', 'kv', 'vocab', 'patch', 'pos') that
`sharding.py` maps to mesh axes. Attention projections keep heads as their own axis
(`[embed, heads, kv]`) so that tensor parallelism can shard heads, and so that importing a
PyTorch `[out, in]` weight is a transpose and a reshape.

Speed options shared by the towers (`config.model`): `dtype` is the compute dtype ('auto':
bfloat16 on TPUs and GPUs, float32 on CPUs; parameters stay float32: `compute_dtype`);
`attention` picks the attention kernel (`attention_implementation`: XLA's, cuDNN's flash
attention on NVIDIA GPUs, Pallas kernels on TPUs: `vmem_attention`'s whole-sequence kernels up to
512 tokens, splash attention beyond); `scan_layers` stacks the blocks'
parameters on a leading 'layers' axis (never sharded) and runs them with one `jax.lax.scan`, so
compile time does not grow with depth; `remat` recomputes each block's activations in the
backward pass (`jax.checkpoint` with the named policy) to trade compute for memory.

Dropout (BERT's, as Hugging Face trains it: hidden states and attention probabilities) draws from
a key passed at call time (`rng`), never from state in the module: the model stays a pure
function of its parameters, and no key means no dropout (evaluation). Every attention path draws
the same keep-mask from the same key (`jax.random.bernoulli`'s, hashed in the TPU kernels of
`vmem_attention`).
"""

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.pallas.ops.tpu import splash_attention
from jax.sharding import PartitionSpec

from focusclip_jax.models import vmem_attention
from focusclip_jax.sharding import BATCH_AXES, constrain_batch
from input_pipeline.errors import check_choice, check_number

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]
AttentionImpl = Literal["xla", "cudnn", "splash", "vmem", "auto"] | None
Remat = Literal[
    "none", "all_but_mlp_activation", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"
]

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
ATTENTION_IMPLS = ("xla", "cudnn", "splash", "vmem", "auto", None)
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
# Which intermediates a rematerialised block keeps for the backward pass (the rest is recomputed).
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # keeps only the block's input
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# `model.remat`: keep all ("none"); keep all but the MLP's activation, recomputed from its input
# in the backward pass (an elementwise function: one [B, T, mlp_dim] activation per block less to
# write and read; "all_but_mlp_activation"); or a policy of the whole block.
REMATS = ("none", "all_but_mlp_activation", *REMAT_POLICIES)
# Scanned blocks store every residual they keep as a stacked buffer, where unrolled ones let XLA
# recompute elementwise work: under a scan, a block keeping all ("none", "all_but_mlp_activation")
# took ~3x the temporaries of unrolled blocks (TPU v5e); keeping the weight matmuls' outputs only,
# 1.3x (PERFORMANCE.md, "Scanned layers and remat").
SCAN_REMAT = "dots_with_no_batch_dims_saveable"
SCAN_HEAVY_REMATS = ("none", "all_but_mlp_activation")
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


_BUILT_FOR: contextvars.ContextVar[jax.Device | jax.sharding.AbstractDevice | None] = (
    contextvars.ContextVar("built_for", default=None)
)


@contextlib.contextmanager
def built_for(device: jax.Device | jax.sharding.AbstractDevice) -> Iterator[None]:
    """Models built inside see `device` as `traced_device` (`setup.ModelSetup.create`: the
    mesh's), so that options checked at build (the attention kernel) are checked for the target:
    a GPU compiled for from a CPU host. Not a mesh: parameters stay unplaced."""
    token = _BUILT_FOR.set(device)
    try:
        yield
    finally:
        _BUILT_FOR.reset(token)


def traced_device() -> jax.Device | jax.sharding.AbstractDevice:
    """The device kind traced for: the context mesh's (`sharding.traced_on`: a step compiled
    ahead of time for a TPU from a CPU host sees the TPU), else the one a model is being
    `built_for`, else JAX's default device."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    device = device or _BUILT_FOR.get()
    return jax.devices()[0] if device is None else device


def compute_dtype(requested: str | jnp.dtype, platform: str | None = None) -> jnp.dtype:
    """`model.dtype`: the dtype of matmuls and activations (parameters, LayerNorm statistics,
    softmax and the loss stay float32). 'auto' is bfloat16 on TPUs and GPUs, where it doubles
    the matmul rate and halves activation traffic, and float32 on CPUs; `platform` (the
    mesh's devices) defaults to `traced_device`'s."""
    try:
        name = requested if isinstance(requested, str) else jnp.dtype(requested).name
    except TypeError:  # not a dtype at all
        name = requested
    check_choice("dtype", name, COMPUTE_DTYPES)
    if name != "auto":
        return jnp.dtype(name)
    platform = platform or traced_device().platform
    return jnp.dtype(jnp.bfloat16 if platform in ("tpu", "gpu") else jnp.float32)


def attention_implementation(
    requested: AttentionImpl, dtype: jnp.dtype, head_dim: int, length: int | None = None
) -> Literal["xla", "cudnn", "splash", "vmem"] | None:
    """The attention kernel, decided while tracing.

    'auto' on TPUs (only under a mesh, `sharding.traced_on`, which the Pallas kernels need to
    split the batch over: XLA does not partition Mosaic kernels) takes `vmem_attention`'s
    whole-sequence kernels for sequences up to `vmem_attention.MAX_LENGTH` tokens, in any dtype;
    for longer ones, as elsewhere, a fused kernel for bfloat16/float16 inputs: splash attention
    on TPUs, cuDNN's flash attention on NVIDIA GPUs (head dim a multiple of 8 up to 128); XLA's
    einsum-softmax-einsum otherwise (CPUs, float32, TPUs outside a mesh). The TPU compiler
    estimates splash slower than XLA's attention in float32 (the paper's step, v5e-8: 69.3
    against 64.3 ms), faster in bfloat16 (33.3 against 38.9 ms without dropout); the
    whole-sequence kernels, which pad and transpose nothing, faster than both (PERFORMANCE.md).
    The devices are those of the mesh being compiled for, so a step compiled ahead of time for
    an H100 or a TPU from a CPU host gets their kernel; outside a mesh, JAX's default device
    decides. None leaves the choice to JAX (XLA in jax 0.12).
    'cudnn' where it cannot run fails at compile time with cuDNN's own message; 'splash' and
    'vmem' run the Mosaic kernels on TPUs, Pallas's interpreter on CPUs (slow: for tests), and
    fail here on other devices ('vmem' also on sequences longer than it holds). Attention that
    drops probabilities (BERT in training) takes `vmem_attention`'s kernels where splash or
    vmem is chosen and the sequence fits them, the written-out attention elsewhere: neither
    cuDNN's nor splash's kernel drops probabilities.
    """
    if requested not in ATTENTION_IMPLS:
        raise ValueError(
            f"model.attention={requested!r}: expected xla, cudnn, splash, vmem, auto or None"
        )
    device = traced_device()
    if requested in ("splash", "vmem") and device.platform not in ("tpu", "cpu"):
        raise ValueError(
            f"model.attention={requested!r} runs on TPUs (and interpreted on CPUs), not on "
            f"{device.platform} devices: use auto, xla or cudnn"
        )
    too_long = None if length is None else vmem_attention.too_long(length)
    if requested == "vmem" and too_long:
        raise ValueError(f"model.attention='vmem': {too_long}; use auto or splash")
    if requested != "auto":
        return requested
    on_tpu_mesh = device.platform == "tpu" and not jax.sharding.get_abstract_mesh().empty
    if on_tpu_mesh and length is not None and not too_long:
        return "vmem"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "xla"
    if head_dim % 8 == 0 and head_dim <= 128 and compiling_for_nvidia_gpu():
        return "cudnn"
    return "splash" if on_tpu_mesh else "xla"


def compiling_for_nvidia_gpu() -> bool:
    """Whether the devices traced for are NVIDIA GPUs: the context mesh's, else the default's."""
    device = traced_device()
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
    `jax.nn.dot_product_attention` drops attention probabilities (on TPUs the splash and vmem
    choices take `_vmem_attention`: the same mask, float32 scores in VMEM). The scores
    keep q's dtype and the softmax runs in float32 on them: in bfloat16 the [B, heads, L, L]
    arrays the step writes (forward, recomputed and backward) are half the size of float32's."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1])  # weak: keeps q.dtype
    allowed = jnp.ones(logits.shape[-2:], bool)
    if is_causal:
        allowed = jnp.tril(allowed)
    allowed = allowed[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    logits = jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    probs = apply_dropout(probs, rate, rng).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def _vmem_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    is_causal: bool,
    rate: float = 0.0,
    rng: jax.Array | None = None,
    *,
    head_dim: int,
) -> jax.Array:
    """The attention (`jax.nn.dot_product_attention`'s, or `_attention_with_dropout`'s with a
    key and a rate) as `vmem_attention`'s Pallas TPU kernels on q, k and v with the heads side
    by side ([B, T, H·D], as `heads_side_by_side` writes them; so is the output): the
    [B, H, T, T] logits, probabilities and keep-mask stay in VMEM, and the sequence is not
    padded. Run on each batch shard (`split_over_batch`). The same key drops the same
    probabilities: each sequence hashes its global index (`row_seeds`, split with the batch).
    Pallas's interpreter runs them on CPUs."""
    batch, length, width = q.shape
    keys = jnp.ones((batch, length), bool) if mask is None else mask
    key_mask = keys.astype(jnp.int32)[:, None, :]
    options = dict(
        head_dim=head_dim, is_causal=is_causal, interpret=traced_device().platform == "cpu"
    )
    if rng is None or rate == 0.0:
        attend = functools.partial(vmem_attention.attend, **options)
        return split_over_batch(attend, q, k, v, key_mask)
    attend = functools.partial(vmem_attention.attend, rate=rate, **options)
    seeds = vmem_attention.row_seeds(rng, batch, width // head_dim, length)
    return split_over_batch(attend, q, k, v, key_mask, seeds)


def heads_side_by_side(projection: nnx.Einsum, x: jax.Array) -> jax.Array:
    """`projection(x)` of an input projection ('...d,dhk->...hk') as [B, T, H·D]: its kernel
    and bias flattened, so that the matmul itself writes the heads side by side."""
    kernel = projection.kernel[...]
    x, kernel, bias = projection.promote_dtype(
        (x, kernel.reshape(kernel.shape[0], -1), projection.bias[...].reshape(-1)),
        dtype=projection.dtype,
    )
    return jnp.einsum("...d,de->...e", x, kernel) + bias


def from_heads_side_by_side(projection: nnx.Einsum, y: jax.Array) -> jax.Array:
    """`projection(y)` of the output projection ('...hk,hkd->...d') of y [B, T, H·D]."""
    kernel = projection.kernel[...]
    y, kernel, bias = projection.promote_dtype(
        (y, kernel.reshape(-1, kernel.shape[-1]), projection.bias[...]), dtype=projection.dtype
    )
    return jnp.einsum("...e,ed->...d", y, kernel) + bias


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


# Splash attention's blocks are multiples of 128 tokens (TPU lanes) that divide the sequence:
# other lengths (ViT-B/16's 197 tokens, CLIP's 77) are padded with masked keys. One block spans
# up to 512 tokens: the paper's lengths then take one block per sequence and head, the fewest
# kernel steps (libtpu's estimate of one BERT-base attention layer, 4 texts of 512 tokens, bf16,
# v5e, forward and backward: 0.29 ms with 512-token blocks, 0.33 ms with 128).
SPLASH_LENGTH_MULTIPLE = 128
SPLASH_MAX_BLOCK = 512


@functools.lru_cache(maxsize=64)
def _splash_kernel(
    length: int, num_heads: int, is_causal: bool, interpret: bool
) -> Callable[..., jax.Array]:
    """Splash attention for one sequence ([heads, length, head_dim]), forward and a fused
    backward; its block-sparse mask is computed once per shape (numpy, at trace time)."""
    block = next(b for b in (SPLASH_MAX_BLOCK, 256, SPLASH_LENGTH_MULTIPLE) if length % b == 0)
    shape = (length, length)
    head_mask = (
        splash_attention.CausalMask(shape) if is_causal else splash_attention.FullMask(shape)
    )
    blocks = splash_attention.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        use_fused_bwd_kernel=True,
    )
    with jax.ensure_compile_time_eval():  # concrete mask arrays, whatever trace calls it
        return splash_attention.make_splash_mha(
            splash_attention.MultiHeadMask([head_mask] * num_heads),
            block_sizes=blocks,
            head_shards=1,
            q_seq_shards=1,
            interpret=interpret,
        )


def split_over_batch(fn: Callable[..., jax.Array], *args: Any) -> jax.Array:
    """`fn(*args)` run on each device's rows (`jax.shard_map` over the context mesh's batch
    axes): XLA does not partition Mosaic kernels. Rows that do not divide over the batch shards
    are computed whole on every device; outside a mesh, `fn` runs as is."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(*args)
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    shards = math.prod(mesh.shape[a] for a in axes)
    rows = jax.tree.leaves(args)[0].shape[0]
    spec = PartitionSpec(axes) if shards > 1 and rows % shards == 0 else PartitionSpec()
    return jax.shard_map(
        fn, mesh=mesh, in_specs=(spec,) * len(args), out_specs=spec, check_vma=False
    )(*args)


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
        drop attention probabilities (training): `vmem_attention`'s kernels where splash or vmem
        is chosen and the length fits them, the written-out attention elsewhere."""
        dropout = rng is not None and self.dropout_rate > 0
        implementation = attention_implementation(
            self.attention, self.dtype, self.head_dim, x.shape[1]
        )
        if dropout and implementation in ("splash", "vmem"):
            num_heads = x.shape[-1] // self.head_dim
            why_not = vmem_attention.unsupported(x.shape[1], num_heads, self.dropout_rate, rng)
            implementation = "xla" if why_not else "vmem"
        if implementation == "splash":
            return self._splash(x, mask, is_causal)
        if implementation == "vmem":
            q, k, v = (heads_side_by_side(p, x) for p in (self.query, self.key, self.value))
            rate = self.dropout_rate if dropout else 0.0
            y = _vmem_attention(q, k, v, mask, is_causal, rate, rng, head_dim=self.head_dim)
            return from_heads_side_by_side(self.out, y)
        q, k, v = self.query(x), self.key(x), self.value(x)
        if dropout:
            return self.out(
                _attention_with_dropout(q, k, v, mask, is_causal, self.dropout_rate, rng)
            )
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

    def _splash(self, x: jax.Array, mask: jax.Array | None, is_causal: bool) -> jax.Array:
        """Splash attention (`_splash_kernel`) with q, k and v padded to a multiple of 128
        tokens, the padding masked out as keys. Padding after the projections keeps the
        projections, and what remat saves of them, at the real length (libtpu's estimate of
        ViT-B/16's forward and backward, 8 images, bf16, v5e, default remat: 12.51 ms and 0.35
        GiB of temporaries, against 12.85 ms and 0.40 GiB padding the input x, and 13.55 ms and
        0.29 GiB with XLA's attention). Padding and `mask` reach the kernel as segment ids:
        every query's segment is 1, each key's 1 where `mask` holds, so a query sees the real
        keys alone, as XLA's masked softmax does. q is scaled by 1/sqrt(head_dim) before the
        kernel (which has no scale)."""
        length = x.shape[1]
        padded = -(-length // SPLASH_LENGTH_MULTIPLE) * SPLASH_LENGTH_MULTIPLE
        extra = ((0, 0), (0, 0), (0, padded - length), (0, 0))
        # [B, T, H, D] -> [B, H, T', D], the kernel's layout.
        kernel_layout = lambda t: jnp.pad(jnp.swapaxes(t, 1, 2), extra)
        q = kernel_layout(self.query(x) * (1.0 / math.sqrt(self.head_dim)))
        k, v = kernel_layout(self.key(x)), kernel_layout(self.value(x))
        kernel = _splash_kernel(
            padded, q.shape[1], is_causal, interpret=traced_device().platform == "cpu"
        )
        if mask is None and padded == length:
            y = split_over_batch(jax.vmap(kernel), q, k, v)
        else:
            keys = jnp.ones(x.shape[:2], bool) if mask is None else mask
            kv_segments = jnp.pad(keys, ((0, 0), (0, padded - length))).astype(jnp.int32)
            segments = splash_attention.SegmentIds(jnp.ones_like(kv_segments), kv_segments)
            y = split_over_batch(jax.vmap(kernel), q, k, v, segments)
        return self.out(jnp.swapaxes(y, 1, 2)[:, :length])


class Mlp(nnx.Module):
    """Two-layer MLP (timm naming: fc1, fc2). `recompute_activation`: the backward pass recomputes
    the non-linearity from fc1's output instead of keeping its output."""

    def __init__(
        self,
        width: int,
        mlp_dim: int,
        *,
        activation: Activation = "gelu",
        recompute_activation: bool = False,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.activation = activation
        self.recompute_activation = recompute_activation
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
        hidden = self.fc1(x)
        if not self.recompute_activation:
            return self.fc2(activation_fn(self.activation)(hidden))
        graphdef, fc2 = nnx.split(self.fc2)
        out = lambda params, h: nnx.merge(graphdef, params)(activation_fn(self.activation)(h))
        # Its residuals are its inputs: fc1's output (and fc2's weights), not the activation.
        return jax.checkpoint(out)(fc2, hidden)


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
        recompute_mlp_activation: bool = False,
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
        self.mlp = Mlp(
            width,
            mlp_dim,
            activation=activation,
            recompute_activation=recompute_mlp_activation,
            **kw,
        )

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
        check_choice("remat", self.remat, REMATS)

    def check_width(self, width: int) -> None:
        """The tower's width: a positive integer that the heads split evenly."""
        check_number("width", width, integer=True, at_least=1)
        if width % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads}: must divide the width {width}")

    def check_attention(self, width: int, length: int) -> None:
        """`attention` for the tower's sequences of `length` tokens on the devices the model is
        built for (those of the context mesh: `setup.ModelSetup.create` builds under it), so that
        a kernel that cannot run there fails as the model is built, not as the step is traced."""
        attention_implementation(self.attention, jnp.float32, width // self.num_heads, length)

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
            recompute_mlp_activation=self.remat == "all_but_mlp_activation",
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

            if self.remat not in REMAT_POLICIES:  # none, or the MLP's own (`Mlp`)
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
