"""Attention over whole sequences in VMEM as Pallas TPU kernels (`model.attention="vmem"`,
'auto''s choice on TPUs for sequences up to `MAX_LENGTH` tokens), with or without dropout on its
probabilities (BERT's text tower in training, as Hugging Face BERT trains it).

XLA's written-out attention moves [B, H, T, T] arrays (logits, probabilities, their gradients)
through HBM; splash attention needs sequences padded to a multiple of 128 tokens (ViT-B/16's 197
to 256: the padding copies q, k and v, and a quarter of its work is on padding). These kernels
take the sequence as it is, in the layout the projections write: [B, T, H·D], heads side by
side, so nothing is transposed or padded around them and every array fills the TPU's 128 lanes
(a [B, H, T, 64] array fills half of each tile). One grid step attends one sequence and the heads
of one 128-lane block (`block_width`: two 64-wide heads), the whole [T, T] logits of each in
VMEM (a block as long as the sequence needs no multiple of 128), so the softmax needs no online
rescaling. A head sharing its block multiplies over all the block's lanes, the other head's
zeroed (no lane is sliced out; a 64-deep product fills half of a 128-wide matrix unit
anyway). The backward kernel
recomputes the logits, the softmax (its row maximum and sum included) and the keep-mask from q,
k and the key: it reads q, k, v and the output's gradient, nothing [T, T] and no statistics
saved by the forward kernel.

With dropout, the keep-mask is the one `jax.random.bernoulli(key, 1 - rate, (B, H, T, T))`
draws with partitionable threefry (jax's default): element (b, h, q, k), flat index
n = ((b·H + h)·T + q)·T + k, is kept where the 32-bit word o1 ^ o2 of
threefry2x32(key, (n >> 32, n mod 2**32)) is below `keep_threshold(rate)`. The kernels hash the
same counts, so they are a drop-in for the written-out attention with the same randomness
(`row_seeds` carries each sequence's global index, which shards of the batch need).
"""

import dataclasses
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
# words, gradients): 1 MiB each at 512 tokens. libtpu compiles both kernels at 512 tokens, two
# 64-wide heads a block, with dropout, within its default scoped VMEM limit (v5e, 2026-12-08).
MAX_LENGTH = 512
FORWARD_NAME, BACKWARD_NAME = "vmem_mha_fwd", "vmem_mha_bwd"  # the kernels in HLO
LANES = 128  # a TPU vector register's lanes: a block's width is a multiple of them, or whole
SEED_WORDS = 4  # per sequence: the key's two words, then the high and low words of its first index
MASKED = float(jnp.finfo(jnp.float32).min)  # the logit of a masked key, as the XLA path uses


def keep_threshold(rate: float) -> int:
    """The 32-bit words below which an element is kept.

    `jax.random.bernoulli(key, p)` keeps where uniform < p, uniform = m·2**-23 with
    m = bits >> 9 (exact in float32), p = float32(p); so it keeps where m < ceil(p·2**23), that
    is bits < ceil(p·2**23)·2**9. `1.0 - rate` is evaluated as the layers evaluate it.
    """
    keep = np.float32(1.0 - rate)
    return math.ceil(float(keep) * 2**23) * 2**9


def too_long(length: int) -> str | None:
    """Why a sequence of `length` tokens does not fit the kernels, or None."""
    if length > MAX_LENGTH:
        return f"{length} tokens: the kernels hold a whole sequence's logits, up to {MAX_LENGTH}"
    return None


def unsupported(length: int, num_heads: int, rate: float, rng: jax.Array) -> str | None:
    """Why the kernels cannot drop this attention's probabilities (the caller then writes it
    out), or None."""
    if problem := too_long(length):
        return problem
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


def block_width(width: int, head_dim: int) -> int:
    """The lanes one grid step takes of [B, T, H·D]: a whole number of heads in a multiple of
    128 lanes (two 64-wide heads), or all of them where none is (a block as wide as the array
    needs no multiple)."""
    if head_dim % LANES == 0:
        return head_dim
    if LANES % head_dim == 0 and width % LANES == 0:
        return LANES
    return width


def _keep_mask(seeds_ref: jax.Array, length: int, threshold: int, head: jax.Array) -> jax.Array:
    """The keep-mask [T, T] of sequence `program_id(0)` and head `head`."""
    row = pl.program_id(0)
    words = [seeds_ref[row * SEED_WORDS + i] for i in range(SEED_WORDS)]
    key_1, key_2, first_high, first_low = (jnp.reshape(w, (1, 1)) for w in words)
    head_start = (head * (length * length)).astype(jnp.uint32)
    shape = (length, length)
    query = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
    key = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
    offset = head_start + query * jnp.uint32(length) + key  # < H·T·T < 2**31
    low = first_low + offset
    high = first_high + (low < offset).astype(jnp.uint32)  # the carry into the high word
    bits_1, bits_2 = threefry2x32_p.bind(key_1, key_2, high, low)
    return (bits_1 ^ bits_2) < jnp.uint32(threshold)


@dataclasses.dataclass(frozen=True)
class _Head:
    """One head of a grid step's block: which lanes are its own, and its global index."""

    lanes: jax.Array | None  # bool [1, block]; None: the block is this head alone
    index: jax.Array

    def only(self, x: jax.Array) -> jax.Array:
        """x with the other heads' lanes zeroed: a product over all lanes is this head's."""
        return x if self.lanes is None else jnp.where(self.lanes, x, jnp.zeros((), x.dtype))

    def into(self, x: jax.Array, others: jax.Array | None) -> jax.Array:
        """This head's lanes of x over `others` (the heads before it)."""
        return x if others is None or self.lanes is None else jnp.where(self.lanes, x, others)


def _heads(block: int, head_dim: int) -> list[_Head]:
    """The heads of the grid step's block (`program_id(1)`)."""
    per_block = block // head_dim
    first = pl.program_id(1) * per_block
    if per_block == 1:
        return [_Head(None, first)]
    lane_head = jax.lax.broadcasted_iota(jnp.int32, (1, block), 1) // head_dim
    return [_Head(lane_head == i, first + i) for i in range(per_block)]


def _probabilities(
    q: jax.Array, k: jax.Array, key_mask: jax.Array, is_causal: bool, head_dim: int
) -> jax.Array:
    """softmax(q·kᵀ/√d) over the allowed keys, float32 [T, T], as the XLA path computes it."""
    logits = jax.lax.dot_general(
        q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    ) / jnp.float32(math.sqrt(head_dim))
    allowed = key_mask != 0  # [1, T]
    if is_causal:
        shape = logits.shape
        allowed = allowed & (
            jax.lax.broadcasted_iota(jnp.int32, shape, 0)
            >= jax.lax.broadcasted_iota(jnp.int32, shape, 1)
        )
    logits = jnp.where(allowed, logits, MASKED)
    unnormalized = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


def _seeds_and_refs(refs: tuple, rate: float) -> tuple[jax.Array | None, tuple]:
    """A kernel's seeds (in SMEM, given only with dropout) and its other refs."""
    return (refs[0], refs[1:]) if rate else (None, refs)


def _forward_kernel(*refs: jax.Array, rate: float, is_causal: bool, head_dim: int) -> None:
    """o = (p∘keep / (1 - rate))·v, or p·v without dropout, for one sequence and the heads of
    one block (Pallas refs in VMEM: [seeds], q, k, v, key mask, o)."""
    seeds_ref, (q_ref, k_ref, v_ref, mask_ref, o_ref) = _seeds_and_refs(refs, rate)
    q, k, v, mask = q_ref[...], k_ref[...], v_ref[...], mask_ref[...]
    out = None
    for head in _heads(q.shape[-1], head_dim):
        probs = _probabilities(head.only(q), k, mask, is_causal, head_dim)
        if rate:
            keep = _keep_mask(seeds_ref, probs.shape[0], keep_threshold(rate), head.index)
            probs = jnp.where(keep, probs / jnp.float32(1.0 - rate), 0.0)
        o = jnp.dot(probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
        out = head.into(o, out)
    o_ref[...] = out.astype(o_ref.dtype)


def _backward_kernel(*refs: jax.Array, rate: float, is_causal: bool, head_dim: int) -> None:
    """Per head, y = p∘z (z: keep / (1 - rate); 1 without dropout), o = y·v: dv = yᵀ·do,
    dp = (do·vᵀ)∘z, ds = p∘(dp − rowsum(dp∘p)), dq = ds·k/√d, dk = dsᵀ·q/√d, in the XLA path's
    dtypes (refs: [seeds], q, k, v, key mask, do, dq, dk, dv)."""
    seeds_ref, refs = _seeds_and_refs(refs, rate)
    q_ref, k_ref, v_ref, mask_ref, do_ref, dq_ref, dk_ref, dv_ref = refs
    q, k, v, mask, do = q_ref[...], k_ref[...], v_ref[...], mask_ref[...], do_ref[...]
    transposed_lhs = (((0,), (0,)), ((), ()))
    dq = dk = dv = None
    for head in _heads(q.shape[-1], head_dim):
        probs = _probabilities(head.only(q), k, mask, is_causal, head_dim)
        dropped = probs
        if rate:
            keep = _keep_mask(seeds_ref, probs.shape[0], keep_threshold(rate), head.index)
            dropped = jnp.where(keep, probs / jnp.float32(1.0 - rate), 0.0)
        dv = head.into(
            jax.lax.dot_general(
                dropped.astype(v.dtype), do, transposed_lhs, preferred_element_type=jnp.float32
            ),
            dv,
        )
        d_probs = jax.lax.dot_general(
            head.only(do), v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
        )
        if rate:
            d_probs = jnp.where(keep, d_probs / jnp.float32(1.0 - rate), 0.0)
        d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
        d_logits = (d_logits / jnp.float32(math.sqrt(head_dim))).astype(q.dtype)
        dq = head.into(jnp.dot(d_logits, k, preferred_element_type=jnp.float32), dq)
        dk = head.into(
            jax.lax.dot_general(d_logits, q, transposed_lhs, preferred_element_type=jnp.float32),
            dk,
        )
    dq_ref[...] = dq.astype(dq_ref.dtype)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _cost(inputs: tuple, outputs: tuple, matmuls: int, head_dim: int) -> pl.CostEstimate:
    """What the kernel does, for XLA's cost model (libtpu prices a Mosaic kernel without one as
    free: only the operands' traffic around it counts): per sequence and head, `matmuls`
    [T, T]×[T, block] products (a head sharing its block computes over the block's lanes, the
    others' zeroed) and one exp per probability, each operand read or written once. The
    threefry hashing (vector integer ops) is not counted, as libtpu does not count it in XLA's
    fusions either."""
    batch, length, width = inputs[0].shape
    block = block_width(width, head_dim)
    heads = batch * (width // head_dim)
    return pl.CostEstimate(
        flops=heads * matmuls * 2 * length * length * block,
        transcendentals=heads * length * length,
        bytes_accessed=sum(x.size * x.dtype.itemsize for x in (*inputs, *outputs)),
    )


def _call(
    kernel: Callable,
    name: str,
    inputs: tuple,
    outputs: tuple,
    matmuls: int,
    seeds: jax.Array | None,
    static: dict,
) -> tuple:
    """Runs `kernel` over a (sequence, block of heads) grid: the seeds (with dropout) whole in
    SMEM, the key mask [B, 1, T] per sequence, every [B, T, H·D] array per sequence and block.
    The blocks span whole sequences, so no length needs to be a multiple of the TPU's tiles."""
    q, k, v, mask, *rest = inputs
    batch, length, width = q.shape
    interpret = static.pop("interpret")
    block = block_width(width, static["head_dim"])
    head_block = pl.BlockSpec((None, length, block), lambda b, h: (b, 0, h))
    mask_block = pl.BlockSpec((None, 1, length), lambda b, h: (b, 0, 0))
    seeds_given = () if seeds is None else (seeds.reshape(-1),)
    return pl.pallas_call(
        functools.partial(kernel, **static),
        out_shape=[jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outputs],
        grid=(batch, width // block),
        in_specs=[
            *[pl.BlockSpec(memory_space=pltpu.SMEM)] * len(seeds_given),
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
        cost_estimate=_cost(inputs, outputs, matmuls, static["head_dim"]),
    )(*seeds_given, q, k, v, mask, *rest)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    seeds: jax.Array | None,
    head_dim: int,
    rate: float,
    is_causal: bool,
    interpret: bool,
) -> jax.Array:
    static = dict(head_dim=head_dim, rate=rate, is_causal=is_causal, interpret=interpret)
    (o,) = _call(_forward_kernel, FORWARD_NAME, (q, k, v, mask), (v,), 2, seeds, static)
    return o


def _attend_forward(*args: jax.Array | float | bool | None) -> tuple[jax.Array, tuple]:
    """The output, and what the backward kernel recomputes everything else from."""
    q, k, v, mask, seeds = args[:5]
    return _attend(*args), (q, k, v, mask, seeds)


def _attend_backward(
    head_dim: int,
    rate: float,
    is_causal: bool,
    interpret: bool,
    residuals: tuple,
    do: jax.Array,
) -> tuple[jax.Array | None, ...]:
    q, k, v, mask, seeds = residuals
    static = dict(head_dim=head_dim, rate=rate, is_causal=is_causal, interpret=interpret)
    # q·kᵀ again, then dv, do·vᵀ, dq and dk.
    dq, dk, dv = _call(
        _backward_kernel, BACKWARD_NAME, (q, k, v, mask, do), (q, k, v), 5, seeds, static
    )
    return dq, dk, dv, None, None


_attend.defvjp(_attend_forward, _attend_backward)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array,
    seeds: jax.Array | None = None,
    *,
    head_dim: int,
    rate: float = 0.0,
    is_causal: bool,
    interpret: bool = False,
) -> jax.Array:
    """softmax(q·kᵀ/√d, masked), with dropout at `rate` > 0, times v, per head, for the rows
    given (a shard of the batch).

    q, k, v: [B, T, H·D], the heads side by side as a projection writes them, T up to
    `MAX_LENGTH`; key_mask: int32 [B, 1, T], nonzero for the keys attended; seeds: `row_seeds`
    of these rows, with dropout only. Returns [B, T, H·D] in v's dtype. Differentiable in q, k
    and v (custom VJP; the backward kernel redraws the same mask)."""
    if (seeds is None) != (rate == 0):
        raise ValueError(f"dropout rate {rate} needs seeds (row_seeds), and no rate none")
    if q.shape[-1] % head_dim:
        raise ValueError(f"width {q.shape[-1]} is not a whole number of {head_dim}-wide heads")
    return _attend(q, k, v, key_mask, seeds, head_dim, rate, is_causal, interpret)
