"""Mesh from config, logical-axis rules, and the shardings of state and batch.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, ...); `config.sharding.rules` maps
them to mesh axes. The batch is split over every mesh axis that holds data (`data` and `fsdp`).
"""

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from input_pipeline.errors import check_choice

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the axes a batch is split over
OPTIMIZER_STATE_LAYOUTS = ("auto", "params", "data")  # `config.sharding.optimizer_state`

LogicalRules = Sequence[tuple[str, str | None]]


def create_mesh(mesh_shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with the configured axes, in the order of `MESH_AXES` (data outermost).

    One axis may be -1 to take the remaining devices; with none, the mesh may use fewer devices
    than there are (the first ones: `mesh.data=1` runs on one device). Axis types are `Auto`,
    named explicitly: `jax.make_mesh` defaults to `Explicit`, under which ordinary model code such
    as a CLS concat raises `ShardingTypeError`.
    """
    devices = list(jax.devices() if devices is None else devices)
    unknown = set(mesh_shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config mesh axes {sorted(unknown)} unknown; expected {MESH_AXES}")
    names = tuple(a for a in MESH_AXES if a in mesh_shape)
    sizes = [mesh_shape[a] for a in names]
    for name, size in zip(names, sizes, strict=True):
        if not isinstance(size, int) or isinstance(size, bool) or not (size >= 1 or size == -1):
            raise ValueError(
                f"config mesh.{name}={size!r}: must be a positive integer, or -1 for the "
                "devices the other axes leave"
            )
    if sizes.count(-1) > 1:
        raise ValueError(
            f"config mesh.{names[-1]}=-1: at most one axis may be -1 (mesh {dict(mesh_shape)})"
        )
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"config mesh {dict(mesh_shape)} does not divide {len(devices)} devices"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) > len(devices):
        raise ValueError(
            f"config mesh {dict(mesh_shape)} needs {math.prod(sizes)} devices, "
            f"{len(devices)} available"
        )
    axis_types = (jax.sharding.AxisType.Auto,) * len(names)
    used = devices[: math.prod(sizes)]
    slices = len({getattr(d, "slice_index", 0) for d in used})
    if slices > 1:
        # Several TPU slices (multislice): the outermost axis spans them over the data-centre
        # network, the rest stays within a slice's ICI.
        if sizes[0] % slices:
            raise ValueError(
                f"config mesh.{names[0]}={sizes[0]} must be a multiple of the {slices} slices: "
                "it is the axis that spans them"
            )
        within = (sizes[0] // slices, *sizes[1:])
        across = (slices, *(1 for _ in sizes[1:]))
        grid = mesh_utils.create_hybrid_device_mesh(within, across, devices=used)
        return Mesh(grid, names, axis_types=axis_types)
    return jax.make_mesh(tuple(sizes), names, axis_types=axis_types, devices=used)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-holding axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def constrain_batch(x: jax.Array) -> jax.Array:
    """Keeps an activation's leading (batch) dimension split over the data axes of the mesh that
    is being compiled for (`traced_on`); a no-op outside one, or when the batch does not divide.

    Without it, FSDP's weights sharded over `embed` lead XLA to split the contraction instead:
    every device then holds the whole global batch and all-reduces it, layer by layer.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    shards = math.prod(mesh.shape[a] for a in axes)
    if shards == 1 or x.shape[0] % shards:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(axes))


def traced_on(mesh: Mesh, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` traced with `mesh` as the context mesh: activation constraints and device-dependent
    choices (`layers.attention_implementation`) see the devices it is compiled for."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    # The compiled program's name (profiles, XLA's messages): `fn`'s, also through a partial.
    wrapped.__name__ = getattr(fn, "__name__", getattr(getattr(fn, "func", None), "__name__", ""))
    return wrapped


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def logical_to_sharding(
    logical_spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, rules: LogicalRules
) -> NamedSharding:
    """Map one parameter's logical spec to a NamedSharding; dims that do not divide stay whole."""
    mesh_spec = linen.logical_to_mesh_axes(tuple(logical_spec), rules) or PartitionSpec()
    dims: list[Any] = []
    padded = tuple(mesh_spec) + (None,) * (len(shape) - len(mesh_spec))
    for size, axes in zip(shape, padded, strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        names = tuple(n for n in names if n in mesh.axis_names)
        if names and size % math.prod(mesh.shape[n] for n in names):
            logging.info("dim of size %d does not divide mesh axes %s: replicated", size, names)
            names = ()
        dims.append(names[0] if len(names) == 1 else (names or None))
    return NamedSharding(mesh, PartitionSpec(*dims))


def optimizer_state_layout(requested: Any, platform: str) -> str:
    """`config.sharding.optimizer_state`: where the optimiser's moments and its update live.

    'params': sharded as their parameter (whole on every device under data parallelism, so each
    device runs the whole update); 'data': also split over the `data` axis (ZeRO stage 1): each
    device updates its slice only of the summed gradients, and the new parameters are
    all-gathered. The update is the same elementwise maths; only the order of the gradient sum
    may differ (where a compiler makes the sum a reduce-scatter). 'auto': 'data' on TPUs and
    GPUs, where the replicated update is a quarter of the baseline step's HBM traffic
    (PERFORMANCE.md), 'params' on CPUs."""
    check_choice("config sharding.optimizer_state", requested, OPTIMIZER_STATE_LAYOUTS)
    if requested != "auto":
        return requested
    return "data" if platform in ("tpu", "gpu") else "params"


def split_over_data(param: NamedSharding, shape: Sequence[int]) -> NamedSharding:
    """`param` with the mesh's `data` axis on the largest dimension it leaves whole (unsplit, or
    split over axes of one device) and that the axis divides (the first of equals); unchanged
    where none does (scalars, odd sizes) or the axis has one device."""
    mesh_shape = dict(param.mesh.shape)
    size = mesh_shape.get("data", 1)
    spec = tuple(param.spec) + (None,) * (len(shape) - len(param.spec))
    devices = lambda axes: math.prod(
        mesh_shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ())
    )
    whole = [i for i, axes in enumerate(spec) if devices(axes) == 1 and shape[i] % size == 0]
    if size == 1 or not whole:
        return param
    dim = max(whole, key=lambda i: shape[i])
    return NamedSharding(param.mesh, PartitionSpec(*spec[:dim], "data", *spec[dim + 1 :]))


def check_rules(rules: Any) -> LogicalRules:
    """`config.sharding.rules` as pairs (logical axis name, one of `MESH_AXES` or None; an axis
    the mesh lacks leaves the dimension whole); ValueError naming the key for anything else."""
    checked = []
    for rule in rules:
        if (
            not isinstance(rule, tuple | list)
            or len(rule) != 2
            or not isinstance(rule[0], str)
            or rule[1] not in (*MESH_AXES, None)
        ):
            raise ValueError(
                f"config sharding.rules: {rule!r} is not a pair (logical axis, one of the mesh "
                f"axes {MESH_AXES} or None)"
            )
        checked.append(tuple(rule))
    return checked


def tree_shardings(logical_specs: Any, abstract: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Shardings for a tree of arrays given a same-structured tree of logical PartitionSpecs."""
    return jax.tree.map(
        lambda spec, leaf: logical_to_sharding(spec, np.shape(leaf), mesh, rules),
        logical_specs,
        abstract,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
