"""Attention with dropout on its probabilities as Pallas TPU kernels (BERT's text tower in
training, as Hugging Face BERT trains it).

XLA's written-out attention with dropout moves [B, H, T, T] arrays (probabilities, their
gradients) through HBM; these kernels keep them in VMEM. One grid step attends one sequence and
one head: the whole [T, T] logits fit in VMEM for T up to `MAX_LENGTH` tokens, so the softmax
needs no online rescaling, and the backward kernel recomputes the logits, the softmax (its row
maximum and sum included) and the keep-mask from q, k and the key: it reads q, k, v and the
output's gradient, nothing [T, T] and no statistics saved by the forward kernel.

The keep-mask is the one `jax.random.bernoulli(key, 1 - rate, (B, H, T, T))` draws with
partitionable threefry (jax's default): element (b, h, q, k), flat index
n = ((b·H + h)·T + q)·T + k, is kept where the 32-bit word o1 ^ o2 of
threefry2x32(key, (n >> 32, n mod 2**32)) is below `keep_threshold(rate)`. The kernels hash the
same counts, so they are a drop-in for the written-out attention with the same randomness
(`row_seeds` carries each sequence's global index, which shards of the batch need).
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.extend.random import threefry2x32_p  # the hash, which Pallas lowers on TPUs

# One grid step holds several [T, T] float32 arrays in VMEM (logits, probabilities, the hash's
# words, gradients): 1 MiB each at 512 tokens. libtpu compiles both kernels at 512 tokens and
# 64-wide heads within its default scoped VMEM limit (v5e, 2026-12-07).
MAX_LENGTH = 512
LENGTH_MULTIPLE = 128  # TPU lanes: q, k and v are padded to a multiple (masked keys)
FORWARD_NAME, BACKWARD_NAME = "dropout_mha_fwd", "dropout_mha_bwd"  # the kernels in HLO
SEED_WORDS = 4  # per sequence: the key's two words, then the high and low words of its first index
MASKED = float(jnp.finfo(jnp.float32).min)  # the logit of a masked key, as the XLA path uses


def padded_length(length: int) -> int:
    """The kernels' sequence length: `length` rounded up to a multiple of 128."""
    return -(-length // LENGTH_MULTIPLE) * LENGTH_MULTIPLE


def keep_threshold(rate: float) -> int:
    """The 32-bit words below which an element is kept.

    `jax.random.bernoulli(key, p)` keeps where uniform < p, uniform = m·2**-23 with
    m = bits >> 9 (exact in float32), p = float32(p); so it keeps where m < ceil(p·2**23), that
    is bits < ceil(p·2**23)·2**9. `1.0 - rate` is evaluated as the layers evaluate it.
    """
    keep = np.float32(1.0 - rate)
    return math.ceil(float(keep) * 2**23) * 2**9


def unsupported(length: int, num_heads: int, rate: float, rng: jax.Array) -> str | None:
    """Why the kernels cannot take this attention (the caller then writes it out), or None."""
    if padded_length(length) > MAX_LENGTH:
        return f"{length} tokens: the kernels hold a whole sequence's logits, up to {MAX_LENGTH}"
    if num_heads * length * length >= 2**31:
        return "one sequence's probabilities exceed 2**31 elements"
    if not 0.0 < rate < 1.0 or not 0 < keep_threshold(rate) < 2**32:
        return f"dropout rate {rate}: the keep threshold is not a 32-bit word"
    if not jax.config.jax_threefry_partitionable:
        return "jax_threefry_partitionable is off: the kernels hash partitionable threefry's counts"
    key = _typed_key(rng)
    if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
        return "the dropout key is not one threefry2x32 key"
    return None


def _typed_key(rng: jax.Array) -> jax.Array:
    """A typed key: raw uint32 keys are read with JAX's default implementation, as
    `jax.random.bernoulli` reads them."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


def _times(x: jax.Array, factor: int) -> tuple[jax.Array, jax.Array]:
    """x · factor as (high, low) uint32 words, exactly: x uint32, 0 <= factor < 2**32 (products
    of 16-bit halves, which uint32 holds)."""
    x0, x1 = x & 0xFFFF, x >> 16
    f0, f1 = jnp.uint32(factor & 0xFFFF), jnp.uint32(factor >> 16)
    low, cross_a, cross_b, high = x0 * f0, x0 * f1, x1 * f0, x1 * f1
    middle = (low >> 16) + (cross_a & 0xFFFF) + (cross_b & 0xFFFF)
    return (
        high + (cross_a >> 16) + (cross_b >> 16) + (middle >> 16),
        (low & 0xFFFF) | (middle << 16),
    )


def row_seeds(rng: jax.Array, batch: int, num_heads: int, length: int) -> jax.Array:
    """uint32 [batch, 4]: per sequence b, the key's words and the high and low words of the flat
    index b·H·T·T of its first probability in [B, H, T, T]. Computed for the whole batch and split
    with it, so that each shard hashes its own rows' global indices."""
    key = jax.random.key_data(_typed_key(rng)).astype(jnp.uint32)
    high, low = _times(jnp.arange(batch, dtype=jnp.uint32), num_heads * length * length)
    return jnp.stack([*jnp.broadcast_to(key, (batch, 2)).T, high, low], axis=1)


def _keep_mask(
    seeds_ref: jax.Array, shape: tuple[int, int], length: int, threshold: int
) -> jax.Array:
    """The grid step's keep-mask [Tp, Tp]: sequence `program_id(0)`, head `program_id(1)`."""
    row, head = pl.program_id(0), pl.program_id(1)
    words = [seeds_ref[row * SEED_WORDS + i] for i in range(SEED_WORDS)]
    key_1, key_2, first_high, first_low = (jnp.reshape(w, (1, 1)) for w in words)
    head_start = (head * (length * length)).astype(jnp.uint32)
    query = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
    key = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
    offset = head_start + query * jnp.uint32(length) + key  # < H·T·T < 2**31
    low = first_low + offset
    high = first_high + (low < offset).astype(jnp.uint32)  # the carry into the high word
    bits_1, bits_2 = threefry2x32_p.bind(key_1, key_2, high, low)
    return (bits_1 ^ bits_2) < jnp.uint32(threshold)


def _probabilities(q: jax.Array, k: jax.Array, key_mask: jax.Array, is_causal: bool) -> jax.Array:
    """softmax(q·kᵀ/√d) over the allowed keys, float32 [Tp, Tp], as the XLA path computes it."""
    logits = jax.lax.dot_general(
        q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    ) / jnp.float32(math.sqrt(q.shape[-1]))
    allowed = key_mask != 0  # [1, Tp]
    if is_causal:
        shape = logits.shape
        allowed = allowed & (
            jax.lax.broadcasted_iota(jnp.int32, shape, 0)
            >= jax.lax.broadcasted_iota(jnp.int32, shape, 1)
        )
    logits = jnp.where(allowed, logits, MASKED)
    unnormalized = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


def _forward_kernel(
    seeds_ref: jax.Array,
    q_ref: jax.Array,
    k_ref: jax.Array,
    v_ref: jax.Array,
    mask_ref: jax.Array,
    o_ref: jax.Array,
    *,
    rate: float,
    is_causal: bool,
    length: int,
) -> None:
    """o = (p∘keep / (1 - rate))·v for one sequence and head (Pallas refs in VMEM, seeds in
    SMEM)."""
    probs = _probabilities(q_ref[...], k_ref[...], mask_ref[...], is_causal)
    keep = _keep_mask(seeds_ref, probs.shape, length, keep_threshold(rate))
    dropped = jnp.where(keep, probs / jnp.float32(1.0 - rate), 0.0)
    v = v_ref[...]
    o_ref[...] = jnp.dot(dropped.astype(v.dtype), v, preferred_element_type=jnp.float32).astype(
        o_ref.dtype
    )


def _backward_kernel(
    seeds_ref: jax.Array,
    q_ref: jax.Array,
    k_ref: jax.Array,
    v_ref: jax.Array,
    mask_ref: jax.Array,
    do_ref: jax.Array,
    dq_ref: jax.Array,
    dk_ref: jax.Array,
    dv_ref: jax.Array,
    *,
    rate: float,
    is_causal: bool,
    length: int,
) -> None:
    """y = p∘z (z: keep / (1 - rate)), o = y·v: dv = yᵀ·do, dp = (do·vᵀ)∘z,
    ds = p∘(dp − rowsum(dp∘p)), dq = ds·k/√d, dk = dsᵀ·q/√d, in the XLA path's dtypes."""
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    probs = _probabilities(q, k, mask_ref[...], is_causal)
    keep = _keep_mask(seeds_ref, probs.shape, length, keep_threshold(rate))
    kept = jnp.float32(1.0 - rate)
    dropped = jnp.where(keep, probs / kept, 0.0).astype(v.dtype)
    transposed_lhs = (((0,), (0,)), ((), ()))
    dv_ref[...] = jax.lax.dot_general(
        dropped, do, transposed_lhs, preferred_element_type=jnp.float32
    ).astype(dv_ref.dtype)
    d_dropped = jax.lax.dot_general(
        do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )
    d_probs = jnp.where(keep, d_dropped / kept, 0.0)
    d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
    d_logits = (d_logits / jnp.float32(math.sqrt(q.shape[-1]))).astype(q.dtype)
    dq_ref[...] = jnp.dot(d_logits, k, preferred_element_type=jnp.float32).astype(dq_ref.dtype)
    dk_ref[...] = jax.lax.dot_general(
        d_logits, q, transposed_lhs, preferred_element_type=jnp.float32
    ).astype(dk_ref.dtype)


def _cost(inputs: tuple, outputs: tuple, matmuls: int) -> pl.CostEstimate:
    """What the kernel does, for XLA's cost model (libtpu prices a Mosaic kernel without one as
    free: only the operands' traffic around it counts): `matmuls` [Tp, Tp]×[Tp, D] products and
    one exp per probability per sequence and head, each operand read or written once. The
    threefry hashing (vector integer ops) is not counted, as libtpu does not count it in XLA's
    fusions either."""
    batch, num_heads, length, head_dim = inputs[1].shape
    steps = batch * num_heads
    return pl.CostEstimate(
        flops=steps * matmuls * 2 * length * length * head_dim,
        transcendentals=steps * length * length,
        bytes_accessed=sum(x.size * x.dtype.itemsize for x in (*inputs, *outputs)),
    )


def _call(
    kernel: Callable, name: str, inputs: tuple, outputs: tuple, matmuls: int, static: dict
) -> tuple:
    """Runs `kernel` over a (sequence, head) grid: seeds whole in SMEM, the key mask
    [B, 1, Tp] per sequence, every [B, H, Tp, D] array per sequence and head."""
    seeds, q, k, v, mask, *rest = inputs
    batch, num_heads, length, head_dim = q.shape
    interpret = static.pop("interpret")
    head_block = pl.BlockSpec((None, None, length, head_dim), lambda b, h: (b, h, 0, 0))
    mask_block = pl.BlockSpec((None, 1, length), lambda b, h: (b, 0, 0))
    return pl.pallas_call(
        functools.partial(kernel, **static),
        out_shape=[jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outputs],
        grid=(batch, num_heads),
        in_specs=[
            pl.BlockSpec(memory_space=pltpu.SMEM),
            head_block,
            head_block,
            head_block,
            mask_block,
            *[head_block] * len(rest),
        ],
        out_specs=[head_block] * len(outputs),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=interpret,
        name=name,
        cost_estimate=_cost(inputs, outputs, matmuls),
    )(seeds.reshape(-1), q, k, v, mask, *rest)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    seeds: jax.Array,
    rate: float,
    is_causal: bool,
    length: int,
    interpret: bool,
) -> jax.Array:
    static = dict(rate=rate, is_causal=is_causal, length=length, interpret=interpret)
    (o,) = _call(_forward_kernel, FORWARD_NAME, (seeds, q, k, v, mask), (v,), 2, static)
    return o


def _attend_forward(*args: jax.Array | float | bool | int) -> tuple[jax.Array, tuple]:
    """The output, and what the backward kernel recomputes everything else from."""
    q, k, v, mask, seeds = args[:5]
    return _attend(*args), (q, k, v, mask, seeds)


def _attend_backward(
    rate: float, is_causal: bool, length: int, interpret: bool, residuals: tuple, do: jax.Array
) -> tuple[jax.Array | None, ...]:
    q, k, v, mask, seeds = residuals
    static = dict(rate=rate, is_causal=is_causal, length=length, interpret=interpret)
    inputs = (seeds, q, k, v, mask, do)
    # q·kᵀ again, then dv, do·vᵀ, dq and dk.
    dq, dk, dv = _call(_backward_kernel, BACKWARD_NAME, inputs, (q, k, v), 5, static)
    return dq, dk, dv, None, None


_attend.defvjp(_attend_forward, _attend_backward)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array,
    seeds: jax.Array,
    *,
    rate: float,
    is_causal: bool,
    length: int,
    interpret: bool = False,
) -> jax.Array:
    """softmax(q·kᵀ/√d, masked) with dropout, times v, for the rows given (a shard of the batch).

    q, k, v: [B, H, Tp, D], Tp a multiple of 128 up to 512; key_mask: int32 [B, 1, Tp], nonzero
    for the keys attended (padding beyond the real `length` must be 0); seeds: `row_seeds` of
    these rows. Returns [B, H, Tp, D] in v's dtype; rows of padded queries are meaningless.
    Differentiable in q, k and v (custom VJP; the backward kernel redraws the same mask)."""
    return _attend(q, k, v, key_mask, seeds, rate, is_causal, length, interpret)
