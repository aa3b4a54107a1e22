"""Will it fit? Compile a config's training step for a TPU slice or GPU cluster you don't have.

    python -m focusclip_jax.aot --config=configs/pretrain.py --topology=v5e-8
    python -m focusclip_jax.aot --config=configs/pretrain.py --topology=h100-8 \\
        --config.model.dtype=float32 --config.mesh.data=1 --config.mesh.fsdp=-1
    python -m focusclip_jax.aot --config=configs/pretrain.py --topology=v6e-8 --find_max_batch

The step is the one `python -m focusclip_jax.main` would run with the same config and overrides
(`train.Trainer`), lowered for compile-only devices of the target (`focusclip_jax.targets`) and
compiled by the target's own compiler on this host: libtpu for TPUs, XLA's GPU compiler for
NVIDIA. The report, per device: argument, output, aliased, temporary and code bytes against the
chip's memory; compile time; analytic FLOPs against XLA's count; the step time and img/s at the
chip's dense peak (a bound); on TPUs the compiler's estimate of the step time, with the img/s and
MFU it implies and the bytes accessed (`tpu_time_estimate`; XLA's GPU compiler makes none); the
collectives by kind. None of it is measured: nothing runs. Exit status: 0 compiled and fits,
3 out of memory (the TPU compiler's verdict; on GPUs, the estimate against the memory JAX
preallocates), 2 a bad flag or config. Needs the compile toolchains: requirements-aot.txt.
"""

import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from focusclip_jax import targets

if __name__ == "__main__":
    targets.configure_compile_only_environment()  # before JAX starts

import jax
import ml_collections
import numpy as np
from absl import app, flags

from focusclip_jax import config_checks, flops, sharding, train
from focusclip_jax.models import layers
from input_pipeline import cli, pipeline, sources
from input_pipeline.errors import ConfigError

GiB = targets.GiB
COLLECTIVE_KINDS = (
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "ragged-all-to-all",
)
_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<kind>" + "|".join(COLLECTIVE_KINDS) + r")(?:-start)?\("
)
_ARRAY = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\]")
# Token counts a tokenizer kind has when its files are not at hand (AOT needs only the size).
DEFAULT_VOCAB_SIZES = {"bert_wordpiece": 30522, "clip_bpe": 49408}


class OutOfMemoryError(Exception):
    """The compiler (or, on GPUs, the memory estimate) says the step does not fit."""


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective op of the compiled program (its largest array, in bytes)."""

    kind: str
    dtype: str
    shape: tuple[int, ...]
    bytes: int


def dtype_bytes(dtype: str) -> float:
    """Bytes per element: the bit width in the name (bf16, s32, f8e4m3fn, c64) over 8; pred 1."""
    if dtype == "pred":
        return 1
    if dtype == "token":
        return 0
    bits = re.match(r"[a-z]+(\d+)", dtype)
    if bits is None:
        raise ValueError(f"unknown HLO element type {dtype!r}")
    return int(bits.group(1)) / 8


def _array_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    return int(dtype_bytes(dtype) * math.prod(shape))


# The TPU compiler splits one asynchronous collective into pieces fused with the compute they
# overlap (one `AsyncCollectiveStart` and `AsyncCollectiveDone` per chain), each piece an op
# carrying the chain's `chain_id`. `configs/pretrain.py:clip,causal,siglip,modern` at batch 256,
# bfloat16, width 768 and one block per tower, for v5e-8, gathers the loss's text embeddings once
# per step: 10 all-gather ops of bf16[256,768], all of chain 0 (libtpu 0.0.50.1, 2026-12-07).
_CHAIN_ID = re.compile(r'chain_id="(?P<chain>[^"]+)"')


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of an optimised HLO module: async `-start` ops counted once, the pieces
    of a TPU async collective chain (`_CHAIN_ID`) once per chain, a loop body's ops once however
    often the loop runs."""
    found = []
    chains = set()
    for match in _COLLECTIVE.finditer(hlo_text):
        end = hlo_text.find("\n", match.end())
        chain = _CHAIN_ID.search(hlo_text, match.end(), end if end >= 0 else len(hlo_text))
        if chain is not None:
            if (match.group("kind"), chain.group("chain")) in chains:
                continue
            chains.add((match.group("kind"), chain.group("chain")))
        arrays = [
            (m.group("dtype"), tuple(int(d) for d in m.group("dims").split(",") if d))
            for m in _ARRAY.finditer(match.group("shape"))
        ]
        if not arrays:
            continue
        dtype, shape = max(arrays, key=lambda a: _array_bytes(*a))
        found.append(Collective(match.group("kind"), dtype, shape, _array_bytes(dtype, shape)))
    return found


def collective_summary(found: list[Collective]) -> dict[str, dict[str, Any]]:
    """By kind: count, total bytes and the largest op."""
    summary: dict[str, dict[str, Any]] = {}
    for kind in COLLECTIVE_KINDS:
        ops = [c for c in found if c.kind == kind]
        if ops:
            largest = max(ops, key=lambda c: c.bytes)
            summary[kind] = {
                "count": len(ops),
                "bytes": sum(c.bytes for c in ops),
                "largest": f"{largest.dtype}[{','.join(map(str, largest.shape))}]",
                "largest_bytes": largest.bytes,
            }
    return summary


def memory(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Per-device bytes of the compiled program (XLA's `memory_analysis()`, an estimate)."""
    stats = compiled.memory_analysis()
    parts = {
        "argument": stats.argument_size_in_bytes,
        "output": stats.output_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,
        "temporary": stats.temp_size_in_bytes,
        "code": stats.generated_code_size_in_bytes,
    }
    parts["total"] = (
        parts["argument"] + parts["output"] - parts["aliased"] + parts["temporary"] + parts["code"]
    )
    return parts


def vocab_size(config: ml_collections.ConfigDict) -> tuple[int, str]:
    """The text tower's vocabulary: `model.text.vocab_size`, else the tokenizer's, else the
    tokenizer kind's usual size when its files are elsewhere (only the embedding's shape matters
    here)."""
    if config.model.text.vocab_size != -1:
        return config.model.text.vocab_size, "model.text.vocab_size"
    kind = config.tokenizer.kind
    if kind == "fitted_bpe":
        return config.tokenizer.vocab_size, "tokenizer.vocab_size (fitted_bpe, at most)"
    try:
        return pipeline.create_tokenizer(config).vocab_size, f"the {kind} tokenizer"
    except (OSError, ValueError) as error:
        if kind in DEFAULT_VOCAB_SIZES:
            return DEFAULT_VOCAB_SIZES[kind], f"{kind}'s usual size (tokenizer files not found)"
        raise ConfigError(
            f"config model.text.vocab_size=-1 and the {kind} tokenizer cannot be built ({error}); "
            "give --config.model.text.vocab_size"
        ) from error


def abstract_batch(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> dict[str, jax.ShapeDtypeStruct]:
    rows = sharding.batch_sharding(mesh)
    return {
        name: jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=rows)
        for name, spec in pipeline.batch_spec(config).items()
    }


def compile_step(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, vocab: int
) -> tuple[train.Trainer, jax.stages.Compiled, float]:
    """The training step of `config` (checked: `config_checks`), compiled for the mesh's devices;
    (trainer, program, seconds)."""
    trainer = train.Trainer(config, mesh, vocab_size=vocab)
    start = time.perf_counter()
    lowered = trainer.step.lower(trainer.abstract_state, abstract_batch(config, mesh))
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" in str(error):
            raise OutOfMemoryError(_first_line_with(str(error), "RESOURCE_EXHAUSTED")) from None
        raise
    return trainer, compiled, time.perf_counter() - start


def _first_line_with(text: str, needle: str) -> str:
    return next((line.strip() for line in text.splitlines() if needle in line), text.strip())


@dataclasses.dataclass(frozen=True)
class Cost:
    """XLA's cost analysis of one device's program (`cost_analysis`); None where not counted."""

    of: str  # which program was analysed, or why none was
    flops: float | None = None
    bytes_accessed: float | None = None
    optimal_seconds: float | None = None  # libtpu's raw figure (`tpu_time_estimate`)
    concat_bitcasts: int = 0
    # XLA counts a while loop's body once: FSDP's windowed einsums (all-gathers overlapped with
    # the matmuls, a loop per weight) make every figure above an undercount.
    while_loops: int = 0

    @property
    def estimated_s(self) -> float | None:
        """The TPU compiler's estimate of the program's run time (`tpu_time_estimate`)."""
        if self.optimal_seconds is None:
            return None
        return tpu_time_estimate(self.optimal_seconds, self.concat_bitcasts)


def tpu_time_estimate(optimal_seconds: float, concat_bitcasts: int) -> float | None:
    """The TPU compiler's estimate of a program's run time in seconds, from libtpu's
    `optimal_seconds` and the program's `ConcatBitcast` custom calls; None where the figure
    breaks the rule below.

    libtpu (0.0.50) prices each ConcatBitcast call, which its memory scheduler's sliced
    prefetches bring, at -1 s: for v5e-8, bench.py's tiny step reports -7.99969 with 8 calls, so
    0.306 ms, and the paper's float32 step (configs/pretrain.py unrolled) -680.936 with 681, so
    64.3 ms. Compiled without sliced prefetches (`xla_tpu_sliced_prefetch_max_slices=0`: no such
    calls, a positive figure) the same steps are estimated at 0.325 and 88.0 ms, and a bf16
    matmul (no such calls) at exactly its FLOPs at the chip's peak. The corrected figure is the
    estimate of the program that runs. Inferred from compiled programs, not documented:
    tests/test_aot.py checks it. The figure is a float32, so the sum keeps its rounding (half a
    float32 step at the call count: 3e-5 s at 681 calls); an estimate that is not positive or
    not known to 1% is refused.
    """
    estimate = optimal_seconds + concat_bitcasts
    rounding = float(np.spacing(np.float32(abs(optimal_seconds)))) / 2
    if estimate <= 0 or rounding > 0.01 * estimate:
        return None
    return estimate


def analyse_cost(program: jax.stages.Compiled, of: str) -> Cost:
    """The cost analysis of one compiled program (per device); XLA's GPU compiler gives none."""
    cost = program.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return Cost("no cost analysis from this compiler")
    optimal = cost.get("optimal_seconds")
    hlo = program.as_text() or ""
    return Cost(
        of,
        flops=float(cost["flops"]),
        bytes_accessed=float(cost["bytes accessed"]) if "bytes accessed" in cost else None,
        optimal_seconds=float(optimal) if optimal is not None else None,
        concat_bitcasts=hlo.count('custom_call_target="ConcatBitcast"'),
        while_loops=len(_WHILE_LOOP.findall(hlo)),
    )


_WHILE_LOOP = re.compile(r"^\s*(?:ROOT )?%[\w.-]+ = .* while\(", re.MULTILINE)


def cost_analysis(
    config: ml_collections.ConfigDict,
    target: targets.Target,
    mesh: jax.sharding.Mesh,
    vocab: int,
    compiled: jax.stages.Compiled | None,
    how: str = "auto",
) -> Cost:
    """XLA's cost analysis of the step: FLOPs and bytes accessed per device and, on TPUs, the
    compiler's estimate of the step's time.

    All three count a loop body once (a scan of 8 matmuls costs about one), so for a config
    with `model.scan_layers` they come from an unrolled twin of the step (`how='auto'` or
    'unrolled': one more, slower compile; the twin may not fit where the scanned step does);
    'compiled' analyses `compiled` as is; 'none' skips it. XLA's GPU compiler gives no cost
    analysis, so GPU targets compile no twin.
    """
    if target.chip.platform != "tpu" and how != "none":
        return Cost("no cost analysis from XLA's GPU compiler")
    return step_cost(config, mesh, vocab, compiled, how)


def step_cost(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    vocab: int,
    compiled: jax.stages.Compiled | None,
    how: str = "auto",
) -> Cost:
    """The cost analysis of `config`'s step compiled for `mesh`'s devices (`cost_analysis`'s,
    for any backend that gives one): of an unrolled twin when the layers are scanned, unless
    `how` is 'compiled' (the program as is) or 'none'."""
    if how not in ("auto", "unrolled", "compiled", "none"):
        raise ValueError(f"--xla_flops={how!r}: expected auto, unrolled, compiled or none")
    if how == "none":
        return Cost("not analysed (--xla_flops=none)")
    if how != "compiled" and config.model.get("scan_layers", False):
        twin_config = config.copy_and_resolve_references()
        twin_config.model.scan_layers = False
        try:
            _, twin, _ = compile_step(twin_config, mesh, vocab)
        except OutOfMemoryError as error:
            return Cost(f"none: the unrolled twin (scan_layers=False) does not fit ({error})")
        return analyse_cost(twin, "an unrolled twin (scan_layers=False)")
    if compiled is None:
        raise ValueError("cost_analysis: no compiled program to analyse")
    scanned = config.model.get("scan_layers", False)
    return analyse_cost(
        compiled, "the compiled step" + (" (a scanned loop's body counted once)" if scanned else "")
    )


def fits(report_memory: dict[str, int], target: targets.Target) -> bool:
    """GPUs: the estimate against JAX's preallocated share (XLA's GPU compiler does not check);
    TPUs: compiling was the verdict, the estimate is informative."""
    return target.chip.platform == "tpu" or report_memory["total"] <= target.usable_bytes


def analyse(
    config: ml_collections.ConfigDict,
    target: targets.Target,
    *,
    devices: list[Any] | None = None,
    cost_how: str = "auto",
) -> dict[str, Any]:
    """Compile `config`'s step for `target` and report on it (`cost_how`: `cost_analysis`);
    raises OutOfMemoryError."""
    devices = devices if devices is not None else target.devices()
    mesh = config_checks.validated_mesh(config, devices)
    vocab, vocab_source = vocab_size(config)
    trainer, compiled, compile_s = compile_step(config, mesh, vocab)
    return report(config, target, trainer, compiled, compile_s, vocab_source, cost_how)


def report(
    config: ml_collections.ConfigDict,
    target: targets.Target,
    trainer: train.Trainer,
    compiled: jax.stages.Compiled,
    compile_s: float,
    vocab_source: str = "",
    cost_how: str = "auto",
) -> dict[str, Any]:
    """The numbers of a compiled step (`analyse`); raises OutOfMemoryError where it cannot fit."""
    mesh, vocab = trainer.setup.mesh, trainer.setup.model_config.text.vocab_size
    mem = memory(compiled)
    if not fits(mem, target):
        raise OutOfMemoryError(
            f"estimated {mem['total'] / GiB:.2f} GiB per device, above the "
            f"{target.usable_bytes / GiB:.2f} GiB JAX preallocates on a {target.chip.name} "
            f"({targets.GPU_DEFAULT_MEMORY_FRACTION:.0%}; XLA_PYTHON_CLIENT_MEM_FRACTION)"
        )
    dtype = str(trainer.setup.model_config.dtype)  # 'auto' resolved for the target
    cost = cost_analysis(config, target, mesh, vocab, compiled, cost_how)
    batch = config.train.batch_size
    hlo = compiled.as_text() or ""
    return {
        "target": targets.describe(target),
        "topology": target.name,
        "devices": mesh.devices.size,
        "mesh": dict(mesh.shape),
        "batch": batch,
        "batch_per_device": batch / mesh.devices.size,
        "dtype": dtype,
        "scan_layers": bool(config.model.get("scan_layers", False)),
        "remat": str(config.model.get("remat", "none")),
        "optimizer_state": trainer.optimizer_state,
        "attention": attention_kernels(hlo),
        # The side of the canvases the step crops (`data.crop_on`), 0 where the host crops.
        "crop_canvas": sources.canvas_side(config.data),
        "vocab_size": vocab,
        "vocab_source": vocab_source,
        "compile_s": compile_s,
        "memory": mem,
        "memory_capacity": target.chip.memory_bytes,
        "memory_usable": target.usable_bytes,
        "headroom": target.usable_bytes - mem["total"],
        "verdict": (
            "fits: the TPU compiler placed it in HBM (its own accounting; the estimate above "
            "may exceed the chip)"
            if target.chip.platform == "tpu"
            else "fits: the estimate is within the memory JAX preallocates"
        ),
        **cost_fields(config, target, mesh.devices.size, cost),
        "collectives": collective_summary(collectives(hlo)),
        "parameters": sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params)),
    }


def cost_fields(
    config: ml_collections.ConfigDict, target: targets.Target, devices: int, cost: Cost
) -> dict[str, Any]:
    """The report's FLOPs, the bound at the chip's peak and the compiler's estimate of the step
    (per device where not said; None where the cost analysis gives none): the estimated step
    time, img/s, MFU (analytic FLOPs over the estimated time at the slice's peak) and the bytes
    accessed with the rate they imply against the chip's HBM bandwidth (XLA counts every
    operand an op reads, some from on-chip memory, so the rate may pass the HBM's)."""
    analytic = flops.train_step_flops(config)["total"]
    dtype = layers.compute_dtype(config.model.dtype, target.chip.platform).name
    peak = targets.peak_flops(target.chip, dtype)
    step_at_peak = analytic / devices / peak
    batch = config.train.batch_size
    xla_total = cost.flops * devices if cost.flops is not None else None
    estimate = cost.estimated_s
    bytes_accessed = cost.bytes_accessed
    return {
        "cost_analysis_of": cost.of,
        "analytic_flops": analytic,
        "xla_flops": xla_total,
        "analytic_over_xla": analytic / xla_total if xla_total else None,
        "peak_flops_per_device": peak,
        "roofline_step_s": step_at_peak,
        "roofline_images_per_s": batch / step_at_peak,
        "optimal_seconds": cost.optimal_seconds,
        "concat_bitcast_calls": cost.concat_bitcasts,
        "while_loops": cost.while_loops,
        "estimated_step_s": estimate,
        "estimated_images_per_s": batch / estimate if estimate else None,
        "estimated_mfu": step_at_peak / estimate if estimate else None,
        "bytes_accessed": bytes_accessed,
        "estimated_bytes_per_s": bytes_accessed / estimate if estimate and bytes_accessed else None,
        "hbm_bytes_per_s": target.chip.hbm_bytes_per_s,
    }


_MOSAIC_ATTENTION_CALL = re.compile(
    r"^\s*%((?:splash|vmem)_mha_\w+?)(?:\.\d+)? = .*tpu_custom_call", re.MULTILINE
)


def attention_kernels(hlo: str) -> str:
    """Which attention the compiled program runs: cuDNN's and the TPU kernels show as custom
    calls (Mosaic `tpu_custom_call`s: splash attention's, and `models.vmem_attention`'s
    whole-sequence kernels, with or without dropout; counted forward and backward, a scanned
    loop's body once). Attention that drops probabilities outside those kernels is XLA's."""
    if "__cudnn$fmha" in hlo:
        return "cudnn"
    calls = _MOSAIC_ATTENTION_CALL.findall(hlo)
    found = []
    for kind in ("splash", "vmem"):
        names = [name for name in calls if name.startswith(kind)]
        if names:
            forward = sum("_fwd" in name for name in names)
            found.append(
                f"{kind} ({forward} forward, {len(names) - forward} backward Mosaic kernels)"
            )
    return ", ".join(found) or "xla"


def find_max_batch(
    config: ml_collections.ConfigDict,
    target: targets.Target,
    *,
    limit: int = 1 << 20,
    tolerance: float = 1 / 32,
    cost_how: str = "auto",
    log: Any = print,
) -> tuple[int, dict[str, Any] | None, list[tuple[int, str]]]:
    """The largest global batch (a multiple of the batch shards, at most `limit`) that fits, to
    within `tolerance` of itself (or one batch shard).

    Memory is close to affine in the batch, so each try is where the line through the nearest
    two tries so far reaches the chip's memory (when it says nothing more fits: one tolerance
    more if memory is nearly full, else double; at most 16x the largest fit so far), then inside
    the bracket [largest that fits, smallest that does not] cutting at least a quarter of it (the
    middle when the line points outside the bracket): a few compiles instead of a bisection's
    dozen. Until two batches are measured, the line's second point is batch 0 with the first
    fit's memory less its temporaries (its state and code; it undershoots, so the first guess
    errs towards fitting). Near the limit the TPU compiler rematerialises to fit and its
    estimate passes the chip's memory: such fits bound the bracket but do not steer the line.
    The cost analysis (`cost_how`) of each fit is its own program's, except for a config with
    `model.scan_layers`: its tries skip it, and the unrolled twin of the largest fit gives it (one
    more compile, `cost_analysis`). Returns (batch, its report, the tries); batch 0 when not one
    example per shard fits.
    """
    devices = target.devices()
    shards = sharding.data_parallel_size(sharding.create_mesh(config.mesh, devices=devices))
    limit = max(shards, limit // shards * shards)
    tries: list[tuple[int, str]] = []
    measured: dict[int, float] = {}  # batch → bytes per device (estimate or compiler's report)
    best, best_report, too_big = 0, None, None
    twin_wanted = config.model.get("scan_layers", False) and cost_how in ("auto", "unrolled")

    def attempt(batch: int) -> None:
        nonlocal best, best_report, too_big
        trial = config.copy_and_resolve_references()
        trial.train.batch_size = batch
        try:
            report = analyse(
                trial, target, devices=devices, cost_how="none" if twin_wanted else cost_how
            )
        except OutOfMemoryError as error:
            tries.append((batch, "out of memory"))
            log(f"  batch {batch}: out of memory ({error})")
            too_big = batch if too_big is None else min(too_big, batch)
            if used := _reported_usage(str(error)):
                measured[batch] = used
            return
        total = report["memory"]["total"]
        if total <= target.usable_bytes:  # above it the TPU compiler rematerialises: no line
            measured[batch] = total
            measured.setdefault(0, total - report["memory"]["temporary"])
        tries.append((batch, f"fits, {total / GiB:.2f} GiB"))
        log(f"  batch {batch}: fits, {total / GiB:.2f} GiB per device")
        best, best_report = batch, report

    batch = min(max(shards, config.train.batch_size // shards * shards), limit)
    attempt(batch)
    while best == 0 and batch > shards:  # shrink until something fits
        batch = max(shards, batch // 2 // shards * shards)
        attempt(batch)

    def settled() -> bool:
        return too_big is not None and too_big - best <= max(shards, tolerance * best)

    while best and best + shards <= limit and not settled():
        guess = _affine_guess(measured, target.usable_bytes, shards)
        if too_big is None:  # no upper bracket yet: the line's limit, else double
            if guess is None or guess <= best:
                # (a fit past the chip's memory, placed by the TPU compiler, is full too)
                near_full = best_report["memory"]["total"] >= 0.9 * target.usable_bytes
                step = max(shards, int(tolerance * best) // shards * shards)  # settles it
                guess = best + step if near_full else 2 * best
            guess = min(guess, 16 * best, limit)
        else:  # inside the bracket, cutting at least a quarter of it (no crawling)
            quarter = (too_big - best) // 4
            if guess is None or not best < guess < too_big:  # the line disagrees: bisect
                guess = (best + too_big) // 2
            guess = min(max(guess, best + quarter), too_big - quarter) // shards * shards
            guess = min(max(guess, best + shards), too_big - shards)
        attempt(max(guess, best + shards))
    if best_report is not None and twin_wanted:
        if target.chip.platform == "tpu":
            log(f"  batch {best}: compiling its unrolled twin for the cost analysis")
        largest = config.copy_and_resolve_references()
        largest.train.batch_size = best
        mesh = config_checks.validated_mesh(largest, devices)
        cost = cost_analysis(largest, target, mesh, best_report["vocab_size"], None, cost_how)
        best_report.update(cost_fields(largest, target, len(devices), cost))
    return best, best_report, tries


def _reported_usage(message: str) -> float | None:
    """Bytes the TPU compiler says the program needs ("the total memory required for HLO
    temporaries (20.3G) exceeds available HBM (15.75G)", or "Used 20.3G of 15.75G hbm")."""
    match = re.search(r"(?:temporaries \(|Used\s+)([0-9.]+)([KMGT])", message)
    if not match:
        return None
    return float(match.group(1)) * 1024 ** "KMGT".index(match.group(2)) * 1024


def _affine_guess(measured: dict[int, float], capacity: int, shards: int) -> int | None:
    """Where the line through the two nearest measured points reaches `capacity`."""
    if len(measured) < 2:
        return None
    batches = [b for b in measured if b] if len(measured) > 2 else list(measured)
    points = sorted(((b, measured[b]) for b in batches), key=lambda kv: abs(kv[1] - capacity))[:2]
    (b0, m0), (b1, m1) = sorted(points)
    if b1 == b0 or m1 <= m0:
        return None
    slope = (m1 - m0) / (b1 - b0)
    return int((b0 + (capacity - m0) / slope) // shards * shards)


def size_text(num_bytes: float) -> str:
    return (
        f"{num_bytes / GiB:.2f} GiB"
        if abs(num_bytes) >= GiB / 10
        else f"{num_bytes / 2**20:.1f} MiB"
    )


def _flop(count: float) -> str:
    return f"{count / 1e12:.2f} TFLOP" if count >= 1e11 else f"{count / 1e9:.3f} GFLOP"


def format_report(report: dict[str, Any]) -> str:
    mem = report["memory"]
    lines = [
        report["target"],
        f"mesh {report['mesh']} | global batch {report['batch']} "
        f"({report['batch_per_device']:g} per device) | {report['dtype']} | "
        f"scan_layers={report['scan_layers']} remat={report['remat']} | "
        f"optimizer state as {report['optimizer_state']} | "
        + (
            f"crop on the device from {report['crop_canvas']}² canvases | "
            if report.get("crop_canvas")
            else ""
        )
        + f"attention {report['attention']} | vocab {report['vocab_size']} "
        f"({report['vocab_source']})",
        f"compiled in {report['compile_s']:.1f} s; {report['parameters'] / 1e6:.2f} M parameters",
        "memory per device (XLA's estimate):",
        *(
            f"  {name:10s}{size_text(mem[name]):>12s}"
            for name in ("argument", "output", "aliased", "temporary", "code")
        ),
        f"  {'total':10s}{size_text(mem['total']):>12s} of {size_text(report['memory_capacity'])}"
        f" ({size_text(report['memory_usable'])} usable), headroom {size_text(report['headroom'])}",
        report["verdict"],
    ]
    xla = report["xla_flops"]
    ratio = f"{report['analytic_over_xla']:.3f}" if xla else "n/a"
    lines += [
        f"cost analysis: {report['cost_analysis_of']}",
        f"  FLOPs per step: analytic {_flop(report['analytic_flops'])}, XLA "
        + (_flop(xla) if xla else "n/a")
        + f", analytic/XLA {ratio}",
        f"  bound at the chip's dense peak ({report['peak_flops_per_device'] / 1e12:.0f} TFLOP/s "
        f"per device): step {1000 * report['roofline_step_s']:.3g} ms, "
        f"{report['roofline_images_per_s']:.0f} img/s",
        f"  the compiler's estimate: {_estimate(report)}",
    ]
    if report.get("while_loops"):
        lines.append(
            f"  an undercount: the analysed program runs {report['while_loops']} while loops "
            "(FSDP's windowed einsums: a weight's all-gather overlapped with its matmul), whose "
            "bodies XLA counts once; the FLOPs, bytes and estimated time above are lower bounds"
        )
    if report["bytes_accessed"] is not None:
        line = f"  bytes accessed per device (XLA's count): {size_text(report['bytes_accessed'])}"
        if report["estimated_bytes_per_s"]:
            line += (
                f", {report['estimated_bytes_per_s'] / 1e9:.0f} GB/s over the estimated step "
                f"({report['estimated_bytes_per_s'] / report['hbm_bytes_per_s']:.0%} of the "
                f"chip's {report['hbm_bytes_per_s'] / 1e9:.0f} GB/s HBM)"
            )
        lines.append(line)
    lines += [
        "collectives (per program; a scanned loop's body counted once):",
    ]
    for kind, c in report["collectives"].items():
        lines.append(
            f"  {kind:20s}{c['count']:5d} ops {size_text(c['bytes']):>12s}, largest "
            f"{c['largest']} ({size_text(c['largest_bytes'])})"
        )
    if not report["collectives"]:
        lines.append("  none")
    return "\n".join(lines)


def _estimate(report: dict[str, Any]) -> str:
    """The compiler's estimated step, or why there is none."""
    raw, calls = report["optimal_seconds"], report["concat_bitcast_calls"]
    if raw is None:
        return "none"
    libtpu = f"libtpu's optimal_seconds {raw:.6g} with {calls} ConcatBitcast calls"
    estimate = report["estimated_step_s"]
    if estimate is None:
        return f"none ({libtpu} break the rule of tpu_time_estimate)"
    return (
        f"step {1000 * estimate:.3g} ms, {report['estimated_images_per_s']:.0f} img/s, "
        f"{report['estimated_mfu']:.1%} MFU ({libtpu}, -1 s each)"
    )


FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_file("config", None, "Config file, e.g. configs/pretrain.py.")
    flags.DEFINE_string("topology", None, "v4-8, v5e-8, v5e-256, v5p-8, v6e-8, h100-8, a100-8, ...")
    flags.DEFINE_integer("num_slices", 1, "TPU slices joined over the data-centre network.")
    flags.DEFINE_integer("num_hosts", 1, "GPU hosts (each with the GPUs the topology names).")
    flags.DEFINE_bool(
        "find_max_batch",
        False,
        "Search the largest global batch that fits (the cost analysis is the largest fit's).",
    )
    flags.DEFINE_float(
        "batch_tolerance", 1 / 32, "--find_max_batch stops within this fraction of the batch."
    )
    flags.DEFINE_enum(
        "xla_flops",
        "auto",
        ["auto", "unrolled", "compiled", "none"],
        "XLA's cost analysis (FLOPs, bytes accessed and the TPU compiler's step-time estimate): "
        "auto/unrolled analyses an unrolled twin when the config scans its layers (a loop body "
        "counts once); compiled analyses the program as is; none skips it.",
    )
    flags.DEFINE_string("json", "", "Also write the report to this JSON file.")
    flags.mark_flags_as_required(["config", "topology"])
    cli.check_flags(
        topology=cli.Text(targets.name_problem),
        num_slices=cli.Number(integer=True, at_least=1),
        num_hosts=cli.Number(integer=True, at_least=1),
        batch_tolerance=cli.Number(above=0, below=1),
        json=cli.Path("new_file"),
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    try:  # a target or config the tool cannot compile for: one line at cli.run's boundary
        target = targets.parse(
            FLAGS.topology, num_slices=FLAGS.num_slices, num_hosts=FLAGS.num_hosts
        )
        if FLAGS.find_max_batch:
            print(f"Searching the largest batch on {targets.describe(target)}", flush=True)
            best, report, tries = find_max_batch(
                config, target, tolerance=FLAGS.batch_tolerance, cost_how=FLAGS.xla_flops
            )
            if report is None:
                raise OutOfMemoryError(f"not even {tries[-1][0]} examples fit")
            report["find_max_batch"] = tries
            print(f"largest global batch that fits: {best} ({len(tries)} compiles)")
        else:
            report = analyse(config, target, cost_how=FLAGS.xla_flops)
    except OutOfMemoryError as error:
        print(f"out of memory on {FLAGS.topology}: {error}", file=sys.stderr)
        sys.exit(3)
    print(format_report(report))
    if FLAGS.json:
        cli.write_whole(Path(FLAGS.json), json.dumps(report, indent=1))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
