"""A finished dataset is never lost to a preparation: one preparation at a time, written aside
and swapped in only when complete and no worse (--overwrite to accept fewer images, never an
empty split); missing or empty inputs refused before anything is written; a full disk or an
interruption leaves the finished dataset as it was; the readers name a deleted shard."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from array_record.python import array_record_module

from input_pipeline import pipeline, records, sources, writer_lock
from input_pipeline.errors import InputDataError
from input_pipeline.prepare import coco as prepare_coco
from input_pipeline.prepare import mpii, shards
from tests.conftest import REPO
from tests.test_coco import _split as coco_split
from tests.test_mpii import mmpose_rows, write_descriptions, write_jpeg
from tests.test_prepare_and_stream import mpii_config
from tests.test_writer_lock import hold_as_another_run

TRAIN = [f"{i:03d}.jpg" for i in range(6)]
VAL = [f"{i:03d}.jpg" for i in range(100, 103)]
SHARDS = {"train": 3, "val": 2}  # two images per shard


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """MPII-shaped inputs: six train and three val images, mmpose JSON, two description sources."""
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    for i, name in enumerate(TRAIN + VAL):
        write_jpeg(root / "images" / name, i)
    (root / "mpii_train.json").write_text(json.dumps(mmpose_rows(TRAIN)))
    (root / "mpii_val.json").write_text(json.dumps(mmpose_rows(VAL, seed=500)))
    write_descriptions(root / "descriptions", TRAIN + VAL)
    return root


def _prepare(raw: Path, out: Path, *, images=None, descriptions=None, splits=("train", "val"),
             **options) -> dict:  # fmt: skip
    options = {"max_side": 32, "squash_side": 0, "records_per_shard": 2, "workers": 1} | options
    return mpii.prepare(
        str(images or raw / "images"),
        [str(raw / f"mpii_{split}.json") for split in splits],
        str(descriptions or raw / "descriptions"),
        str(out),
        **options,
    )


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every file under `out` by its path: what a refused or failed run leaves exactly as it was."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _leftovers(out: Path) -> list[Path]:
    """Temporary files and folders of a preparation."""
    return [
        p for p in out.rglob("*")
        if p.name.endswith(".tmp") or p.name.startswith((records.STAGING, records.REPLACED))
    ]  # fmt: skip


def _version_dir(out: Path) -> Path:
    return out / mpii.NAME / shards.VERSION


def test_a_descriptions_folder_without_json_is_refused_and_the_dataset_kept(
    raw: Path, tmp_path: Path
) -> None:
    """A rerun given a descriptions folder holding no JSON emptied a finished dataset and marked
    it finished, exit 0."""
    out = tmp_path / "out"
    _prepare(raw, out)
    before = _snapshot(out)
    empty = tmp_path / "descriptions"
    (empty / "gpt-4").mkdir(parents=True)
    (empty / "gpt-4" / "notes.txt").write_text("not a description")
    with pytest.raises(InputDataError, match=rf"^--descriptions={empty}: .*no description JSON"):
        _prepare(raw, out, descriptions=empty)
    assert _snapshot(out) == before


def test_a_mistyped_images_folder_is_refused_and_the_dataset_kept(
    raw: Path, tmp_path: Path
) -> None:
    """A mistyped --images overwrote the finished shards with empty ones, rewrote
    dataset_info.json, then crashed."""
    out = tmp_path / "out"
    _prepare(raw, out)
    before = _snapshot(out)
    mistyped = {raw / "imgaes": "not found", raw / "mpii_train.json": "not a folder"}
    for images, problem in mistyped.items():
        with pytest.raises(InputDataError, match=rf"^--images={re.escape(str(images))}: {problem}"):
            _prepare(raw, out, images=images)
    # A folder, but not the one holding the images: no image of either split is there.
    for overwrite in (False, True):
        with pytest.raises(InputDataError) as error:
            _prepare(raw, out, images=raw, overwrite=overwrite)
        message = str(error.value)
        assert "split train: 0 images of 6 (6 missing image, e.g. " in message, message
        assert "the finished dataset has 6" in message and "split val: 0 images of 3" in message
        assert "nothing replaced" in message and "--overwrite" not in message, message
    assert _snapshot(out) == before and not _leftovers(out)


def test_a_split_of_unreadable_images_is_never_written(raw: Path, tmp_path: Path) -> None:
    """Every image of a split unreadable: a finished-looking dataset with an empty split was
    written, then the preparation crashed (and training on it too). --overwrite does not
    change that."""
    for name in VAL:
        (raw / "images" / name).write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    for options in ({}, {"overwrite": True}):
        with pytest.raises(InputDataError) as error:
            _prepare(raw, out, **options)
        message = str(error.value)
        assert message.startswith("split val: 0 images of 3 (3 corrupt image, e.g. "), message
        assert "\n" not in message and "nothing written" in message
        assert not out.exists()  # the folders it made are gone with the staging folder


def test_fewer_images_replace_the_finished_dataset_only_with_overwrite(
    raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _prepare(raw, out)
    before = _snapshot(out)
    (raw / "images" / TRAIN[0]).write_bytes(b"\xff\xd8 broken since")
    with pytest.raises(InputDataError) as error:
        _prepare(raw, out)
    assert str(error.value) == (
        f"split train: 5 images of 6 (1 corrupt image, e.g. {raw / 'images' / TRAIN[0]}), the "
        "finished dataset has 6: nothing replaced; rerun with --overwrite to replace it"
    )
    assert _snapshot(out) == before and not _leftovers(out)
    # A split of the finished dataset that this run's inputs lack would vanish.
    with pytest.raises(InputDataError, match=r"^split val: not in this run's inputs, the finis"):
        _prepare(raw, out, splits=("train",), overwrite=False)
    assert _snapshot(out) == before and not _leftovers(out)
    meta = _prepare(raw, out, overwrite=True)
    assert meta["splits"]["train"]["images"] == 5 and meta["skipped"] == {"corrupt image": 1}
    source, _ = records.open_split(str(out), "train")
    assert len(source) == 5 and not _leftovers(out)


class _FailingWriter:
    """array_record's writer whose `fail_at`-th shard fails when closed, after writing its
    records to the temporary file: as array_record reports a full disk, or an interruption."""

    real = array_record_module.ArrayRecordWriter
    fail_at = 3
    error: BaseException = RuntimeError(
        "write() failed: No space left on device; writing shard.tmp; at byte 0; Failed to close "
        "chunk_writer"
    )
    opened = 0

    def __init__(self, path: str, options: str):
        type(self).opened += 1
        self.number, self.writer = self.opened, self.real(path, options)

    def write(self, record: bytes) -> None:
        self.writer.write(record)

    def close(self) -> None:
        self.writer.close()
        if self.number == self.fail_at:
            raise self.error


@pytest.mark.parametrize("where", ["shard", "metadata"])
def test_a_full_disk_leaves_the_finished_dataset_as_it_was(
    raw: Path, tmp_path: Path, monkeypatch, where: str
) -> None:
    """ENOSPC midway (array_record's RuntimeError in a shard, an OSError renaming meta.json):
    one line naming --out, the finished dataset's files byte for byte, no temporary file."""
    out = tmp_path / "out"
    _prepare(raw, out)
    before = _snapshot(out)
    if where == "shard":
        monkeypatch.setattr(_FailingWriter, "opened", 0)
        monkeypatch.setattr(array_record_module, "ArrayRecordWriter", _FailingWriter)
    else:
        real_replace = shards.os.replace

        def replace(source, target) -> None:
            if str(target).endswith(records.META_FILE):
                raise OSError(28, "No space left on device", str(source))
            real_replace(source, target)

        monkeypatch.setattr(shards.os, "replace", replace)
    with pytest.raises(InputDataError, match=rf"^--out={out}: no space left on the device"):
        _prepare(raw, out, max_side=24)  # another size: every shard is written again
    assert _snapshot(out) == before
    assert not _leftovers(out)


def test_a_second_preparation_into_the_same_out_stops_in_one_line(
    raw: Path, tmp_path: Path
) -> None:
    """Two preparations into one --out: the second ended in a traceback. It exits 2 naming the
    first, the dataset and the lock as they were; once the first is gone, a rerun takes its lock
    over and finds the dataset up to date."""
    out = tmp_path / "out"
    _prepare(raw, out)
    lock = out / mpii.NAME / writer_lock.LOCK_FILE
    assert not lock.exists()
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        hold_as_another_run(lock, pid=first.pid, command="prepare.mpii (the first)")
        before = _snapshot(out)
        done = subprocess.run(
            [sys.executable, "-m", "input_pipeline.prepare.mpii", f"--images={raw / 'images'}",
             *[f"--annotations={raw / f'mpii_{split}.json'}" for split in ("train", "val")],
             f"--descriptions={raw / 'descriptions'}", f"--out={out}", "--max_side=32",
             "--squash_side=0", "--records_per_shard=2", "--workers=1"],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        first.kill()
        first.wait()
    message = _one_line_error(done)
    assert message.startswith(f"--out={out}: another preparation is writing it"), message
    assert f"pid {first.pid}" in message and "(prepare.mpii (the first))" in message
    assert _snapshot(out) == before
    meta = _prepare(raw, out)
    assert meta["splits"]["train"]["images"] == len(TRAIN)
    assert not lock.exists() and not _leftovers(out)


def test_an_interrupted_run_resumes_from_its_staging_folder(
    raw: Path, tmp_path: Path, monkeypatch
) -> None:
    """Interrupted (Ctrl-C) in its third shard: the two finished shards stay in the staging
    folder, nothing is finished; the rerun encodes only the other images."""
    out = tmp_path / "out"
    monkeypatch.setattr(_FailingWriter, "opened", 0)
    monkeypatch.setattr(_FailingWriter, "error", KeyboardInterrupt())
    monkeypatch.setattr(array_record_module, "ArrayRecordWriter", _FailingWriter)
    with pytest.raises(KeyboardInterrupt):
        _prepare(raw, out)
    monkeypatch.undo()
    staging = _version_dir(out).with_name(records.STAGING + shards.VERSION)
    assert len(list(staging.glob("*.array_record-?????-of-?????"))) == 2
    assert not list(out.rglob("*.tmp")) and not _version_dir(out).exists()
    with pytest.raises(InputDataError, match="no finished preparation"):
        records.open_split(str(out), "train")
    encoded = []
    resize = shards._resize_image
    monkeypatch.setattr(
        shards, "_resize_image", lambda path, *a: encoded.append(path) or resize(path, *a)
    )
    meta = _prepare(raw, out)
    assert len(encoded) == len(TRAIN + VAL) - 4  # the two finished shards: 4 images
    assert {split: info["images"] for split, info in meta["splits"].items()} == {
        "train": 6, "val": 3,
    }  # fmt: skip
    assert not _leftovers(out)


def test_a_swap_cut_short_between_its_renames_is_undone(raw: Path, tmp_path: Path) -> None:
    """A crash after the finished folder was renamed aside, before the new one took its place:
    the readers say so, and the next run puts the finished dataset back."""
    out = tmp_path / "out"
    _prepare(raw, out)
    before = _snapshot(out)
    version_dir = _version_dir(out)
    aside = version_dir.with_name(records.REPLACED + version_dir.name)
    version_dir.rename(aside)
    version_dir.with_name(records.STAGING + version_dir.name).mkdir()
    with pytest.raises(InputDataError, match=r"cut short.*rerun the same prepare command"):
        records.open_split(str(out), "train")
    _prepare(raw, out)
    assert _snapshot(out) == before and not _leftovers(out)
    # A crash after the second rename: the old folder aside is removed by the next run.
    aside.mkdir()
    (aside / records.INFO_FILE).write_text("{}")
    _prepare(raw, out)
    assert _snapshot(out) == before and not _leftovers(out)


def test_a_deleted_shard_is_named_by_the_readers(raw: Path, tmp_path: Path) -> None:
    """A shard deleted under a prepared dataset: one line naming it when the split is opened,
    for training and when a training stream resumes, not array_record's error mid-stream."""
    out = tmp_path / "out"
    _prepare(raw, out)
    config = mpii_config(out, batch_size=2)
    tokenizer = pipeline.create_tokenizer(config)
    iterator = pipeline.train_iterator(config, tokenizer)
    next(iterator)
    state = iterator.get_state()
    written = sorted(_version_dir(out).glob("*-train.array_record-?????-of-?????"))
    written[1].unlink()
    missing = rf"^{re.escape(str(written[1]))}: a shard of split 'train' is missing"
    with pytest.raises(InputDataError, match=missing):
        records.open_split(str(out), "train")
    with pytest.raises(InputDataError, match=missing):
        sources.get("mpii").train_source(config.data)
    with pytest.raises(InputDataError, match=missing):
        pipeline.train_iterator(config, tokenizer).set_state(state)
    index = Path(str(written[2]) + records.SOURCES_SUFFIX)
    index.unlink()
    with pytest.raises(InputDataError, match=rf"^{re.escape(str(index))}: missing"):
        records.read_index(str(written[2]))


def test_descriptions_that_are_not_text_are_dropped_and_counted(
    raw: Path, tmp_path: Path, caplog
) -> None:
    """A number or a list where one source's description belongs: the image keeps the other
    source's text; each is counted in meta.json and named in the log."""
    for name, bad in ((TRAIN[0], ["raises", "the arm"]), (TRAIN[1], 3)):
        file = raw / "descriptions" / "llama-2" / f"{Path(name).stem}.json"
        file.write_text(json.dumps(json.loads(file.read_text()) | {"description": bad}))
    with caplog.at_level("WARNING"):
        meta = _prepare(raw, tmp_path / "out")
    assert meta["corrected"] == {"descriptions that are not text (dropped)": 2}
    assert meta["skipped"] == {} and meta["splits"]["train"]["descriptions"]["llama-2"] == 4
    assert f"{raw / 'descriptions' / 'llama-2' / '000.json'} [item 0].description" in caplog.text
    source, _ = records.open_split(str(tmp_path / "out"), "train")
    first = records.decode_prepared(source[0]).header
    assert first["image"] == TRAIN[0] and set(first["descriptions"]) == {"gpt-4"}


# --- COCO: the same promises through its own program -----------------------------------------


@pytest.fixture
def coco(tmp_path: Path) -> dict[str, tuple[Path, Path, Path]]:
    """tests.test_coco's fixtures: per split its images folder, keypoints and captions files."""
    rng = np.random.default_rng(0)
    return {
        "train": coco_split(tmp_path, "train", 100, rng),
        "val": coco_split(tmp_path, "val", 200, rng),
    }


def _run_coco(coco: dict, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [f"--out={out}", "--workers=1", "--max_side=32", "--squash_side=0", *extra]
    for images, annotations, captions in coco.values():
        args += [f"--images={images}", f"--annotations={annotations}", f"--captions={captions}"]
    return subprocess.run(
        [sys.executable, "-m", "input_pipeline.prepare.coco", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), done.stderr[-3000:]
    return last.removeprefix("error: ")


def _edit(path: Path, change) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def test_coco_refuses_a_split_it_would_leave_empty(coco: dict, tmp_path: Path) -> None:
    """A val split of crowd regions only vanished, exit 0; so did a train split whose captions
    all point at unknown image ids; a split of unreadable images crashed after writing."""
    out = tmp_path / "out"
    _, val_keypoints, _ = coco["val"]
    _edit(val_keypoints, lambda c: [a.update(iscrowd=1) for a in c["annotations"]])
    message = _one_line_error(_run_coco(coco, out))
    assert message.startswith(f"--annotations={val_keypoints}: no image of split val "), message
    assert "crowd regions" in message and not out.exists()

    coco = dict(coco, val=coco_split(tmp_path / "again", "val", 200, np.random.default_rng(1)))
    _, _, train_captions = coco["train"]
    unknown_ids = lambda c: [a.update(image_id=a["image_id"] + 1000) for a in c["annotations"]]
    _edit(train_captions, unknown_ids)
    message = _one_line_error(_run_coco(coco, out))
    assert "no image of split train" in message and "15 captions of images not in" in message
    assert not out.exists()

    coco = dict(coco, train=coco_split(tmp_path / "third", "train", 100, np.random.default_rng(2)))
    for image in coco["val"][0].iterdir():
        image.write_bytes(b"\xff\xd8 not a jpeg")
    message = _one_line_error(_run_coco(coco, out, "--overwrite"))
    assert message.startswith("split val: 0 images of 2 (2 corrupt image, e.g. "), message
    assert not out.exists()


def test_coco_names_swapped_files_nulls_and_people_of_unlisted_images(
    coco: dict, tmp_path: Path
) -> None:
    """--annotations and --captions swapped gave a KeyError; a `null` caption was stored as the
    text "None"; people of an image missing from `images` vanished uncounted."""
    images, keypoints, captions = coco["train"]
    message = _one_line_error(_run_coco({"train": (images, captions, keypoints)}, tmp_path / "o"))
    assert message.startswith(f"--annotations={captions}: holds COCO captions"), message
    assert "swapped" in message

    _edit(captions, lambda c: c["annotations"][0].update(caption=None))
    _edit(keypoints, lambda c: c["annotations"].append(c["annotations"][0] | {"image_id": 999}))
    found, left_out = prepare_coco.read_coco(str(keypoints), str(captions))
    texts = [text for record in found for text in record.descriptions.values()]
    assert "None" not in texts and len(texts) == 9  # 2 images, 10 captions, one of them null
    assert left_out["captions empty or not text"] == 1
    assert left_out["people of images not in the keypoints file's 'images'"] == 1


def test_default_settings_keep_the_fingerprint_and_meta_of_datasets_already_written() -> None:
    """Settings added later enter a shard's fingerprint and meta.json only when not at their
    default: a dataset prepared before them stays up to date, nothing is re-encoded."""
    assert shards.Encoding().fingerprint_text() == "512,90,224"
    assert shards.Encoding().meta() == {"max_side": 512, "quality": 90, "squash_side": 224}
    changed = shards.Encoding(copy_format="raw", person_side=224, image_format="raw")
    assert changed.fingerprint_text() == "512,90,224,copies=raw,person=224@0.15,image=raw"
    assert changed.meta()["copy_format"] == "raw" and changed.meta()["person_margin"] == 0.15
    assert changed.meta()["image_format"] == "raw"
