"""MPII images + annotations + pose descriptions → ArrayRecord shards the training stream reads.

    python -m input_pipeline.prepare_mpii --images=<dir> --annotations=<mpii_train.json> \\
        --annotations=<mpii_val.json> --descriptions=<dir> --out=<dir> [--max_side=512] \\
        [--squash_side=224]

Plain ArrayRecord files (not a TFDS builder): grain reads them directly, and TFDS would add a large
dependency for a manifest we write in a few lines (`meta.json`).

Each shard holds a fixed, sorted slice of a split and is named by a fingerprint of all its inputs
(settings, annotations, descriptions, and its image files' sizes and modification times). It is
written to a temporary name and renamed when complete, with an index beside it (each record's
description sources, what was skipped and corrected): a rerun skips finished shards (resumable
after an interruption), rewrites exactly those whose inputs changed (a repaired image gets in) and
removes the shards they supersede. Shards run in parallel over the host's cores; workers end with
their parent. Bad input is skipped and counted: a missing or corrupt image, an image without
visible joints, an empty or missing description; visible joints outside the image become not
visible, and people left with none are dropped (both counted in meta.json's `corrected`).
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
from PIL import Image

from input_pipeline import files, mpii

FLAGS = flags.FLAGS

SKIP_EXAMPLES = 5  # paths logged per skip reason


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
) -> tuple[int, dict[str, list[str]]]:
    """Write one shard (temporary name, then rename) and its description-source index (renamed
    first: a shard on disk always has one); returns (written, skipped paths by reason, counts of
    corrected annotations)."""
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    corrected: collections.Counter = collections.Counter()
    tmp = path + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    sources: list[list[str]] = []
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
        entry = mpii.encode_prepared(
            record, jpeg, size=size, squashed=squashed, squashed_side=squash_side
        )
        writer.write(entry)
        sources.append(sorted(record.descriptions))
    writer.close()
    counts = {reason: len(paths) for reason, paths in skipped.items()}
    _write_index(path, sources, counts, dict(corrected))
    os.replace(tmp, path)
    return len(sources), dict(skipped), dict(corrected)


def _write_index(
    shard: str, sources: list[list[str]], skipped: dict[str, int], corrected: dict[str, int]
) -> None:
    """The shard's index: each record's description sources, and what writing it skipped and
    corrected (so that meta.json counts them after a resume too)."""
    index = shard + mpii.SOURCES_SUFFIX
    body = {"sources": sources, "skipped": skipped, "corrected": corrected}
    Path(index + ".tmp").write_text(json.dumps(body, separators=(",", ":")))
    os.replace(index + ".tmp", index)


def _index_shard(shard: str, planned: int) -> None:
    """The index of a shard written before indexes existed, read from its records; the records
    it lacks of those planned are counted as unreadable images."""
    reader = array_record_module.ArrayRecordReader(shard)
    try:
        headers = [mpii.decode_prepared(entry).header for entry in reader.read_all()]
    finally:
        reader.close()
    missing = {"missing or corrupt image": planned - len(headers)} if planned > len(headers) else {}
    _write_index(shard, [sorted(h["descriptions"]) for h in headers], missing, {})


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


SHARD_NAME = re.compile(r"[a-z0-9_]+-[0-9a-f]{16}-\d{5}-of-\d{5}\.array_record")


def _remove_superseded(out_dir: Path, kept: set[str]) -> None:
    """Shards of an earlier run that this one replaced (their inputs changed), and their indexes."""
    stale = [p for p in out_dir.iterdir() if SHARD_NAME.fullmatch(p.name) and p.name not in kept]
    for shard in stale:
        shard.unlink()
        Path(str(shard) + mpii.SOURCES_SUFFIX).unlink(missing_ok=True)
    if stale:
        logging.info("removed %d shards superseded by this run", len(stale))


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
    max_side: int = 512,
    quality: int = 90,
    squash_side: int = 224,
    records_per_shard: int = 512,
    workers: int = 0,
) -> dict:
    """Filter, shard and write records of any skeleton (COCO's preparation writes through here
    too); returns (and writes as meta.json) the counts per split."""
    start = time.perf_counter()
    records, skipped = _filter(records)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_split = collections.defaultdict(list)
    for record in sorted(records, key=lambda r: (r.split, r.image)):
        by_split[record.split].append(record)

    jobs = {}  # shard file name → its records
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
            names.append(f"{split}-{tag}-{i:05d}-of-{n:05d}.array_record")
            jobs[names[-1]] = shard_rows
        meta["splits"][split] = {"shards": names, "images": len(rows)}
    todo = {k: v for k, v in jobs.items() if not (out_dir / k).is_file()}
    for name in jobs.keys() - todo.keys():  # finished before source indexes existed
        if not (out_dir / (name + mpii.SOURCES_SUFFIX)).is_file():
            _index_shard(str(out_dir / name), len(jobs[name]))
    logging.info(
        "%d shards, %d finished before, %d to write", len(jobs), len(jobs) - len(todo), len(todo)
    )

    workers = workers or os.cpu_count() or 1
    skipped_images: dict[str, list[str]] = collections.defaultdict(list)
    args = [
        (rows, images, str(out_dir / name), max_side, quality, squash_side)
        for name, rows in todo.items()
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
        for done, (name, (written, shard_skipped, _)) in enumerate(
            zip(todo, results, strict=True), 1
        ):
            for reason, paths in shard_skipped.items():
                skipped_images[reason] += paths
            elapsed = time.perf_counter() - start
            logging.info(
                "[%d/%d shards] %s: %d images | %.0f s elapsed, ETA %.0f s", done, len(todo),
                name, written, elapsed, elapsed / done * (len(todo) - done),
            )  # fmt: skip
    # Counted from the shards' indexes: the same after a resume as after one run.
    written_skips: collections.Counter = collections.Counter()
    corrected: collections.Counter = collections.Counter()
    for info in meta["splits"].values():
        info["images"] = sum(_num_records(out_dir / name) for name in info["shards"])
        indexes = [mpii.read_index(str(out_dir / name)) for name in info["shards"]]
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
    _remove_superseded(out_dir, set(jobs))
    _report(meta, skipped | skipped_images, out_dir)
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


def _report(meta: dict, skipped: dict[str, list[str]], out_dir: Path) -> None:
    """Counts per split (checked against the mmpose splits) and skips; meta.json written last."""
    for split, info in meta["splits"].items():
        expected = mpii.EXPECTED_IMAGES.get(split)
        note = "" if expected in (None, info["images"]) else f" (mmpose split: {expected})"
        shards = len(info["shards"])
        logging.info("split %s: %d images in %d shards%s", split, info["images"], shards, note)
    for reason, paths in skipped.items():
        logging.warning("skipped %d (%s), e.g. %s", len(paths), reason, paths[:SKIP_EXAMPLES])
    (out_dir / mpii.META_FILE).write_text(json.dumps(meta, indent=1))


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
    flags.DEFINE_string("out", None, "Output folder for the shards and meta.json.")
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
