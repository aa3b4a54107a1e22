"""Real-format fixtures → input_pipeline.prepare.mpii (a TFDS dataset: skips, resume,
idempotence) → grain stream → training."""

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image

from focusclip_jax import train
from input_pipeline import errors, pipeline, records, sources, transforms
from input_pipeline.prepare import mpii, shards
from tests.conftest import imports_tensorflow, tiny_config
from tests.test_mpii import (
    description_item,
    mmpose_rows,
    write_descriptions,
    write_jpeg,
    write_official_mat,
)

TRAIN_IMAGES = [f"{i:09d}.jpg" for i in range(14)]
VAL_IMAGES = [f"{i:09d}.jpg" for i in range(100, 103)]
MISSING, CORRUPT, UNDESCRIBED, INVISIBLE = TRAIN_IMAGES[-4:]
GOOD_TRAIN = 10  # the 14 train images less the four bad ones above
SQUASH_SIDE = tiny_config().model.image_size  # the stream's squash crop decodes the stored copy


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MPII-shaped raw data: images, mmpose train/val JSON, descriptions from two sources."""
    root = tmp_path_factory.mktemp("raw")
    (root / "images").mkdir()
    for i, name in enumerate(TRAIN_IMAGES + VAL_IMAGES):
        if name != MISSING:
            write_jpeg(root / "images" / name, i, size=(160, 120))
    (root / "images" / CORRUPT).write_bytes(b"\xff\xd8 not a jpeg")
    train_rows = mmpose_rows(TRAIN_IMAGES)
    for row in train_rows:
        if row["image"] == INVISIBLE:
            row["joints_vis"] = [0] * 16
    (root / "mpii_train.json").write_text(json.dumps(train_rows))
    (root / "mpii_val.json").write_text(json.dumps(mmpose_rows(VAL_IMAGES, seed=500)))
    described = [n for n in TRAIN_IMAGES + VAL_IMAGES if n != UNDESCRIBED]
    write_descriptions(root / "descriptions", described)
    return root


def _prepare(raw: Path, out: Path, workers: int = 2) -> dict:
    return mpii.prepare(
        str(raw / "images"),
        [str(raw / "mpii_train.json"), str(raw / "mpii_val.json")],
        str(raw / "descriptions"),
        str(out),
        max_side=64,
        squash_side=SQUASH_SIDE,
        records_per_shard=4,
        workers=workers,
    )


@pytest.fixture(scope="module")
def prepared(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    _prepare(raw, out)
    return out


def _entries(prepared: Path, split: str = "train") -> list[bytes]:
    source, _ = records.open_split(str(prepared), split)
    return [source[i] for i in range(len(source))]


def _shards(prepared: Path) -> list[Path]:
    return sorted(Path(records.dataset_dir(str(prepared))).glob("*.array_record-?????-of-?????"))


def test_prepare_counts_skips_and_rescales(raw: Path, prepared: Path) -> None:
    meta = records.read_meta(str(prepared))
    assert meta["splits"]["train"]["images"] == GOOD_TRAIN
    assert meta["splits"]["val"]["images"] == len(VAL_IMAGES)
    assert len(meta["splits"]["train"]["shards"]) == math.ceil(12 / 4)  # 12 pass the filter
    assert meta["skipped"] == {
        "no visible joints": 1,
        "no description": 1,
        "missing image": 1,
        "corrupt image": 1,
    }
    assert meta["corrected"] == {}
    # Of the 12 images that pass the filter, every other one has two people (mmpose_rows).
    assert meta["splits"]["train"]["people_per_image"] == {"1": 6, "2": 6}
    originals = {r.image: r for r in mpii.read_mmpose_json(raw / "mpii_train.json")}
    for entry in _entries(prepared):
        header, jpeg, squashed, _ = records.decode_prepared(entry)
        stored = np.asarray(Image.open(io.BytesIO(jpeg)), np.float32)
        assert stored.shape == (48, 64, 3) and header["size"] == [64, 48]  # 160×120 → 64 max
        square = np.asarray(Image.open(io.BytesIO(squashed)), np.float32)
        assert square.shape == (SQUASH_SIDE, SQUASH_SIDE, 3)
        assert header["squashed_side"] == SQUASH_SIDE
        # The fixture images are one colour: both copies keep it (JPEG rounding aside).
        np.testing.assert_allclose(square.mean((0, 1)), stored.mean((0, 1)), atol=2)
        original = originals[header["image"]].people[0]
        expected = (original.keypoints + 0.5) * 0.4 - 0.5
        np.testing.assert_allclose(header["keypoints"][0], expected, atol=2e-3)
        assert header["visible"][0] == original.visible.astype(int).tolist()
        assert set(header["descriptions"]) == {"gpt-4", "llama-2"}


def test_prepare_writes_a_tfds_dataset_that_grain_streams_without_tensorflow(
    prepared: Path, tmp_path: Path
) -> None:
    """The preparation is a TFDS dataset: TFDS opens it from its version folder or by name from
    the data_dir, with the splits' counts in dataset_info.json, and grain streams it; neither
    imports TensorFlow, here nor where one is installed."""
    import grain

    version_dir = prepared / mpii.NAME / shards.VERSION
    builder = tfds.builder_from_directory(str(version_dir))
    assert builder.info.name == mpii.NAME and str(builder.info.version) == "1.0.0"
    assert builder.info.file_format.value == "array_record"
    counts = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert counts == {"train": GOOD_TRAIN, "val": len(VAL_IMAGES)}
    assert json.loads((version_dir / "dataset_info.json").read_text())["splits"]
    by_name = tfds.data_source(mpii.NAME, data_dir=str(prepared))
    assert {name: len(source) for name, source in by_name.items()} == counts
    stream = grain.MapDataset.source(by_name["val"]).map(
        lambda record: records.decode_prepared(record[records.ENTRY]).header["image"]
    )
    assert sorted(stream) == VAL_IMAGES
    assert "tensorflow" not in sys.modules
    assert imports_tensorflow("import tensorflow", tmp_path / "check")  # the stand-in is seen
    read = f"""
import grain
from input_pipeline import records
source, _ = records.open_split({str(prepared)!r}, "train")
assert len(list(grain.MapDataset.source(source).map(records.decode_prepared))) == {GOOD_TRAIN}
"""
    assert not imports_tensorflow(read, tmp_path)


def test_records_read_as_tfds_decodes_them(prepared: Path) -> None:
    """`PreparedSplit` parses the stored Example itself: the bytes TFDS's data source gives."""
    for split in ("train", "val"):
        source, _ = records.open_split(str(prepared), split)
        for i in range(len(source)):
            assert source[np.int64(i)] == source[i] == source.source[i][records.ENTRY]


def test_prepare_is_idempotent_and_resumes(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _prepare(raw, out, workers=1)
    written = _shards(out)
    mtimes = {p: p.stat().st_mtime_ns for p in written}
    assert _prepare(raw, out, workers=1) == first  # nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in written} == mtimes
    # An interruption: one shard never finished (a temporary file left), the TFDS metadata
    # never written.
    interrupted = written[1]
    interrupted.rename(str(interrupted) + ".tmp")
    (records.dataset_dir(str(out)) / records.INFO_FILE).unlink()
    with pytest.raises(errors.InputDataError, match="no finished preparation"):
        records.open_split(str(out), "train")
    assert _prepare(raw, out, workers=1) == first
    for path in written:
        assert (path.stat().st_mtime_ns == mtimes[path]) == (path != interrupted), path
    assert not list(records.dataset_dir(str(out)).glob("*.tmp"))


def test_prepare_from_the_official_mat(raw: Path, tmp_path: Path) -> None:
    write_official_mat(tmp_path / "release.mat")
    for i, name in enumerate(("a.jpg", "b.jpg", "c.jpg")):
        write_jpeg(tmp_path / name, i)
    write_descriptions(tmp_path / "desc", ["a.jpg", "b.jpg", "c.jpg"], sources=("gpt-4",))
    meta = mpii.prepare(
        str(tmp_path), [str(tmp_path / "release.mat")], str(tmp_path / "desc"),
        str(tmp_path / "out"), max_side=64, squash_side=0, workers=1,
    )  # fmt: skip
    assert meta["splits"]["train"]["images"] == 3 and meta["skipped"] == {}
    header, _, squashed, _ = records.decode_prepared(_entries(tmp_path / "out")[0])
    assert header["activity"] == "running"
    assert squashed == b"" and "squashed_side" not in header  # squash_side=0: no stored copy


def mpii_config(prepared: Path, batch_size: int = 4) -> ml_collections.ConfigDict:
    """tests.conftest.tiny_config reading the prepared fixtures."""
    config = tiny_config()
    config.data = ml_collections.ConfigDict({
        "name": "mpii", "images": "", "annotations": "", "descriptions": "",
        "prepared": str(prepared), "split": "train", "train_records": GOOD_TRAIN,
        "image_size": config.model.image_size, "max_people": 4, "worker_count": 0,
        "crop": "squash", "crop_scale": (0.5, 1.0), "person_margin": 0.15, "flip": False,
        "crop_on": "auto", "canvas_side": 512,
        "description_sources": ("gpt-4", "llama-2"),
    })  # fmt: skip
    config.train.batch_size = batch_size
    return config


def _record_ids(batch: dict[str, np.ndarray]) -> list[tuple[float, float]]:
    """The first joint identifies a record (random per image in the fixtures)."""
    return [tuple(np.round(kp[0, 0], 2)) for kp in batch["keypoints"]]


def test_stream_batches_like_the_synthetic_path_and_shards_by_process(prepared: Path) -> None:
    config = mpii_config(prepared, batch_size=2)  # one row per process: 5 batches = one epoch
    tokenizer = pipeline.create_tokenizer(config)
    synthetic = next(pipeline.train_iterator(tiny_config(), tokenizer))
    seen = []
    for process in range(2):
        it = pipeline.train_iterator(config, tokenizer, process_index=process, process_count=2)
        batches = [next(it) for _ in range(GOOD_TRAIN // 2)]
        batch = batches[0]
        assert set(batch) == set(synthetic)
        for key, value in batch.items():
            assert value.dtype == synthetic[key].dtype, key
            assert value.shape[2:] == synthetic[key].shape[2:] or key == "keypoints", key
        size = config.model.image_size
        assert batch["image"].shape == (1, size, size, 3) and batch["person_mask"][:, 0].all()
        assert batch["keypoints"].shape == (1, 4, 16, 2) and batch["tokens"].shape == (1, 40)
        seen.append([r for b in batches for r in _record_ids(b)])
    assert not set(seen[0]) & set(seen[1])  # disjoint, and together one epoch: every record
    assert len(set(seen[0]) | set(seen[1])) == GOOD_TRAIN


def test_iterator_state_restores_the_next_batch_with_workers(prepared: Path) -> None:
    config = mpii_config(prepared)
    config.data.worker_count = 1
    config.data.crop = "random_resized"  # the random draws must resume too
    tokenizer = pipeline.create_tokenizer(config)
    it = pipeline.train_iterator(config, tokenizer)
    next(it), next(it)
    state = it.get_state()
    expected = next(it)
    it.close()  # a live pool beside the resumed one starves it on 2 cores (~10 s)
    resumed = pipeline.train_iterator(config, tokenizer)
    resumed.set_state(state)
    got = next(resumed)
    resumed.close()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.parametrize("crop", ["squash", "random_resized"])  # the latter cropped on the device
def test_train_a_few_steps_on_prepared_mpii(prepared: Path, tmp_path: Path, crop: str) -> None:
    config = mpii_config(prepared, batch_size=4)
    config.data.update({"crop": crop, "canvas_side": 64})
    config.mesh.data = 1
    config.evals.zero_shot.datasets = ()
    config.train.num_steps = 2
    results = train.train_and_evaluate(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (tmp_path / "checkpoints" / "2").is_dir()
    assert isinstance(results, dict) and jax.device_count() >= 1


PUBLISHED = {  # folder → (files, images described): the published dataset's layout
    "gpt-4-0613": ("train",),
    "gpt-3.5-turbo-0613": ("train", "val"),
    "gpt-3.5-turbo-0301": ("train", "val"),
    "llama-2-70b-chat-hf": ("train", "val"),
}


def write_published_descriptions(root: Path, train: list[str], val: list[str]) -> None:
    """`saifkhichi96/mpii-human-pose-captions` as published: per model folder a `train.json` (and
    `val.json`, except gpt-4-0613's), each a list of records with video ids, activity ids and
    `istrain`. The last training image has no gpt-4 description."""
    for folder, files in PUBLISHED.items():
        (root / folder).mkdir(parents=True)
        for split in files:
            names = train if split == "train" else val
            if folder == "gpt-4-0613":
                names = names[:-1]
            items = []
            for k, name in enumerate(names):
                item = description_item(name, f"{folder} describes {name}.")
                item["people"][0]["id"] = 1
                item |= {"video_id": 7, "video_frame": k, "activity_id": 3,
                         "istrain": split == "train"}  # fmt: skip
                items.append(item)
            (root / folder / f"{split}.json").write_text(json.dumps(items))


def test_the_published_layout_streams_the_chosen_source_only(tmp_path: Path) -> None:
    from configs import pretrain

    train, val = [f"{i:09d}.jpg" for i in range(6)], [f"{i:09d}.jpg" for i in range(50, 52)]
    (tmp_path / "images").mkdir()
    for i, name in enumerate(train + val):
        write_jpeg(tmp_path / "images" / name, i, size=(96, 72))
    (tmp_path / "mpii_train.json").write_text(json.dumps(mmpose_rows(train)))
    (tmp_path / "mpii_val.json").write_text(json.dumps(mmpose_rows(val, seed=300)))
    write_published_descriptions(tmp_path / "descriptions", train, val)
    out = tmp_path / "prepared"
    meta = mpii.prepare(
        str(tmp_path / "images"),
        [str(tmp_path / "mpii_train.json"), str(tmp_path / "mpii_val.json")],
        str(tmp_path / "descriptions"), str(out), max_side=64, squash_side=0,
        records_per_shard=4, workers=1,
    )  # fmt: skip
    assert meta["splits"]["train"]["descriptions"] == {
        "gpt-3.5-turbo": 6, "gpt-3.5-turbo-legacy": 6, "gpt-4": 5, "llama-2": 6,
    }  # fmt: skip
    assert "gpt-4" not in meta["splits"]["val"]["descriptions"]

    config = mpii_config(out)
    assert pretrain.get_config().data.description_sources == ("gpt-4",)
    config.data.description_sources = ("gpt-4",)  # the default: the published gpt-4-0613/
    source = sources.get("mpii").train_source(config.data)
    headers = [records.decode_prepared(source[i]).header for i in range(len(source))]
    assert sorted(h["image"] for h in headers) == train[:-1]  # left out, not filled from another
    rng = np.random.default_rng(0)
    for header in headers:
        text = transforms.choose_description(header["descriptions"], ("gpt-4",), rng)
        assert text == f"gpt-4-0613 describes {header['image']}."
    config.data.description_sources = ("gpt-5",)
    with pytest.raises(errors.InputDataError, match=r"gpt-5.*gpt-3\.5-turbo \(6 images\)"):
        sources.get("mpii").train_source(config.data)
    config.data.split, config.data.description_sources = "val", ("gpt-4",)
    with pytest.raises(errors.InputDataError, match=r"\(val\).*llama-2 \(2 images\)"):
        sources.get("mpii").train_source(config.data)


def _to_legacy_layout(out: Path, meta: dict) -> None:
    """The plain layout of earlier preparations, as they wrote it: raw entries in shards named
    by their inputs' fingerprint, their indexes, meta.json listing them; no TFDS dataset."""
    import shutil

    version_dir = records.dataset_dir(str(out))
    for split, info in meta["splits"].items():
        for i, shard in enumerate(info["shards"]):
            index = records.read_index(str(version_dir / shard))
            name = f"{split}-{index.pop('fingerprint')}-{i:05d}-of-{len(info['shards']):05d}"
            writer = array_record_module.ArrayRecordWriter(
                str(out / f"{name}.array_record"), "group_size:1"
            )
            reader = array_record_module.ArrayRecordReader(str(version_dir / shard))
            for record in reader.read_all():
                writer.write(records.tfds_features().deserialize_example_np(record)[records.ENTRY])
            reader.close()
            writer.close()
            (out / f"{name}.array_record{records.SOURCES_SUFFIX}").write_text(json.dumps(index))
            info["shards"][i] = f"{name}.array_record"
    (out / records.META_FILE).write_text(json.dumps(meta))
    shutil.rmtree(version_dir.parent)


def test_a_plain_layout_preparation_is_refused_in_one_line_then_converted(
    raw: Path, tmp_path: Path, monkeypatch
) -> None:
    """A folder prepared before preparations were TFDS datasets: reading it says how to convert
    it; rerunning the preparation converts its shards without re-encoding an image."""
    out = tmp_path / "out"
    meta = _prepare(raw, out, workers=1)
    expected = sorted(_entries(out))
    _to_legacy_layout(out, meta)
    config = mpii_config(out)
    with pytest.raises(errors.InputDataError, match=r"plain ArrayRecord.*--out=.*again") as error:
        sources.get("mpii").train_source(config.data)
    assert "\n" not in str(error.value)

    def no_encoding(*args):
        raise AssertionError("an image was re-encoded")

    monkeypatch.setattr(shards, "_resize_image", no_encoding)
    converted = _prepare(raw, out, workers=1)
    assert converted["splits"]["train"]["images"] == GOOD_TRAIN
    assert converted["skipped"] == meta["skipped"]
    assert sorted(_entries(out)) == expected
    assert sorted(p.name for p in out.iterdir()) == [mpii.NAME]  # the old files gone


def test_pretrain_tiny_variant_trains_on_prepared_shards(prepared: Path, tmp_path: Path) -> None:
    """`configs/pretrain.py:tiny`, pointed at a prepared folder and nothing else (two steps here):
    the real pipeline end to end, its BPE fitted on the descriptions and saved in the workdir."""
    from configs import pretrain

    config = pretrain.get_config("tiny")
    config.data.prepared = str(prepared)
    config.data.worker_count = 0
    config.mesh.data = 1
    config.train.batch_size, config.train.num_steps = 4, 2
    config.evals.zero_shot.datasets = ()  # the paper's benchmarks are not in the fixtures
    results = train.train_and_evaluate(config, tmp_path)
    # Retrieval on the prepared validation split, its images with their descriptions.
    assert set(results) == {
        f"mpii_val/{direction}_{metric}"
        for direction in ("image_to_text", "text_to_image")
        for metric in ("R@1", "R@5", "R@10", "median_rank")
    }
    assert results["mpii_val/image_to_text_R@10"] == 1.0  # fewer than 10 validation images
    assert 1 <= results["mpii_val/text_to_image_median_rank"] <= len(VAL_IMAGES)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [2]
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "checkpoints" / "2").is_dir()
    # The workdir records the config and a copy of the fitted BPE, which inference never refits.
    from focusclip_jax import run_record

    record = run_record.load(str(tmp_path))
    assert record.tokenizer.path == str(tmp_path / "tokenizer" / "tokenizer.json")
    assert record.model.text.vocab_size == pipeline.create_tokenizer(record, fit=False).vocab_size
    Path(record.tokenizer.path).unlink()
    with pytest.raises(errors.InputDataError, match="inference never fits one"):
        pipeline.create_tokenizer(record, fit=False)


def test_images_with_more_people_than_kept_are_counted(prepared: Path, caplog) -> None:
    config = mpii_config(prepared)
    config.data.max_people = 1
    with caplog.at_level("WARNING"):
        sources.get("mpii").train_source(config.data)
    assert "6 train images have more than data.max_people=1 annotated people" in caplog.text


def test_a_crop_with_no_stored_copy_names_the_flags_that_store_it(prepared: Path, caplog) -> None:
    """The fixture stores a squashed copy of the tiny config's size and no person copy."""
    warned = {}
    for crop, size in [
        ("squash", SQUASH_SIDE),
        ("squash", 2 * SQUASH_SIDE),
        ("person", SQUASH_SIDE),
    ]:
        config = mpii_config(prepared)
        config.data.crop, config.data.image_size = crop, size
        caplog.clear()
        with caplog.at_level("WARNING"):
            sources.get("mpii").train_source(config.data)
        warned[crop, size] = [
            r.getMessage() for r in caplog.records if "resamples" in r.getMessage()
        ]
    assert warned["squash", SQUASH_SIDE] == []
    (bigger,) = warned["squash", 2 * SQUASH_SIDE]
    assert f"a squashed copy of side {SQUASH_SIDE}" in bigger
    assert f"--squash_side={2 * SQUASH_SIDE}" in bigger
    (person,) = warned["person", SQUASH_SIDE]
    assert (
        "no person copy" in person and f"--person_side={SQUASH_SIDE} --person_margin=0.15" in person
    )
    caplog.clear()
    with caplog.at_level("WARNING"):  # a tokenizer fitted on the corpus: training warns, once
        assert sources.get("mpii").corpus(config.data)
    assert not caplog.records


def _one_split(tmp_path: Path, names: list[str], rows: list[dict], **options) -> dict:
    (tmp_path / "mpii_train.json").write_text(json.dumps(rows))
    write_descriptions(tmp_path / "descriptions", names)
    return mpii.prepare(
        str(tmp_path / "images"), [str(tmp_path / "mpii_train.json")],
        str(tmp_path / "descriptions"), str(tmp_path / "out"),
        max_side=64, squash_side=0, workers=1, **options,
    )  # fmt: skip


def test_visible_joints_outside_the_image_are_not_visible(tmp_path: Path) -> None:
    """A joint at (1e9, 1e9) marked visible would spread its part's Gaussian over the frame; a
    person with every visible joint outside crashed `data.crop=person`. Both are corrected and
    counted; the person crop stays inside the image whatever the joints say."""
    names = ["a.jpg", "b.jpg"]
    (tmp_path / "images").mkdir()
    for i, name in enumerate(names):
        write_jpeg(tmp_path / "images" / name, i, size=(96, 72))
    rows = mmpose_rows(names)  # a.jpg: one person, b.jpg: two
    rows[0]["joints"][3] = [1e9, 1e9]  # visible, far outside
    rows[2]["joints"] = [[500.0, 500.0]] * 16  # b.jpg's second person: all outside
    meta = _one_split(tmp_path, names, rows)
    assert meta["corrected"] == {
        shards.OUTSIDE_JOINTS: 1 + 15,  # b.jpg's second person: 15 were visible
        shards.OUTSIDE_PEOPLE: 1,
    }
    entries = _entries(tmp_path / "out")
    headers = {h["image"]: h for h in (records.decode_prepared(e).header for e in entries)}
    assert headers["a.jpg"]["visible"][0][3] == 0 and len(headers["b.jpg"]["keypoints"]) == 1
    assert transforms.person_box(
        np.full((1, 16, 2), 500.0, np.float32), np.ones((1, 16), bool), 96, 72, 0.15
    ) == (95.0, 71.0, 96.0, 72.0)


def test_a_repaired_image_gets_in_on_rerun(tmp_path: Path) -> None:
    """Shard indexes carry a fingerprint of their inputs, image files included: after a corrupt
    image is replaced, a rerun rewrites exactly its shard; another sharding replaces them all."""
    names = [f"{i}.jpg" for i in range(4)]
    (tmp_path / "images").mkdir()
    for i, name in enumerate(names):
        write_jpeg(tmp_path / "images" / name, i, size=(96, 72))
    (tmp_path / "images" / "3.jpg").write_bytes(b"\xff\xd8 broken")
    first = _one_split(tmp_path, names, mmpose_rows(names), records_per_shard=2)
    assert first["splits"]["train"]["images"] == 3 and first["skipped"] == {"corrupt image": 1}
    kept, redone = _shards(tmp_path / "out")
    mtimes = kept.stat().st_mtime_ns, redone.stat().st_mtime_ns
    write_jpeg(tmp_path / "images" / "3.jpg", 3, size=(96, 72))  # repaired
    second = _one_split(tmp_path, names, mmpose_rows(names), records_per_shard=2)
    assert second["splits"]["train"]["images"] == 4 and second["skipped"] == {}
    assert kept.stat().st_mtime_ns == mtimes[0] and redone.stat().st_mtime_ns != mtimes[1]
    assert len(_entries(tmp_path / "out")) == 4
    third = _one_split(tmp_path, names, mmpose_rows(names), records_per_shard=4)
    assert [p.name for p in _shards(tmp_path / "out")] == third["splits"]["train"]["shards"]
    assert len(third["splits"]["train"]["shards"]) == 1 and len(_entries(tmp_path / "out")) == 4


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_killed_preparation_leaves_no_workers(raw: Path, tmp_path: Path, signal_name) -> None:
    """Workers watch their parent: killed, by SIGTERM or SIGKILL, they stop within seconds
    instead of writing shards into --out and then sleeping forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    command = [
        sys.executable, "-m", "input_pipeline.prepare.mpii", f"--images={raw / 'images'}",
        f"--annotations={raw / 'mpii_train.json'}", f"--descriptions={raw / 'descriptions'}",
        f"--out={tmp_path / 'out'}", "--records_per_shard=1", "--workers=2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(workers := _children(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) >= 2, "the pool never started"
    process.send_signal(getattr(signal, signal_name))
    process.wait(timeout=30)
    deadline = time.monotonic() + 15
    while (alive := [w for w in workers if Path(f"/proc/{w}").exists()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not alive, f"workers {alive} outlived their parent"


def test_a_raw_squashed_copy_streams_the_prepared_square_exactly(tmp_path: Path) -> None:
    """`copy_format="raw"` stores the LANCZOS square itself: the `squash` stream reads those
    pixels bit for bit, the JPEG copy's within its rounding, every other field the same."""
    names = [f"{i:09d}.jpg" for i in range(4)]
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in names:  # textured, so that a wrong resize or a second JPEG pass shows
        ramp = np.linspace(0, 200, 160)[None, :, None] + rng.integers(0, 50, (120, 160, 3))
        Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "images" / name, quality=95)
    (tmp_path / "mpii_train.json").write_text(json.dumps(mmpose_rows(names)))
    write_descriptions(tmp_path / "descriptions", names)
    streams = {}
    for copy_format in records.COPY_FORMATS:
        out = tmp_path / copy_format
        mpii.prepare(
            str(tmp_path / "images"), [str(tmp_path / "mpii_train.json")],
            str(tmp_path / "descriptions"), str(out), max_side=64, squash_side=SQUASH_SIDE,
            copy_format=copy_format, workers=1,
        )  # fmt: skip
        config = mpii_config(out, batch_size=4)
        config.data.train_records = len(names)
        streams[copy_format] = next(
            pipeline.train_iterator(config, pipeline.create_tokenizer(config))
        )
    squares = {}
    for entry in _entries(tmp_path / "raw"):
        header, _, squashed, _ = records.decode_prepared(entry)
        assert header["squashed_format"] == "raw"
        with Image.open(tmp_path / "images" / header["image"]) as image:  # the preparation's way
            image.draft("RGB", (max(64, SQUASH_SIDE), max(48, SQUASH_SIDE)))
            square = image.convert("RGB").resize((SQUASH_SIDE, SQUASH_SIDE), Image.LANCZOS)
        np.testing.assert_array_equal(
            np.frombuffer(squashed, np.uint8).reshape(SQUASH_SIDE, SQUASH_SIDE, 3),
            np.asarray(square),
        )
        squares[np.asarray(square).tobytes()] = header["image"]
    raw, jpeg = streams["raw"], streams["jpeg"]
    assert {image.tobytes() for image in raw["image"]} == set(squares)
    difference = np.abs(raw["image"].astype(int) - jpeg["image"].astype(int))
    assert 0 < difference.mean() < 3
    for key in raw.keys() - {"image"}:
        np.testing.assert_array_equal(raw[key], jpeg[key], err_msg=key)


def test_a_person_copy_streams_the_person_crop_from_the_decoded_image(tmp_path: Path) -> None:
    """`person_side` stores the `person` crop's box resampled from the decoded image: the stream
    reads it as it is, with the keypoints of the crop resampled at train time and pixels near
    its (a smooth image: the two differ by their sources' resolution and filters)."""
    names = [f"{i:09d}.jpg" for i in range(4)]
    (tmp_path / "images").mkdir()
    for k, name in enumerate(names):
        x, y = np.meshgrid(np.linspace(0, 1, 160), np.linspace(0, 1, 120))
        smooth = np.stack([200 * x, 200 * y, 100 + 50 * np.sin(3 * x + k)], -1)
        Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "images" / name, quality=95)
    (tmp_path / "mpii_train.json").write_text(json.dumps(mmpose_rows(names)))
    write_descriptions(tmp_path / "descriptions", names)
    streams = {}
    for person_side in (0, SQUASH_SIDE):
        out = tmp_path / str(person_side)
        mpii.prepare(
            str(tmp_path / "images"), [str(tmp_path / "mpii_train.json")],
            str(tmp_path / "descriptions"), str(out), max_side=64, squash_side=0,
            person_side=person_side, copy_format="raw", workers=1,
        )  # fmt: skip
        config = mpii_config(out, batch_size=4)
        config.data.crop, config.data.train_records = "person", len(names)
        streams[person_side] = next(
            pipeline.train_iterator(config, pipeline.create_tokenizer(config))
        )
    copies = set()
    for entry in _entries(tmp_path / str(SQUASH_SIDE)):
        header, _, squashed, person = records.decode_prepared(entry)
        assert squashed == b"" and header["person_margin"] == 0.15
        keypoints = np.array(header["keypoints"], np.float32)
        visible = np.array(header["visible"], bool)
        box = np.array(transforms.person_box(keypoints, visible, 64, 48, 0.15))
        with Image.open(tmp_path / "images" / header["image"]) as image:  # the preparation's way
            image.draft("RGB", (64, max(48, SQUASH_SIDE)))
            image = image.convert("RGB")
            box = tuple(box * (image.size[0] / 64))
            square = np.asarray(image.resize((SQUASH_SIDE,) * 2, Image.LANCZOS, box=box))
        assert person == square.tobytes()
        copies.add(person)
    stored, resampled = streams[SQUASH_SIDE], streams[0]
    assert {image.tobytes() for image in stored["image"]} == copies
    difference = np.abs(stored["image"].astype(int) - resampled["image"].astype(int))
    assert 0 < difference.mean() < 2
    for key in stored.keys() - {"image"}:
        np.testing.assert_array_equal(stored[key], resampled[key], err_msg=key)


_FAULTS_PER_BATCH = """
import resource, sys
import numpy as np
from input_pipeline import pipeline
if sys.argv[1] == "keep":
    assert pipeline.keep_freed_memory()
def batch():
    records = [bytes(190_000 + 1000 * (i % 7)) for i in range(32)]  # records as read
    images = [np.frombuffer(r[1000:151_528], np.uint8).reshape(224, 224, 3) for r in records]
    return np.stack(images)
held = [batch(), batch()]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    held = [held[1], batch()]  # the consumer holds the last batch while the next is made
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def test_the_training_process_and_each_worker_keep_freed_memory(
    prepared: Path, monkeypatch
) -> None:
    """`train_iterator` sets `keep_freed_memory` in its own process and has grain run it in each
    worker as it starts."""
    calls, prefetched = [], {}
    monkeypatch.setattr(pipeline, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(
        grain.IterDataset, "mp_prefetch",
        lambda self, options, **kwargs: prefetched.update(kwargs) or self,
    )  # fmt: skip
    config = mpii_config(prepared)
    config.data.worker_count = 2
    pipeline.train_iterator(config, pipeline.create_tokenizer(config))
    assert calls == [1]
    prefetched["worker_init_fn"](0, 2)
    assert calls == [1, 1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keeping_freed_memory_spares_each_batch_its_page_faults() -> None:
    """A batch's records, images and stack, made while the last batch is held: glibc's default
    maps and unmaps them afresh, page-faulting every page in again; `keep_freed_memory` reuses
    them (fresh processes: the setting is per process)."""
    faults = {}
    for mode in ("default", "keep"):
        done = subprocess.run(
            [sys.executable, "-c", _FAULTS_PER_BATCH, mode],
            capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1],
        )  # fmt: skip
        faults[mode] = float(done.stdout)
    assert faults["keep"] * 4 < faults["default"], faults


def test_a_raw_image_streams_every_crop_from_its_stored_pixels(tmp_path: Path) -> None:
    """`image_format="raw"` stores the resized image's pixels: the device's canvases hold them bit
    for bit (zeroed around, from grain's workers as from the training process), and every crop
    streams what the JPEG preparation streams but for the JPEG's rounding, every other field
    (boxes, keypoints, text) the same."""
    names = [f"{i:09d}.jpg" for i in range(4)]
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in names:  # textured, so that the JPEG's rounding shows
        ramp = np.linspace(0, 200, 160)[None, :, None] + rng.integers(0, 50, (120, 160, 3))
        Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "images" / name, quality=95)
    (tmp_path / "mpii_train.json").write_text(json.dumps(mmpose_rows(names)))
    write_descriptions(tmp_path / "descriptions", names)
    for image_format in records.COPY_FORMATS:
        mpii.prepare(
            str(tmp_path / "images"), [str(tmp_path / "mpii_train.json")],
            str(tmp_path / "descriptions"), str(tmp_path / image_format), max_side=64,
            squash_side=0, image_format=image_format, workers=1,
        )  # fmt: skip
    stored = {}
    for entry in _entries(tmp_path / "raw"):
        header, image, _, _ = records.decode_prepared(entry)
        assert header["image_format"] == "raw" and header["size"] == [64, 48]
        with Image.open(tmp_path / "images" / header["image"]) as source:  # the preparation's way
            source.draft("RGB", (64, 48))
            expected = np.asarray(source.convert("RGB").resize((64, 48), Image.LANCZOS))
        np.testing.assert_array_equal(transforms.stored_pixels(header, image), expected)
        stored[expected.tobytes()] = header["image"]

    def first_batch(image_format: str, crop: str, crop_on: str, workers: int = 0) -> dict:
        config = mpii_config(tmp_path / image_format)
        config.data.update({"crop": crop, "crop_on": crop_on, "canvas_side": 80})
        config.data.train_records = len(names)
        config.data.worker_count = workers
        it = pipeline.train_iterator(config, pipeline.create_tokenizer(config))
        batch = next(it)
        it.close()
        return batch

    for crop, crop_on in (("squash", "host"), ("random_resized", "host"), ("person", "device")):
        batches = {f: first_batch(f, crop, crop_on) for f in records.COPY_FORMATS}
        difference = np.abs(batches["raw"]["image"].astype(int) - batches["jpeg"]["image"])
        assert 0 < difference.mean() < 3, (crop, crop_on)
        for key in batches["raw"].keys() - {"image"}:
            np.testing.assert_array_equal(batches["raw"][key], batches["jpeg"][key], err_msg=key)
    canvases = batches["raw"]
    for canvas in canvases["image"]:
        assert canvas[:48, :64].tobytes() in stored
        assert not canvas[48:].any() and not canvas[:, 64:].any()
    from_workers = first_batch("raw", "person", "device", workers=2)
    for key, value in canvases.items():
        np.testing.assert_array_equal(from_workers[key], value, err_msg=key)
