"""FSDP keeps activations batch-sharded; the optimiser state splits over data (ZeRO-1) and trains
alike; scanned layers keep no more than unrolled ones.

On 8 fake CPU devices, no accelerator toolchain needed. The compiled programs are read with the
AOT tool's helpers (`focusclip_jax.aot`: collectives from the HLO, XLA's memory analysis).
"""

import math

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from jax.sharding import NamedSharding, PartitionSpec

from bench.random_batch import random_batch
from configs import bench
from focusclip_jax import aot, sharding, train
from focusclip_jax.models import layers
from input_pipeline import pipeline

# mode → (mesh, config.sharding.optimizer_state)
MODES = {
    "data-parallel": ({"data": 8, "fsdp": 1}, "params"),
    "fsdp": ({"data": 1, "fsdp": 8}, "params"),
    "optimizer-over-data": ({"data": 8, "fsdp": 1}, "data"),
}


def batch_activation_collectives(hlo: str, batch: int, embed_dim: int) -> list[aot.Collective]:
    """Floating-point collectives that carry more than the batch's embeddings: arrays whose
    leading dimension is the global batch (B, or 2B for the shared tower's images and NT-Xent's
    samples) and which hold more than 2·B·embed_dim numbers. The loss gathers the embeddings on
    purpose; anything larger is an activation that should have stayed split over the batch."""
    return [
        c
        for c in aot.collectives(hlo)
        if c.dtype in ("f32", "bf16", "f16")
        and c.shape
        and c.shape[0] in (batch, 2 * batch)
        and math.prod(c.shape) > 2 * batch * embed_dim
    ]


@pytest.fixture(scope="module")
def two_steps_each_mode():
    """bench.py's `tiny` step (width 256: the weights are most of the memory), two steps from the
    same initialisation on each mesh; the compiled programs kept. A global batch of 24, unlike
    any dimension of the weights (16 positions, 64-d embeddings), so that the collectives' test
    cannot mistake a weight for a batch."""
    config = bench.get_config("tiny")
    config.train.batch_size = 24
    host_batch = random_batch(config)
    runs = {}
    for mode, (shape, optimizer_state) in MODES.items():
        config.sharding.optimizer_state = optimizer_state
        mesh = sharding.create_mesh(shape)
        trainer = train.Trainer(config, mesh, vocab_size=config.model.text.vocab_size)
        state = trainer.init_state()
        initial = jax.device_get(state.params)
        batch = pipeline.to_global_arrays(host_batch, sharding.batch_sharding(mesh))
        compiled = trainer.step.lower(state, batch).compile()
        losses = []
        for _ in range(2):
            state, metrics = compiled(state, batch)
            losses.append(float(metrics["loss"]))
        runs[mode] = (compiled, initial, jax.device_get(state.params), losses, state)
    return config, runs


@pytest.mark.parametrize("mode", ["fsdp", "optimizer-over-data"])
def test_each_layout_trains_as_data_parallel(two_steps_each_mode, mode: str) -> None:
    """Same losses (rtol 1e-5) and the same updated parameters (atol 1e-5) as data parallel."""
    _, runs = two_steps_each_mode
    (_, init_dp, params_dp, losses_dp, _), (_, init_other, params_other, losses_other, _) = (
        runs["data-parallel"],
        runs[mode],
    )
    np.testing.assert_allclose(losses_other, losses_dp, rtol=1e-5)
    before, after_dp, after_other = (flatten_dict(p) for p in (init_dp, params_dp, params_other))
    for path, value in flatten_dict(init_other).items():
        np.testing.assert_array_equal(value, before[path], err_msg=str(path))
        np.testing.assert_allclose(after_other[path], after_dp[path], atol=1e-5, err_msg=str(path))
    assert sum(not np.allclose(after_dp[p], before[p]) for p in before) > len(before) // 2


def test_optimizer_state_over_data_is_split_and_parameters_stay_whole(two_steps_each_mode) -> None:
    """ZeRO-1: each device holds 1/8 of every momentum that splits (here every one but the
    scalars'), the new parameters come back whole on each device, and the step's arguments
    (parameters, momenta, batch) take little more than half of data parallel's memory."""
    _, runs = two_steps_each_mode
    state = runs["optimizer-over-data"][-1]
    momenta = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim]
    assert momenta
    for leaf in momenta:
        assert leaf.addressable_shards[0].data.size * 8 == leaf.size, leaf.sharding
    for leaf in jax.tree.leaves(state.params):
        assert leaf.addressable_shards[0].data.size == leaf.size, leaf.sharding
    dp, split = (aot.memory(runs[mode][0]) for mode in ("data-parallel", "optimizer-over-data"))
    assert split["argument"] < 0.6 * dp["argument"]


@pytest.mark.parametrize("mode", list(MODES))
def test_no_collective_moves_global_batch_activations(two_steps_each_mode, mode) -> None:
    """Before the activations were constrained, FSDP all-reduced f32[2B, tokens, width] tensors
    after every layer: each device held the whole global batch."""
    config, runs = two_steps_each_mode
    hlo = runs[mode][0].as_text()
    assert aot.collectives(hlo), "the parser found no collective at all"
    assert not batch_activation_collectives(hlo, config.train.batch_size, config.model.embed_dim)


def test_fsdp_needs_less_memory_per_device_than_data_parallel(two_steps_each_mode) -> None:
    """XLA's memory analysis per device: FSDP keeps 1/8 of the weights and optimiser state."""
    _, runs = two_steps_each_mode
    dp, fsdp = (aot.memory(runs[mode][0]) for mode in ("data-parallel", "fsdp"))
    assert fsdp["argument"] < dp["argument"] / 4
    assert fsdp["total"] < dp["total"]


def test_activation_constraint_is_a_no_op_outside_a_mesh_and_splits_inside() -> None:
    x = jax.numpy.ones((16, 4))
    assert sharding.constrain_batch(x) is x  # eager, no mesh in context
    mesh = sharding.create_mesh({"data": 4, "fsdp": 2})
    everywhere = sharding.replicated(mesh)
    step = jax.jit(
        sharding.traced_on(mesh, lambda a: sharding.constrain_batch(a * 2)),
        in_shardings=everywhere,
    )
    assert step(x).sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert step(jax.numpy.ones((6, 4))).sharding.is_fully_replicated  # 6 rows: not 8 shards


def test_optimizer_state_splits_over_data_on_its_largest_whole_dimension() -> None:
    mesh = sharding.create_mesh({"data": 4, "fsdp": 2})
    spec = lambda *dims: NamedSharding(mesh, PartitionSpec(*dims))
    split = lambda dims, shape: sharding.split_over_data(spec(*dims), shape).spec
    assert split((), (12, 768, 3072)) == PartitionSpec(None, None, "data")
    assert split(("fsdp",), (768, 3072)) == PartitionSpec("fsdp", "data")
    assert split(("fsdp", None), (768, 6)) == PartitionSpec("fsdp", None)  # 6: not 4 shards
    assert split((), (64, 64)) == PartitionSpec("data", None)  # the first of equals
    assert split((), ()) == PartitionSpec()  # a scalar stays whole
    one = sharding.create_mesh({"data": 1, "fsdp": 8})
    whole = NamedSharding(one, PartitionSpec("fsdp", None))
    assert sharding.split_over_data(whole, (768, 3072)) is whole


def test_optimizer_state_layout_auto_splits_on_accelerators_only() -> None:
    layout = sharding.optimizer_state_layout
    assert [layout("auto", p) for p in ("cpu", "tpu", "gpu")] == ["params", "data", "data"]
    assert layout("params", "tpu") == "params" and layout("data", "cpu") == "data"
    with pytest.raises(ValueError, match=r"^config sharding.optimizer_state='zero1': expected"):
        layout("zero1", "tpu")


def test_scanned_blocks_keep_no_more_temporaries_than_unrolled() -> None:
    """The remat for scanned blocks (`layers.SCAN_REMAT`: keep the weight matmuls' outputs,
    recompute the rest) and the default (configs/pretrain.py: unrolled, all kept but the MLP's
    activation) against unrolled blocks keeping everything, one CPU device: scanned blocks must
    store each residual they keep, where unrolled ones let XLA recompute elementwise work. At
    the paper's size on TPU v5e, scan with remat=none took 3x the temporaries of unrolled
    (PERFORMANCE.md)."""
    from configs import pretrain

    default = pretrain.get_config().model
    mesh = sharding.create_mesh({"data": 1})
    temporaries = {}
    for scan, remat in (
        (False, "none"),
        (True, layers.SCAN_REMAT),
        (default.scan_layers, default.remat),
    ):
        config = bench.get_config("tiny")
        width = {"width": 128, "depth": 4, "num_heads": 2, "mlp_dim": 512}
        config.model.image.update({**width, "patch_size": 8})
        config.model.text.update(width)
        config.model.text.max_len = 32
        config.model.scan_layers, config.model.remat = scan, remat
        _, compiled, _ = aot.compile_step(config, mesh, config.model.text.vocab_size)
        temporaries[scan, remat] = aot.memory(compiled)["temporary"]
    unrolled = temporaries[False, "none"]
    assert temporaries[True, layers.SCAN_REMAT] <= unrolled
    assert temporaries[default.scan_layers, default.remat] <= unrolled, temporaries
