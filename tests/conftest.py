"""Test setup: 8 fake CPU devices, parsed absl flags (grain workers need them), tiny configs."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile
from pathlib import Path

import jax
import ml_collections
import pytest
from absl import flags

flags.FLAGS.mark_as_parsed()

# Identical computations (the same tiny step built by several trainers) compile once per session.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="focusclip_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

REPO = Path(__file__).resolve().parents[1]
MPII_SAMPLE = REPO.parent / "shared" / "data" / "mpii_sample"


def tiny_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/demo.py shrunk so that one step compiles in seconds on a 2-core CPU."""
    from configs import demo

    config = demo.get_config(arg)
    config.model.image_size = 32
    config.model.vit_overrides = ml_collections.ConfigDict(
        {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64, "patch_size": 8}
    )
    config.model.text_overrides = ml_collections.ConfigDict(
        {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
    )
    config.model.max_len = 40
    config.model.embed_dim = 16
    config.data.train_records = 64
    config.data.eval_records = 24
    config.train.batch_size = 16
    config.train.num_steps = 4
    config.optimizer.warmup_steps = 0
    config.checkpoint.every_steps = 2
    config.checkpoint.async_save = False
    config.eval.batch_size = 16
    config.log_every_steps = 1
    return config


@pytest.fixture
def config() -> ml_collections.ConfigDict:
    return tiny_config()
