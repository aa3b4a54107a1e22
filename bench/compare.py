"""The JAX training step and the PyTorch original side by side: same model, batch and threads.

    python -m bench.compare --config=configs/bench.py:small --batch=16 --threads=2 \\
        --torch_python=.venv-ref/bin/python --steps=5

Runs bench/torch_reference.py in `--torch_python` (a Python with torch, timm and transformers:
`make reference-venv`) in each of `--modes` (original: fp32 eager; tuned: bf16 autocast +
SDPA; `--torch_compile` adds tuned under torch.compile), then the JAX step here
(bench/train_step.py's `benchmark`, on JAX's default backend), one after the other on the same
random batch (heatmaps rendered for PyTorch on the host), and prints each step time and the ratio
JAX / torch, by wall clock and by CPU seconds per step (every thread's, `time.process_time`:
steadier than wall time on a shared machine; idle threads of either may spin a little). On a GPU
machine pass `--torch_device=cuda` (bench/gpu_check.sh). `--threads` (CPU): both are pinned to
the first `--threads` cores (the process's CPU affinity, which XLA's and PyTorch's thread pools
size themselves by), and PyTorch also gets `torch.set_num_threads(threads)`.
"""

import os

from bench.threads import count_from_argv, pin_threads


def _pin_threads_from_argv() -> None:
    """Before JAX starts: pin the process (and the torch child) to the first N cores."""
    pin_threads(count_from_argv("threads"))


if __name__ == "__main__":
    _pin_threads_from_argv()

import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from bench.random_batch import random_batch  # noqa: E402
from bench.reference_spec import (  # noqa: E402
    REFERENCE_PYTHON,
    run_in_reference_python,
    torch_spec,
)
from bench.train_step import TABLE_HEADER, benchmark, markdown_row  # noqa: E402
from input_pipeline import cli, skeleton  # noqa: E402
from input_pipeline.heatmaps import HeatmapSettings, render_heatmap_np  # noqa: E402

cli.define_config_file("config", None, "Config file (configs/bench.py:<size>).")
flags.DEFINE_integer("batch", 0, "Global batch size (0: the config's).")
flags.DEFINE_integer("threads", 0, "Cores for both frameworks (0: all this process may use).")
flags.DEFINE_string("torch_python", str(REFERENCE_PYTHON), "Python with torch, timm, HF.")
flags.DEFINE_list("modes", ["original", "tuned"], "PyTorch settings to run.")
flags.DEFINE_string("torch_device", "cpu", "PyTorch device (cuda on a GPU machine).")
flags.DEFINE_bool("torch_compile", False, "Also run the tuned setting under torch.compile.")
flags.DEFINE_integer("steps", 5, "Timed steps per framework (median reported).")
flags.DEFINE_integer("warmup", 1, "Untimed steps after the first.")
flags.DEFINE_enum(
    "xla_cost", "none", ["unrolled", "compiled", "none"], "bench/train_step.py's --xla_cost."
)
flags.DEFINE_string("json", "", "Also write every result to this JSON file.")
cli.check_flags(
    batch=cli.Number(integer=True, at_least=0),
    threads=cli.Number(integer=True, at_least=0),
    torch_python=cli.Path("file"),
    modes=cli.Choices(("original", "tuned")),  # bench/torch_reference.py's (imports torch)
    steps=cli.Number(integer=True, at_least=1),
    warmup=cli.Number(integer=True, at_least=0),
    json=cli.Path("new_file"),
)
FLAGS = flags.FLAGS


def write_torch_inputs(config: ml_collections.ConfigDict, folder: Path) -> tuple[Path, Path]:
    """The spec JSON and the same random batch as the JAX step's, with host-rendered heatmaps."""
    batch = random_batch(config)
    size = config.model.image_size
    heatmaps = np.stack(
        [
            render_heatmap_np(
                batch["keypoints"][i],
                batch["visible"][i],
                batch["person_mask"][i],
                size,
                size,
                HeatmapSettings.from_config(config.heatmaps, skeleton.MPII),
            )
            for i in range(config.train.batch_size)
        ]
    )
    spec_path, batch_path = folder / "spec.json", folder / "batch.npz"
    spec_path.write_text(json.dumps(torch_spec(config)))
    np.savez(batch_path, heatmaps=heatmaps, **batch)
    return spec_path, batch_path


def run_torch(spec: Path, batch: Path, mode: str, compile_model: bool) -> dict[str, Any]:
    """bench/torch_reference.py in the reference Python; its last stdout line is the result."""
    args = [
        f"--spec={spec}",
        f"--batch={batch}",
        f"--mode={mode}",
        f"--threads={FLAGS.threads or len(os.sched_getaffinity(0))}",
        f"--steps={FLAGS.steps}",
        f"--warmup={FLAGS.warmup}",
        f"--device={FLAGS.torch_device}",
    ] + (["--compile"] if compile_model else [])
    return run_in_reference_python(FLAGS.torch_python, "bench.torch_reference", args)


def main(argv: list[str]) -> None:
    del argv
    config = FLAGS.config
    if FLAGS.batch:
        config.train.batch_size = FLAGS.batch
    threads = len(os.sched_getaffinity(0))
    # PyTorch first: JAX keeps the GPU memory it has taken until this process ends.
    torch_results = []
    with tempfile.TemporaryDirectory() as folder:
        spec, batch = write_torch_inputs(config, Path(folder))
        for mode in FLAGS.modes:
            torch_results.append(run_torch(spec, batch, mode, compile_model=False))
        if FLAGS.torch_compile:
            torch_results.append(run_torch(spec, batch, "tuned", compile_model=True))
    jax_result = benchmark(
        config, steps=FLAGS.steps, warmup=FLAGS.warmup, peak=None, xla_cost=FLAGS.xla_cost
    )
    jax_result |= {"framework": "jax", "mode": f"jit {jax_result['dtype']}", "threads": threads}
    results = [jax_result, *torch_results]
    analytic = jax_result["analytic_flops"]["total"]
    print(
        f"\n{jax_result['config']}: batch {config.train.batch_size}, {threads} threads, "
        f"{analytic / 1e9:.1f} GFLOP/step (analytic), median of {FLAGS.steps} steps\n"
    )
    print(
        "| framework | setting | step ms | img/s | GFLOP/s | JAX / this (wall) "
        "| CPU s/step | JAX / this (CPU s) |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for result in results:
        step_s, cpu_s = result["step_s"], result["cpu_s_per_step"]
        print(
            f"| {result['framework']} | {result['mode']} | {1000 * step_s:.0f} "
            f"| {config.train.batch_size / step_s:.1f} | {analytic / step_s / 1e9:.1f} "
            f"| {jax_result['step_s'] / step_s:.2f} | {cpu_s:.2f} "
            f"| {jax_result['cpu_s_per_step'] / cpu_s:.2f} |"
        )
    print(f"\nJAX on {jax_result['device_kind']} (MFU against {jax_result['peak_source']}):\n")
    print(TABLE_HEADER)
    print(markdown_row(jax_result))
    if FLAGS.json:
        Path(FLAGS.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    cli.run(main)
