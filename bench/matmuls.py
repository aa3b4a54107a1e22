"""The training step's matmuls timed alone, in JAX and PyTorch: the floor a framework's step has.

    python -m bench.matmuls --config=configs/bench.py:small --batch=8 --threads=2 \\
        [--torch_python=.venv-ref/bin/python] [--seconds=0.5] [--rounds=2]

Every matmul of a FocusCLIP step (shared image tower, BERT text tower; focusclip_jax/flops.py's
count) as (layout, batch, m, k, n) with how often it runs: per Dense layer x[M, K] @ W[K, N]
forward (`nn`), the input gradient g @ Wᵀ (`nt`) and the weight gradient xᵀ @ g (`tn`); per
attention head q·kᵀ, p·v and their four backward products. Each shape is timed in a loop of its
own (jitted `lax.dot_general` with the transposed operand as XLA is handed it by autodiff;
`torch.matmul` on a transposed view), and the step's matmul time is Σ count × time. A
framework's step cannot be faster than that sum, so `jax floor / torch step` says whether a
target ratio is within reach of the kernels at all. The FLOPs of the list equal
focusclip_jax/flops.py's count less the loss and heatmaps.

Runs under JAX (this venv) and, with `--torch_python`, again under PyTorch in that Python
(bench/matmul_timing.py); `--rounds` alternates the two and keeps each shape's fastest time.
"""

import json
import os
import tempfile

import numpy as np
from absl import flags

from bench.matmul_timing import flops, step_matmuls, time_jax
from bench.reference_spec import run_in_reference_python, torch_spec
from bench.threads import pin_threads
from input_pipeline import cli

cli.define_config_file("config", "configs/bench.py:small", "Config file (configs/bench.py:<size>).")
flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's).")
flags.DEFINE_integer("threads", 0, "Cores for both frameworks (0: all this process may use).")
flags.DEFINE_float("seconds", 0.6, "Timing per shape and round.")
flags.DEFINE_integer("rounds", 2, "Alternating passes per framework; each shape's fastest kept.")
flags.DEFINE_string("torch_python", "", "Also time PyTorch in this Python (torch installed).")
cli.check_flags(
    batch=cli.Number(integer=True, at_least=0),
    threads=cli.Number(integer=True, at_least=0),
    seconds=cli.Number(above=0),
    rounds=cli.Number(integer=True, at_least=1),
    torch_python=cli.Path("file"),
)
FLAGS = flags.FLAGS


def time_torch(specs: list[dict]) -> list[float]:
    """bench/matmul_timing.py's PyTorch timer in the reference Python, on this process's cores."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(specs, file)
        file.flush()
        args = [f"--specs={file.name}", f"--seconds={FLAGS.seconds}"]
        return run_in_reference_python(FLAGS.torch_python, "bench.matmul_timing", args)


def main(argv: list[str]) -> None:
    del argv
    pin_threads(FLAGS.threads)  # before JAX starts its backend; the subprocess inherits it
    config = FLAGS.config
    if FLAGS.batch:
        config.train.batch_size = FLAGS.batch
    threads = len(os.sched_getaffinity(0))
    specs = step_matmuls(torch_spec(config), config.train.batch_size)
    rounds: dict[str, list[list[float]]] = {"jax": []}
    for _ in range(FLAGS.rounds):  # alternating, so a busy spell on a shared machine hits both
        rounds["jax"].append(time_jax(specs, FLAGS.seconds))
        if FLAGS.torch_python:
            rounds.setdefault("torch", []).append(time_torch(specs))
    columns = {name: list(np.min(runs, axis=0)) for name, runs in rounds.items()}
    total = sum(flops(entry) for entry in specs)
    print(
        f"\n{config.bench.name}: batch {config.train.batch_size}, {threads} threads, "
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
    cli.run(main)
