"""End to end: a 2-step demo checkpoint, evaluated by configs/eval_zeroshot.py and used by predict,
export and the Python API (`focusclip_jax.load`).

One module-scoped checkpoint; the evaluator's and predict's encoders share their compilations
(prompt counts are bucketed, batch sizes equal).
"""

import json
from pathlib import Path

import ml_collections
import pytest

from configs import eval_zeroshot
from focusclip_jax import checkpoint, evaluate, predict, train
from input_pipeline.errors import ConfigError, InputDataError
from tests.conftest import tiny_config
from tests.test_benchmark_readers import _csv, _fer_rows, _jpg

ACTIONS = ("running", "cooking")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ml_collections.ConfigDict, Path]:
    config = tiny_config()
    config.mesh.data = 1  # orbax saves on one device are fast
    config.evals.zero_shot.datasets = ()
    config.train.num_steps = 2
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(config, workdir)
    return config, workdir


def _fixtures(root: Path) -> None:
    splits = root / "stanford40" / "ImageSplits"
    splits.mkdir(parents=True)
    (splits / "actions.txt").write_text(
        "action_name\tnumber_of_images\n" + "running\t2\ncooking\t2\n"
    )
    for value, action in enumerate(ACTIONS):
        (splits / f"{action}_test.txt").write_text(f"{action}_001.jpg\n{action}_002.jpg\n")
        (splits / f"{action}_train.txt").write_text(f"{action}_003.jpg\n{action}_004.jpg\n")
        for i in (1, 2, 3, 4):
            _jpg(root / "stanford40" / "JPEGImages" / f"{action}_{i:03d}.jpg", 60 + 100 * value)
    (root / "stanford40" / "JPEGImages" / "cooking_002.jpg").write_bytes(b"broken")
    rows = _fer_rows([0, 3, 6], ["PrivateTest", "PrivateTest", "Training"])
    _csv(root / "fer2013" / "fer2013.csv", ["emotion", "pixels", "Usage"], rows)


def _eval_config(trained_config: ml_collections.ConfigDict, data_root: Path):
    config = eval_zeroshot.get_config()
    for key in ("model", "tokenizer", "mesh"):
        config[key] = trained_config[key]
    config.evals.zero_shot.batch_size = trained_config.evals.zero_shot.batch_size
    config.data.image_size = trained_config.model.image_size
    config.evals.zero_shot.datasets = ("stanford40", "fer2013", "utkface")  # utkface: not on disk
    config.evals.linear_probe.datasets = ("stanford40",)  # fitted on its train split
    config.evals.linear_probe.batch_size = config.evals.zero_shot.batch_size
    config.data_root = str(data_root)
    return config


def test_eval_config_on_fixtures_writes_the_table(trained, tmp_path: Path) -> None:
    trained_config, workdir = trained
    _fixtures(tmp_path / "data")
    config = _eval_config(trained_config, tmp_path / "data")
    summary = evaluate.evaluate_checkpoint(config, str(workdir))

    out = workdir / "zero_shot" / "step_2"
    saved = json.loads((out / "results.json").read_text())
    assert saved["step"] == 2 and saved["results"] == pytest.approx(summary["results"])
    assert saved["datasets"]["stanford40"] | {"seconds": 0} == {
        "images": 3,
        "unreadable": 1,
        "classes": list(ACTIONS),
        "first_class_prompts": ["a photo of a person running"],
        "seconds": 0,
    }
    assert saved["datasets"]["fer2013"]["images"] == 2
    assert "utkface" in saved["skipped"] and "utkface dataset folder" in saved["skipped"]["utkface"]
    for key in (
        "stanford40/top1",
        "stanford40/top3",
        "fer2013/top3",
        "fer2013/mean_per_class_top1",
    ):
        assert 0.0 <= saved["results"][key] <= 1.0
    assert saved["results"]["stanford40/top3"] == 1.0  # two classes: always in the top 3
    markdown = (out / "results.md").read_text()
    assert "| activity | Stanford40 | top3 | 100.00 |" in markdown
    assert "stanford40: 1 unreadable images dropped (3 evaluated)." in markdown
    assert "utkface: not evaluated" in markdown
    # The linear probe joins the results, in its own table below the paper's.
    assert 0.0 <= saved["results"]["stanford40/linear_probe_top1"] <= 1.0
    assert "Other evaluations" in markdown and "| stanford40/linear_probe_top1 |" in markdown
    assert (out / "stanford40.png").is_file() and (out / "fer2013.png").is_file()

    # A step folder works as well, and a path without checkpoints is named in the error.
    assert checkpoint.checkpoint_location(workdir / "checkpoints" / "2")[1] == 2
    with pytest.raises(InputDataError, match=r"--checkpoint=.*: no checkpoint there"):
        checkpoint.checkpoint_location(tmp_path)
    # A data root that does not exist is named before the checkpoint is loaded; one that holds
    # none of the datasets evaluates nothing: an error, not a table.
    config.data_root = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"--config\.data_root='.*nowhere': no such folder"):
        evaluate.evaluate_checkpoint(config, str(workdir), str(tmp_path / "empty"))
    config.data_root = str(tmp_path / "no_datasets")
    (tmp_path / "no_datasets").mkdir()
    config.evals.linear_probe.datasets = ()
    with pytest.raises(evaluate.NothingEvaluatedError, match="nothing was evaluated"):
        evaluate.evaluate_checkpoint(config, str(workdir), str(tmp_path / "empty"))
    assert not (tmp_path / "empty").exists()


def test_predict_top_k_with_probabilities(trained, tmp_path: Path) -> None:
    trained_config, workdir = trained
    images = [_jpg(tmp_path / "imgs" / f"{i}.jpg", 40 * i) for i in range(3)]
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    paths = predict.image_paths([str(tmp_path / "imgs")])
    assert paths == images
    labels = ["riding a bike", "cooking", "running"]
    rows = predict.predict(trained_config, str(workdir), paths, labels, top_k=2)
    assert [row["image"] for row in rows] == [str(p) for p in images]
    for row in rows:
        assert len(row["top"]) == 2 and {label for label, _ in row["top"]} <= set(labels)
        assert row["top"][0][1] >= row["top"][1][1] > 0
    predict.write(rows, tmp_path / "p.csv")
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "image,rank,label,probability" and len(lines) == 1 + 3 * 2
    predict.write(rows, tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())[0]["image"] == str(images[0])
    assert all(predict.is_predictions_file(tmp_path / name) for name in ("p.csv", "p.json"))
    predict.check_out(str(tmp_path / "p.csv"), {})  # an earlier predictions file: replaced


def test_predict_never_replaces_its_inputs_or_a_users_file(tmp_path: Path) -> None:
    """`--out` was replaced whatever it held: the labels file just read, a user's CSV."""
    labels = tmp_path / "labels.csv"
    labels.write_text("riding a bike\ncooking\n")
    with pytest.raises(InputDataError, match=r"^--out=.*labels.csv: is --labels_file=.*reads"):
        predict.check_out(str(labels), {"--labels_file": str(labels), "--images": None})
    mine = {"results.csv": "subject,score\n1,0.5\n", "results.json": '{"accuracy": 0.9}'}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputDataError, match=r"exists and is not a predictions file"):
            predict.check_out(str(tmp_path / name), {})
        assert (tmp_path / name).read_text() == text
    assert labels.read_text() == "riding a bike\ncooking\n"


def test_the_evaluate_program_writes_where_asked(trained, tmp_path: Path, capsys) -> None:
    from absl import flags

    from focusclip_jax import evaluate as program

    trained_config, workdir = trained
    _fixtures(tmp_path / "data")
    config = _eval_config(trained_config, tmp_path / "data")
    config.evals.zero_shot.datasets = ("fer2013",)
    config.evals.linear_probe.datasets = ()
    names = ("config", "checkpoint", "out")
    others = {name: flags.FLAGS[name] for name in names if name in flags.FLAGS}  # main's, say
    for name in others:
        delattr(flags.FLAGS, name)
    program.define_flags()
    try:
        flags.FLAGS.config = config
        flags.FLAGS.checkpoint = str(workdir / "checkpoints" / "2")
        flags.FLAGS.out = str(tmp_path / "out")
        program.main(["evaluate"])
        assert "| emotion | FER2013 | top3 |" in capsys.readouterr().out
        assert (tmp_path / "out" / "results.json").is_file()
    finally:
        for name in names:
            delattr(flags.FLAGS, name)
        for flag in others.values():
            flags.FLAGS[flag.name] = flag


def test_a_recorded_workdir_needs_no_model_keys(trained, tmp_path: Path, monkeypatch) -> None:
    """Training recorded its config: evaluation takes configs/eval_zeroshot.py as is (the paper's
    B/16 + BERT keys, a vocab.txt nowhere) plus the checkpoint, and predict the paper's config;
    a model key set to another value than the checkpoint's is named."""
    from configs import pretrain
    from focusclip_jax import run_record

    _, workdir = trained

    def no_trainer(*args, **kwargs):
        raise AssertionError("inference built a Trainer (optimiser, training step)")

    monkeypatch.setattr(train, "Trainer", no_trainer)  # evaluation needs the model alone
    record = json.loads((workdir / run_record.CONFIG_FILE).read_text())
    assert record["model"]["text"]["vocab_size"] == 169
    assert record["model"]["image"]["size"] == "tiny"
    _fixtures(tmp_path / "data")
    config = eval_zeroshot.get_config()
    config.data_root = str(tmp_path / "data")
    config.evals.zero_shot.datasets, config.mesh.data = ("fer2013",), 1
    checkpoints = str(workdir / "checkpoints")
    summary = evaluate.evaluate_checkpoint(config, checkpoints, str(tmp_path / "eval"))
    assert 0.0 <= summary["results"]["fer2013/top3"] <= 1.0

    config.model.embed_dim = 999
    with pytest.raises(ConfigError, match=r"--config\.model\.embed_dim=999"):
        evaluate.evaluate_checkpoint(config, checkpoints, str(tmp_path / "e"), ["model.embed_dim"])

    images = [_jpg(tmp_path / "imgs" / f"{i}.jpg", 50 * i) for i in range(2)]
    paper = pretrain.get_config()
    paper.mesh.data = 1
    rows = predict.predict(paper, str(workdir / "checkpoints" / "2"), images, ["a", "b"])
    assert len(rows) == 2 and sum(p for _, p in rows[0]["top"]) == pytest.approx(1.0, abs=1e-5)


def test_export_takes_the_workdir_alone(trained, tmp_path: Path) -> None:
    """`python -m focusclip_jax.export`: the checkpoint's image tower as a timm file, whatever
    model the default config describes (the paper's); its tensors are the checkpoint's."""
    import numpy as np
    from flax.traverse_util import flatten_dict

    from configs import pretrain
    from focusclip_jax import export, run_record, sharding
    from focusclip_jax import weights as weight_io
    from focusclip_jax.setup import ModelSetup

    _, workdir = trained
    out = tmp_path / "vit.safetensors"
    assert export.export(pretrain.get_config(), str(workdir), "image_tower", str(out)) == 2
    record = run_record.load(str(workdir))
    mesh = sharding.create_mesh({"data": 1})
    setup = ModelSetup.create(record, mesh, vocab_size=record.model.text.vocab_size)
    params, _ = checkpoint.restore_params(str(workdir), setup.abstract_params)
    exported = weight_io.read_tensors(out)
    patch = np.asarray(flatten_dict(params)[("image_tower", "patch_embed", "kernel")])
    conv = exported["patch_embed.proj.weight"]  # timm: [width, 3, p, p]
    np.testing.assert_array_equal(conv.transpose(2, 3, 1, 0).reshape(patch.shape), patch)
    with pytest.raises(InputDataError, match="--tower=focus_tower"):
        export.export(pretrain.get_config(), str(workdir), "focus_tower", str(tmp_path / "f"))


def test_the_python_api_embeds_and_classifies(trained, tmp_path: Path) -> None:
    """`focusclip_jax.load(workdir)`: unit-norm embeddings of images read at the model's size and
    of texts tokenized as in training; `classify` is the softmax of the scaled cosines, computed
    here again from the embeddings."""
    import numpy as np

    import focusclip_jax

    _, workdir = trained
    model = focusclip_jax.load(workdir)
    assert model.step == 2
    paths = [_jpg(tmp_path / f"{i}.jpg", 60 * i) for i in range(3)]
    images, unreadable = model.read_images([*paths, tmp_path / "missing.jpg"])
    assert images.shape == (3, model.image_size, model.image_size, 3) and len(unreadable) == 1
    image_embeddings = model.encode_image(images)
    texts = ["a person standing", "a person sitting"]
    text_embeddings = model.encode_text(texts)
    for embeddings in (image_embeddings, text_embeddings):
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    ids, mask = model.tokenize(texts)
    assert ids.shape == mask.shape == (2, model.config.model.text.max_len) and mask[:, 0].all()
    probabilities = model.classify(images, ["standing", "sitting"], "a person {}")
    logits = model.setup.similarity_scale(model.params) * image_embeddings @ text_embeddings.T
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    with pytest.raises(InputDataError, match=r"--template='a person': must hold \{\} exactly once"):
        model.classify(images, ["standing"], "a person")
    with pytest.raises(ValueError, match=r"images: expected uint8"):
        model.encode_image(images.astype(np.float32))
