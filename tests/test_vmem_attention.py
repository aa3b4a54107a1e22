"""Whole-sequence Pallas attention (`models/vmem_attention.py`), run by Pallas's interpreter on
this CPU, against what it replaces: XLA's attention (`jax.nn.dot_product_attention`) without
dropout; with dropout, `jax.random.bernoulli`'s keep-mask for the same key and XLA's written-out
attention with dropout (`layers._attention_with_dropout`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p
from jax.sharding import NamedSharding, PartitionSpec

from focusclip_jax import sharding
from focusclip_jax.models import layers, vmem_attention

RATE = 0.1
KEY = jax.random.key(7)
HEADS = 2


def kernel_keep_mask(seeds: jax.Array, length: int) -> np.ndarray:
    """The forward kernel's keep-mask [rows, H, T, T], read through its output: with q = k = 0
    every real key has probability 1/length, and v = the identity (heads `length` wide) returns
    the dropped probabilities themselves, 0 where dropped. At 100 tokens both heads share a
    block (`block_width`), at 128 each has its own."""
    rows = seeds.shape[0]
    shape = (rows, length, HEADS * length)
    zeros = jnp.zeros(shape, jnp.float32)
    identity = jnp.broadcast_to(jnp.tile(jnp.eye(length, dtype=jnp.float32), HEADS), shape)
    key_mask = jnp.ones((rows, 1, length), jnp.int32)
    out = vmem_attention.attend(
        zeros, zeros, identity, key_mask, seeds,
        head_dim=length, rate=RATE, is_causal=False, interpret=True,
    )  # fmt: skip
    out = np.asarray(out).reshape(rows, length, HEADS, length).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(out[out != 0], 1 / length / np.float32(1 - RATE), rtol=1e-6)
    return out != 0


def hashed_keep_mask(rows: np.ndarray, length: int) -> np.ndarray:
    """Partitionable threefry's keep-mask for rows of [B, H, T, T] from the element counts
    written out in 64 bits (numpy), hashed by JAX's threefry primitive."""
    b, h, q, k = np.meshgrid(rows, np.arange(HEADS), np.arange(length), np.arange(length))
    b, h, q, k = (np.moveaxis(a, 0, 1).astype(np.uint64) for a in (b, h, q, k))
    count = ((b * HEADS + h) * length + q) * length + k
    key = np.asarray(jax.random.key_data(KEY))
    high, low = (count >> np.uint64(32)).astype(np.uint32), count.astype(np.uint32)
    keys = [jnp.full(count.shape, word, jnp.uint32) for word in key]
    bits_1, bits_2 = threefry2x32_p.bind(*keys, jnp.asarray(high), jnp.asarray(low))
    return np.asarray(bits_1 ^ bits_2) < vmem_attention.keep_threshold(RATE)


@pytest.mark.parametrize("length", [128, 100])  # 100: no multiple of the TPU's 128 lanes
def test_kernel_keep_mask_is_bernoullis(length: int) -> None:
    """The mask drawn in the kernel is `jax.random.bernoulli(key, 1 - rate, (B, H, T, T))`,
    element for element (and the written-out 64-bit hash agrees: the reference below)."""
    want = np.asarray(jax.random.bernoulli(KEY, 1.0 - RATE, (2, HEADS, length, length)))
    assert 0.88 < want.mean() < 0.92
    seeds = vmem_attention.row_seeds(KEY, 2, HEADS, length)
    np.testing.assert_array_equal(kernel_keep_mask(seeds, length), want)
    np.testing.assert_array_equal(hashed_keep_mask(np.arange(2), length), want)


def test_shard_rows_draw_the_global_mask() -> None:
    """A batch shard (rows 2 and 3 of 4, as `split_over_batch` hands a device its rows) draws
    the global mask's rows: seeds are computed for the whole batch and split with it."""
    length = 128
    whole = np.asarray(jax.random.bernoulli(KEY, 1.0 - RATE, (4, HEADS, length, length)))
    seeds = vmem_attention.row_seeds(KEY, 4, HEADS, length)[2:]
    got = kernel_keep_mask(seeds, length)
    np.testing.assert_array_equal(got, whole[2:])
    assert not np.array_equal(got, whole[:2])  # a shard that hashed from row 0 would fail


def test_flat_indices_past_two_to_the_32_carry_into_the_high_word() -> None:
    """Rows whose probabilities' flat indices cross 2**32 (a batch of 214,750 sequences of 100
    tokens, 2 heads: row 214,748 crosses it mid-row) hash the high word too."""
    length, rows = 100, np.arange(214_747, 214_750)
    per_row = HEADS * length * length
    assert rows[0] * per_row < 2**32 < (rows[-1] + 1) * per_row
    seeds = vmem_attention.row_seeds(KEY, int(rows[-1]) + 1, HEADS, length)[rows]
    np.testing.assert_array_equal(kernel_keep_mask(seeds, length), hashed_keep_mask(rows, length))


def inputs(length: int, dtype: jnp.dtype, heads: int = HEADS) -> tuple:
    """q, k, v [2, T, heads, 64] at a scale where the softmax is far from uniform, a padding
    mask (the second sequence has 60 real tokens), and a random output direction."""
    rng = np.random.default_rng(length)
    q, k, v, direction = (
        jnp.asarray(rng.normal(size=(2, length, heads, 64)) * scale, dtype)
        for scale in (1.5, 1.5, 1.0, 1.0)
    )
    mask = jnp.asarray(np.arange(length)[None, :] < np.array([length, 60])[:, None])
    return q, k, v, mask, direction


def vmem(q: jax.Array, k: jax.Array, v: jax.Array, *args: object) -> jax.Array:
    """`layers._vmem_attention` on [B, T, H, D] arrays, its heads side by side."""
    merged = lambda t: t.reshape(*t.shape[:2], -1)
    y = layers._vmem_attention(*map(merged, (q, k, v)), *args, head_dim=q.shape[-1])
    return y.reshape(q.shape)


def gradients(attention: object, q: jax.Array, k: jax.Array, v: jax.Array, *args: object) -> list:
    """The attention's output and the gradients of its projection on a random direction with
    respect to q, k and v (float32 numpy)."""
    mask, causal, direction = args

    def objective(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple:
        y = attention(q, k, v, mask, causal, RATE, KEY)
        return jnp.sum(y.astype(jnp.float32) * direction.astype(jnp.float32)), y

    grads, y = jax.jit(jax.grad(objective, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return [np.asarray(a, np.float32) for a in (y, *grads)]


def relative_errors(got: list, want: list) -> dict[str, float]:
    """Largest error of the output and of each gradient, relative to its largest value."""
    names = ("output", "dq", "dk", "dv")
    pairs = zip(names, got, want, strict=True)
    return {name: np.max(np.abs(g - w)) / np.max(np.abs(w)) for name, g, w in pairs}


@pytest.mark.parametrize(
    ("length", "dtype", "causal", "tolerance"),
    [
        # float32: measured 0 (outputs) and 2.4e-7 of the largest gradient (the softmax's
        # backward sums in another order); one probability dropped or kept wrongly moves the
        # output by ~1e-2 of its largest value.
        (128, jnp.float32, False, 1e-6),
        (100, jnp.float32, True, 1e-6),  # 100 tokens: no multiple of the TPU's 128 lanes
        # bfloat16 inputs, as the paper's text tower, against the float32 attention of the same
        # values: probabilities and logit gradients are rounded to bfloat16 before their
        # matmuls, as in XLA's path; measured 2.8e-3 to 3.8e-3 of the largest value.
        (128, jnp.bfloat16, False, 6e-3),
    ],
)
def test_outputs_and_gradients_match_the_written_out_attention(
    length: int, dtype: jnp.dtype, causal: bool, tolerance: float
) -> None:
    """The kernels against `layers._attention_with_dropout` with the same key: outputs and
    gradients with respect to q, k and v, under a padding mask."""
    q, k, v, mask, direction = inputs(length, dtype)
    got = gradients(vmem, q, k, v, mask, causal, direction)
    exact = [t.astype(jnp.float32) for t in (q, k, v)]
    want = gradients(layers._attention_with_dropout, *exact, mask, causal, direction)
    errors = relative_errors(got, want)
    assert max(errors.values()) <= tolerance, errors
    if dtype == jnp.bfloat16:
        # XLA's path in bfloat16 also rounds the logits to bfloat16: the kernels, which keep
        # them in float32, are closer to the float32 attention (measured: 1.7e-2 for dk).
        xla = gradients(layers._attention_with_dropout, q, k, v, mask, causal, direction)
        for name, error in relative_errors(xla, want).items():
            assert errors[name] <= error, (name, errors[name], error)


def test_on_a_mesh_each_shard_draws_its_rows_of_the_global_mask() -> None:
    """The layers' path on a 4-device mesh (`split_over_batch`: one row per device, each hashing
    its global index) computes what XLA's written-out attention computes for the whole batch."""
    length = 128
    q, k, v, mask, _ = inputs(length, jnp.float32)
    q, k, v = (jnp.concatenate([t, t[::-1]]) for t in (q, k, v))  # 4 rows
    mask = jnp.concatenate([mask, mask[::-1]])
    mesh = sharding.create_mesh({"data": 4})

    def fused(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
        return vmem(q, k, v, mask, False, RATE, KEY)

    batch = NamedSharding(mesh, PartitionSpec("data"))
    got = jax.jit(sharding.traced_on(mesh, fused), in_shardings=batch)(q, k, v, mask)
    want = layers._attention_with_dropout(q, k, v, mask, False, RATE, KEY)
    np.testing.assert_allclose(got, want, atol=1e-6 * np.max(np.abs(want)), rtol=0)


def test_what_the_kernels_refuse() -> None:
    """Longer sequences than one block holds, other PRNGs than threefry, or batched keys are
    left to the written-out attention (`unsupported` says why); the paper's text is taken."""
    assert vmem_attention.unsupported(512, 12, RATE, KEY) is None
    assert "600 tokens" in vmem_attention.unsupported(600, 12, RATE, KEY)
    rbg = jax.random.key(0, impl="rbg")
    assert "threefry" in vmem_attention.unsupported(512, 12, RATE, rbg)
    assert "threefry" in vmem_attention.unsupported(512, 12, RATE, jax.random.split(KEY))
    assert vmem_attention.unsupported(512, 12, RATE, jax.random.key_data(KEY)) is None


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.3])
def test_keep_threshold_is_bernoullis_boundary(rate: float) -> None:
    """Words just below and at the threshold, through `jax.random.uniform`'s map from 32 bits
    to [0, 1) (the top 23 bits as a float32 mantissa) and bernoulli's `uniform < 1 - rate`:
    kept below the threshold, dropped at it (a boundary the masks above rarely draw)."""
    threshold = vmem_attention.keep_threshold(rate)
    words = np.array([threshold - 1, threshold], np.uint32)
    uniform = ((words >> 9) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1.0)
    np.testing.assert_array_equal(uniform < np.float32(1.0 - rate), [True, False])


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, *args: object) -> jax.Array:
    """XLA's attention, which the kernels replace where no probability is dropped."""
    mask, causal = args[:2]
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], is_causal=causal)


def vmem_without_dropout(q: jax.Array, k: jax.Array, v: jax.Array, *args: object) -> jax.Array:
    mask, causal = args[:2]
    return vmem(q, k, v, mask, causal)


@pytest.mark.parametrize(
    ("length", "dtype", "causal", "tolerance", "heads"),
    [
        # ViT-B/16's 197 tokens and a causal 64-token text, as they are: no padding; two heads
        # of 64 share a 128-lane block, three (ViT-Ti's 192 wide) take one block of them all.
        (197, jnp.float32, False, 1e-5, 2),
        (64, jnp.float32, True, 1e-5, 2),
        (64, jnp.float32, True, 1e-5, 3),
        # bfloat16 against the float32 attention of the same values: measured 2.9e-3 to
        # 4.2e-3 of the largest value, XLA's bfloat16 attention 2.7e-3 to 4.2e-3.
        (197, jnp.bfloat16, False, 6e-3, 2),
        (64, jnp.bfloat16, True, 6e-3, 2),
    ],
)
def test_without_dropout_outputs_and_gradients_match_xla_attention(
    length: int, dtype: jnp.dtype, causal: bool, tolerance: float, heads: int
) -> None:
    """No key: the kernels compute `jax.nn.dot_product_attention`, outputs and gradients with
    respect to q, k and v, under a padding mask, at lengths that are no multiple of 128."""
    q, k, v, mask, direction = inputs(length, dtype, heads)
    got = gradients(vmem_without_dropout, q, k, v, mask, causal, direction)
    exact = [t.astype(jnp.float32) for t in (q, k, v)]
    want = gradients(xla_attention, *exact, mask, causal, direction)
    errors = relative_errors(got, want)
    assert max(errors.values()) <= tolerance, errors
    if dtype == jnp.bfloat16:  # the kernels' rounding is XLA's bfloat16 attention's, or near
        xla = gradients(xla_attention, q, k, v, mask, causal, direction)
        for name, error in relative_errors(xla, want).items():
            assert errors[name] <= 1.5 * error, (name, errors[name], error)


def test_dropout_needs_seeds_and_seeds_need_dropout() -> None:
    q = jnp.zeros((1, 8, 64))
    mask = jnp.ones((1, 1, 8), jnp.int32)
    seeds = vmem_attention.row_seeds(KEY, 1, 1, 8)
    options = dict(head_dim=64, is_causal=False, interpret=True)
    with pytest.raises(ValueError, match="needs seeds"):
        vmem_attention.attend(q, q, q, mask, rate=RATE, **options)
    with pytest.raises(ValueError, match="needs seeds"):
        vmem_attention.attend(q, q, q, mask, seeds, **options)
    with pytest.raises(ValueError, match="width 64 is not a whole number of 48-wide heads"):
        vmem_attention.attend(q, q, q, mask, **options | {"head_dim": 48})


def test_block_width_is_whole_heads_in_128_lanes_or_all_of_them() -> None:
    width = vmem_attention.block_width
    assert width(768, 64) == 128  # ViT-B, BERT-base: two heads a block
    assert width(512, 32) == 128  # four heads a block
    assert width(1024, 128) == 128  # one head a block
    assert width(1024, 256) == 256
    assert width(192, 64) == 192  # ViT-Ti: 192 lanes are no multiple of 128: one block
    assert width(768, 96) == 768  # 96 does not divide 128: one block
