"""`focusclip_jax.export`'s whole-model formats (Hugging Face dual encoder, open_clip) and its
output rules, without torch: files, tensor names and shapes, the maths of the reparametrised
poolers and folded biases in numpy, and each refusal in one line. Where the reference venv
(`make reference-venv`) exists, transformers and open_clip read the exports back
(bench/export_roundtrip.py)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict

from bench import export_roundtrip
from bench.reference_spec import REFERENCE_PYTHON
from focusclip_jax import export, models, sharding, train
from focusclip_jax.weights import common, hf_dual_encoder, open_clip
from input_pipeline.errors import InputDataError
from tests.conftest import FAST_COMPILE_FLAGS, REPO, tiny_config


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ml_collections.ConfigDict, Path]:
    """A 2-step tiny model that --format=hf takes: ViT, BERT with CLS pooling, WordPiece."""
    config = export_roundtrip.for_hf(tiny_config())
    config.mesh.data = 1
    config.evals.zero_shot.datasets = ()
    config.train.num_steps = 2
    workdir = tmp_path_factory.mktemp("hf_run")
    train.train_and_evaluate(config, workdir)
    return config, workdir


def _abstract(config: ml_collections.ConfigDict, vocab_size: int = 64) -> models.FocusCLIP:
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    model_config.text.vocab_size = vocab_size
    return nnx.eval_shape(lambda: models.create_model(model_config, nnx.Rngs(0)))


def _hf_expected_keys(depth: int) -> set[str]:
    """The names `VisionTextDualEncoderModel.save_pretrained` writes (transformers 5.24)."""
    linear = lambda names: {f"{n}.{leaf}" for n in names for leaf in ("weight", "bias")}
    vision = {"embeddings.cls_token", "embeddings.position_embeddings"}
    vision |= linear(["embeddings.patch_embeddings.projection", "layernorm", "pooler.dense"])
    text = {f"embeddings.{n}_embeddings.weight" for n in ("word", "position", "token_type")}
    text |= linear(["embeddings.LayerNorm", "pooler.dense"])
    for i in range(depth):
        layer = f"encoder.layer.{i}"
        vision |= linear(
            [f"{layer}.attention.attention.{p}" for p in ("query", "key", "value")]
            + [f"{layer}.{n}" for n in ("attention.output.dense", "intermediate.dense")]
            + [f"{layer}.{n}" for n in ("output.dense", "layernorm_before", "layernorm_after")]
        )
        text |= linear(
            [f"{layer}.attention.self.{p}" for p in ("query", "key", "value")]
            + [f"{layer}.attention.output.{n}" for n in ("dense", "LayerNorm")]
            + [f"{layer}.{n}" for n in ("intermediate.dense", "output.dense", "output.LayerNorm")]
        )
    keys = {f"vision_model.{n}" for n in vision} | {f"text_model.{n}" for n in text}
    return keys | {"visual_projection.weight", "text_projection.weight", "logit_scale"}


def test_hf_export_files_names_shapes_and_projection_maths(hf_run, tmp_path: Path) -> None:
    config, workdir = hf_run
    out = tmp_path / "hf"
    assert export.export(None, str(workdir), None, str(out), fmt="hf") == 2
    # Exactly the files a rerun's --overwrite takes for an export's (and no more).
    assert {p.name for p in out.iterdir()} == export.EXPORT_FOLDER_FILES
    state = common.read_tensors(out / "model.safetensors")
    assert set(state) == _hf_expected_keys(depth=1)

    import focusclip_jax

    mesh = sharding.create_mesh({"data": 1})
    trained = focusclip_jax.load(str(workdir), mesh=mesh, batch_size=8)
    params = flatten_dict(jax.device_get(trained.params))
    width, embed = 32, 16
    assert state["vision_model.embeddings.patch_embeddings.projection.weight"].shape == (
        width, 3, 8, 8
    )  # fmt: skip
    assert state["vision_model.embeddings.position_embeddings"].shape == (1, 17, width)
    assert state["text_model.embeddings.word_embeddings.weight"].shape == (236, width)
    assert state["text_model.embeddings.position_embeddings.weight"].shape == (40, width)
    query = state["text_model.encoder.layer.0.attention.self.query.weight"]
    ours = params[("text_tower", "blocks", 0, "attn", "query", "kernel")]
    np.testing.assert_array_equal(query, ours.reshape(width, -1).T)

    # Image: the pooler is our projection (bias included), visual_projection keeps its outputs.
    pooler_w = state["vision_model.pooler.dense.weight"]
    pooler_b = state["vision_model.pooler.dense.bias"]
    kernel, bias = params[("image_proj", "kernel")], params[("image_proj", "bias")]
    np.testing.assert_array_equal(pooler_w[:embed], kernel.T)
    np.testing.assert_array_equal(pooler_b[:embed], bias)
    assert not pooler_w[embed:].any() and not pooler_b[embed:].any()
    np.testing.assert_array_equal(state["visual_projection.weight"], np.eye(embed, width))

    # Text: 2^k·tanh(2^-k·z) is our projection's output z, under float32 rounding.
    with (out / "model.safetensors").open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    k = int(header["__metadata__"]["text_pooler_exponent"])
    assert header["__metadata__"]["focusclip_step"] == "2" and k > 0
    model = nnx.merge(trained.setup.graphdef, trained.params)
    tokens, mask = trained.tokenize(["a person kneeling", "arms raised high above the head"])
    cls = np.asarray(model.text_tower(jnp.asarray(tokens), jnp.asarray(mask)), np.float64)
    z = cls @ params[("text_proj", "kernel")] + params[("text_proj", "bias")]
    pooled = np.tanh(cls @ state["text_model.pooler.dense.weight"].T.astype(np.float64)
                     + state["text_model.pooler.dense.bias"])  # fmt: skip
    projected = pooled @ state["text_projection.weight"].T.astype(np.float64)
    assert np.max(np.abs(projected - z) / np.abs(z).max()) < 2e-7
    bound_scale = 2.0**-k * np.abs(z).max()
    assert bound_scale**2 / 3 <= 2.0**-24  # the chosen k keeps tanh linear on these texts
    assert float(state["logit_scale"]) == pytest.approx(
        math.log(trained.setup.similarity_scale(trained.params)), rel=1e-6
    )

    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["model_type"] == "vision-text-dual-encoder"
    assert hf_config["projection_dim"] == embed
    vision, text = hf_config["vision_config"], hf_config["text_config"]
    assert vision | {"hidden_size": 0} == vision | {
        "model_type": "vit", "hidden_size": 0, "image_size": 32, "patch_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "hidden_act": "gelu", "layer_norm_eps": 1e-6, "pooler_act": "linear",
        "pooler_output_size": width,
    }  # fmt: skip
    assert text["model_type"] == "bert" and text["vocab_size"] == 236
    assert text["max_position_embeddings"] == 40 and text["layer_norm_eps"] == 1e-12
    assert text["pad_token_id"] == 0
    vocab = export_roundtrip.WORDPIECE_VOCAB.read_text().splitlines()
    assert (out / "vocab.txt").read_text().splitlines() == vocab
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "BertTokenizer" and tokenizer["do_lower_case"]
    assert tokenizer["model_max_length"] == 40
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32} and processor["resample"] == 3
    assert processor["image_mean"] == list(config.model.pixel_mean)
    assert processor["image_std"] == list(config.model.pixel_std)


def test_output_is_written_aside_and_replaced_only_with_overwrite(
    hf_run, tmp_path: Path, monkeypatch
) -> None:
    _, workdir = hf_run
    out = tmp_path / "hf"
    export.export(None, str(workdir), None, str(out), fmt="hf")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(InputDataError, match=r"already exists; rerun with --overwrite"):
        export.export(None, str(workdir), None, str(out), fmt="hf")

    def broken(*args, **kwargs):
        Path(args[2], "config.json").parent.mkdir(parents=True)
        Path(args[2], "config.json").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(hf_dual_encoder, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        export.export(None, str(workdir), None, str(out), fmt="hf", overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no .partial left
    monkeypatch.undo()

    # A swap cut short between its renames: the next run puts the old export back.
    out.rename(tmp_path / "hf.replaced")
    with pytest.raises(InputDataError, match=r"already exists"):
        export.export(None, str(workdir), None, str(out), fmt="hf")
    assert (out / "model.safetensors").read_bytes() == before
    export.export(None, str(workdir), None, str(out), fmt="hf", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not an export")
    with pytest.raises(InputDataError, match=r"not an export folder"):
        export.export(None, str(workdir), None, str(tmp_path / "mine"), fmt="hf", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").is_file()
    # A model folder of the user's: config.json beside files no export writes.
    (tmp_path / "mine" / "config.json").write_text("{}")
    with pytest.raises(InputDataError, match=r"not an export folder \(it holds more than"):
        export.export(None, str(workdir), "text_tower", str(tmp_path / "mine"), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["config.json", "notes.txt"]
    # The training workdir itself, or a folder holding it: its checkpoints were deleted.
    for folder in (workdir, workdir.parent):
        with pytest.raises(InputDataError, match=r"(is|holds) --checkpoint=.*which this run reads"):
            export.export(None, str(workdir), "text_tower", str(folder), overwrite=True)
    assert (workdir / "checkpoints").is_dir() and (workdir / "config.json").is_file()
    (tmp_path / "thesis.safetensors").write_text("not an export")
    with pytest.raises(InputDataError, match=r"not a .safetensors file, not an export"):
        export.export(
            None, str(workdir), "image_tower", str(tmp_path / "thesis.safetensors"), overwrite=True
        )
    assert (tmp_path / "thesis.safetensors").read_text() == "not an export"
    vit = tmp_path / "vit.safetensors"
    export.export(None, str(workdir), "image_tower", str(vit))
    export.export(None, str(workdir), "image_tower", str(vit), overwrite=True)
    assert "patch_embed.proj.weight" in common.read_tensors(vit)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hf", "mine", "thesis.safetensors", "vit.safetensors"
    ]  # fmt: skip


def test_exports_take_the_users_file_permissions(hf_run, tmp_path: Path) -> None:
    """Shared as the user's umask says (safetensors' own writer makes its files 0600)."""
    _, workdir = hf_run
    old = os.umask(0o022)
    try:
        export.export(None, str(workdir), None, str(tmp_path / "hf"), fmt="hf")
        export.export(None, str(workdir), "text_tower", str(tmp_path / "bert"))
        export.export(None, str(workdir), "image_tower", str(tmp_path / "vit.safetensors"))
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "vit.safetensors"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {
        p.name: "0o644" for p in files
    }


@pytest.mark.parametrize(
    ("fmt", "tower", "out", "message"),
    [
        ("hf", None, "none/hf", r"--out=.*none/hf: its folder .*none does not exist"),
        ("hf", "text_tower", "hf", r"--tower=text_tower: applies to --format=tower only"),
        ("tower", None, "x.safetensors", r"--tower: required with --format=tower"),
        ("open_clip", None, "model.bin", r"--out=model.bin: open_clip reads a .safetensors"),
        ("tower", "focus_tower", "f.safetensors", r"--tower=focus_tower: the model has no"),
        ("hf", None, "a_file", r"--out=.*a_file: exists and is not a folder"),
        ("open_clip", None, "oc.safetensors",
         r"--format=open_clip: the model's tokenizer is 'bert_wordpiece'"),
    ],
)  # fmt: skip
def test_mistakes_are_refused_in_one_line_before_anything_is_written(
    hf_run, tmp_path: Path, monkeypatch, fmt, tower, out, message
) -> None:
    _, workdir = hf_run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(InputDataError, match=message) as error:
        export.export(None, str(workdir), tower, out, fmt=fmt)
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"text.pooling": "mean"},
         r"pools by 'mean' \(model.text.pooling\).*only model.text.pooling='cls'"),
        ({"image.pre_norm": True}, r"LayerNorm before its blocks.*--format=open_clip"),
        ({"embed_dim": 48}, r"model.embed_dim=48 exceeds the image tower's width 32"),
        ({"text.activation": "relu"}, r"model.text.activation='relu': expected one of"),
    ],
)  # fmt: skip
def test_hf_refuses_what_its_stock_classes_cannot_compute(change, message) -> None:
    config = export_roundtrip.for_hf(tiny_config())
    with config.unlocked():
        for key, value in change.items():
            section, _, name = key.rpartition(".")
            (config.model[section] if section else config.model)[name] = value
    try:
        reason = hf_dual_encoder.refusal(_abstract(config), config.model.embed_dim)
    except ValueError as error:  # the model itself refuses the option
        reason = str(error)
    assert reason is not None and "\n" not in reason
    assert re.search(message, reason), reason


def _open_clip_config(**image: object) -> ml_collections.ConfigDict:
    config = export_roundtrip.for_open_clip(tiny_config(), export_roundtrip.SMALL_CLIP_BPE)
    config.model.image.update(image)
    return config


def test_open_clip_refusals() -> None:
    assert open_clip.export_refusal(_abstract(_open_clip_config())) is None
    bert = export_roundtrip.for_hf(tiny_config())
    assert "a bias-free patch embedding" in open_clip.export_refusal(_abstract(bert))
    with bert.unlocked():
        bert.model.image.update(_open_clip_config().model.image.to_dict())
    assert "use --format=hf for BERT" in open_clip.export_refusal(_abstract(bert))
    assert "open_clip's LayerNorms use 1e-5" in open_clip.export_refusal(
        _abstract(_open_clip_config(eps=1e-6))
    )
    assert "bias-free patch embedding" in open_clip.export_refusal(
        _abstract(_open_clip_config(patch_bias=True))
    )
    assert "activations differ" in open_clip.export_refusal(
        _abstract(_open_clip_config(activation="gelu"))
    )


def test_open_clip_export_inverts_the_import_and_folds_the_biases(tmp_path: Path) -> None:
    """Written from a random model with random projection biases: read back by the import, the
    towers are ours exactly, the LayerNorm shifts before the projections carry the biases."""
    config = _open_clip_config()
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    model_config.text.vocab_size = 64
    model = models.create_model(model_config, nnx.Rngs(0))
    params = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    rng = np.random.default_rng(0)
    for proj in ("image_proj", "text_proj"):
        params[proj]["bias"] = rng.normal(0, 0.1, 16).astype(np.float32)
    path = tmp_path / "model.safetensors"
    assert open_clip.save(model, params, path, logit_scale=20.0, step=7) is None
    state = common.read_tensors(path)
    assert float(state["logit_scale"]) == pytest.approx(math.log(20.0))
    assert state["visual.conv1.weight"].shape == (32, 3, 8, 8)
    assert state["visual.proj"].shape == (32, 16) and state["text_projection"].shape == (32, 16)
    assert state["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert state["positional_embedding"].shape == (40, 32)
    assert not any(key.startswith("visual.transformer.resblocks.1.") for key in state)

    flat = flatten_dict(params)
    for role, convert in (("image", open_clip.image_params), ("text", open_clip.text_params)):
        target = {p[1:]: v for p, v in flat.items() if p[0] == f"{role}_tower"}
        for ours, (name, theirs) in convert(state, target, "export").items():
            if name in ("visual.ln_post.bias", "ln_final.bias"):
                continue
            np.testing.assert_allclose(theirs, target[ours], rtol=0, atol=0, err_msg=name)
    for norm, tower, proj in (
        ("visual.ln_post.bias", ("image_tower", "norm", "bias"), "image_proj"),
        ("ln_final.bias", ("text_tower", "final_norm", "bias"), "text_proj"),
    ):
        kernel = flat[(proj, "kernel")].astype(np.float64)
        wanted = flat[tower] @ kernel + flat[(proj, "bias")]
        np.testing.assert_allclose(state[norm] @ kernel, wanted, atol=1e-6)
        assert np.abs(state[norm] - flat[tower]).max() > 1e-3  # the bias moved somewhere

    with path.open("rb") as f:
        metadata = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    model_cfg = json.loads(metadata["open_clip_model_config"])
    assert model_cfg == {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                       "head_width": 16, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 40, "vocab_size": 64, "width": 32, "heads": 2,
                     "layers": 1, "mlp_ratio": 2.0},
    }  # fmt: skip
    assert metadata["open_clip_model"] == "" and metadata["focusclip_step"] == "7"


def test_a_b16_clip_model_is_named_as_open_clip_names_it() -> None:
    from configs import finetune

    config = finetune.get_config()
    model = _abstract(config, vocab_size=49408)
    assert open_clip.export_refusal(model) is None
    named = open_clip.named_config(open_clip.model_config(model, 512, 49408))
    assert named == "ViT-B-16-quickgelu"


def test_the_command_line_refuses_in_one_line(hf_run, tmp_path: Path) -> None:
    _, workdir = hf_run
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS)
    args = [f"--checkpoint={workdir}", "--format=open_clip", f"--out={tmp_path}/m.safetensors"]
    done = subprocess.run(
        [sys.executable, "-m", "focusclip_jax.export", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --format=open_clip: the model's tokenizer is")
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


@pytest.mark.skipif(not REFERENCE_PYTHON.exists(), reason="no reference venv (make reference-venv)")
def test_transformers_and_open_clip_read_the_exports_as_the_jax_model(tmp_path: Path) -> None:
    """The round trip of bench/export_roundtrip.py: tiny models trained, exported, read back by
    transformers and open_clip in the reference venv."""
    result = export_roundtrip.run(tmp_path, tiny_config(), str(REFERENCE_PYTHON), steps=2)
    for fmt in ("hf", "open_clip"):
        assert result[fmt]["image"] < 1e-5 and result[fmt]["text"] < 1e-5, result
        assert result[fmt]["logits"] < 1e-4, result
        assert result[fmt].get("same_token_ids", True), result
    assert result["hf"]["same_pixels"] and not result["hf"]["loading_info"], result
