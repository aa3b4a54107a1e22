"""Compile time, step time, throughput, FLOPs, MFU and memory of the training step for a config.

    python -m bench.train_step --config=configs/bench.py:small --steps=20
    python -m bench.train_step --config=configs/bench.py:demo --devices=8 \\
        --config.mesh.data=2 --config.mesh.fsdp=4 --json=/tmp/demo.json
    python -m bench.train_step --config=configs/demo.py --devices=8   # one real pipeline batch

`--devices=N` fakes N CPU devices (XLA_FLAGS, set before JAX starts); on an accelerator leave it
at 0 to use the real devices. Sharding modes come from the mesh overrides: data-parallel
(`mesh.data=-1`, the default), FSDP (`mesh.data=1 mesh.fsdp=-1`) or both. Configs whose
`data.name` is `random` (configs/bench.py) get one random in-memory batch; others one real batch
from their pipeline. The batch is reused for every step.

Model FLOPs are counted analytically (focusclip_jax/flops.py, matmuls only) and printed next to
XLA's `cost_analysis()` count of the compiled step (XLA counts a loop body once: with
`model.scan_layers`, `--xla_cost=unrolled`, the default, counts an unrolled twin of the step,
compiled for that alone); TFLOP/s and MFU use the analytic count. MFU is against the dense
bf16 peak of the device kind (focusclip_jax/targets.py); on CPU, against a measured float32
matmul peak (labelled `cpu-matmul`). Peak memory is `device.memory_stats()`'s where the
backend has it, else XLA's `memory_analysis()` of the compiled step (arguments + outputs +
temporaries - aliased, per device). `--profile=DIR` traces two more steps with jax.profiler
(TensorBoard/Perfetto can open DIR) and prints the step's time by XLA op kind.
"""

import os

from bench import threads


def _fake_devices_from_argv() -> None:
    """XLA reads its flags once, at import: set them before anything imports jax."""
    count = threads.count_from_argv("devices")
    if count:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
        )
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    _fake_devices_from_argv()

import collections  # noqa: E402
import contextlib  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import flags  # noqa: E402

from bench import peaks  # noqa: E402
from bench.random_batch import check_random_data, random_batch  # noqa: E402
from focusclip_jax import aot, config_checks, sharding, train, weights  # noqa: E402
from focusclip_jax import flops as model_flops  # noqa: E402
from input_pipeline import cli, pipeline  # noqa: E402
from input_pipeline.errors import config_errors, require_files  # noqa: E402

TABLE_HEADER = (
    "| config | mesh | devices | batch | dtype | compile s | step ms | img/s | img/s/dev "
    "| GFLOP/step (analytic) | GFLOP/step (XLA) | analytic/XLA | TFLOP/s | MFU | peak mem GiB |\n"
    "|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def sharding_mode(mesh: jax.sharding.Mesh) -> str:
    """data-parallel, FSDP, both, or a single device: from the sizes of the mesh axes."""
    data, fsdp = mesh.shape.get("data", 1), mesh.shape.get("fsdp", 1)
    if data > 1 and fsdp > 1:
        return f"dp{data}xfsdp{fsdp}"
    if fsdp > 1:
        return f"fsdp{fsdp}"
    return f"dp{data}" if data > 1 else "single"


@contextlib.contextmanager
def _phase(what: str) -> Iterator[None]:
    """Logs a phase's start and its duration: on a CPU host some take minutes."""
    logging.info("%s...", what)
    start = time.perf_counter()
    yield
    logging.info("%s: done in %.1f s", what, time.perf_counter() - start)


def check_config(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The config's rules and its batch's keys (random, or a pipeline's: its files too) before
    anything is built: an `InputDataError` naming the key or file. Returns the mesh."""
    mesh = config_checks.validated_mesh(config)
    with config_errors():
        init_files = weights.required_files(config.get("init"))
    if config.data.name == "random":
        require_files(init_files)
        with config_errors():
            check_random_data(config)
    else:
        pipeline.check_input_files(config, also=init_files)
    return mesh


def _first_batch(config: ml_collections.ConfigDict) -> tuple[dict[str, Any], int]:
    """(host batch, vocabulary size): random for `data.name=random`, else the pipeline's."""
    if config.data.name == "random":
        return random_batch(config), config.model.text.vocab_size
    tokenizer = pipeline.create_tokenizer(config)
    return next(pipeline.train_iterator(config, tokenizer)), tokenizer.vocab_size


def benchmark(
    config: ml_collections.ConfigDict,
    *,
    steps: int,
    warmup: int = 2,
    peak: float | None = None,
    xla_cost: str = "unrolled",
    profile_dir: str = "",
) -> dict[str, Any]:
    """Compiles and times the training step of `config`; returns every reported number.

    `peak`: FLOP/s per device for MFU; None looks the device kind up in the table and, on CPU,
    measures a matmul peak. `xla_cost`: how XLA's FLOP count is taken (`aot.step_cost`).
    `profile_dir`: also trace two more steps there and report time per op kind (`profile_ops`).
    """
    mesh = check_config(config)
    name = config.get("bench", {}).get("name", "") or "custom"
    shape, batch_size = dict(mesh.shape), config.train.batch_size
    logging.info(
        "Benchmarking %s: %s mesh %s, batch %d", name, sharding_mode(mesh), shape, batch_size
    )
    with _phase("Making one batch"):
        host_batch, vocab_size = _first_batch(config)
    trainer = train.Trainer(config, mesh, vocab_size=vocab_size)
    # Random weights either way: the RBG generator's init compiles ~3x faster than threefry's.
    with _phase("Initialising the state"), jax.default_prng_impl("unsafe_rbg"):
        state = trainer.init_state()
    batch = pipeline.to_global_arrays(host_batch, sharding.batch_sharding(mesh))

    with _phase("Compiling the training step"):
        start = time.perf_counter()
        compiled = trainer.step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
    times, cpu_times = [], []
    with _phase(f"Running {warmup} warm-up and {steps} timed steps"):
        for i in range(warmup + steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            if i >= warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    step_s = statistics.median(times)

    ops = []
    if profile_dir:
        with _phase(f"Tracing 2 steps into {profile_dir}"):
            ops = profile_ops(compiled, state, batch, profile_dir)
    devices = mesh.devices.size
    device_kind = jax.devices()[0].device_kind
    peak_source = "given"
    if peak is None:
        peak, peak_source = peaks.peak_flops(device_kind), "table (bf16 dense)"
    if peak is None and jax.default_backend() == "cpu":
        # Fake CPU devices share the same cores: the machine's peak is split between them.
        with _phase("Measuring the CPU's float32 matmul peak"):
            peak, peak_source = peaks.measured_matmul_peak() / devices, "cpu-matmul (f32, measured)"
    analytic = model_flops.train_step_flops(config)
    vocab = trainer.setup.model_config.text.vocab_size
    with _phase("Counting the step's FLOPs (XLA's cost analysis)"):
        cost = aot.step_cost(config, mesh, vocab, compiled, xla_cost)
    xla_total = cost.flops * devices if cost.flops is not None else None
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        memory, memory_source = float(stats["peak_bytes_in_use"]), "memory_stats"
    else:
        memory, memory_source = float(aot.memory(compiled)["total"]), "memory_analysis"
    achieved = analytic["total"] / step_s
    return {
        "config": name,
        "mesh": sharding_mode(mesh),
        "mesh_shape": dict(mesh.shape),
        "devices": devices,
        "device_kind": device_kind,
        "batch": batch_size,
        "dtype": str(trainer.setup.model_config.dtype),  # 'auto' resolved for the devices
        "compile_s": compile_s,
        "step_s": step_s,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "cpu_s_per_step": statistics.median(cpu_times),  # all threads; robust to a shared CPU
        "steps": steps,
        "images_per_s": batch_size / step_s,
        "images_per_s_per_device": batch_size / step_s / devices,
        "analytic_flops": analytic,
        "xla_flops": xla_total,
        "xla_flops_of": cost.of,
        "analytic_over_xla": analytic["total"] / xla_total if xla_total else None,
        "tflops_per_s": achieved / 1e12,
        "peak_flops_per_device": peak,
        "peak_source": peak_source,
        "mfu": achieved / (peak * devices) if peak else None,
        "peak_memory_bytes": memory,
        "memory_source": memory_source,
        "final_loss": float(metrics["loss"]),
        "profile_s_per_step_by_op_kind": ops,
    }


def profile_ops(
    compiled: jax.stages.Compiled, state: Any, batch: dict[str, jax.Array], folder: str
) -> list[tuple[str, float]]:
    """Traces two steps with `jax.profiler` into `folder`; returns (op kind, seconds per step).

    Op kinds are XLA's op names without their numeric suffix (`ynn_fusion`, `copy_bitcast_fusion`,
    ...), largest first: where the step's time goes, by kind of work.
    """
    jax.profiler.start_trace(folder)
    for _ in range(2):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    traces = sorted(Path(folder).glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    events = json.loads(gzip.decompress(traces[-1].read_bytes()))["traceEvents"]
    by_kind: collections.Counter[str] = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor", "Pjit")):
            by_kind[re.sub(r"\.\d+$", "", name)] += event.get("dur", 0) / 2e6
    return by_kind.most_common()


def markdown_row(result: dict[str, Any]) -> str:
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a"
    xla, ratio = "n/a", "n/a"
    if result["xla_flops"]:
        xla = f"{result['xla_flops'] / 1e9:.1f}"
        ratio = f"{result['analytic_over_xla']:.3f}"
    return (
        f"| {result['config']} | {result['mesh']} | {result['devices']} | {result['batch']} "
        f"| {result['dtype']} | {result['compile_s']:.1f} | {1000 * result['step_s']:.1f} "
        f"| {result['images_per_s']:.1f} | {result['images_per_s_per_device']:.1f} "
        f"| {result['analytic_flops']['total'] / 1e9:.1f} | {xla} "
        f"| {ratio} | {result['tflops_per_s']:.3f} | {mfu} "
        f"| {result['peak_memory_bytes'] / 2**30:.2f} |"
    )


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags, defined only when it runs (bench/compare.py imports this module)."""
    cli.define_config_file("config", None, "Config file.")
    flags.DEFINE_integer("devices", 0, "Fake CPU devices (0: the real devices).")
    flags.DEFINE_integer("steps", 20, "Timed steps (the median is reported).")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
    flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for MFU (0: table/measured).")
    flags.DEFINE_string("json", "", "Also write the result to this JSON file.")
    flags.DEFINE_string("profile", "", "Trace 2 more steps into this folder; print op kinds.")
    flags.DEFINE_enum(
        "xla_cost",
        "unrolled",
        ["unrolled", "compiled", "none"],
        "XLA's FLOP count: of an unrolled twin when the model scans its layers (XLA counts a "
        "loop body once), of the timed program, or none.",
    )
    cli.check_flags(
        devices=cli.Number(integer=True, at_least=0),
        steps=cli.Number(integer=True, at_least=1),
        warmup=cli.Number(integer=True, at_least=0),
        peak_tflops=cli.Number(at_least=0),
        json=cli.Path("new_file"),
        profile=cli.Path("new_folder"),
    )


def main(argv: list[str]) -> None:
    del argv
    peak = FLAGS.peak_tflops * 1e12 if FLAGS.peak_tflops > 0 else None
    result = benchmark(
        FLAGS.config,
        steps=FLAGS.steps,
        warmup=FLAGS.warmup,
        peak=peak,
        xla_cost=FLAGS.xla_cost,
        profile_dir=FLAGS.profile,
    )
    ops = result["profile_s_per_step_by_op_kind"]
    total = sum(seconds for _, seconds in ops)
    for kind, seconds in ops[:15]:
        print(f"{1000 * seconds:10.1f} ms/step {100 * seconds / total:5.1f}%  {kind}")
    print(
        f"{result['device_kind']} x{result['devices']}: MFU against {result['peak_source']}; "
        f"XLA FLOPs of {result['xla_flops_of']}; "
        f"memory from {result['memory_source']}; step min/max "
        f"{1000 * result['step_s_min']:.1f}/{1000 * result['step_s_max']:.1f} ms; "
        f"analytic GFLOP by part: "
        + ", ".join(f"{k}={v / 1e9:.2f}" for k, v in result["analytic_flops"].items())
    )
    print(TABLE_HEADER)
    print(markdown_row(result))
    if FLAGS.json:
        Path(FLAGS.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
