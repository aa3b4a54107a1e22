"""Compile time and step time of the training step for a config.

    python -m bench.train_step --config=configs/demo.py --devices=8 --steps=20

`--devices=N` fakes N CPU devices (XLA_FLAGS, set before JAX starts); on an accelerator leave it
at 0 to use the real devices. The batch is one real batch from the config's pipeline, reused.
"""

import os
import sys


def _fake_devices_from_argv() -> None:
    """XLA reads its flags once, at import: set them before anything imports jax."""
    for arg in sys.argv[1:]:
        if arg.startswith("--devices=") and int(arg.split("=", 1)[1]) > 0:
            count = int(arg.split("=", 1)[1])
            os.environ["XLA_FLAGS"] = (
                os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
            )
            os.environ.setdefault("JAX_PLATFORMS", "cpu")


_fake_devices_from_argv()

import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from focusclip_jax import sharding, train  # noqa: E402
from input_pipeline import pipeline  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file.")
flags.DEFINE_integer("devices", 0, "Fake CPU devices (0: the real devices).")
flags.DEFINE_integer("steps", 20, "Timed steps after the compiling one.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    config = FLAGS.config
    mesh = sharding.create_mesh(config.mesh)
    tokenizer = pipeline.create_tokenizer(config)
    batch = next(pipeline.train_iterator(config, tokenizer))
    trainer = train.Trainer(config, mesh, vocab_size=tokenizer.vocab_size)
    state = trainer.init_state()
    global_batch = pipeline.to_global_arrays(batch, sharding.batch_sharding(mesh))

    start = time.perf_counter()
    state, metrics = trainer.step(state, global_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(FLAGS.steps):
        start = time.perf_counter()
        state, metrics = trainer.step(state, global_batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    batch_size = config.train.batch_size
    per_device = batch_size / step_s / mesh.devices.size
    print(
        f"devices={mesh.devices.size} mesh={dict(mesh.shape)} batch={batch_size} "
        f"compile+first_step={compile_s:.1f}s median_step={1000 * step_s:.1f}ms "
        f"(min {1000 * min(times):.1f}, max {1000 * max(times):.1f}) "
        f"images/s={batch_size / step_s:.0f} images/s/device={per_device:.0f}"
    )


if __name__ == "__main__":
    app.run(main)
