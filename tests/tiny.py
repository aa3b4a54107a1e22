"""The tiny config of the tests, importable without conftest's device setup (subprocesses use it).

`--config=tests/tiny.py` hands it to `focusclip_jax.main`.
"""

import ml_collections


def tiny_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/demo.py shrunk so that one step compiles in seconds on a 2-core CPU."""
    from configs import demo

    config = demo.get_config(arg)
    config.model.image_size = 32
    config.model.image.update(
        {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64, "patch_size": 8}
    )
    config.model.text.update({"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64})
    config.model.text.max_len = 40
    config.model.embed_dim = 16
    config.data.train_records = 64
    config.data.eval_records = 24
    config.train.batch_size = 16
    config.train.num_steps = 4
    config.optimizer.warmup_steps = 0
    config.checkpoint.every_steps = 2
    config.checkpoint.async_save = False
    config.evals.zero_shot.batch_size = 16
    config.evals.retrieval.datasets = ()  # the demo's retrieval runs in its own tests
    config.log_every_steps = 1
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return tiny_config(arg)
