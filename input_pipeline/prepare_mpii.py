"""MPII images + annotations + pose descriptions → ArrayRecord shards the training stream reads.

    python -m input_pipeline.prepare_mpii --images=<dir> --annotations=<mpii_train.json> \\
        --annotations=<mpii_val.json> --descriptions=<dir> --out=<dir> [--max_side=512] \\
        [--squash_side=224]

Plain ArrayRecord files (not a TFDS builder): grain reads them directly, and TFDS would add a large
dependency for a manifest we write in a few lines (`meta.json`).

Each shard holds a fixed, sorted slice of a split, is written to a temporary name and renamed when
complete: a rerun skips finished shards (resumable after an interruption) and rewrites nothing
(idempotent). Shards run in parallel over the host's cores. Bad input is skipped and counted: a
missing or corrupt image, an image without visible joints, an empty or missing description.
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
) -> tuple[bytes, tuple[int, int], bytes, np.ndarray]:
    """The image re-encoded with its longest side <= max_side, its size, the whole image squashed
    to squash_side² (b"" when 0: the `squash` crop then decodes it as is, no resize at train time),
    and the (x, y) scale applied to the stored image."""
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
    return _encode_jpeg(stored, quality), size, squashed, scale_xy


def _write_shard(
    records: list[mpii.MpiiRecord],
    images: str,
    path: str,
    max_side: int,
    quality: int,
    squash_side: int,
) -> tuple[int, dict[str, list[str]]]:
    """Write one shard (temporary name, then rename) and its description-source index (renamed
    first: a shard on disk always has one); returns (written, skipped paths by reason)."""
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    tmp = path + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    sources: list[list[str]] = []
    for record in records:
        file = Path(images) / record.image
        try:
            jpeg, size, squashed, scale = _resize_jpeg(file, max_side, quality, squash_side)
        except FileNotFoundError:
            skipped["missing image"].append(str(file))
            continue
        except (OSError, ValueError, Image.DecompressionBombError):
            skipped["corrupt image"].append(str(file))
            continue
        for person in record.people:
            person.keypoints = (person.keypoints + 0.5) * scale - 0.5
        entry = mpii.encode_prepared(
            record, jpeg, size=size, squashed=squashed, squashed_side=squash_side
        )
        writer.write(entry)
        sources.append(sorted(record.descriptions))
    writer.close()
    _write_index(path, sources)
    os.replace(tmp, path)
    return len(sources), dict(skipped)


def _write_index(shard: str, sources: list[list[str]]) -> None:
    index = shard + mpii.SOURCES_SUFFIX
    Path(index + ".tmp").write_text(json.dumps(sources, separators=(",", ":")))
    os.replace(index + ".tmp", index)


def _index_shard(shard: str) -> None:
    """The source index of a shard written before indexes existed, read from its records."""
    reader = array_record_module.ArrayRecordReader(shard)
    try:
        headers = [mpii.decode_prepared(entry).header for entry in reader.read_all()]
    finally:
        reader.close()
    _write_index(shard, [sorted(h["descriptions"]) for h in headers])


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


def _fingerprint(
    records: list[mpii.MpiiRecord], max_side: int, quality: int, squash_side: int
) -> str:
    """Identifies the shard contents: a rerun with other inputs or settings must not mix shards."""
    digest = hashlib.sha256(f"{max_side},{quality},{squash_side}".encode())
    for r in records:
        digest.update(r.image.encode())
        digest.update(json.dumps(r.descriptions, sort_keys=True).encode())
        for p in r.people:
            digest.update(p.keypoints.tobytes() + p.visible.tobytes())
    return digest.hexdigest()[:16]


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
    start = time.perf_counter()
    records = [r for a in annotations for r in mpii.read_annotations(a)]
    records = mpii.attach_descriptions(records, mpii.read_descriptions(descriptions))
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
    for split, rows in sorted(by_split.items()):
        tag = _fingerprint(rows, max_side, quality, squash_side)
        n = max(1, -(-len(rows) // records_per_shard))
        names = [f"{split}-{tag}-{i:05d}-of-{n:05d}.array_record" for i in range(n)]
        for i, name in enumerate(names):
            jobs[name] = rows[i * records_per_shard : (i + 1) * records_per_shard]
        meta["splits"][split] = {"shards": names, "images": len(rows)}
    todo = {k: v for k, v in jobs.items() if not (out_dir / k).is_file()}
    for name in jobs.keys() - todo.keys():  # finished before source indexes existed
        if not (out_dir / (name + mpii.SOURCES_SUFFIX)).is_file():
            _index_shard(str(out_dir / name))
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
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(workers, spawn))
            results = pool.map(_write_shard, *zip(*args, strict=True))
        else:  # no pool to start for a single writer
            results = (_write_shard(*a) for a in args)
        for done, (name, (written, shard_skipped)) in enumerate(zip(todo, results, strict=True), 1):
            for reason, paths in shard_skipped.items():
                skipped_images[reason] += paths
            elapsed = time.perf_counter() - start
            logging.info(
                "[%d/%d shards] %s: %d images | %.0f s elapsed, ETA %.0f s", done, len(todo),
                name, written, elapsed, elapsed / done * (len(todo) - done),
            )  # fmt: skip
    unreadable = 0
    for info in meta["splits"].values():  # counted from the shards: right after a resume too
        info["images"] = sum(_num_records(out_dir / name) for name in info["shards"])
        unreadable += sum(len(jobs[name]) for name in info["shards"]) - info["images"]
        index = mpii.record_sources([str(out_dir / name) for name in info["shards"]]) or []
        info["descriptions"] = dict(
            sorted(collections.Counter(s for sources in index for s in sources).items())
        )
    for split, rows in by_split.items():  # annotated people per image (data.max_people keeps P)
        people = collections.Counter(len(r.people) for r in rows)
        meta["splits"][split]["people_per_image"] = {str(k): people[k] for k in sorted(people)}
    meta["skipped"] = {reason: len(paths) for reason, paths in skipped.items()}
    if unreadable:
        meta["skipped"]["missing or corrupt image"] = unreadable
    _report(meta, skipped | skipped_images, out_dir)
    return meta


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
