"""bench/matmuls.py's shape list and timers: the step's matmuls, timed in JAX or PyTorch.

Imports only the standard library at module level (each framework inside its timer), so the JAX
venv and the reference Python (torch, no absl) share the list, the operand layouts and the timing
loop, and tests import it without bench/matmuls.py's flags. The PyTorch side runs as

    <torch python> -m bench.matmul_timing --specs=<json> --seconds=0.5

and prints one JSON line: the seconds per call of each listed product, on the cores this process
may use (bench/matmuls.py pins them before starting it).
"""

import argparse
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def operand_shapes(entry: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The stored operands of a (layout, [batch, m, k, n]) product, result [batch, m, n]:
    `nn` a[b, m, k] @ b[b, k, n]; `nt` a @ b[b, n, k]ᵀ; `tn` a[b, k, m]ᵀ @ b[b, k, n]."""
    b, m, k, n = entry["shape"]
    layout = entry["layout"]
    return (b, k, m) if layout == "tn" else (b, m, k), (b, n, k) if layout == "nt" else (b, k, n)


def time_loop(run: Callable[[], object], seconds: float) -> float:
    """Median seconds of one call over three windows of about `seconds` / 3 each."""
    run()
    windows = []
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3 or calls < 2:
            run()
            calls += 1
        windows.append(elapsed / calls)
    return sorted(windows)[1]


def dense(name: str, m: int, k: int, n: int, count: int, input_grad: bool = True) -> list[dict]:
    """x[m, k] @ W[k, n]: forward, the input gradient (when needed) and the weight gradient."""
    specs = [{"name": f"{name} fwd", "layout": "nn", "shape": (1, m, k, n), "count": count}]
    if input_grad:
        specs.append({"name": f"{name} dx", "layout": "nt", "shape": (1, m, n, k), "count": count})
    specs.append({"name": f"{name} dW", "layout": "tn", "shape": (1, k, m, n), "count": count})
    return specs


def attention(name: str, heads: int, tokens: int, head_dim: int, count: int) -> list[dict]:
    """q·kᵀ and p·v over `heads` (batch × heads) sequences, forward and both input gradients."""
    b, t, d = heads, tokens, head_dim
    products = (
        ("q·kᵀ fwd", "nt", (b, t, d, t)),
        ("q·kᵀ dq", "nn", (b, t, t, d)),
        ("q·kᵀ dk", "tn", (b, t, t, d)),
        ("p·v fwd", "nn", (b, t, t, d)),
        ("p·v dp", "nt", (b, t, d, t)),
        ("p·v dv", "tn", (b, t, t, d)),
    )
    return [
        {"name": f"{name} {p}", "layout": layout, "shape": shape, "count": count}
        for p, layout, shape in products
    ]


def step_matmuls(spec: dict[str, Any], batch: int) -> list[dict]:
    """The matmuls of one step of the PyTorch reference's spec (`reference_spec.torch_spec`)."""
    vit, text = spec["vit"], spec["text"]
    modalities = {m for pair in spec["pairs"] for m in pair}
    images = batch * len(modalities & {"image", "focused"})  # one pass over both, shared tower
    patches = (spec["image_size"] // vit["patch_size"]) ** 2
    out = dense(  # focused pixels carry alpha's gradient: the patch embedding needs its dx
        "vit patch", images * patches, 3 * vit["patch_size"] ** 2, vit["width"], 1,
        input_grad="focused" in modalities,
    )  # fmt: skip
    towers = [("vit", vit, images, patches + 1, images)]
    if "text" in modalities:
        towers.append(("text", text, batch, spec["max_len"], batch))
    for tower, dims, sequences, tokens, pooled in towers:
        rows, width, depth = sequences * tokens, dims["width"], dims["depth"]
        out += dense(f"{tower} qkv", rows, width, 3 * width, depth)
        out += dense(f"{tower} out", rows, width, width, depth)
        out += attention(
            f"{tower} attn", sequences * dims["num_heads"], tokens,
            width // dims["num_heads"], depth,
        )  # fmt: skip
        out += dense(f"{tower} mlp1", rows, width, dims["mlp_dim"], depth)
        out += dense(f"{tower} mlp2", rows, dims["mlp_dim"], width, depth)
        out += dense(f"{tower} head", pooled, width, spec["embed_dim"], 1)
    return out


def flops(entry: dict) -> int:
    b, m, k, n = entry["shape"]
    return 2 * b * m * k * n * entry["count"]


@functools.cache
def jax_product(layout: str) -> Callable:
    """The jitted batched product of `layout` on operands stored as autodiff hands them over."""
    import jax
    from jax import lax

    lhs_contract, rhs_contract = {"nn": (2, 1), "nt": (2, 2), "tn": (1, 1)}[layout]
    dimensions = (((lhs_contract,), (rhs_contract,)), ((0,), (0,)))
    return jax.jit(lambda x, y: lax.dot_general(x, y, dimensions))


def time_jax(specs: list[dict], seconds: float) -> list[float]:
    import jax
    import numpy as np

    times = []
    for entry in specs:
        rng = np.random.default_rng(0)
        lhs, rhs = (
            jax.device_put(rng.standard_normal(s, np.float32)) for s in operand_shapes(entry)
        )
        product = jax_product(entry["layout"])
        times.append(
            time_loop(lambda f=product, x=lhs, y=rhs: f(x, y).block_until_ready(), seconds)
        )
    return times


def time_torch(specs: list[dict], seconds: float) -> list[float]:
    """`torch.matmul` on transposed views (PyTorch's BLAS calls take them without copies)."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    times = []
    with torch.no_grad():
        for entry in specs:
            lhs_shape, rhs_shape = operand_shapes(entry)
            lhs, rhs = torch.randn(*lhs_shape), torch.randn(*rhs_shape)
            lhs = lhs.transpose(1, 2) if entry["layout"] == "tn" else lhs
            rhs = rhs.transpose(1, 2) if entry["layout"] == "nt" else rhs
            times.append(time_loop(lambda x=lhs, y=rhs: torch.matmul(x, y), seconds))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description="bench/matmuls.py's PyTorch side")
    parser.add_argument("--specs", required=True, help="the shape list, JSON")
    parser.add_argument("--seconds", type=float, required=True, help="timing per shape")
    args = parser.parse_args()
    print(json.dumps(time_torch(json.loads(Path(args.specs).read_text()), args.seconds)))


if __name__ == "__main__":
    main()
