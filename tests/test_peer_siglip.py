"""bench/peer_siglip.py: big_vision's SigLIP step beside ours, at big_vision's smallest sizes.

big_vision is not part of the project: these tests need a checkout of
github.com/google-research/big_vision named by the environment variable BIG_VISION (its root) and
skip without one; the side-by-side compile also needs libtpu (requirements-aot.txt).
"""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest

from bench import peer_siglip
from configs import pretrain
from focusclip_jax import targets
from tests.conftest import REPO

BIG_VISION = Path(os.environ.get("BIG_VISION", "/nonexistent"))
HAVE_BIG_VISION = (BIG_VISION / "big_vision" / "models" / "vit.py").is_file()
HAVE_TPU = importlib.util.find_spec("libtpu") is not None
needs_big_vision = pytest.mark.skipif(
    not HAVE_BIG_VISION, reason="no big_vision checkout: set BIG_VISION=<its root>"
)
needs_tpu = pytest.mark.skipif(not HAVE_TPU, reason="no libtpu: make aot-venv")


@pytest.fixture(scope="module")
def big_vision() -> peer_siglip.BigVision:
    return peer_siglip.load_big_vision(BIG_VISION.resolve())


@pytest.fixture(scope="module")
def tiny(big_vision: peer_siglip.BigVision) -> peer_siglip.Shape:
    """big_vision's 'mu' towers (width 32, one block) at 32 px and 16 tokens."""
    image = peer_siglip.variant_dims(big_vision, "mu/16", "image_variant")
    text = peer_siglip.variant_dims(big_vision, "mu", "text_variant")
    return peer_siglip.Shape("mu/16", "mu", image, text, image_size=32, text_len=16, vocab=1000)


@needs_big_vision
def test_tensorflow_stands_in_for_the_import_only(big_vision) -> None:
    """Without TensorFlow installed, big_vision imports with a stand-in gfile that is gone from
    `sys.modules` afterwards and names the bench when used."""
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed: nothing stands in for it")
    assert big_vision.tensorflow_stubbed
    assert not any(name.split(".")[0] == "tensorflow" for name in sys.modules)
    with pytest.raises(AttributeError, match=r"stubbed by bench\.peer_siglip"):
        sys.modules["big_vision.utils"].gfile.exists("/")


def _dot_dtypes(jaxpr: jax.extend.core.ClosedJaxpr | jax.extend.core.Jaxpr) -> list[str]:
    """The operand dtype of every dot_general, nested jaxprs included."""
    found = []
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        if eqn.primitive.name == "dot_general":
            found.append(str(eqn.invars[0].aval.dtype))
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    found += _dot_dtypes(sub)
    return found


@needs_big_vision
def test_bfloat16_reaches_big_visions_text_encoder(big_vision, tiny) -> None:
    """The text transformer passes no `dtype_mm` to its encoder; while tracing a bf16 step the
    bench gives it one: the encoder's matmuls (Q, K, V, out, q·kᵀ, p·v, two MLP) are bf16, the
    head and tied logits float32; in float32 none is, and the module is restored after."""
    module = big_vision["models.proj.image_text.text_transformer"]
    tokens = jnp.zeros((2, tiny.text_len), jnp.int32)

    def text_dots(dtype: str) -> list[str]:
        model = peer_siglip.peer_model(big_vision, tiny, dtype)
        with peer_siglip.text_encoder_dtype(big_vision, dtype):
            params = jax.eval_shape(lambda: model.init(jax.random.key(0), None, tokens))
            return _dot_dtypes(jax.make_jaxpr(lambda p: model.apply(p, None, tokens))(params))

    bf16 = text_dots("bfloat16")
    assert bf16.count("bfloat16") == 8 * tiny.text["depth"]
    assert "float32" in bf16  # the head and the tied vocabulary logits
    assert "bfloat16" not in text_dots("float32")
    assert module.vit is big_vision["models.vit"]


def _matmul_flops(jaxpr: Any, skip_width: int) -> tuple[int, int]:
    """(2·M·N·K summed over every dot_general whose output is not `skip_width` wide, the number
    of convolutions), nested jaxprs included."""
    flops, convolutions = 0, 0
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        if eqn.primitive.name == "dot_general":
            out, lhs = eqn.outvars[0].aval.shape, eqn.invars[0].aval.shape
            (contracting, _), _ = eqn.params["dimension_numbers"]
            if out[-1] != skip_width:
                flops += 2 * math.prod(out) * math.prod(lhs[i] for i in contracting)
        convolutions += eqn.primitive.name == "conv_general_dilated"
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    more, convs = _matmul_flops(sub, skip_width)
                    flops, convolutions = flops + more, convolutions + convs
    return flops, convolutions


@needs_big_vision
def test_peer_flops_are_the_matmuls_of_its_step(big_vision, tiny) -> None:
    """`peer_flops` against the traced step (8 CPU devices): the dot_generals' FLOPs of forward
    and backward, less the tied vocabulary logits no loss reads (XLA removes them), equal the
    count less the patch embedding, which is two convolutions: forward and the weight gradient,
    none for the pixels."""
    batch = 16
    traced, _ = peer_siglip.trace_peer(big_vision, tiny, batch, "float32", jax.devices())
    flops, convolutions = _matmul_flops(traced.jaxpr, skip_width=tiny.vocab)
    patch = tiny.image["patch_size"][0]
    stem = 2 * batch * tiny.patches * 3 * patch**2 * tiny.image["width"]
    assert convolutions == 2
    assert flops == peer_siglip.peer_flops(tiny, batch) - 2 * stem


@needs_big_vision
@needs_tpu
def test_both_steps_compile_side_by_side_for_v5e_8(big_vision, tiny) -> None:
    """The tiny sizes at batch 16: both sides estimated by the TPU compiler, the ratio row is
    ours over the peer's, and the table carries the label."""
    config = pretrain.get_config("clip,causal,siglip,modern")
    rows = peer_siglip.run(
        big_vision, config, targets.parse("v5e-8"), tiny, [16], ["float32"], "none",
        log=lambda _: None,
    )  # fmt: skip
    ours, peer, ratio = rows
    assert [r["side"] for r in rows] == ["ours", "big_vision", "ours / big_vision"]
    for side in (ours, peer):
        assert side["estimated_step_s"] > 0 and side["memory_gib"] > 0
        assert side["bytes_accessed_gib"] > 0
        assert side["estimated_images_per_s"] == pytest.approx(16 / side["estimated_step_s"])
    assert ratio["ratio"]["estimated_images_per_s"] == pytest.approx(
        ours["estimated_images_per_s"] / peer["estimated_images_per_s"]
    )
    table = peer_siglip.format_table(rows)
    assert "not a measurement" in table and table.count("\n") == 4


def test_a_folder_without_big_vision_is_one_line(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "bench.peer_siglip", f"--big_vision={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --big_vision={tmp_path}: no big_vision/models/"), last
    assert "Traceback" not in done.stderr
