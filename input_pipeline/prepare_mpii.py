"""MPII images + annotations + pose descriptions → a TFDS dataset (ArrayRecord) training streams.

    python -m input_pipeline.prepare_mpii --images=<dir> --annotations=<mpii_train.json> \\
        --annotations=<mpii_val.json> --descriptions=<dir> --out=<dir> [--max_side=512] \\
        [--squash_side=224]

`--out` becomes a TFDS data_dir holding the dataset `mpii_pose_descriptions/1.0.0/`: ArrayRecord
shards `mpii_pose_descriptions-<split>.array_record-NNNNN-of-NNNNN` whose one feature (`entry`)
is an `mpii.encode_prepared` record, and its TFDS metadata (dataset_info.json with the splits and
their counts, features.json), written through TFDS's own DatasetInfo, last: its presence marks a
finished preparation. `tfds.builder_from_directory(...).as_data_source()` or
`tfds.data_source("mpii_pose_descriptions", data_dir=<out>)` opens it without TensorFlow. The
shards are written here rather than by a TFDS builder's `download_and_prepare`, which writes a
dataset in one go: here a rerun resumes.

Each shard holds a fixed, sorted slice of a split; its index beside it (`.sources.json`: each
record's description sources, what was skipped and corrected) carries a fingerprint of all its
inputs (settings, annotations, descriptions, and its image files' sizes and modification times).
A shard is written to a temporary name and renamed when complete, then indexed: a rerun skips
finished shards (resumable after an interruption), rewrites exactly those whose inputs changed (a
repaired image gets in) and removes those no longer planned. Shards of the earlier plain layout
in `--out` (`<split>-<fingerprint>-NNNNN-of-NNNNN.array_record` and meta.json) with the same
inputs are converted without re-encoding images, then removed. Shards run in parallel over the
host's cores; workers end with their parent. Bad input is skipped and counted: a missing or
corrupt image, an image without visible joints, an empty or missing description; visible joints
outside the image become not visible, and people left with none are dropped (both counted in
meta.json's `corrected`).
"""

import collections
import concurrent.futures
import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from array_record.python import array_record_module
from etils import epath
from PIL import Image

from input_pipeline import files, mpii

FLAGS = flags.FLAGS

SKIP_EXAMPLES = 5  # paths logged per skip reason
NAME = "mpii_pose_descriptions"  # the TFDS dataset name (prepare_coco's is its own)
VERSION = "1.0.0"
DESCRIPTION = (
    "FocusCLIP's prepared images with keypoints and descriptions (input_pipeline.prepare_mpii or "
    "prepare_coco): per image one `entry` feature holding the resized JPEG, its squashed copy, "
    "keypoints and descriptions, decoded by input_pipeline.mpii.decode_prepared."
)


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _resize_jpeg(
    path: Path, max_side: int, quality: int, squash_side: int
) -> tuple[bytes, tuple[int, int], bytes, np.ndarray, tuple[int, int]]:
    """The image re-encoded with its longest side <= max_side, its size, the whole image squashed
    to squash_side² (b"" when 0: the `squash` crop then decodes it as is, no resize at train time),
    the (x, y) scale applied to the stored image, and the original size."""
    with Image.open(path) as image:
        full = image.size
        scale = min(1.0, max_side / max(full))
        size = (max(1, round(full[0] * scale)), max(1, round(full[1] * scale)))
        # JPEG: decode at 1/2, 1/4, 1/8 scale, never below `size` nor the squashed side
        image.draft("RGB", (max(size[0], squash_side), max(size[1], squash_side)))
        image = image.convert("RGB")
    stored = image if image.size == size else image.resize(size, Image.LANCZOS)
    squashed = b""
    if squash_side:
        squashed = _encode_jpeg(image.resize((squash_side, squash_side), Image.LANCZOS), quality)
    scale_xy = np.array(size, np.float32) / np.array(full, np.float32)
    return _encode_jpeg(stored, quality), size, squashed, scale_xy, full


OUTSIDE_JOINTS = "visible joints outside the image (made not visible)"
OUTSIDE_PEOPLE = "people with no visible joint inside the image (dropped)"


def _keep_inside(record: mpii.MpiiRecord, width: int, height: int) -> collections.Counter:
    """Visible joints outside the image become not visible (one at (1e9, 1e9) would spread the
    heatmap over the frame); people left with none are dropped. Returns the counts."""
    counts: collections.Counter = collections.Counter()
    people = []
    for person in record.people:
        x, y = person.keypoints[:, 0], person.keypoints[:, 1]
        inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
        counts[OUTSIDE_JOINTS] += int((person.visible & ~inside).sum())
        person.visible = person.visible & inside
        if person.visible.any():
            people.append(person)
    counts[OUTSIDE_PEOPLE] += len(record.people) - len(people)
    record.people = people
    return counts


def _write_shard(
    records: list[mpii.MpiiRecord],
    images: str,
    path: str,
    max_side: int,
    quality: int,
    squash_side: int,
    fingerprint: str,
    legacy: str,
) -> tuple[int, dict[str, list[str]]]:
    """Write one shard (temporary name, then rename) and then its index; returns (written,
    skipped paths by reason). `legacy`: the same slice in the earlier plain layout, converted
    when it is there."""
    if os.path.isfile(legacy) and os.path.isfile(legacy + mpii.SOURCES_SUFFIX):
        reader = array_record_module.ArrayRecordReader(legacy)
        try:
            entries = reader.read_all()
        finally:
            reader.close()
        index = json.loads(Path(legacy + mpii.SOURCES_SUFFIX).read_text())
        _write_entries(path, entries)
        _write_index(path, index["sources"], index["skipped"], index["corrected"], fingerprint)
        return len(entries), {}
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    corrected: collections.Counter = collections.Counter()
    entries, sources = [], []
    for record in records:
        file = Path(images) / record.image
        try:
            jpeg, size, squashed, scale, full = _resize_jpeg(file, max_side, quality, squash_side)
        except FileNotFoundError:
            skipped["missing image"].append(str(file))
            continue
        except (OSError, ValueError, Image.DecompressionBombError):
            skipped["corrupt image"].append(str(file))
            continue
        corrected += _keep_inside(record, *full)
        if not record.people:
            skipped["no visible joint inside the image"].append(str(file))
            continue
        for person in record.people:
            person.keypoints = (person.keypoints + 0.5) * scale - 0.5
        entries.append(
            mpii.encode_prepared(
                record, jpeg, size=size, squashed=squashed, squashed_side=squash_side
            )
        )
        sources.append(sorted(record.descriptions))
    _write_entries(path, entries)
    counts = {reason: len(paths) for reason, paths in skipped.items()}
    _write_index(path, sources, counts, dict(corrected), fingerprint)
    return len(sources), dict(skipped)


def _write_entries(path: str, entries: list[bytes]) -> None:
    """A shard of `encode_prepared` entries as TFDS records: written under a temporary name,
    renamed when complete."""
    features = mpii.tfds_features()
    writer = array_record_module.ArrayRecordWriter(path + ".tmp", "group_size:1")
    for entry in entries:
        writer.write(features.serialize_example({mpii.ENTRY: entry}))
    writer.close()
    os.replace(path + ".tmp", path)


def _write_index(
    shard: str,
    sources: list[list[str]],
    skipped: dict[str, int],
    corrected: dict[str, int],
    fingerprint: str,
) -> None:
    """The shard's index: each record's description sources, what writing it skipped and
    corrected (so that meta.json counts them after a resume too) and its inputs' fingerprint.
    Written after the shard: a shard without its index is rewritten."""
    index = shard + mpii.SOURCES_SUFFIX
    body = {
        "sources": sources,
        "skipped": skipped,
        "corrected": corrected,
        "fingerprint": fingerprint,
    }
    Path(index + ".tmp").write_text(json.dumps(body, separators=(",", ":")))
    os.replace(index + ".tmp", index)


def _is_done(shard: Path, fingerprint: str) -> bool:
    """Written from these very inputs (a rerun skips it)."""
    index = Path(str(shard) + mpii.SOURCES_SUFFIX)
    if not (shard.is_file() and index.is_file()):
        return False
    try:
        return json.loads(index.read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def _filter(records: list[mpii.MpiiRecord]) -> tuple[list[mpii.MpiiRecord], dict[str, list[str]]]:
    """Drop what training cannot use, with reasons; people without visible joints are dropped."""
    kept, skipped = [], collections.defaultdict(list)
    for record in records:
        record.people = [p for p in record.people if p.visible.any()]
        if not record.people:
            skipped["no visible joints"].append(record.image)
        elif not any(t.strip() for t in record.descriptions.values()):
            skipped["no description"].append(record.image)
        else:
            kept.append(record)
    return kept, skipped


def _fingerprint(records: list[mpii.MpiiRecord], images: str, settings: str) -> str:
    """Identifies a shard by all its inputs: the settings, each record's annotations and
    descriptions, and its image file's size and modification time. A rerun after any of them
    changes (an image repaired, a description fixed) rewrites exactly the shards concerned."""
    digest = hashlib.sha256(settings.encode())
    for r in records:
        digest.update(r.image.encode())
        digest.update(json.dumps(r.descriptions, sort_keys=True).encode())
        for p in r.people:
            digest.update(p.keypoints.tobytes() + p.visible.tobytes())
        try:
            stat = (Path(images) / r.image).stat()
            digest.update(f"{stat.st_size},{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()[:16]


SHARD_NAME = re.compile(r"[a-z0-9_]+-[a-z]+\.array_record-\d{5}-of-\d{5}")
LEGACY_SHARD = re.compile(r"[a-z]+-[0-9a-f]{16}-\d{5}-of-\d{5}\.array_record")


def _remove_superseded(version_dir: Path, kept: set[str]) -> None:
    """Shards of an earlier run that this one no longer plans (another sharding), and their
    indexes."""
    stale = [p for p in version_dir.iterdir() if SHARD_NAME.fullmatch(p.name)]
    stale = [p for p in stale if p.name not in kept]
    for shard in stale:
        shard.unlink()
        Path(str(shard) + mpii.SOURCES_SUFFIX).unlink(missing_ok=True)
    if stale:
        logging.info("removed %d shards superseded by this run", len(stale))


def _remove_legacy(out_dir: Path) -> None:
    """The earlier plain layout's shards, indexes and meta.json, once converted."""
    legacy = [p for p in out_dir.iterdir() if LEGACY_SHARD.fullmatch(p.name)]
    for shard in legacy:
        shard.unlink()
        Path(str(shard) + mpii.SOURCES_SUFFIX).unlink(missing_ok=True)
    if legacy:
        (out_dir / mpii.META_FILE).unlink(missing_ok=True)
        logging.info("converted %d plain ArrayRecord shards to the TFDS dataset", len(legacy))


def prepare(
    images: str,
    annotations: list[str],
    descriptions: str,
    out: str,
    *,
    max_side: int = 512,
    quality: int = 90,
    squash_side: int = 224,
    records_per_shard: int = 512,
    workers: int = 0,
) -> dict:
    """Read, filter, shard and write; returns (and writes as meta.json) the counts per split."""
    records = [r for a in annotations for r in mpii.read_annotations(a)]
    records = mpii.attach_descriptions(records, mpii.read_descriptions(descriptions))
    return write_prepared(
        records,
        images,
        out,
        max_side=max_side,
        quality=quality,
        squash_side=squash_side,
        records_per_shard=records_per_shard,
        workers=workers,
    )


def write_prepared(
    records: list[mpii.MpiiRecord],
    images: str,
    out: str,
    *,
    name: str = NAME,
    max_side: int = 512,
    quality: int = 90,
    squash_side: int = 224,
    records_per_shard: int = 512,
    workers: int = 0,
) -> dict:
    """Filter, shard and write records of any skeleton as the TFDS dataset `name` under `out`
    (COCO's preparation writes through here too); returns (and writes as meta.json) the counts
    per split."""
    start = time.perf_counter()
    records, skipped = _filter(records)
    out_dir = Path(out)
    version_dir = out_dir / name / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    by_split = collections.defaultdict(list)
    for record in sorted(records, key=lambda r: (r.split, r.image)):
        by_split[record.split].append(record)

    jobs = {}  # shard file name → (its records, their fingerprint, the same slice's legacy shard)
    meta: dict = {
        "max_side": max_side,
        "quality": quality,
        "squash_side": squash_side,
        "splits": {},
    }
    settings = f"{max_side},{quality},{squash_side}"
    for split, rows in sorted(by_split.items()):
        n = max(1, -(-len(rows) // records_per_shard))
        names = []
        for i in range(n):
            shard_rows = rows[i * records_per_shard : (i + 1) * records_per_shard]
            tag = _fingerprint(shard_rows, images, settings)
            names.append(f"{name}-{split}.array_record-{i:05d}-of-{n:05d}")
            legacy = out_dir / f"{split}-{tag}-{i:05d}-of-{n:05d}.array_record"
            jobs[names[-1]] = (shard_rows, tag, str(legacy))
        meta["splits"][split] = {"shards": names, "images": len(rows)}
    todo = {k: v for k, v in jobs.items() if not _is_done(version_dir / k, v[1])}
    if todo:  # unfinished until its metadata is written again
        (version_dir / mpii.INFO_FILE).unlink(missing_ok=True)
    logging.info(
        "%d shards, %d finished before, %d to write", len(jobs), len(jobs) - len(todo), len(todo)
    )

    workers = workers or os.cpu_count() or 1
    skipped_images: dict[str, list[str]] = collections.defaultdict(list)
    args = [
        (rows, images, str(version_dir / shard), max_side, quality, squash_side, tag, legacy)
        for shard, (rows, tag, legacy) in todo.items()
    ]
    with contextlib.ExitStack() as stack:
        if min(workers, len(args)) > 1:
            spawn = multiprocessing.get_context("spawn")  # fork is unsafe once threads (JAX) run
            pool = stack.enter_context(
                concurrent.futures.ProcessPoolExecutor(
                    workers, spawn, initializer=_exit_with_parent, initargs=(os.getpid(),)
                )
            )
            results = pool.map(_write_shard, *zip(*args, strict=True))
        else:  # no pool to start for a single writer
            results = (_write_shard(*a) for a in args)
        for done, (shard, (written, shard_skipped)) in enumerate(
            zip(todo, results, strict=True), 1
        ):
            for reason, paths in shard_skipped.items():
                skipped_images[reason] += paths
            elapsed = time.perf_counter() - start
            logging.info(
                "[%d/%d shards] %s: %d images | %.0f s elapsed, ETA %.0f s", done, len(todo),
                shard, written, elapsed, elapsed / done * (len(todo) - done),
            )  # fmt: skip
    # Counted from the shards' indexes: the same after a resume as after one run.
    written_skips: collections.Counter = collections.Counter()
    corrected: collections.Counter = collections.Counter()
    for info in meta["splits"].values():
        info["shard_lengths"] = [_num_records(version_dir / shard) for shard in info["shards"]]
        info["images"] = sum(info["shard_lengths"])
        indexes = [mpii.read_index(str(version_dir / shard)) for shard in info["shards"]]
        sources = collections.Counter(s for index in indexes for r in index["sources"] for s in r)
        info["descriptions"] = dict(sorted(sources.items()))
        for index in indexes:
            written_skips.update(index["skipped"])
            corrected.update(index["corrected"])
    for split, rows in by_split.items():  # annotated people per image (data.max_people keeps P)
        people = collections.Counter(len(r.people) for r in rows)
        meta["splits"][split]["people_per_image"] = {str(k): people[k] for k in sorted(people)}
    meta["skipped"] = {reason: len(paths) for reason, paths in skipped.items()}
    meta["skipped"] |= {reason: n for reason, n in sorted(written_skips.items()) if n}
    meta["corrected"] = {reason: n for reason, n in sorted(corrected.items()) if n}
    _remove_superseded(version_dir, set(jobs))
    _report(meta, skipped | skipped_images, version_dir)
    finish(version_dir, name, meta)
    _remove_legacy(out_dir)
    return meta


def finish(version_dir: Path, name: str, meta: dict) -> None:
    """meta.json, then the TFDS metadata (features.json, dataset_info.json with each split's
    shard lengths and bytes), written through TFDS's DatasetInfo and renamed into place:
    dataset_info.json last, as it marks a finished preparation. Checked by opening it as TFDS
    does."""
    import tensorflow_datasets as tfds

    _atomic_write(version_dir / mpii.META_FILE, json.dumps(meta, indent=1))
    identity = tfds.core.DatasetIdentity(
        name=name, version=tfds.core.Version(VERSION), data_dir=str(version_dir), module_name=""
    )
    info = tfds.core.DatasetInfo(
        builder=identity, description=DESCRIPTION, features=mpii.tfds_features()
    )
    info.set_file_format("array_record")
    template = tfds.core.ShardedFileTemplate(
        data_dir=epath.Path(version_dir), dataset_name=name, filetype_suffix="array_record"
    )
    splits = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=split_meta["shard_lengths"],
            num_bytes=sum((version_dir / s).stat().st_size for s in split_meta["shards"]),
            filename_template=template,
        )
        for split, split_meta in meta["splits"].items()
    ]
    info.set_splits(tfds.core.SplitDict(splits))
    staging = version_dir / "info.tmp"
    staging.mkdir(exist_ok=True)
    info.write_to_directory(staging)
    for file in sorted(staging.iterdir(), key=lambda p: p.name == mpii.INFO_FILE):
        os.replace(file, version_dir / file.name)
    staging.rmdir()
    opened = tfds.builder_from_directory(str(version_dir))
    for split, split_meta in meta["splits"].items():
        if len(opened.as_data_source(split=split)) != split_meta["images"]:
            raise RuntimeError(f"{version_dir}: TFDS reads another count for split {split!r}")


def _atomic_write(path: Path, text: str) -> None:
    Path(str(path) + ".tmp").write_text(text)
    os.replace(str(path) + ".tmp", path)


def write_split(
    out: str | Path,
    split: str,
    entries: list[bytes],
    *,
    name: str = NAME,
    records_per_shard: int = 512,
) -> dict:
    """`encode_prepared` entries written as `split` of the dataset `name` under `out`, its other
    splits kept: for fixtures and benchmarks that make records without images."""
    version_dir = Path(out) / name / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    meta_file = version_dir / mpii.META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"splits": {}}
    n = max(1, -(-len(entries) // records_per_shard))
    shards = [f"{name}-{split}.array_record-{i:05d}-of-{n:05d}" for i in range(n)]
    lengths = []
    for i, shard in enumerate(shards):
        chunk = entries[i * records_per_shard : (i + 1) * records_per_shard]
        sources = [sorted(mpii.decode_prepared(entry).header["descriptions"]) for entry in chunk]
        _write_entries(str(version_dir / shard), chunk)
        _write_index(str(version_dir / shard), sources, {}, {}, fingerprint="")
        lengths.append(len(chunk))
    meta["splits"][split] = {"shards": shards, "shard_lengths": lengths, "images": len(entries)}
    _remove_superseded(version_dir, {s for info in meta["splits"].values() for s in info["shards"]})
    finish(version_dir, name, meta)
    return meta


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: a worker ends soon after its parent does (SIGTERM, SIGKILL), instead of
    finishing its shard into --out and then waiting forever for more work."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _num_records(path: Path) -> int:
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
        return reader.num_records()
    finally:
        reader.close()


def _report(meta: dict, skipped: dict[str, list[str]], version_dir: Path) -> None:
    """Counts per split (checked against the mmpose splits) and skips."""
    for split, info in meta["splits"].items():
        expected = mpii.EXPECTED_IMAGES.get(split)
        note = "" if expected in (None, info["images"]) else f" (mmpose split: {expected})"
        shards = len(info["shards"])
        logging.info("split %s: %d images in %d shards%s", split, info["images"], shards, note)
    for reason, paths in skipped.items():
        logging.warning("skipped %d (%s), e.g. %s", len(paths), reason, paths[:SKIP_EXAMPLES])
    logging.info("TFDS dataset written to %s", version_dir)


def main(argv: list[str]) -> None:
    del argv
    for name in ("images", "annotations", "descriptions", "out"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    meta = prepare(
        FLAGS.images,
        FLAGS.annotations,
        FLAGS.descriptions,
        FLAGS.out,
        max_side=FLAGS.max_side,
        quality=FLAGS.quality,
        squash_side=FLAGS.squash_side,
        records_per_shard=FLAGS.records_per_shard,
        workers=FLAGS.workers,
    )
    counts = {split: info["images"] for split, info in meta["splits"].items()}
    print(json.dumps(counts | {"skipped": meta["skipped"]}))


def _define_flags() -> None:
    """Only when run as a program: importing this module must not claim flag names."""
    flags.DEFINE_string("images", None, "MPII images folder.")
    flags.DEFINE_multi_string("annotations", None, "mmpose JSON(s), official .mat or descriptions.")
    flags.DEFINE_string(
        "descriptions", None, "Description JSON file or folder (one subfolder per source)."
    )
    flags.DEFINE_string("out", None, f"Output TFDS data_dir (the dataset: <out>/{NAME}/).")
    flags.DEFINE_integer("max_side", 512, "Longest side of the re-encoded JPEGs, pixels.")
    flags.DEFINE_integer("quality", 90, "JPEG quality of the re-encoded images.")
    flags.DEFINE_integer(
        "squash_side",
        224,
        "Side of a stored copy squashed to a square (the `squash` crop at "
        "this data.image_size decodes it without resizing); 0: none.",
    )
    flags.DEFINE_integer("records_per_shard", 512, "Images per ArrayRecord shard.")
    flags.DEFINE_integer("workers", 0, "Parallel shard writers; 0: one per core.")


if __name__ == "__main__":
    _define_flags()
    files.run(main)
