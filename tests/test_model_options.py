"""The towers' speed options (`model.dtype`, `attention`, `scan_layers`, `remat`) keep the maths.

References: a naive numpy attention, and the same model with every option off (float32, blocks in
a Python loop, no rematerialisation) holding the same weights.
"""

import contextlib
import io
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from configs import pretrain
from focusclip_jax import losses, models, sharding
from focusclip_jax.models import layers, towers
from focusclip_jax.weights import common

PAIRS = (("focused", "image"), ("focused", "text"), ("image", "text"))


# ----------------------------------------------------------------------------- attention


def np_attention(x: np.ndarray, p: dict, allowed: np.ndarray) -> np.ndarray:
    """softmax(Q Kᵀ / sqrt(d) + mask) V per head, then the output projection; float64.

    x: [B, L, D]; allowed: bool [B, L, L], query t may attend key s.
    """
    proj = lambda name: (
        np.einsum("bld,dhk->bhlk", x, p[name]["kernel"]) + p[name]["bias"][None, :, None]
    )
    q, k, v = proj("query"), proj("key"), proj("value")
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    logits = logits + np.where(allowed[:, None], 0.0, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = weights @ v  # [B, H, L, dh]
    return np.einsum("bhlk,hkd->bld", heads, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("implementation", ["xla", "auto", None])
@pytest.mark.parametrize("masking", ["padding", "causal", "padding+causal"])
def test_attention_matches_naive_numpy(implementation: str | None, masking: str) -> None:
    attn = nnx.eval_shape(
        lambda: layers.MultiHeadAttention(24, 3, attention=implementation, rngs=nnx.Rngs(0))
    )
    # Random biases too (they start at zero), so a bias on the wrong axis shows.
    params = random_params(attn, std=0.3)
    attn = nnx.merge(nnx.graphdef(attn), params)
    p = jax.tree.map(lambda w: np.asarray(w, np.float64), params)
    x = np.random.default_rng(0).normal(size=(3, 7, 24)).astype(np.float32)
    lengths = np.array([7, 4, 1])
    key_mask = np.arange(7)[None, :] < lengths[:, None]
    padded = "padding" in masking
    causal = "causal" in masking
    allowed = np.ones((3, 7, 7), bool)
    if padded:
        allowed &= key_mask[:, None, :]
    if causal:
        allowed &= np.tril(np.ones((7, 7), bool))[None]
    got = attn(jnp.asarray(x), jnp.asarray(key_mask) if padded else None, is_causal=causal)
    np.testing.assert_allclose(np.asarray(got), np_attention(x, p, allowed), atol=2e-5)


def mesh_of(platform: str, device_kind: str) -> jax.sharding.AbstractMesh:
    """A data-parallel mesh of 8 devices of a kind, as a step compiled for them traces under."""
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=1, platform=platform)
    return jax.sharding.AbstractMesh(
        (8,), ("data",), (jax.sharding.AxisType.Auto,), abstract_device=device
    )


TPU_MESH = mesh_of("tpu", "TPU v5 lite")
H100_MESH = mesh_of("gpu", "NVIDIA H100 80GB HBM3")
CPU_MESH = mesh_of("cpu", "cpu")


def test_attention_implementation_choice() -> None:
    """'auto' from the devices of the mesh traced for (on TPUs the whole-sequence kernels up to
    512 tokens in any dtype; beyond, and on other devices, in half precision, splash on TPUs and
    cuDNN on NVIDIA GPUs; XLA elsewhere and in float32); outside a mesh from JAX's default
    device (this CPU), and never a Pallas kernel there: a Mosaic kernel needs the mesh to split
    the batch."""
    choice = layers.attention_implementation
    on_cuda = layers.compiling_for_nvidia_gpu()
    assert choice("auto", jnp.float32, 64) == "xla"
    assert choice("auto", jnp.bfloat16, 12) == "xla"  # not a multiple of 8
    assert choice("auto", jnp.bfloat16, 256) == "xla"
    want = "cudnn" if on_cuda else "xla"
    assert choice("auto", "bfloat16", 64) == want
    assert choice("cudnn", jnp.float32, 64) == "cudnn"
    assert choice("splash", jnp.float32, 64) == "splash"  # interpreted on this CPU
    assert choice("vmem", jnp.float32, 64, 512) == "vmem"
    assert choice(None, jnp.float32, 64) is None
    expected = {
        TPU_MESH: {jnp.float32: "vmem", jnp.bfloat16: "vmem"},
        H100_MESH: {jnp.float32: "xla", jnp.bfloat16: "cudnn"},
        CPU_MESH: {jnp.float32: "xla", jnp.bfloat16: "xla"},
    }
    for mesh, by_dtype in expected.items():
        with jax.sharding.use_abstract_mesh(mesh):
            assert {dtype: choice("auto", dtype, 64, 197) for dtype in by_dtype} == by_dtype
    with jax.sharding.use_abstract_mesh(TPU_MESH):  # whole sequences up to 512 tokens in VMEM
        lengths = {length: choice("auto", jnp.bfloat16, 64, length) for length in (64, 512, 513)}
        assert lengths == {64: "vmem", 512: "vmem", 513: "splash"}
        assert choice("auto", jnp.float32, 64, 513) == "xla"  # splash: slower in float32
        assert choice("splash", jnp.bfloat16, 64, 64) == "splash"  # asked for: as asked
        with pytest.raises(ValueError, match=r"model\.attention='vmem': 513 tokens: .* up to 512"):
            choice("vmem", jnp.bfloat16, 64, 513)
    for kernel in ("splash", "vmem"):
        with (
            jax.sharding.use_abstract_mesh(H100_MESH),
            pytest.raises(ValueError, match=rf"model\.attention='{kernel}' runs on TPUs"),
        ):
            choice(kernel, jnp.bfloat16, 64)
    with pytest.raises(ValueError, match=r"model\.attention='flash'"):
        choice("flash", jnp.float32, 64)
    with pytest.raises(ValueError, match=r"remat='some': expected one of"):
        layers.BlockStack(block=layers.PreNormBlock, depth=1, num_heads=1, mlp_dim=1, remat="some")
    with pytest.raises(ValueError, match=r"dropout=1\.0: must be a finite number >= 0 and < 1"):
        layers.BlockStack(block=layers.PreNormBlock, depth=1, num_heads=1, mlp_dim=1, dropout=1.0)


def test_a_kernel_that_cannot_run_fails_as_the_model_is_built() -> None:
    """Towers check `attention` against their sequence length and the devices they are built
    for (`ModelSetup.create` builds them `layers.built_for` the mesh's): the TPU kernels on GPUs,
    and the whole-sequence kernels beyond 512 tokens (the tiny ViT, 8 px patches, at 192 px:
    577), fail before tracing."""

    def tiny_model_with(attention: str, image_size: int = 16) -> None:
        nnx.eval_shape(
            lambda: models.FocusCLIP(
                image_size=image_size,
                image={"name": "vit", "size": "tiny"},
                text={"name": "bert", "size": "tiny", "vocab_size": 50, "max_len": 12},
                embed_dim=8,
                attention=attention,
                rngs=nnx.Rngs(0),
            )
        )

    with layers.built_for(TPU_MESH.abstract_device):
        tiny_model_with("vmem")
        with pytest.raises(ValueError, match=r"'vmem': 577 tokens: .* up to 512; use auto or"):
            tiny_model_with("vmem", image_size=192)
        tiny_model_with("auto", image_size=192)  # splash beyond 512 tokens
    for kernel in ("splash", "vmem"):
        with (
            layers.built_for(H100_MESH.abstract_device),
            pytest.raises(ValueError, match=rf"model\.attention='{kernel}' runs on TPUs"),
        ):
            tiny_model_with(kernel)
    tiny_model_with("vmem")  # outside: this CPU, where Pallas interprets the kernels


def test_compute_dtype_auto_is_bfloat16_on_accelerators_and_float32_on_cpus() -> None:
    """`model.dtype='auto'` from the mesh's platform (`setup` passes it), else from the devices
    traced for; the paper's float32 and explicit dtypes stay as given."""
    compute = layers.compute_dtype
    assert compute("auto", "tpu") == compute("auto", "gpu") == jnp.bfloat16
    assert compute("auto", "cpu") == compute("auto") == jnp.float32  # this CPU
    with jax.sharding.use_abstract_mesh(TPU_MESH):
        assert compute("auto") == jnp.bfloat16
        assert compute("float32") == jnp.float32
    assert compute(jnp.bfloat16, "cpu") == compute("bfloat16", "cpu") == jnp.bfloat16
    with pytest.raises(ValueError, match=r"^dtype='bf16': expected one of \['auto', 'bfloat16'"):
        compute("bf16")
    config = ml_collections.ConfigDict(pretrain.get_config().model.to_dict())  # unlocked
    assert config.dtype == "auto"
    config.image.dtype = "auto"  # a tower's own dtype too
    models.resolve_compute_dtypes(config, "tpu")
    assert (config.dtype, config.image.dtype) == ("bfloat16", "bfloat16")
    config.text.dtype = "half"
    with pytest.raises(ValueError, match=r"^config model\.text\.dtype='half': expected one of"):
        models.resolve_compute_dtypes(config, "tpu")
    assert pretrain.get_config("original").model.dtype == "float32"  # the paper's precision


@pytest.mark.skipif(
    not layers.compiling_for_nvidia_gpu(), reason="cuDNN attention needs a CUDA GPU"
)
@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_attention_matches_xla_on_gpu(causal: bool) -> None:
    """Same weights, bfloat16: cuDNN flash attention (padding as key lengths) vs XLA."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 128, 256)), jnp.bfloat16)
    mask = jnp.asarray(np.arange(128)[None, :] < np.array([128, 100, 37, 1])[:, None])
    outs = []
    for implementation in ("xla", "cudnn"):
        attn = layers.MultiHeadAttention(
            256, 4, attention=implementation, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)
        )
        fn = jax.jit(lambda a, x, m: a(x, m, is_causal=causal))
        outs.append(np.asarray(fn(attn, x, mask), np.float32))
    np.testing.assert_allclose(outs[1], outs[0], atol=3e-2)


# ----------------------------------------------------------------------------- splash attention


def attention_pair(width: int, num_heads: int, **options: Any) -> tuple[Callable, dict]:
    """(apply(implementation, params, x, mask), params): one attention layer's parameters, drawn
    at a scale where the softmax is far from uniform, applied with either kernel."""
    shape = nnx.eval_shape(lambda: layers.MultiHeadAttention(width, num_heads, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.graphdef(shape), random_params(shape, std=0.3)

    def apply(implementation: str, params: dict, x: jax.Array, mask: jax.Array | None) -> Any:
        attn = nnx.merge(graphdef, params)
        attn.attention = implementation
        return attn(x, mask, **options)

    return apply, params


@pytest.mark.parametrize(
    ("length", "masking"),
    [
        (13, "none"),  # a ViT's odd length: padded to 128 with masked keys
        (128, "none"),  # one whole block, nothing masked: no segment ids
        (13, "padding"),  # BERT
        (13, "causal"),
        (300, "padding+causal"),  # CLIP's tower; 384 tokens: three blocks of 128
    ],
)
def test_splash_attention_matches_xla_forward_and_backward(length: int, masking: str) -> None:
    """Pallas splash attention (the TPU kernel, run by Pallas's interpreter here) against XLA's
    attention: outputs, and gradients of a random projection of them (so no output direction is
    favoured) for the input and every parameter, float32. Both compute in float32; the kernel's
    online softmax sums in another order and scales q before the product, so they agree to
    rounding (measured: 2e-7 to 6e-7 of the largest value), not bit for bit: 1e-5 of the largest
    value would catch a masked key that leaks in (its weight is ~1/length, >1e-3) or a missing
    scale."""
    apply, params = attention_pair(16, 2, is_causal="causal" in masking)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(3, length, 16)), jnp.float32)
    lengths = np.array([length, length // 2, 1])
    mask = jnp.asarray(np.arange(length)[None, :] < lengths[:, None])
    mask = mask if "padding" in masking else None
    direction = jnp.asarray(rng.normal(size=(3, length, 16)), jnp.float32)

    def outputs(implementation: str) -> tuple:
        def objective(params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
            y = apply(implementation, params, x, mask)
            return jnp.sum(y * direction), y

        grad = jax.grad(objective, argnums=(0, 1), has_aux=True)
        return jax.device_get(compile_fast(grad, params, x)(params, x))

    (want_grads, want_x), want = outputs("xla")
    (grads, grad_x), got = outputs("splash")
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(grad_x, want_x, atol=1e-5 * np.max(np.abs(want_x)), rtol=0)
    assert_trees_close(grads, want_grads, rtol=1e-5)


def test_splash_and_vmem_attention_with_dropout_take_the_vmem_kernels() -> None:
    """With a dropout key (BERT training) the splash and vmem choices run `vmem_attention`'s
    kernels (their equivalence: tests/test_vmem_attention.py), on lengths they hold; longer
    ones, and the XLA choice, write the attention out; without a key splash attention's kernel
    runs where splash is chosen, the vmem kernels where vmem is."""
    attn = layers.MultiHeadAttention(16, 2, attention="splash", dropout_rate=0.1, rngs=nnx.Rngs(0))

    def kernels(rng: jax.Array | None, length: int = 5, implementation: str = "splash") -> list:
        attn.attention = implementation
        x = jnp.zeros((2, length, 16))
        jaxpr = jax.make_jaxpr(lambda x: attn(x, None, rng=rng))(x).jaxpr
        return [e.params["name"] for e in all_eqns(jaxpr) if e.primitive.name == "pallas_call"]

    assert kernels(None) == ["splash_mha_fwd_segmented_no_residuals"]  # 5 tokens padded
    assert kernels(jax.random.key(0)) == ["vmem_mha_fwd"]
    assert kernels(jax.random.key(0), length=513) == []
    assert kernels(jax.random.key(0), implementation="xla") == []
    assert kernels(None, implementation="vmem") == ["vmem_mha_fwd"]
    assert kernels(jax.random.key(0), implementation="vmem") == ["vmem_mha_fwd"]


# ----------------------------------------------------------------------------- whole model


def tiny_model(text_dropout: float = 0.0, **options) -> models.FocusCLIP:
    """An abstract model (no initialisers run): its graph, to merge with `random_params`."""
    return nnx.eval_shape(
        lambda: models.FocusCLIP(
            image_size=16,
            image={"name": "vit", "size": "tiny"},  # width 32, 2 blocks, 2 heads, 8 px patches
            text={"name": "bert", "size": "tiny", "vocab_size": 50, "max_len": 12}
            | {"dropout": text_dropout},
            embed_dim=8,
            rngs=nnx.Rngs(0),
            **options,
        )
    )


def random_params(model: nnx.Module, std: float | None = None) -> dict:
    """Random parameters for `model` at a sensible scale (LayerNorms not identity, biases not 0)."""
    rng = np.random.default_rng(0)
    flat = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    def draw(x: jax.ShapeDtypeStruct) -> np.ndarray:
        scale = std or (0.5 if len(x.shape) <= 1 else 1 / math.sqrt(x.shape[-2]))
        return rng.normal(0.0, scale, x.shape).astype(np.float32)

    return unflatten_dict({k: draw(v) for k, v in flat.items()})


def compile_fast(fn: Callable, *args: Any) -> Callable:
    """`jax.jit(fn)` compiled for `args` without XLA's backend optimisations (half the compile
    time on CPU; the maths is the same)."""
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})


def stacked(params: dict) -> dict:
    """Unscanned parameters in the scanned layout (each tower's blocks stacked)."""
    flat = flatten_dict(params)
    for tower in ("image_tower", "text_tower"):
        tower_flat = {k: v for k, v in flat.items() if k[0] == tower}
        flat = {k: v for k, v in flat.items() if k[0] != tower}
        flat |= common.stack_layers(tower_flat, (tower,))
    return unflatten_dict(flat)


def unstacked(params: dict) -> dict:
    flat = flatten_dict(jax.device_get(params))
    out = {k: v for k, v in flat.items() if not k[0].endswith("_tower")}
    for tower in ("image_tower", "text_tower"):
        tower_flat = {k[1:]: v for k, v in flat.items() if k[0] == tower}
        out |= {(tower, *k): v for k, v in common.unstack_layers(tower_flat).items()}
    return unflatten_dict(out)


@pytest.fixture(scope="module")
def batch() -> dict[str, jax.Array]:
    rng = np.random.default_rng(1)
    lengths = np.array([12, 5, 9, 1])
    return {
        "images": jnp.asarray(rng.uniform(size=(4, 16, 16, 3)), jnp.float32),
        "heatmaps": jnp.asarray(rng.uniform(size=(4, 16, 16)), jnp.float32),
        "tokens": jnp.asarray(rng.integers(1, 50, size=(4, 12)), jnp.int32),
        "mask": jnp.asarray(np.arange(12)[None, :] < lengths[:, None]),
    }


def loss_fn(model: nnx.Module, batch: dict) -> Callable[[dict], jax.Array]:
    """The FocusCLIP objective (paper's NT-Xent over three pairs) as a function of parameters."""
    graphdef = nnx.graphdef(model)

    def loss(params: dict) -> jax.Array:
        merged = nnx.merge(graphdef, params)
        embeddings = merged.embed(**batch, modalities=("image", "focused", "text"))
        nt_xent = losses.create(ml_collections.ConfigDict({"kind": "nt_xent", "temperature": 0.5}))
        total, _ = losses.focusclip_loss(
            embeddings,
            losses.scalars_of(params, nt_xent),
            pairs=PAIRS,
            weights=(1.0, 1.0, 1.0),
            loss=nt_xent,
        )
        return total

    return loss


def loss_and_grads(model: nnx.Module, params: dict, batch: dict) -> tuple[jax.Array, dict]:
    grad_fn = jax.value_and_grad(loss_fn(model, batch))
    return jax.device_get(compile_fast(grad_fn, params)(params))


@pytest.fixture(scope="module")
def reference(batch: dict) -> tuple[dict, jax.Array, dict]:
    """Parameters, loss and gradients of the float32, unscanned, non-rematerialised model."""
    model = tiny_model()
    params = random_params(model)
    loss, grads = loss_and_grads(model, params, batch)
    return params, loss, grads


def assert_trees_close(got: dict, want: dict, rtol: float) -> None:
    """Leaf by leaf, relative to the largest gradient (some, like key biases', are ~0)."""
    want = flatten_dict(want)
    scale = max(np.max(np.abs(x)) for x in want.values())
    got = flatten_dict(got)
    assert set(got) == set(want)
    for path, b in want.items():
        err = np.max(np.abs(np.asarray(got[path], np.float64) - b)) / scale
        assert err <= rtol, f"{'/'.join(map(str, path))}: error {err:.1e} of the largest"


@pytest.mark.parametrize(
    ("scan_layers", "remat"),
    # Unscanned remat is the same `jax.checkpoint` per block: test_options_are_in_the_program.
    [(True, "none"), (True, "dots_with_no_batch_dims_saveable"), (False, "all_but_mlp_activation")],
)
def test_scan_and_remat_keep_loss_and_gradients(
    scan_layers: bool, remat: str, batch: dict, reference: tuple
) -> None:
    params, want_loss, want_grads = reference
    model = tiny_model(scan_layers=scan_layers, remat=remat)
    if scan_layers:
        params = stacked(params)
    loss, grads = loss_and_grads(model, params, batch)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    assert_trees_close(unstacked(grads) if scan_layers else grads, want_grads, rtol=1e-5)


# Per tower: the forward kernel, run again where remat recomputes the block, and the fused
# backward one.
MESH_KERNELS = {
    "splash": ["splash_mha_dkv_segmented_no_residuals"] * 2
    + ["splash_mha_fwd_segmented_residuals"] * 4,
    "vmem": ["vmem_mha_bwd"] * 2 + ["vmem_mha_fwd"] * 4,
}


@pytest.mark.parametrize("attention", MESH_KERNELS)
def test_tpu_kernels_on_a_mesh_keep_loss_and_gradients(
    attention: str, batch: dict, reference: tuple
) -> None:
    """The whole model with splash or the whole-sequence attention in both towers (BERT's
    padding masks, the ViT's length: padded for splash, as it is for vmem), its batch split over
    4 devices as a training step splits it: each device's rows go to its own kernel
    (`split_over_batch`), and the loss and gradients are those of XLA's attention on one device.
    Scanned blocks, rematerialised as the paper's config does."""
    params, want_loss, want_grads = reference
    model = tiny_model(
        attention=attention, scan_layers=True, remat="dots_with_no_batch_dims_saveable"
    )
    mesh = sharding.create_mesh({"data": 4})

    def loss(params: dict, batch: dict) -> jax.Array:
        return loss_fn(model, batch)(params)

    grad_fn = sharding.traced_on(mesh, jax.value_and_grad(loss))
    jaxpr = jax.make_jaxpr(grad_fn)(stacked(params), batch).jaxpr
    eqns = all_eqns(jaxpr)
    kernels = [e.params["name"] for e in eqns if e.primitive.name == "pallas_call"]
    assert sorted(kernels) == MESH_KERNELS[attention]  # each inside a shard_map:
    assert sum(e.primitive.name == "shard_map" for e in eqns) >= len(kernels)
    compiled = jax.jit(
        grad_fn,
        in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
    )
    loss_value, grads = jax.device_get(compiled(stacked(params), batch))
    np.testing.assert_allclose(loss_value, want_loss, rtol=1e-5)
    assert_trees_close(unstacked(grads), want_grads, rtol=1e-5)


@pytest.mark.parametrize("remat", layers.REMATS)
@pytest.mark.parametrize("scan_layers", [False, True])
def test_options_are_in_the_program(scan_layers: bool, remat: str, batch: dict) -> None:
    """A `scan` over the blocks iff scanned; one `checkpoint` with the policy per block (or per
    scan body) iff rematerialised, around the MLP's activation and fc2 alone for
    all_but_mlp_activation: else the equalities above would prove nothing."""
    model = tiny_model(scan_layers=scan_layers, remat=remat)
    params = random_params(model)
    eqns = all_eqns(jax.make_jaxpr(loss_fn(model, batch))(params).jaxpr)
    names = [e.primitive.name for e in eqns]
    assert names.count("scan") == (2 if scan_layers else 0)  # the two towers' forward passes
    checkpoints = [e for e in eqns if e.primitive.name in ("checkpoint", "remat2")]
    assert len(checkpoints) == (0 if remat == "none" else 2 if scan_layers else 4)
    policy = layers.REMAT_POLICIES.get(remat)
    assert all(e.params["policy"] is policy for e in checkpoints)
    if remat == "all_but_mlp_activation":  # fc2's matmul its only one
        for e in checkpoints:
            inner = [q.primitive.name for q in all_eqns(e.params["jaxpr"])]
            assert inner.count("dot_general") == 1, inner


def test_mlp_keeps_its_input_not_its_activation_when_recomputing() -> None:
    """`recompute_activation` (remat all_but_mlp_activation): of the [rows, mlp_dim] values the
    backward pass keeps, only fc1's output; without it, the activation and its intermediates
    too. Same gradients either way."""
    x = jax.random.normal(jax.random.key(1), (5, 8))
    kept, grads = {}, {}
    for recompute in (False, True):
        graphdef, params = nnx.split(
            layers.Mlp(8, 24, recompute_activation=recompute, rngs=nnx.Rngs(0))
        )
        apply = lambda p, x, graphdef=graphdef: jnp.sum(nnx.merge(graphdef, p)(x) ** 2)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            jax.ad_checkpoint.print_saved_residuals(apply, params, x)
        kept[recompute] = printed.getvalue().count("f32[5,24]")
        grads[recompute] = nnx.to_pure_dict(jax.grad(apply)(params, x))
    assert kept[True] == 1 and kept[False] >= 2, kept
    assert_trees_close(grads[True], grads[False], rtol=1e-6)


def test_scanned_parameters_stack_on_a_layers_axis() -> None:
    model = tiny_model(scan_layers=True)
    state = nnx.state(model, nnx.Param)
    specs = flatten_dict(nnx.to_pure_dict(nnx.get_partition_spec(state)))
    shapes = flatten_dict(nnx.to_pure_dict(state))
    kernel = ("image_tower", "blocks", "attn", "query", "kernel")
    assert tuple(specs[kernel]) == ("layers", "embed", "heads", "kv")
    assert shapes[kernel].shape == (2, 32, 2, 16)
    assert tuple(specs[("text_tower", "blocks", "mlp", "fc1", "kernel")]) == (
        "layers",
        "embed",
        "mlp",
    )
    blocks = [k for k in specs if "blocks" in k]
    assert blocks and all(specs[k][0] == "layers" for k in blocks)


def test_causal_tower_scanned_equals_unscanned() -> None:
    """CLIP's text tower passes `is_causal` through the scan."""

    def tower(scan_layers: bool) -> nnx.Module:
        return nnx.eval_shape(
            lambda: towers.create(
                "text",
                {"name": "clip", "size": "tiny", "vocab_size": 50, "max_len": 12},
                scan_layers=scan_layers,
                rngs=nnx.Rngs(0),
            )
        )

    tokens = jnp.asarray(np.random.default_rng(2).integers(1, 50, size=(3, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None, :] < np.array([[12], [3], [7]]))
    params = random_params(tower(False))
    outs = []
    for scan_layers, p in ((False, params), (True, stacked({"text_tower": params})["text_tower"])):
        graphdef = nnx.graphdef(tower(scan_layers))
        forward = lambda p, graphdef=graphdef: nnx.merge(graphdef, p)(tokens, mask)
        outs.append(compile_fast(forward, p)(p))
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- bfloat16


def test_bfloat16_computes_matmuls_in_bf16_and_the_rest_in_float32(
    batch: dict, reference: tuple
) -> None:
    params, want_loss, want_grads = reference
    model = tiny_model(dtype="bfloat16", scan_layers=True)
    params = stacked(params)

    def towers(params: dict) -> tuple[jax.Array, jax.Array]:
        merged = nnx.merge(nnx.graphdef(model), params)
        images = merged.image_tower(batch["images"])
        return images, merged.text_tower(batch["tokens"], batch["mask"])

    eqns = all_eqns(jax.make_jaxpr(towers)(params).jaxpr)
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    # Per block: q, k, v, out, 2 attention einsums, fc1, fc2; plus the patch embedding.
    assert len(dots) == 2 * 8 + 1
    assert {str(v.aval.dtype) for e in dots for v in e.invars} == {"bfloat16"}
    # Softmax (exp) and every reduction (LayerNorm statistics, softmax sums, pooling) in float32.
    for name in ("exp", "reduce_sum", "reduce_max"):
        found = [e for e in eqns if e.primitive.name == name]
        assert found and {str(v.aval.dtype) for e in found for v in e.invars} == {"float32"}

    loss, grads = loss_and_grads(model, params, batch)
    assert loss.dtype == np.float32
    assert {x.dtype for x in jax.tree.leaves(grads)} == {np.dtype(np.float32)}
    np.testing.assert_allclose(loss, want_loss, rtol=2e-2)
    got, want = (
        np.concatenate([np.ravel(x) for _, x in sorted(flatten_dict(t).items())])
        for t in (unstacked(grads), want_grads)
    )
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 0 < error < 0.05  # bf16 rounded something, and not much


def all_eqns(jaxpr: jax.extend.core.Jaxpr) -> list:
    """Equations of a jaxpr and of every sub-jaxpr (scan bodies, custom derivatives)."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += all_eqns(inner)
    return out


# ----------------------------------------------------------------------------- config


def test_config_defaults_build_the_paper_model_abstractly() -> None:
    """pretrain.py's defaults reach the towers (ViT-B/16 + BERT-base, blocks unrolled, keeping
    all but the MLP's activation for the backward pass)."""
    config = pretrain.get_config().model
    speed = (config.attention, config.scan_layers, config.remat)
    assert speed == ("auto", False, "all_but_mlp_activation")
    config.text.vocab_size = 30522
    model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
    shapes = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert shapes[("image_tower", "blocks", 11, "mlp", "fc1", "kernel")].shape == (768, 3072)
    assert shapes[("text_tower", "blocks", 11, "attn", "out", "kernel")].shape == (12, 64, 768)
    assert ("text_tower", "blocks", 12, "attn", "out", "kernel") not in shapes


# ----------------------------------------------------------------------------- dropout


def test_dropout_zeroes_its_rate_and_keeps_the_mean() -> None:
    x = jnp.ones((400_000,), jnp.float32)
    dropped = np.asarray(layers.apply_dropout(x, 0.1, jax.random.key(0)))
    assert abs((dropped == 0).mean() - 0.1) < 0.003
    assert set(np.unique(dropped)) == {0.0, np.float32(1 / 0.9)}  # inverted: survivors scaled
    assert abs(dropped.mean() - 1.0) < 0.005
    assert layers.apply_dropout(x, 0.1, None) is x  # evaluation: no key, no dropout


@pytest.mark.parametrize(("masking", "dtype"), [("padding", "float32"), ("causal", "float32"),
                                               ("padding", "bfloat16")])  # fmt: skip
def test_written_out_attention_matches_the_kernel(masking: str, dtype: str) -> None:
    """The attention used while dropping probabilities, at rate 0, against XLA's kernel in
    float32; in bfloat16 (scores in bfloat16, softmax in float32) to bfloat16's precision."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 7, 3, 8)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(np.arange(7)[None, :] < np.array([[7], [4]]))
    causal = masking == "causal"
    q16, k16, v16 = (x.astype(dtype) for x in (q, k, v))
    got = layers._attention_with_dropout(q16, k16, v16, mask, causal, 0.0, jax.random.key(0))
    want = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], is_causal=causal)
    assert got.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(
        got.astype(jnp.float32), want, atol=1e-5 if dtype == "float32" else 3e-2
    )


def clip_loss_with_key(model: nnx.Module, batch: dict, key: jax.Array) -> Callable:
    """The CLIP loss of image and text embeddings as a function of `model`'s parameters, its
    dropout drawn from `key`."""
    graphdef = nnx.graphdef(model)

    def loss(params: dict) -> jax.Array:
        merged = nnx.merge(graphdef, params)
        embeddings = merged.embed(**batch, modalities=("image", "text"), rng=key)
        scale = jnp.exp(merged.logit_scale[...])
        return losses.clip_infonce(embeddings["image"], embeddings["text"], scale)

    return loss


def test_bert_dropout_acts_in_training_only(batch: dict) -> None:
    """`model.text.dropout` (the original's 0.1): with a key the text embedding changes, the same
    key reproduces it, another does not; without one (evaluation) it is the model without
    dropout. Scanned, rematerialised blocks draw the same masks when recomputing: same loss and
    gradients as unrolled blocks with the same key."""
    model = tiny_model(text_dropout=0.1)
    params = random_params(model)
    without = nnx.merge(nnx.graphdef(tiny_model()), params)
    merged = nnx.merge(nnx.graphdef(model), params)
    tokens, mask = batch["tokens"], batch["mask"]
    evaluation = merged.encode_text(tokens, mask)
    np.testing.assert_array_equal(evaluation, without.encode_text(tokens, mask))
    first, second = jax.random.key(1), jax.random.key(2)
    trained = merged.encode_text(tokens, mask, first)
    assert not np.allclose(trained, evaluation, atol=1e-3)
    np.testing.assert_array_equal(trained, merged.encode_text(tokens, mask, first))
    assert not np.allclose(trained, merged.encode_text(tokens, mask, second), atol=1e-3)

    unrolled = jax.jit(jax.value_and_grad(clip_loss_with_key(model, batch, first)))(params)
    scanned_model = tiny_model(text_dropout=0.1, scan_layers=True, remat="full")
    loss, grads = jax.jit(jax.value_and_grad(clip_loss_with_key(scanned_model, batch, first)))(
        stacked(params)
    )
    np.testing.assert_allclose(loss, unrolled[0], rtol=1e-6)
    assert_trees_close(unstacked(grads), jax.device_get(unrolled[1]), rtol=1e-5)


def test_bert_dropout_on_splash_keeps_loss_and_gradients_on_a_mesh(batch: dict) -> None:
    """BERT's training dropout where splash attention is chosen (`vmem_attention`'s kernels,
    the batch split over 4 devices, one sequence each, scanned and rematerialised blocks as the
    paper's config runs them): the loss and gradients of the written-out attention on one device
    with the same key, so every shard drew its rows of the same masks."""
    key = jax.random.key(1)
    reference = tiny_model(text_dropout=0.1)
    params = random_params(reference)
    want_loss, want_grads = jax.device_get(
        jax.jit(jax.value_and_grad(clip_loss_with_key(reference, batch, key)))(params)
    )
    model = tiny_model(
        text_dropout=0.1,
        attention="splash",
        scan_layers=True,
        remat="dots_with_no_batch_dims_saveable",
    )
    mesh = sharding.create_mesh({"data": 4})
    grad_fn = sharding.traced_on(mesh, jax.value_and_grad(clip_loss_with_key(model, batch, key)))
    eqns = all_eqns(jax.make_jaxpr(grad_fn)(stacked(params)).jaxpr)
    kernels = {e.params["name"] for e in eqns if e.primitive.name == "pallas_call"}
    assert {"vmem_mha_fwd", "vmem_mha_bwd"} <= kernels
    compiled = jax.jit(grad_fn, in_shardings=(sharding.replicated(mesh),))
    loss, grads = jax.device_get(compiled(stacked(params)))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert_trees_close(unstacked(grads), want_grads, rtol=1e-5)
