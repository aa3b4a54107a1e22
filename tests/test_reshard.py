"""A checkpoint written on one mesh restores onto another, and its optimiser state into another
layout (`sharding.optimizer_state`), with identical values."""

from pathlib import Path

import jax
import numpy as np
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec

from focusclip_jax import sharding, train
from focusclip_jax.checkpoint import Checkpointer
from input_pipeline import pipeline
from tests.conftest import tiny_config


def test_checkpoint_reshards_from_fsdp_to_data_parallel_to_one_device(tmp_path: Path) -> None:
    config = tiny_config()
    tokenizer = pipeline.create_tokenizer(config)

    def trainer_on(mesh_shape: dict[str, int], optimizer_state: str = "params") -> train.Trainer:
        config.sharding.optimizer_state = optimizer_state
        mesh = sharding.create_mesh(mesh_shape)
        return train.Trainer(config, mesh, vocab_size=tokenizer.vocab_size)

    source = trainer_on({"data": 4, "fsdp": 2})  # 8 devices, parameters split over fsdp
    state = source.init_state()
    # Momenta with values to carry (they start at zero).
    floats = lambda m: m + 0.5 if jax.numpy.issubdtype(m.dtype, jax.numpy.floating) else m
    state = state.replace(opt_state=jax.tree.map(floats, state.opt_state))
    expected = flatten_dict(jax.device_get(state.params))
    expected_opt = jax.tree.leaves(jax.device_get(state.opt_state))
    checkpointer = Checkpointer(tmp_path, config.checkpoint)
    checkpointer.save(1, state, pipeline.train_iterator(config, tokenizer), force=True)
    checkpointer.close()

    for mesh_shape, optimizer_state in (({"data": 4}, "data"), ({"data": 1}, "params")):
        target = trainer_on(mesh_shape, optimizer_state)
        reader = Checkpointer(tmp_path, config.checkpoint)
        restored = reader.restore(target.abstract_state, pipeline.train_iterator(config, tokenizer))
        reader.close()
        params = flatten_dict(restored.params)
        assert params.keys() == expected.keys()
        for path, value in params.items():
            assert value.sharding == flatten_dict(target.setup.param_shardings)[path], path
            np.testing.assert_array_equal(np.asarray(value), expected[path], err_msg=str(path))
        kernel = next(v for k, v in params.items() if "patch_embed" in k and k[-1] == "kernel")
        assert kernel.sharding.spec == PartitionSpec(None, None)  # no fsdp axis on these meshes
        assert len(kernel.sharding.device_set) == target.setup.mesh.devices.size
        opt_state = jax.tree.leaves(restored.opt_state)
        for value, sharded_as, saved in zip(
            opt_state, jax.tree.leaves(target.state_shardings.opt_state), expected_opt, strict=True
        ):
            assert value.sharding == sharded_as
            np.testing.assert_array_equal(np.asarray(value), saved)
        if optimizer_state == "data":  # the momenta split over the 4 data devices
            assert any("data" in value.sharding.spec for value in opt_state)
