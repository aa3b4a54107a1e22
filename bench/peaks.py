"""Peak FLOP/s of the device at hand: the chip table's, or on a CPU a measured matmul peak.

The analytic FLOP count of the step is `focusclip_jax.flops`; XLA's, `focusclip_jax.aot.step_cost`.
"""

import time

import jax
import jax.numpy as jnp

from focusclip_jax import targets


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
