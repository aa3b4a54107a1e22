"""Peak FLOP/s of the device at hand, and random batches of the training step's layout.

The analytic FLOP count itself is `focusclip_jax.flops` (the AOT compile tool reports it too).
"""

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from focusclip_jax import targets
from input_pipeline.errors import check_number


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak of a device kind (`focusclip_jax.targets`), None when unlisted (CPU)."""
    chip = targets.chip_for_device_kind(device_kind)
    return chip.peak_bf16 if chip else None


def measured_matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` jitted float32 [size, size] matmuls on the default device.

    A stand-in peak where the table has none (CPU): what this machine's XLA reaches on the kind of
    work that dominates the model.
    """
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def check_random_data(config: ml_collections.ConfigDict) -> None:
    """The random batch's own keys (`data.*_tokens`, the vocabulary it draws from): ValueError
    naming the first bad one."""
    vocab = config.model.text.vocab_size
    if not isinstance(vocab, int) or vocab <= 1:
        raise ValueError(
            f"config model.text.vocab_size={vocab!r}: random tokens need a vocabulary size"
        )
    check_number("config data.mean_tokens", config.data.mean_tokens, at_least=1)
    check_number("config data.std_tokens", config.data.std_tokens, at_least=0)
    check_number("config data.min_tokens", config.data.min_tokens, integer=True, at_least=1)


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the training step's layout from random numbers: no files, no tokenizer.

    People have 1 to `data.max_people` entries with random keypoints inside the image, most joints
    visible; texts get lengths ~ N(data.mean_tokens, data.std_tokens) clipped to
    [data.min_tokens, model.text.max_len], random ids below the vocabulary size, padding after.
    """
    check_random_data(config)
    rng = np.random.default_rng(seed)
    batch, size = config.train.batch_size, config.model.image_size
    people, max_len = config.data.max_people, config.model.text.max_len
    vocab = config.model.text.vocab_size
    lengths = np.clip(
        rng.normal(config.data.mean_tokens, config.data.std_tokens, batch).round(),
        min(config.data.min_tokens, max_len),
        max_len,
    ).astype(np.int32)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    count = rng.integers(1, people + 1, batch)
    return {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "keypoints": rng.uniform(0, size - 1, (batch, people, 16, 2)).astype(np.float32),
        "visible": rng.random((batch, people, 16)) < 0.8,
        "person_mask": np.arange(people)[None, :] < count[:, None],
        "tokens": np.where(mask, rng.integers(1, vocab, (batch, max_len)), 0).astype(np.int32),
        "mask": mask,
    }
