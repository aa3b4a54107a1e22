"""The training step's matmuls timed alone, in JAX and PyTorch: the floor a framework's step has.

    python -m bench.matmuls --config=configs/bench.py:small --batch=8 --threads=2 \
        [--torch_python=/tmp/refvenv/bin/python] [--seconds=0.5]

Every matmul of a FocusCLIP step (shared image tower, BERT text tower; bench/flops.py's count)
as (layout, batch, m, k, n) with how often it runs: per Dense layer x[M, K] @ W[K, N] forward
(`nn`), the input gradient g @ Wᵀ (`nt`) and the weight gradient xᵀ @ g (`tn`); per attention
head q·kᵀ, p·v and their four backward products. Each shape is timed in a loop of its own (jitted
`lax.dot_general` with the transposed operand as XLA is handed it by autodiff; `torch.matmul` on
a transposed view), and the step's matmul time is Σ count × time. A framework's step cannot be
faster than that sum, so `jax floor / torch step` says whether a target ratio is within reach of
the kernels at all. The FLOPs of the list equal bench/flops.py's count less the loss and heatmaps.

Runs under JAX (this venv) and, with `--torch_python`, again under PyTorch in that Python
(`--framework=torch --specs=<json>`, which imports only numpy and torch).
"""

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = ("nn", "nt", "tn")  # result [batch, m, n]; contraction over k


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


def _time_loop(run, seconds: float) -> float:
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


@functools.cache
def jax_product(layout: str):
    """The jitted batched product of `layout` on operands stored as autodiff hands them over."""
    import jax
    from jax import lax

    lhs_contract, rhs_contract = {"nn": (2, 1), "nt": (2, 2), "tn": (1, 1)}[layout]
    dimensions = (((lhs_contract,), (rhs_contract,)), ((0,), (0,)))
    return jax.jit(lambda x, y: lax.dot_general(x, y, dimensions))


def operand_shapes(entry: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    b, m, k, n = entry["shape"]
    layout = entry["layout"]
    return (b, k, m) if layout == "tn" else (b, m, k), (b, n, k) if layout == "nt" else (b, k, n)


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
        run = lambda f=product, x=lhs, y=rhs: f(x, y).block_until_ready()
        times.append(_time_loop(run, seconds))
    return times


def time_torch(specs: list[dict], seconds: float, threads: int) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    times = []
    with torch.no_grad():
        for entry in specs:
            lhs_shape, rhs_shape = operand_shapes(entry)
            lhs, rhs = torch.randn(*lhs_shape), torch.randn(*rhs_shape)
            lhs = lhs.transpose(1, 2) if entry["layout"] == "tn" else lhs  # views: no copies
            rhs = rhs.transpose(1, 2) if entry["layout"] == "nt" else rhs
            times.append(_time_loop(lambda x=lhs, y=rhs: torch.matmul(x, y), seconds))
    return times


def _load_config(argument: str, batch: int):
    path, _, arg = argument.partition(":")
    module_spec = importlib.util.spec_from_file_location("bench_config", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    if batch:
        config.train.batch_size = batch
    return config


def _time_torch_subprocess(args: argparse.Namespace, specs: list[dict]) -> list[float]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(specs, file)
        file.flush()
        command = [args.torch_python, "-m", "bench.matmuls", "--framework=torch",
                   f"--specs={file.name}", f"--seconds={args.seconds}"]  # fmt: skip
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pin(threads: int) -> None:
    """Both frameworks size their thread pools by the process's CPU affinity."""
    if threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/bench.py:small")
    parser.add_argument("--batch", type=int, default=0, help="0: the config's")
    parser.add_argument("--threads", type=int, default=0, help="0: all this process may use")
    parser.add_argument("--seconds", type=float, default=0.6, help="timing per shape and round")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating passes per framework; fastest kept"
    )
    parser.add_argument("--torch_python", default="", help="also time PyTorch in this Python")
    parser.add_argument("--framework", default="jax", choices=("jax", "torch"))
    parser.add_argument("--specs", default="", help="(internal) the torch side's shape list")
    args = parser.parse_args()
    _pin(args.threads)
    threads = len(os.sched_getaffinity(0))
    if args.framework == "torch":
        specs = json.loads(Path(args.specs).read_text())
        print(json.dumps(time_torch(specs, args.seconds, threads)))
        return

    import numpy as np

    from bench.reference_spec import torch_spec

    config = _load_config(args.config, args.batch)
    specs = step_matmuls(torch_spec(config), config.train.batch_size)
    rounds: dict[str, list[list[float]]] = {"jax": []}
    for _ in range(args.rounds):  # alternating, so a busy spell on a shared machine hits both
        rounds["jax"].append(time_jax(specs, args.seconds))
        if args.torch_python:
            rounds.setdefault("torch", []).append(_time_torch_subprocess(args, specs))
    columns = {name: list(np.min(runs, axis=0)) for name, runs in rounds.items()}
    total = sum(flops(entry) for entry in specs)
    print(
        f"\n{args.config}: batch {config.train.batch_size}, {threads} threads, "
        f"{total / 1e9:.1f} GFLOP of matmuls per step\n"
    )
    names = list(columns)
    print(
        "| matmul | layout | batch, m, k, n | count | "
        + " | ".join(f"{name} GFLOP/s" for name in names)
        + (" | jax / torch time |" if len(names) > 1 else " |")
    )
    print("|---|---|---|--:|" + "--:|" * len(names) + ("--:|" if len(names) > 1 else ""))
    for i, entry in enumerate(specs):
        rates = [flops(entry) / entry["count"] / columns[name][i] / 1e9 for name in names]
        ratio = f" | {columns['jax'][i] / columns['torch'][i]:.2f}" if len(names) > 1 else ""
        print(
            f"| {entry['name']} | {entry['layout']} | {', '.join(map(str, entry['shape']))} "
            f"| {entry['count']} | " + " | ".join(f"{r:.1f}" for r in rates) + ratio + " |"
        )
    print()
    for name in names:
        seconds = sum(e["count"] * t for e, t in zip(specs, columns[name], strict=True))
        print(
            f"{name}: matmuls alone {seconds:.3f} s per step ({total / seconds / 1e9:.1f} GFLOP/s)"
        )


if __name__ == "__main__":
    main()
