"""big_vision's SigLIP B/16 training step beside this project's closest config, both compiled for
one TPU slice: **the TPU compiler's estimate, not a measurement** (nothing runs).

    .venv-aot/bin/python -m bench.peer_siglip --big_vision=<checkout of google-research/big_vision>
    .venv-aot/bin/python -m bench.peer_siglip --big_vision=<checkout> --topology=v5e-8 \\
        --batch=256,1024 --dtype=float32,bfloat16 --json=peer.json

For each batch × dtype both steps are compiled (data parallel over every device, layers unrolled
on both sides so that XLA's cost analysis counts every layer) and the table gives, per side, the
TPU compiler's estimate of the step time (`aot.tpu_time_estimate`: libtpu's `optimal_seconds`
corrected for its `ConcatBitcast` calls), the img/s and MFU it implies (matmul FLOPs counted
analytically, against the chip's dense peak), XLA's memory per device (`memory_analysis`) and its
bytes accessed per device, then ours over the peer's. A side the TPU compiler finds too big for
the chip is reported as such.

The peer comes from the checkout `--big_vision` names (no file of big_vision is part of this
project). Taken from big_vision: the two-towers model (`models/proj/image_text/two_towers.py`
over `models/vit.py` and `models/proj/image_text/text_transformer.py`) configured as its SigLIP
B/16 224 release in `configs/proj/image_text/SigLIP_demo.ipynb` (ViT-B/16 with MAP-head pooling
and no image projection; text transformer 'B', vocabulary 32,000, 64 tokens, a 768-wide head;
t from 10, b from -10); its optimizer builder (`optax.make`) given the optimizer section of
`configs/proj/image_text/siglip_lit_coco.py` (scale_by_adam, lr 1e-3, decoupled weight decay 0.01
on kernels, gradient clipping at 1.0, cosine schedule with warmup), every tower trained; its
sharding (`sharding.infer_sharding` with the trainer's default strategy, replicate) on a `data`
mesh of every device (`mesh_utils.create_device_mesh`) under the trainer's activation rule
(act_batch → data). Written here: the update step, as `update_fn` of
`trainers/proj/image_text/siglip.py` (defined inside that trainer's `main`, so not importable):
the same sigmoid loss, optimizer update and logged l2 norms, jitted with the trainer's donation
and output shardings. bfloat16 uses big_vision's `dtype_mm` (its ViT encoder's matmul dtype) in
both towers; big_vision's text transformer does not pass one to its encoder, so the bench gives
the text encoder that argument while compiling (the one change to big_vision's code path).
big_vision.utils imports `tensorflow.io.gfile` (its file and checkpoint helpers); without
TensorFlow installed, a stand-in module that raises when used takes its place for the import
(the step uses none of it) and is removed again; the report says whether it was needed.

Ours: `--config` (`configs/pretrain.py:clip,causal,siglip,modern`: the CLIP baseline's single
(image, text) pair, the causal text tower, SigLIP's loss, AdamW with warmup + cosine) with the
bench setting, for the same target: the batch and dtype, the image and text towers' sizes from
the peer's variants (text width, depth, heads and MLP, `--text_len` tokens, `--vocab` entries),
the embedding width to the image width (the peer's output), text dropout 0 (the peer's), layers
unrolled (`model.scan_layers=False`) and `model.remat` from `--remat` (none: the peer keeps every
activation too). The model differences that remain are printed with the table. Needs the
compile toolchains (requirements-aot.txt) and big_vision's own imports (flax, optax, einops,
scipy).
"""

import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from focusclip_jax import targets

if __name__ == "__main__":
    targets.configure_compile_only_environment()  # before JAX starts

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from focusclip_jax import aot, config_checks
from focusclip_jax import flops as model_flops
from focusclip_jax.models import layers
from input_pipeline import cli
from input_pipeline.errors import InputDataError

GiB = 2**30
LABEL = "the TPU compiler's estimate, not a measurement"
OURS_CONFIG = "configs/pretrain.py:clip,causal,siglip,modern"
# big_vision's modules the peer's step needs, imported in this order.
PEER_MODULES = (
    "big_vision.models.vit",
    "big_vision.models.proj.image_text.text_transformer",
    "big_vision.models.proj.image_text.two_towers",
    "big_vision.optax",
    "big_vision.sharding",
)
# configs/proj/image_text/siglip_lit_coco.py's optimizer, with every tower trained (its schedule
# freezes the image tower, `('img/.*', None)`, for LiT).
PEER_TOTAL_STEPS = 5_000
PEER_OPTIMIZER = {
    "optax_name": "scale_by_adam",
    "lr": 0.001,
    "wd": 0.01,
    "grad_clip_norm": 1.0,
    "schedule": [(".*", {"decay_type": "cosine", "warmup_steps": PEER_TOTAL_STEPS * 3 // 100})],
}
PEER_TEMPERATURE_INIT = 10.0
PEER_BIAS_INIT = -10.0
PEER_SHARDING_RULES = [("act_batch", "data")]  # the trainer's default `sharding_rules`
DIFFERENCES = (
    "image pooling: peer a MAP head (a learned probe attending over the patch tokens, then "
    "LayerNorm + MLP) and no projection; ours a class token (one token more in every block), a "
    "final LayerNorm and a linear projection to the embedding",
    "text attention: peer bidirectional over all tokens with no padding mask (EOS-padded text) "
    "and the last position pooled, plus a head; ours causal with the padding mask, pooled at the "
    "last real token, then a projection",
    "text details: peer GELU, LayerNorm eps 1e-6, tied vocabulary logits computed and unused by "
    "the loss (XLA removes them); ours quick_gelu, eps 1e-5",
    "optimizer: peer scale_by_adam (b2 0.999), weight decay 0.01 on kernels, clipping, cosine; "
    "ours AdamW (b2 0.98, weight decay 0.2), clipping, warmup + cosine; both keep float32 moments",
    "inputs: peer float32 images in [-1, 1]; ours uint8 images normalised on the device, and a "
    "padding mask beside the tokens",
    "bfloat16: peer big_vision's dtype_mm (the encoder blocks' and patch embedding's matmuls; MAP "
    "head, text head and LayerNorms float32); ours model.dtype (matmuls and attention bf16, "
    "LayerNorm statistics, softmax and the loss float32)",
    "sharding: peer replicates parameters and optimizer state on every device (its default "
    "strategy), which each run the whole update; ours splits the optimizer state and its update "
    "over the devices (sharding.optimizer_state 'auto' on TPUs: ZeRO stage 1) and all-gathers "
    "the new parameters; --config.sharding.optimizer_state=params replicates them as the peer "
    "does",
    "step extras: ours skips an update whose loss or gradient is not finite and logs its own "
    "metrics; peer logs the loss and three l2 norms",
)

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string(
        "big_vision", None, "A checkout of github.com/google-research/big_vision (its root)."
    )
    flags.DEFINE_string("topology", "v5e-8", "The TPU slice compiled for: v5e-8, v6e-8, v5p-8...")
    flags.DEFINE_list("batch", ["256"], "Global batches, comma-separated.")
    flags.DEFINE_list("dtype", ["float32"], "float32 and/or bfloat16, comma-separated.")
    flags.DEFINE_string("image_variant", "B/16", "big_vision's ViT variant (width/depth/patch).")
    flags.DEFINE_string("text_variant", "B", "big_vision's text transformer variant.")
    flags.DEFINE_integer("image_size", 224, "Image side in pixels.")
    flags.DEFINE_integer("text_len", 64, "Text tokens (the SigLIP B/16 release: 64).")
    flags.DEFINE_integer("vocab", 32_000, "Vocabulary entries of both text towers.")
    flags.DEFINE_enum("remat", "none", list(layers.REMATS), "Our model.remat (peer: none).")
    cli.define_config_file(
        "config", OURS_CONFIG, "Our config (the bench sets the keys named in its docstring)."
    )
    flags.DEFINE_string("json", "", "Also write the rows to this JSON file.")
    flags.mark_flags_as_required(["big_vision"])
    cli.check_flags(
        big_vision=cli.Path("folder"),
        topology=cli.Text(targets.tpu_name_problem),
        batch=cli.Number(integer=True, at_least=1),
        dtype=cli.Choices(("float32", "bfloat16")),
        image_variant=cli.Text(_image_variant_problem),
        text_variant=cli.Text(_text_variant_problem),
        image_size=cli.Number(integer=True, at_least=1),
        text_len=cli.Number(integer=True, at_least=1),
        vocab=cli.Number(integer=True, at_least=2),
        json=cli.Path("new_file"),
    )


def _image_variant_problem(variant: str) -> str | None:
    name, slash, patch = variant.partition("/")
    if not (name and slash and patch.isdigit() and int(patch) > 0):
        return "expected <size>/<patch>, e.g. B/16"
    return None


def _text_variant_problem(variant: str) -> str | None:
    return "expected a size name without a patch, e.g. B" if not variant or "/" in variant else None


# --------------------------------------------------------------------------- big_vision


@dataclasses.dataclass
class BigVision:
    """big_vision's modules, where they came from, and whether TensorFlow was stood in for."""

    root: Path
    commit: str
    modules: dict[str, types.ModuleType]
    tensorflow_stubbed: bool

    def __getitem__(self, short: str) -> types.ModuleType:
        return self.modules[f"big_vision.{short}"]


def _tensorflow_stand_in() -> dict[str, types.ModuleType]:
    """`tensorflow`, `tensorflow.io` and `tensorflow.io.gfile` for big_vision.utils' import; any
    attribute read beyond the chain raises, naming the bench."""

    def missing(name: str) -> Any:
        raise AttributeError(
            f"tensorflow.io.gfile.{name}: TensorFlow is stubbed by bench.peer_siglip (big_vision's "
            "file helpers are not available)"
        )

    tensorflow = types.ModuleType("tensorflow")
    io = types.ModuleType("tensorflow.io")
    gfile = types.ModuleType("tensorflow.io.gfile")
    gfile.__getattr__ = missing  # type: ignore[method-assign]
    tensorflow.io, io.gfile = io, gfile  # type: ignore[attr-defined]
    return {"tensorflow": tensorflow, "tensorflow.io": io, "tensorflow.io.gfile": gfile}


def load_big_vision(root: Path) -> BigVision:
    """Imports the peer's modules from the checkout at `root` (kept on `sys.path`: its model
    imports its towers by name when called)."""
    if not (root / "big_vision" / "models" / "proj" / "image_text" / "two_towers.py").is_file():
        raise InputDataError(
            f"--big_vision={root}: no big_vision/models/proj/image_text/two_towers.py there; "
            "expected the root of a checkout of github.com/google-research/big_vision"
        )
    # flax looks for TensorFlow on import: it must find the real state, not the stand-in.
    importlib.import_module("flax.training.checkpoints")
    stand_in = _tensorflow_stand_in() if importlib.util.find_spec("tensorflow") is None else {}
    if str(root) not in sys.path:
        sys.path.append(str(root))
    sys.modules.update(stand_in)
    try:
        modules = {name: importlib.import_module(name) for name in PEER_MODULES}
    except ModuleNotFoundError as error:
        raise InputDataError(
            f"--big_vision={root}: importing big_vision needs the module {error.name!r}, which is "
            "not installed"
        ) from None
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    return BigVision(root, _commit(root), modules, bool(stand_in))


def _commit(root: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else "(not a git checkout)"


def variant_dims(bv: BigVision, variant: str, flag: str) -> dict[str, Any]:
    try:
        return bv["models.vit"].decode_variant(variant)
    except KeyError:
        raise InputDataError(f"--{flag}={variant}: not one of big_vision's ViT sizes") from None


@dataclasses.dataclass(frozen=True)
class Shape:
    """The model sizes both sides are compiled at: big_vision's variant names and what its
    `decode_variant` makes of them (width, depth, mlp_dim, num_heads, patch_size)."""

    image_variant: str
    text_variant: str
    image: dict[str, Any]
    text: dict[str, Any]
    image_size: int
    text_len: int
    vocab: int

    @property
    def patches(self) -> int:
        return (self.image_size // self.image["patch_size"][0]) ** 2

    @property
    def embed_dim(self) -> int:
        return self.image["width"]  # the peer's image tower has no projection


def peer_model(bv: BigVision, shape: Shape, dtype: str) -> Any:
    """The SigLIP B/16 release's two towers (SigLIP_demo.ipynb) at `shape`."""
    return bv["models.proj.image_text.two_towers"].Model(
        image={"variant": shape.image_variant, "pool_type": "map", "dtype_mm": dtype},
        text={"variant": shape.text_variant, "vocab_size": shape.vocab},
        out_dim=(None, shape.embed_dim),
        temperature_init=PEER_TEMPERATURE_INIT,
        bias_init=PEER_BIAS_INIT,
    )


@contextlib.contextmanager
def text_encoder_dtype(bv: BigVision, dtype: str) -> Iterator[None]:
    """big_vision's text transformer builds `vit.Encoder` without `dtype_mm`: while tracing, its
    module sees an Encoder given `dtype` (a float32 step is left as it is)."""
    module = bv["models.proj.image_text.text_transformer"]
    vit = module.vit
    if dtype != "float32":
        module.vit = types.SimpleNamespace(
            **{k: getattr(vit, k) for k in dir(vit) if not k.startswith("__")}
        )
        module.vit.Encoder = functools.partial(vit.Encoder, dtype_mm=dtype)
    try:
        yield
    finally:
        module.vit = vit


def peer_flops(shape: Shape, batch: int) -> int:
    """Matmul FLOPs of the peer's step (focusclip_jax/flops.py's convention: 2·M·N·K each, the
    backward pass twice the forward, no input gradient for the pixels)."""
    image, text = shape.image, shape.text
    width, tokens, patch = image["width"], shape.patches, image["patch_size"][0]
    stem = 2 * tokens * 3 * patch * patch * width
    blocks = image["depth"] * layers.block_flops(tokens, width, image["mlp_dim"])
    # MAP head: one probe query against every patch token, its out projection and MLP.
    map_head = (
        2 * width * width * (1 + 2 * tokens)
        + 2 * width * width
        + 2 * 2 * tokens * width
        + 2 * 2 * width * image["mlp_dim"]
    )
    text_tower = text["depth"] * layers.block_flops(shape.text_len, text["width"], text["mlp_dim"])
    text_head = 2 * text["width"] * shape.embed_dim
    loss = 2 * batch * batch * shape.embed_dim
    return batch * (2 * stem + 3 * (blocks + map_head + text_tower + text_head)) + 3 * loss


def trace_peer(
    bv: BigVision, shape: Shape, batch: int, dtype: str, devices: list[Any]
) -> tuple[jax.stages.Traced, int]:
    """big_vision's SigLIP step for `devices`, traced: (step, parameters)."""
    model = peer_model(bv, shape, dtype)
    bv_optax, bv_sharding = bv["optax"], bv["sharding"]
    mesh_utils = importlib.import_module("jax.experimental.mesh_utils")
    nn = importlib.import_module("flax.linen")
    optax = importlib.import_module("optax")
    P = jax.sharding.PartitionSpec

    def init(rng: jax.Array) -> Any:
        image = jnp.zeros((1, shape.image_size, shape.image_size, 3), jnp.float32)
        return model.init(rng, image, jnp.zeros((1, shape.text_len), jnp.int32))["params"]

    config = ml_collections.ConfigDict(PEER_OPTIMIZER)
    with text_encoder_dtype(bv, dtype):
        params_shape = jax.eval_shape(init, jax.random.PRNGKey(0))
    tx, _ = bv_optax.make(
        config,
        params_shape,
        sched_kw={
            "total_steps": PEER_TOTAL_STEPS,
            "batch_size": batch,
            "data_size": batch * PEER_TOTAL_STEPS,
        },
    )
    opt_shape = jax.eval_shape(tx.init, params_shape)
    mesh = jax.sharding.Mesh(
        mesh_utils.create_device_mesh((len(devices),), devices=devices), ("data",)
    )
    replicated = jax.sharding.NamedSharding(mesh, P())
    state_shape = {"params": params_shape, "opt": opt_shape}
    state_sharding = bv_sharding.infer_sharding(
        state_shape, strategy=[(".*", "replicate")], mesh=mesh
    )

    def update_fn(train_state: Any, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
        """trainers/proj/image_text/siglip.py's `update_fn`."""
        images, labels = batch["image"], batch["labels"]
        step_count = bv_optax.get_count(train_state["opt"], jittable=True)
        rng = jax.random.fold_in(rng, step_count)
        rng, rng_model = jax.random.split(rng, 2)

        def loss_fn(params: Any) -> jax.Array:
            zimg, ztxt, extras = model.apply(
                {"params": params}, images, labels, train=True, rngs={"dropout": rng_model}
            )
            logits = jnp.dot(zimg, ztxt.T)
            logits = logits * extras["t"] + extras["b"]
            eye = jnp.eye(zimg.shape[0])
            m1_diag1 = -jnp.ones_like(logits) + 2 * eye
            loglik = jax.nn.log_sigmoid(m1_diag1 * logits)
            nll = -jnp.sum(loglik, axis=-1)
            return jnp.mean(nll)

        params, opt = train_state["params"], train_state["opt"]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        measurements = {"training_loss": loss}
        gs = jax.tree.leaves(bv_optax.replace_frozen(config.schedule, grads, 0.0))
        measurements["l2_grads"] = jnp.sqrt(sum(jnp.sum(g * g) for g in gs))
        measurements["l2_params"] = jnp.sqrt(sum(jnp.sum(p * p) for p in jax.tree.leaves(params)))
        measurements["l2_updates"] = jnp.sqrt(sum(jnp.sum(u * u) for u in jax.tree.leaves(updates)))
        return {"params": params, "opt": opt}, measurements

    step = jax.jit(update_fn, donate_argnums=(0,), out_shardings=(state_sharding, replicated))
    abstract_state = jax.tree.map(
        lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
        state_shape,
        state_sharding,
    )
    rows = jax.sharding.NamedSharding(mesh, P("data"))
    abstract_batch = {
        "image": jax.ShapeDtypeStruct(
            (batch, shape.image_size, shape.image_size, 3), jnp.float32, sharding=rows
        ),
        "labels": jax.ShapeDtypeStruct((batch, shape.text_len), jnp.int32, sharding=rows),
    }
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
    with (
        jax.set_mesh(mesh),
        nn.logical_axis_rules(PEER_SHARDING_RULES),
        text_encoder_dtype(bv, dtype),
    ):
        traced = step.trace(abstract_state, rng, abstract_batch)
    return traced, sum(x.size for x in jax.tree.leaves(params_shape))


def compile_peer(
    bv: BigVision, shape: Shape, batch: int, dtype: str, devices: list[Any]
) -> tuple[jax.stages.Compiled, float, int]:
    """big_vision's SigLIP step for `devices`: (program, seconds to build and compile it,
    parameters)."""
    start = time.perf_counter()
    traced, parameters = trace_peer(bv, shape, batch, dtype, devices)
    compiled = _compile(traced.lower())
    return compiled, time.perf_counter() - start, parameters


def _compile(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" in str(error):
            line = next(
                (s.strip() for s in str(error).splitlines() if "RESOURCE_EXHAUSTED" in s),
                str(error).strip(),
            )
            raise aot.OutOfMemoryError(line) from None
        raise


# --------------------------------------------------------------------------- ours


def our_config(
    base: ml_collections.ConfigDict, shape: Shape, batch: int, dtype: str, remat: str
) -> ml_collections.ConfigDict:
    """`base` at the peer's sizes, batch and dtype, layers unrolled (the module docstring)."""
    config = base.copy_and_resolve_references()
    config.unlock()  # the text tower's width, depth, heads and MLP are new keys of its size
    image, text = shape.image, shape.text
    config.train.batch_size = batch
    config.model.dtype = dtype
    config.model.scan_layers = False
    config.model.remat = remat
    config.model.image_size = shape.image_size
    config.data.image_size = shape.image_size
    config.model.image.update(
        {key: image[key] for key in ("width", "depth", "num_heads", "mlp_dim")}
        | {"patch_size": image["patch_size"][0]}
    )
    config.model.text.update(
        {key: text[key] for key in ("width", "depth", "num_heads", "mlp_dim")}
        | {"max_len": shape.text_len, "vocab_size": shape.vocab, "dropout": 0.0}
    )
    config.model.embed_dim = shape.embed_dim
    config.mesh.data, config.mesh.fsdp = -1, 1
    config.lock()
    return config


def compile_ours(
    config: ml_collections.ConfigDict, devices: list[Any]
) -> tuple[jax.stages.Compiled, float, int]:
    mesh = config_checks.validated_mesh(config, devices)
    trainer, compiled, seconds = aot.compile_step(config, mesh, config.model.text.vocab_size)
    parameters = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
    return compiled, seconds, parameters


# --------------------------------------------------------------------------- the table


def side_report(
    side: str,
    build: Any,
    analytic_flops: int,
    target: targets.Target,
    batch: int,
    dtype: str,
) -> dict[str, Any]:
    """One side's numbers (per device where not said), or why there are none."""
    row: dict[str, Any] = {"side": side, "batch": batch, "dtype": dtype}
    try:
        compiled, seconds, parameters = build()
    except aot.OutOfMemoryError as error:
        return row | {"out_of_memory": str(error)}
    cost = aot.analyse_cost(compiled, "the compiled step (layers unrolled)")
    devices = target.num_devices
    peak = targets.peak_flops(target.chip, dtype)
    estimate = cost.estimated_s
    memory = aot.memory(compiled)
    return row | {
        "compile_s": seconds,
        "parameters": parameters,
        "analytic_flops": analytic_flops,
        "xla_flops": cost.flops * devices if cost.flops is not None else None,
        "memory": memory,
        "memory_gib": memory["total"] / GiB,
        "bytes_accessed_gib": cost.bytes_accessed / GiB if cost.bytes_accessed else None,
        "optimal_seconds": cost.optimal_seconds,
        "concat_bitcast_calls": cost.concat_bitcasts,
        "estimated_step_s": estimate,
        "estimated_images_per_s": batch / estimate if estimate else None,
        "estimated_mfu": analytic_flops / devices / peak / estimate if estimate else None,
    }


RATIOS = (
    ("estimated_step_s", "step"),
    ("estimated_images_per_s", "img/s"),
    ("estimated_mfu", "MFU"),
    ("memory_gib", "memory"),
    ("bytes_accessed_gib", "bytes accessed"),
)


def ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    """Ours over the peer's, per column (None where either side has no figure)."""
    return {
        key: ours[key] / peer[key] if ours.get(key) and peer.get(key) else None for key, _ in RATIOS
    }


def _cell(value: float | None, form: str) -> str:
    return "—" if value is None else format(value, form)


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| batch | dtype | side | est. step ms | est. img/s | est. MFU | memory GiB/device "
        f"| GiB accessed/device | compile s |  ({LABEL})",
        "|--:|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        head = f"| {row['batch']} | {row['dtype']} | {row['side']} |"
        if "ratio" in row:
            r = row["ratio"]
            lines.append(
                head + f" {_cell(r['estimated_step_s'], '.2f')}x | "
                f"**{_cell(r['estimated_images_per_s'], '.2f')}x** | "
                f"{_cell(r['estimated_mfu'], '.2f')}x | {_cell(r['memory_gib'], '.2f')}x | "
                f"{_cell(r['bytes_accessed_gib'], '.2f')}x | |"
            )
        elif "out_of_memory" in row:
            lines.append(head + f" out of memory: {row['out_of_memory']} |" + " |" * 5)
        else:
            step = row["estimated_step_s"]
            lines.append(
                head + f" {_cell(step and 1000 * step, '.4g')} | "
                f"{_cell(row['estimated_images_per_s'], '.0f')} | "
                f"{_cell(row['estimated_mfu'], '.1%')} | {row['memory_gib']:.2f} | "
                f"{_cell(row['bytes_accessed_gib'], '.1f')} | {row['compile_s']:.0f} |"
            )
    return "\n".join(lines)


def run(
    bv: BigVision,
    base: ml_collections.ConfigDict,
    target: targets.Target,
    shape: Shape,
    batches: list[int],
    dtypes: list[str],
    remat: str,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Both sides compiled for every batch × dtype: rows ours, peer, ratio."""
    devices = target.devices()
    rows = []
    for batch in batches:
        if batch % len(devices):
            raise InputDataError(
                f"--batch={batch}: not a multiple of the {len(devices)} devices of {target.name}"
            )
    for batch in batches:
        for dtype in dtypes:
            config = our_config(base, shape, batch, dtype, remat)
            log(f"compiling ours, batch {batch} {dtype}...")
            ours = side_report(
                "ours",
                lambda c=config: compile_ours(c, devices),
                model_flops.train_step_flops(config)["total"],
                target,
                batch,
                dtype,
            )
            log(f"compiling big_vision's, batch {batch} {dtype}...")
            peer = side_report(
                "big_vision",
                lambda b=batch, d=dtype: compile_peer(bv, shape, b, d, devices),
                peer_flops(shape, batch),
                target,
                batch,
                dtype,
            )
            rows += [ours, peer, {"side": "ours / big_vision", "batch": batch, "dtype": dtype,
                                  "ratio": ratios(ours, peer)}]  # fmt: skip
    return rows


def preamble(bv: BigVision, target: targets.Target, shape: Shape, config_name: str) -> str:
    libtpu = importlib.metadata.version("libtpu")
    stand_in = (
        "TensorFlow: not installed; a stand-in tensorflow.io.gfile (raising if used) served "
        "big_vision.utils' import and was removed after it"
        if bv.tensorflow_stubbed
        else "TensorFlow: installed, imported by big_vision.utils as is"
    )
    image, text = shape.image, shape.text
    return "\n".join(
        [
            f"big_vision's SigLIP step ({bv.root}, commit {bv.commit}) beside ours "
            f"({config_name}) on {targets.describe(target)}, data parallel, layers unrolled",
            f"{LABEL[0].upper()}{LABEL[1:]}: libtpu {libtpu} compiled both on this host; "
            "nothing ran.",
            f"sizes: image {shape.image_variant} at {shape.image_size} px "
            f"(width {image['width']}, depth {image['depth']}); text {shape.text_variant} (width "
            f"{text['width']}, depth {text['depth']}), {shape.text_len} tokens, vocabulary "
            f"{shape.vocab}; embedding {shape.embed_dim}",
            stand_in,
        ]
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    target = targets.parse(FLAGS.topology)
    bv = load_big_vision(Path(FLAGS.big_vision).resolve())
    image = variant_dims(bv, FLAGS.image_variant, "image_variant")
    text = variant_dims(bv, FLAGS.text_variant, "text_variant")
    if FLAGS.image_size % image["patch_size"][0]:
        raise InputDataError(
            f"--image_size={FLAGS.image_size}: not a multiple of the patch size "
            f"{image['patch_size'][0]} of --image_variant={FLAGS.image_variant}"
        )
    shape = Shape(
        FLAGS.image_variant,
        FLAGS.text_variant,
        image,
        text,
        FLAGS.image_size,
        FLAGS.text_len,
        FLAGS.vocab,
    )
    batches = [int(b) for b in FLAGS.batch]
    config_name = _config_name()
    print(preamble(bv, target, shape, config_name), flush=True)
    rows = run(
        bv, FLAGS.config, target, shape, batches, FLAGS.dtype, FLAGS.remat,
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    print(format_table(rows))
    print(f"ours: {config_name}, model.remat={FLAGS.remat}. Model differences that remain:")
    for difference in DIFFERENCES:
        print(f"  - {difference}")
    if FLAGS.json:
        report = {
            "label": LABEL,
            "big_vision": {"root": str(bv.root), "commit": bv.commit},
            "tensorflow_stubbed": bv.tensorflow_stubbed,
            "target": target.name,
            "ours": config_name,
            "remat": FLAGS.remat,
            "rows": rows,
            "differences": DIFFERENCES,
        }
        Path(FLAGS.json).write_text(json.dumps(report, indent=1))


def _config_name() -> str:
    given = [a for a in sys.argv[1:] if a.startswith("--config=")]
    return given[-1].removeprefix("--config=") if given else OURS_CONFIG


if __name__ == "__main__":
    define_flags()
    cli.run(main)
