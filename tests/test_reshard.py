"""A checkpoint written on one mesh restores onto another with identical values."""

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

    def trainer_on(mesh_shape: dict[str, int]) -> train.Trainer:
        mesh = sharding.create_mesh(mesh_shape)
        return train.Trainer(config, mesh, vocab_size=tokenizer.vocab_size)

    source = trainer_on({"data": 4, "fsdp": 2})  # 8 devices, parameters split over fsdp
    state = source.init_state()
    expected = flatten_dict(jax.device_get(state.params))
    checkpointer = Checkpointer(tmp_path, config.checkpoint)
    checkpointer.save(1, state, pipeline.train_iterator(config, tokenizer), force=True)
    checkpointer.close()

    for mesh_shape in ({"data": 4}, {"data": 1}):
        target = trainer_on(mesh_shape)
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
