"""Test setup: 8 fake CPU devices, parsed absl flags (grain workers need them), tiny configs."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from focusclip_jax import targets

# Tests compile many tiny programs and run each a few times: LLVM's optimisations cost more
# compile time than they save (FAST_COMPILE_FLAGS below, for subprocesses that start JAX). The
# GPU flags halve the compile time of steps compiled for NVIDIA targets (tests/test_aot.py): no
# autotuning (nothing to time without a GPU) and cuBLAS instead of Triton for matmuls.
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_gpu_autotune_level=0 "
    "--xla_gpu_enable_triton_gemm=false"
)
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" {FAST_COMPILE_FLAGS} --xla_force_host_platform_device_count=8"
).strip()
# CPU devices; libtpu (if the compile toolchains are installed) stays offline and shareable.
targets.configure_compile_only_environment()

import jax  # noqa: E402
import ml_collections  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

from tests.tiny import tiny_config  # noqa: E402


def scratch_folder(prefix: str) -> str:
    """A temporary folder for the rest of this test process, removed when it exits (pytest's
    tmp_path is per test; these outlive one)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


flags.FLAGS.mark_as_parsed()

# Identical computations (the same tiny step built by several trainers) compile once per session.
jax.config.update("jax_compilation_cache_dir", scratch_folder("focusclip_jax_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

REPO = Path(__file__).resolve().parents[1]
MPII_SAMPLE = REPO.parent / "shared" / "data" / "mpii_sample"


def imports_tensorflow(code: str, tmp_path: Path) -> bool:
    """Whether `code`, run by a fresh interpreter in the repository with a stand-in `tensorflow`
    first on the path, imports TensorFlow (as it would where one is installed). The stand-in
    raises ImportError as a missing one does; `code` must otherwise succeed."""
    import subprocess
    import sys

    stand_in, marker = tmp_path / "stand_in", tmp_path / "tensorflow_imported"
    (stand_in / "tensorflow").mkdir(parents=True)
    (stand_in / "tensorflow" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('TensorFlow stand-in')\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{stand_in}{os.pathsep}{REPO}")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    if marker.exists():
        return True
    assert done.returncode == 0, done.stderr[-2000:]
    return False


@pytest.fixture
def config() -> ml_collections.ConfigDict:
    return tiny_config()
