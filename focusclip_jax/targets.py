"""Accelerators to compile for without having them: cloud TPU slices and NVIDIA GPU hosts by name.

`parse("v5e-8")`, `parse("v5p-128", num_slices=2)`, `parse("h100-8", num_hosts=4)` give a `Target`
whose `devices()` are JAX compile-only devices (`jax.experimental.topologies`): meshes, shardings
and `jit(...).lower(...).compile()` work on them as on real ones, nothing runs. TPUs need libtpu
(`jax[tpu]`), NVIDIA GPUs the CUDA plugin (`jax-cuda12-plugin`, `jax-cuda12-pjrt`):
requirements-aot.txt. Names follow Google Cloud: `v5e-N`/`v6e-N` count chips, `v4-N`/`v5p-N`
count TensorCores (two per chip; JAX sees one megacore device per chip). GPU names count the GPUs
of one host (`h100-8` = an 8-GPU host such as an A3 VM or a DGX).
"""

import contextlib
import dataclasses
import math
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

from input_pipeline.errors import InputDataError

GiB = 2**30
# What the compile toolchains need to stay offline and share libtpu between processes; set before
# JAX starts (`configure_compile_only_environment`).
COMPILE_ONLY_ENVIRONMENT = {
    "JAX_PLATFORMS": "cpu",  # compile-only devices come from topologies, not from a backend
    "TPU_SKIP_MDS_QUERY": "1",  # libtpu: never ask a cloud metadata server
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",  # libtpu: no exclusive /tmp lockfile
}
TOOLCHAINS = (
    "pip install -r requirements-aot.txt (or: make aot-venv, then use .venv-aot/bin/python)"
)


class TargetError(InputDataError, ValueError):
    """A target name, size or option that does not describe an accelerator we can compile for:
    the user's mistake (`cli.run` tells it in one line)."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator (a JAX device): memory, its bandwidth and dense peak FLOP/s."""

    name: str
    platform: str  # "tpu" or "gpu"
    memory_bytes: int
    peak_bf16: float  # dense bfloat16 FLOP/s
    # float32 matmuls at JAX's default precision: one bf16 pass on TPUs, TF32 on NVIDIA GPUs.
    peak_f32: float
    hbm_bytes_per_s: float  # HBM bandwidth
    generation: str = ""  # libtpu's topology prefix (TPU)
    megacore: bool = False  # TPU: two TensorCores per chip, one device; 3D torus (v4, v5p)
    gpu: dict[str, Any] = dataclasses.field(default_factory=dict)  # NVIDIA: target config fields


# Public spec sheets (Cloud TPU docs, NVIDIA datasheets); GPU memory as the driver reports it.
TPUS: dict[str, Chip] = {
    "v4": Chip("TPU v4", "tpu", 32 * GiB, 275e12, 275e12, 1200e9, "v4", megacore=True),
    "v5e": Chip("TPU v5e", "tpu", 16 * GiB, 197e12, 197e12, 819e9, "v5e"),
    "v5p": Chip("TPU v5p", "tpu", 95 * GiB, 459e12, 459e12, 2765e9, "v5p", megacore=True),
    "v6e": Chip("TPU v6e", "tpu", 32 * GiB, 918e12, 918e12, 1638e9, "v6e"),
}
# Hopper (H100 SXM, H200): 132 SMs at 1.98 GHz, 50 MiB of L2, 228 KiB of shared memory per SM.
_HOPPER = dict(
    compute_capability=(9, 0),
    core_count=132,
    clock_rate_ghz=1.98,
    l2_cache_size=50 * 2**20,
    shared_memory_per_core=228 * 1024,
    shared_memory_per_block_optin=227 * 1024,
)
GPUS: dict[str, Chip] = {
    "h100": Chip(
        "NVIDIA H100 80GB HBM3",
        "gpu",
        84_942_979_072,
        989e12,
        494e12,
        3_352_320_000_000,
        gpu=_HOPPER,
    ),
    "h200": Chip(
        "NVIDIA H200",
        "gpu",
        150_754_820_096,
        989e12,
        494e12,
        4_800_000_000_000,
        gpu=_HOPPER,
    ),
    "a100": Chip(
        "NVIDIA A100-SXM4-80GB",
        "gpu",
        85_198_045_184,
        312e12,
        156e12,
        2_039_000_000_000,
        gpu=dict(
            compute_capability=(8, 0),
            core_count=108,
            clock_rate_ghz=1.41,
            l2_cache_size=40 * 2**20,
            shared_memory_per_core=164 * 1024,
            shared_memory_per_block_optin=163 * 1024,
        ),
    ),
}
# JAX preallocates this fraction of GPU memory for its allocator (XLA_PYTHON_CLIENT_MEM_FRACTION).
GPU_DEFAULT_MEMORY_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class Target:
    """A named slice or cluster: its chip, device count and how libtpu / the CUDA plugin lay it out.

    `usable_bytes` is what one device's program may take: the whole HBM on a TPU (whose compiler
    checks it itself), JAX's preallocated share of a GPU (XLA does not check it at compile time).
    """

    name: str
    chip: Chip
    num_devices: int
    num_hosts: int
    topology: str  # libtpu topology ("v5e:2x4") or the CUDA plugin's "<slices>x<hosts>x<gpus>"
    chips_per_host_bounds: tuple[int, int, int] = (1, 1, 1)
    wrap: tuple[bool, bool, bool] = (False, False, False)
    num_slices: int = 1
    memory_fraction: float = 1.0

    @property
    def usable_bytes(self) -> int:
        return int(self.chip.memory_bytes * self.memory_fraction)

    def devices(self) -> list[Any]:
        """Compile-only JAX devices of the whole target (all hosts and slices)."""
        from jax.experimental import topologies

        try:
            with _quiet_stderr():
                if self.chip.platform == "tpu":
                    description = topologies.get_topology_desc(
                        self.topology,
                        platform="tpu",
                        chip_config_name="megacore" if self.chip.megacore else "default",
                        chips_per_host_bounds=self.chips_per_host_bounds,
                        num_slices=self.num_slices,
                        wrap=self.wrap,
                    )
                else:
                    description = topologies.get_topology_desc(
                        platform="cuda",
                        target_config=gpu_target_config(self.chip),
                        topology=self.topology,
                    )
        except (ImportError, RuntimeError, NotImplementedError) as error:
            raise TargetError(
                f"--topology={self.name}: cannot load the {self.chip.platform.upper()} compile "
                f"toolchain ({str(error).splitlines()[0]}); {TOOLCHAINS}"
            ) from error
        devices = list(description.devices)
        if len(devices) != self.num_devices:
            raise TargetError(
                f"--topology={self.name}: expected {self.num_devices} devices, the toolchain "
                f"made {len(devices)}"
            )
        return devices


def configure_compile_only_environment() -> None:
    """Environment for compiling without accelerators; must run before JAX is imported."""
    for key, value in COMPILE_ONLY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """libtpu prints warnings about cloud TPU variables (absent on purpose) straight to fd 2;
    they are kept and shown only if loading fails."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            os.write(2, captured.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def parse(name: str, *, num_slices: int = 1, num_hosts: int = 1) -> Target:
    """A target from a cloud TPU name (`v4-8`, `v5e-256`, `v5p-128`, `v6e-8`) or an NVIDIA host
    name (`h100-8`, `h200-8`, `a100-8`); `num_slices` (TPU) and `num_hosts` (GPU) multiply it."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    known = ", ".join([f"{t}-N" for t in TPUS] + [f"{g}-N" for g in GPUS])
    if not match:
        raise TargetError(f"--topology={name!r}: expected a name like v5e-8 or h100-8 ({known})")
    kind, count = match.group(1), int(match.group(2))
    if num_slices < 1 or num_hosts < 1:
        raise TargetError(f"--num_slices={num_slices}, --num_hosts={num_hosts}: must be >= 1")
    if kind in TPUS:
        if num_hosts != 1:
            raise TargetError("--num_hosts is for GPU targets; TPU slices set their own hosts")
        return _tpu_target(name, TPUS[kind], count, num_slices)
    if kind in GPUS:
        if num_slices != 1:
            raise TargetError("--num_slices is for TPU targets; use --num_hosts for GPU clusters")
        if count < 1 or count > 16:
            raise TargetError(f"--topology={name}: GPUs per host must be 1 to 16")
        return Target(
            name=f"{name}" + (f" x {num_hosts} hosts" if num_hosts > 1 else ""),
            chip=GPUS[kind],
            num_devices=count * num_hosts,
            num_hosts=num_hosts,
            topology=f"1x{num_hosts}x{count}",
            memory_fraction=GPU_DEFAULT_MEMORY_FRACTION,
        )
    raise TargetError(f"--topology={name!r}: unknown accelerator {kind!r}; known: {known}")


def name_problem(name: str) -> str | None:
    """What is wrong with a topology name (one slice or host), or None: for flag checks."""
    try:
        parse(name)
    except TargetError as error:
        return str(error).partition(": ")[2] or str(error)
    return None


def tpu_name_problem(name: str) -> str | None:
    """`name_problem` for tools that read the TPU compiler's program or estimate: a GPU or CPU
    target is a problem too."""
    problem = name_problem(name)
    if problem is None and parse(name).chip.platform != "tpu":
        problem = "a TPU slice is needed (only the TPU compiler estimates a program's time)"
    return problem


def _tpu_target(name: str, chip: Chip, count: int, num_slices: int) -> Target:
    """libtpu's layout of a cloud slice (as MaxText's accelerator map and Cloud TPU docs)."""
    if chip.megacore:
        if count % 8:
            raise TargetError(
                f"--topology={name}: {chip.generation} sizes count TensorCores, two per chip, "
                f"in multiples of 8 (v4-8 = 4 chips)"
            )
        chips = count // 2
        shape = _torus_3d(name, chips)
        wrap = (chips >= 64,) * 3
        bounds = (2, 2, 1)
    else:
        if count < 1 or count > 256 or count & (count - 1) or count == 2:
            raise TargetError(
                f"--topology={name}: {chip.generation} slices have 1, 4, 8, 16, ..., 256 chips"
            )
        chips = count
        short = 2 ** (int(math.log2(chips)) // 2)
        shape = (short, chips // short)
        wrap = (shape[0] == 16, shape[1] == 16, False)
        bounds = {1: (1, 1, 1), 8: (2, 4, 1)}.get(chips, (2, 2, 1))  # v5e-8 / v6e-8: one host
    hosts_per_slice = max(chips // math.prod(bounds), 1)
    suffix = f" x {num_slices} slices" if num_slices > 1 else ""
    return Target(
        name=name + suffix,
        chip=chip,
        num_devices=chips * num_slices,
        num_hosts=hosts_per_slice * num_slices,
        topology=f"{chip.generation}:" + "x".join(map(str, shape)),
        chips_per_host_bounds=bounds,
        wrap=wrap,
        num_slices=num_slices,
    )


def _torus_3d(name: str, chips: int) -> tuple[int, int, int]:
    """v4/v5p slice shapes: 2x2x1, 2x2x2, 2x2x4, 2x4x4, then cubes of 4x4x4 blocks, as even as
    possible (4x4x8, 4x8x8, 8x8x8, 4x4x20, ...)."""
    if chips == 4:
        return (2, 2, 1)
    if chips < 64:
        if chips & (chips - 1) or chips < 8:
            raise TargetError(f"--topology={name}: below 64 chips, slices have 4, 8, 16 or 32")
        exponents = [0, 0, 0]
        for i in range(int(math.log2(chips))):
            exponents[2 - i % 3] += 1
        return tuple(2**e for e in exponents)  # type: ignore[return-value]
    if chips % 64:
        raise TargetError(f"--topology={name}: from 64 chips on, slices grow in 4x4x4 blocks")
    blocks = chips // 64
    best = min(
        (
            (a, b, blocks // (a * b))
            for a in range(1, blocks + 1)
            for b in range(a, blocks + 1)
            if blocks % (a * b) == 0 and blocks // (a * b) >= b
        ),
        key=lambda dims: (dims[2], dims[1]),
    )
    return tuple(4 * d for d in best)  # type: ignore[return-value]


def gpu_target_config(chip: Chip) -> str:
    """A `GpuTargetConfigProto` in text format: what XLA's GPU compiler needs to know of a card
    it cannot query (written from the chip's data sheet)."""
    spec = chip.gpu
    major, minor = spec["compute_capability"]
    memory = chip.memory_bytes
    return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {spec["shared_memory_per_core"]}
  threads_per_core_limit: 2048
  core_count: {spec["core_count"]}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bytes_per_s)}
  l2_cache_size: {spec["l2_cache_size"]}
  clock_rate_ghz: {spec["clock_rate_ghz"]}
  device_memory_size: {memory}
  shared_memory_per_block_optin: {spec["shared_memory_per_block_optin"]}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{chip.name}"
"""


def describe(target: Target) -> str:
    chip = target.chip
    per_host = target.num_devices // target.num_hosts
    return (
        f"{target.name}: {target.num_devices} x {chip.name} ({per_host} per host, "
        f"{target.num_hosts} host(s)), {chip.memory_bytes / GiB:.1f} GiB each"
    )


def peak_flops(chip: Chip, dtype: str) -> float:
    """Dense peak FLOP/s of one device for the model's compute dtype."""
    return chip.peak_bf16 if dtype in ("bfloat16", "float16") else chip.peak_f32


# `jax.Device.device_kind` of real and compile-only devices → chip (first substring match).
_DEVICE_KINDS = (
    ("H100", GPUS["h100"]),  # SXM; PCIe cards peak lower (756 TFLOP/s bf16)
    ("H200", GPUS["h200"]),
    ("A100", GPUS["a100"]),
    ("TPU v4", TPUS["v4"]),
    ("TPU v5 lite", TPUS["v5e"]),
    ("TPU v5e", TPUS["v5e"]),
    ("TPU v5", TPUS["v5p"]),
    ("TPU v6 lite", TPUS["v6e"]),
    ("TPU v6e", TPUS["v6e"]),
)


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The chip of a `device_kind` string ("TPU v5 lite", "NVIDIA H100 80GB HBM3"), or None."""
    for fragment, chip in _DEVICE_KINDS:
        if fragment.lower() in device_kind.lower():
            return chip
    return None
