"""Configs: variants, command-line overrides, unknown keys."""

import functools

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from tests.conftest import REPO


def _parse(*argv: str):
    argv = ["prog", *argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=values, sys_argv=argv
    )
    values(argv)
    return values.config


def test_pretrain_is_the_paper_recipe() -> None:
    config = _parse(f"--config={REPO}/configs/pretrain.py")
    assert config.model.image.to_dict() == {"name": "vit", "size": "B/16"}
    assert config.model.heatmap_tower == "shared" and config.model.text.name == "bert"
    assert config.model.text.size == "bert-base" and config.model.text.max_len == 512
    assert config.model.embed_dim == 512 and config.model.image_size == 224
    assert config.loss.kind == "nt_xent" and config.loss.temperature == 0.5
    assert [tuple(p) for p in config.loss.pairs] == [
        ("focused", "image"),
        ("focused", "text"),
        ("image", "text"),
    ]
    assert config.optimizer.name == "sgd" and config.optimizer.learning_rate == 5e-4
    assert config.optimizer.momentum == 0.9 and config.optimizer.weight_decay == 0.0
    assert config.optimizer.grad_clip_norm == 1.0 and config.seed == 42
    assert config.train.batch_size == 32 and config.train.num_epochs == 64
    assert config.train.num_steps == 64 * (14_644 // 32)


def test_clip_variant_and_overrides() -> None:
    config = _parse(f"--config={REPO}/configs/pretrain.py:clip", "--config.train.batch_size=64")
    assert [tuple(p) for p in config.loss.pairs] == [("image", "text")]
    assert config.train.batch_size == 64
    assert config.train.num_steps == 64 * (14_644 // 64)  # steps follow the batch size
    baseline = _parse(f"--config={REPO}/configs/clip_baseline.py")
    assert baseline.loss.pairs == config.loss.pairs


def test_unknown_key_and_variant_are_errors() -> None:
    with pytest.raises(AttributeError, match='Did you mean "batch_size"'):
        _parse(f"--config={REPO}/configs/pretrain.py", "--config.train.batch_sise=64")
    with pytest.raises(flags.IllegalFlagValueError, match="variant"):
        _parse(f"--config={REPO}/configs/pretrain.py:clipp")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.batch_size", 12, r"train\.batch_size=12: must be a multiple of the 8 batch"),
        ("train.batch_size", 0, r"train\.batch_size=0: must be a positive integer"),
        ("train.num_steps", -1, r"train\.num_steps=-1: must be a positive integer"),
        ("evals.zero_shot.batch_size", 0, r"evals\.zero_shot\.batch_size=0"),
        ("evals.zero_shot.every_steps", -1, r"evals\.zero_shot\.every_steps=-1"),
        ("evals.zero_shot.type", "probe", r"evals\.zero_shot\.type='probe'"),
        ("evals.retrieval.datasets", ("coco",), r"evals\.retrieval\.datasets: 'coco' is not"),
        ("evals.linear_probe.l2", (-1.0,), r"evals\.linear_probe\.l2=\(-1\.0,\)"),
        ("train.frozen", ("vision/.*",), r"train\.frozen: 'vision/\.\*' matches no parameter"),
        ("train.frozen", ("(",), r"train\.frozen: '\(' is no regular expression"),
        ("train.on_nonfinite", "ignore", r"train\.on_nonfinite='ignore'"),
        ("loss.kind", "triplet", r"loss\.kind='triplet'"),
        ("loss.pairs", (("image", "audio"),) * 3, r"loss\.pairs: \('image', 'audio'\)"),
        ("loss.weights", (1.0,), r"loss\.weights=\(1\.0,\): one weight per pair of loss\.pairs"),
        ("heatmaps.mode", "limbs", r"heatmaps\.mode='limbs'"),
        ("heatmaps.min_sigma", 0.0, r"heatmaps\.min_sigma=0\.0: must be > 0"),
        ("loss.chunked", True, r"loss\.chunked=True: the clip loss has no chunked form"),
        ("optimizer.name", "lamb", r"optimizer\.name='lamb'"),
        ("model.remat", "some", r"model\.remat='some'"),
        ("model.attention", "flash", r"model\.attention='flash'"),
        ("model.heatmap_tower", "third", r"model\.heatmap_tower='third'"),
        ("model.image.size", "XL/14", r"model\.image\.size='XL/14': sizes of the vit tower"),
        ("model.text.name", "gpt", r"model\.text\.name='gpt': text towers are \['bert', 'clip'\]"),
        ("model.text.name", "clip", r"model\.text\.pooling: the clip tower has no such option"),
    ],
)
def test_bad_keys_are_named_before_anything_is_built(key, value, message) -> None:
    """The config's own rules (`config_checks.validated_mesh`) and each component's, checked as
    `train.Trainer` builds them: the first rule broken, named, before any writer or compile (8
    fake devices, data-parallel)."""
    from focusclip_jax import config_checks, train
    from input_pipeline.errors import ConfigError
    from tests.tiny import tiny_config

    config = tiny_config()
    *sections, name = key.split(".")
    functools.reduce(lambda c, section: c[section], sections, config)[name] = value
    with pytest.raises(ConfigError, match=message):
        train.Trainer(config, config_checks.validated_mesh(config), vocab_size=9)


def test_the_shipped_configs_pass_the_checks() -> None:
    import jax

    from focusclip_jax import config_checks, train

    shipped = (
        "pretrain.py",
        "pretrain.py:clip,separate,causal,modern",
        "pretrain.py:siglip",
        "demo.py",
        "bench.py",
        "finetune.py",
        "finetune.py:lit,siglip",
    )
    for name in shipped:
        config = _parse(f"--config={REPO}/configs/{name}")
        mesh = config_checks.validated_mesh(config, jax.devices()[:1])
        train.Trainer(config, mesh, vocab_size=100)


def test_a_scan_storing_every_residual_is_warned_of_with_the_remat_to_use(caplog) -> None:
    """`model.scan_layers=True` under the default remat (which keeps all but the MLP's
    activation: right for unrolled blocks) stores every residual stacked: a warning names the
    remat for scans; the shipped configs and a scan with that remat get none."""
    import jax

    from focusclip_jax import config_checks
    from focusclip_jax.models import layers

    config = _parse(f"--config={REPO}/configs/pretrain.py")
    default, warnings = config.model.remat, {}
    for scan, remat in ((False, default), (True, default), (True, layers.SCAN_REMAT)):
        caplog.clear()
        config.model.scan_layers, config.model.remat = scan, remat
        config_checks.validated_mesh(config, jax.devices()[:1])
        warnings[scan, remat] = [r.getMessage() for r in caplog.records if "scan" in r.getMessage()]
    assert warnings.pop((True, default)) == [
        "config model.scan_layers=True with model.remat='all_but_mlp_activation': the scan "
        "stores every residual its blocks keep, about 3x the temporaries of unrolled blocks; "
        f"--config.model.remat={layers.SCAN_REMAT} keeps the weight matmuls' outputs only"
    ]
    assert all(found == [] for found in warnings.values()), warnings


def test_configs_are_locked_after_their_variants_in_any_order() -> None:
    """A key that does not exist is an error from the variants on (a typo in a derived config
    or a variant would otherwise add a key nothing reads), and variants commute."""
    from configs import bench, demo, eval_zeroshot, pretrain

    for config in (
        pretrain.get_config("tiny"),
        demo.get_config(),
        eval_zeroshot.get_config("paper,clip"),
        bench.get_config("small"),
    ):
        assert config.is_locked
        with pytest.raises(AttributeError, match="locked"):
            config.model.scan_layer = True
    one = pretrain.get_config("pretrained,causal,clip")
    other = pretrain.get_config("clip,causal,pretrained")
    assert one.to_dict() == other.to_dict() and one.init.text == ""


def test_finetune_refuses_variants_that_replace_what_it_sets() -> None:
    from configs import finetune

    with pytest.raises(ValueError, match=r"variant 'modern' would replace"):
        finetune.get_config("modern")
    assert finetune.get_config("siglip").loss.kind == "siglip"
    assert finetune.get_config("lit").train.frozen == ("image_tower/.*", "image_proj/.*")


def test_a_record_from_before_tower_sub_configs_loads_in_todays_layout(tmp_path) -> None:
    """A workdir's config.json written with the flat tower keys (vit_size, text_kind, ...)
    loads with `model.image` / `model.text`, and builds the same parameters as today's."""
    import json

    from flax import nnx

    from focusclip_jax import models, run_record
    from tests.tiny import tiny_config

    config = tiny_config()
    old_model = {
        key: value for key, value in config.model.to_dict().items() if key not in ("image", "text")
    } | {
        "vit_size": "tiny",
        "vit_overrides": {k: v for k, v in config.model.image.items() if k not in ("name", "size")},
        "text_kind": "bert",
        "text_size": "tiny",
        "text_overrides": {"width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64},
        "text_pooling": "mean_with_padding",
        "text_dropout": 0.1,
        "vocab_size": 120,
        "max_len": 40,
    }
    record = config.to_dict() | {"model": old_model}
    (tmp_path / run_record.CONFIG_FILE).write_text(json.dumps(record))
    loaded = run_record.load(str(tmp_path)).model
    assert loaded.image.to_dict() == config.model.image.to_dict()
    expected_text = config.model.text.to_dict() | {
        "vocab_size": 120, "pooling": "mean_with_padding", "dropout": 0.1
    }  # fmt: skip
    assert loaded.text.to_dict() == expected_text
    assert "vit_size" not in loaded and "max_len" not in loaded

    def shapes(model_config) -> dict:
        model = nnx.eval_shape(lambda: models.create_model(model_config, nnx.Rngs(0)))
        return jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    config.model.text.vocab_size = 120
    assert shapes(loaded) == shapes(config.model)
