"""Prepared records → a TFDS dataset (ArrayRecord shards), written aside and swapped in whole.

Every preparation writes through here (`mpii.py`, `coco.py`): `<out>` becomes a TFDS data_dir
holding the dataset `<name>/1.0.0/`: ArrayRecord shards `<name>-<split>.array_record-NNNNN-of-NNNNN`
whose one feature (`entry`) is a `records.encode_prepared` record, and its TFDS metadata
(dataset_info.json with the splits and their counts, features.json), written through TFDS's own
DatasetInfo, last: its presence marks a finished preparation.
`tfds.builder_from_directory(...).as_data_source()` or `tfds.data_source(<name>, data_dir=<out>)`
opens it without TensorFlow. The shards are written here rather than by a TFDS builder's
`download_and_prepare`, which writes a dataset in one go: here a rerun resumes.

A finished dataset is never lost to a preparation. One preparation writes a dataset at a time:
it holds `<out>/<name>/lock.json` while it runs (`writer_lock`), and a second one exits with one
line naming the first. A run writes into `incomplete.1.0.0/` beside
the version folder and swaps it in only once every shard is written and the dataset opens as TFDS
opens it (each split's count checked, the last record of each shard read back): the finished
folder is renamed to `replaced.1.0.0/`, the new one takes its place, then the old one is removed;
the next run undoes a swap cut short between the renames. A split left without images is never
written, even with `--overwrite`; a split with fewer images than the finished dataset's (or
missing from this run's inputs) replaces it only with `--overwrite`. Either refusal is one line
giving each split's counts and what was skipped, and replaces nothing. A failure, a full disk
included, removes the staging folder with its temporary files and leaves the finished dataset as
it was; an interruption (Ctrl-C, a kill) leaves the staging folder's finished shards for the next
run to resume from.

Each shard holds a fixed, sorted slice of a split; its index beside it (`.sources.json`: each
record's description sources, what was skipped and corrected) carries a fingerprint of all its
inputs (settings, annotations, descriptions, and its image files' sizes and modification times).
A shard is written to a temporary name and renamed when complete, then indexed. A rerun reuses
every shard whose fingerprint matches, from the staging folder or from the finished dataset (hard
links, or copies where the file system has none), without re-encoding, and writes exactly those
whose inputs changed (a repaired image gets in); shards no longer planned are not carried over; a
rerun with the finished dataset's inputs changes nothing. Shards of the earlier plain layout in
`--out` (`<split>-<fingerprint>-NNNNN-of-NNNNN.array_record` and meta.json) with the same inputs
are converted without re-encoding images, then removed. Shards run in parallel over the host's
cores; workers end with their parent.

Bad input is skipped and counted: a missing or corrupt image, an image without visible joints, an
empty or missing description; visible joints outside the image become not visible, and people left
with none are dropped (both counted in meta.json's `corrected`).
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags
from array_record.python import array_record_module
from etils import epath
from PIL import Image

from input_pipeline import cli, records, transforms, writer_lock
from input_pipeline.errors import InputDataError

SKIP_EXAMPLES = 5  # paths logged per skip reason
VERSION = "1.0.0"
DESCRIPTION = (
    "FocusCLIP's prepared images with keypoints and descriptions (input_pipeline.prepare.mpii or "
    "prepare_coco): per image one `entry` feature holding the resized image, its squashed copy, "
    "keypoints and descriptions, decoded by input_pipeline.records.decode_prepared."
)
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device", as array_record reports it


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How each image is stored (`define_writer_flags` says what each setting does)."""

    max_side: int = 512
    quality: int = 90
    squash_side: int = 224
    copy_format: str = "jpeg"
    person_side: int = 0
    person_margin: float = 0.15
    image_format: str = "jpeg"

    def fingerprint_text(self) -> str:
        """The settings as shard fingerprints and meta.json see them: a setting left at its
        default and added after the first three is not in it, so that a dataset written with
        those defaults stays up to date whichever version of this module wrote it."""
        text = f"{self.max_side},{self.quality},{self.squash_side}"
        if self.copy_format != "jpeg":
            text += f",copies={self.copy_format}"
        if self.person_side:
            text += f",person={self.person_side}@{self.person_margin!r}"
        if self.image_format != "jpeg":
            text += f",image={self.image_format}"
        return text

    def meta(self) -> dict[str, Any]:
        """meta.json's record of the settings (those `fingerprint_text` leaves out, left out)."""
        meta = {"max_side": self.max_side, "quality": self.quality, "squash_side": self.squash_side}
        if self.copy_format != "jpeg":
            meta["copy_format"] = self.copy_format
        if self.person_side:
            meta |= {"person_side": self.person_side, "person_margin": self.person_margin}
        if self.image_format != "jpeg":
            meta["image_format"] = self.image_format
        return meta

    def image(self, stored: Image.Image) -> bytes:
        """The stored image's bytes: a JPEG, or its raw pixels."""
        if self.image_format == "raw":
            return stored.tobytes()
        return _encode_jpeg(stored, self.quality)

    def copy(self, square: Image.Image) -> records.StoredCopy:
        data = square.tobytes() if self.copy_format == "raw" else _encode_jpeg(square, self.quality)
        return records.StoredCopy(data, square.width, self.copy_format)


def _resize_image(
    path: Path, encoding: Encoding
) -> tuple[
    bytes, tuple[int, int], records.StoredCopy | None, np.ndarray, tuple[int, int], Image.Image
]:
    """The image's stored bytes (`Encoding.image`) at its longest side <= max_side, its size, the
    whole image squashed to squash_side² (None when 0: the `squash` crop then reads it as is, no
    resize at train time), the (x, y) scale applied to the stored image, the original size, and
    the image as decoded (the person copy is resampled from it)."""
    with Image.open(path) as image:
        full = image.size
        scale = min(1.0, encoding.max_side / max(full))
        size = (max(1, round(full[0] * scale)), max(1, round(full[1] * scale)))
        # JPEG: decode at 1/2, 1/4, 1/8 scale, never below `size` nor a copy's side
        least = max(encoding.squash_side, encoding.person_side)
        image.draft("RGB", (max(size[0], least), max(size[1], least)))
        image = image.convert("RGB")
    stored = image if image.size == size else image.resize(size, Image.LANCZOS)
    squashed = None
    if side := encoding.squash_side:
        squashed = encoding.copy(image.resize((side, side), Image.LANCZOS))
    scale_xy = np.array(size, np.float32) / np.array(full, np.float32)
    return encoding.image(stored), size, squashed, scale_xy, full, image


def _person_copy(
    image: Image.Image, record: records.ImageRecord, size: tuple[int, int], encoding: Encoding
) -> records.StoredCopy | None:
    """The box the `person` crop takes around the record's people (from their keypoints as
    stored, `records.stored_keypoints`, so that it is the train-time box), resampled from the
    decoded image (LANCZOS) to person_side²; None when person_side is 0."""
    if not (side := encoding.person_side):
        return None
    keypoints = np.array(records.stored_keypoints(record), np.float32)
    visible = np.array([p.visible for p in record.people], bool)
    x0, y0, x1, y1 = transforms.person_box(keypoints, visible, *size, encoding.person_margin)
    sx, sy = image.size[0] / size[0], image.size[1] / size[1]
    box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    return encoding.copy(image.resize((side, side), Image.LANCZOS, box=box))


OUTSIDE_JOINTS = "visible joints outside the image (made not visible)"
OUTSIDE_PEOPLE = "people with no visible joint inside the image (dropped)"


def _keep_inside(record: records.ImageRecord, width: int, height: int) -> collections.Counter:
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
    rows: list[records.ImageRecord],
    images: str,
    path: str,
    encoding: Encoding,
    fingerprint: str,
    legacy: str,
) -> tuple[int, dict[str, list[str]]]:
    """Write one shard (temporary name, then rename) and then its index; returns (written,
    skipped paths by reason). `legacy`: the same slice in the earlier plain layout, converted
    when it is there."""
    if os.path.isfile(legacy) and os.path.isfile(legacy + records.SOURCES_SUFFIX):
        reader = array_record_module.ArrayRecordReader(legacy)
        try:
            entries = reader.read_all()
        finally:
            reader.close()
        index = json.loads(Path(legacy + records.SOURCES_SUFFIX).read_text())
        _write_entries(path, entries)
        _write_index(path, index["sources"], index["skipped"], index["corrected"], fingerprint)
        return len(entries), {}
    skipped: dict[str, list[str]] = collections.defaultdict(list)
    corrected: collections.Counter = collections.Counter()
    entries, sources = [], []
    for record in rows:
        file = Path(images) / record.image
        try:
            stored, size, squashed, scale, full, image = _resize_image(file, encoding)
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
            records.encode_prepared(
                record,
                stored,
                size=size,
                image_format=encoding.image_format,
                squashed=squashed,
                person=_person_copy(image, record, size, encoding),
                person_margin=encoding.person_margin,
            )
        )
        sources.append(sorted(record.descriptions))
    _write_entries(path, entries)
    counts = {reason: len(paths) for reason, paths in skipped.items()}
    _write_index(path, sources, counts, dict(corrected), fingerprint)
    return len(sources), dict(skipped)


def _write_entries(path: str, entries: list[bytes]) -> None:
    """A shard of `encode_prepared` entries as TFDS records: written under a temporary name,
    renamed when complete; the temporary file is removed when writing fails. array_record reports
    a full disk as a RuntimeError: it becomes the OSError (ENOSPC) it is.

    Uncompressed: zstd saves nothing on JPEG bytes and costs a decompression per read (4.4x the
    time to read a raw 224² copy, 2-core CPU, 2026-12-07)."""
    features = records.tfds_features()
    temporary = path + ".tmp"
    try:
        writer = array_record_module.ArrayRecordWriter(temporary, "group_size:1,uncompressed")
        for entry in entries:
            writer.write(features.serialize_example({records.ENTRY: entry}))
        writer.close()
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, RuntimeError) and NO_SPACE in str(error):
            raise OSError(errno.ENOSPC, NO_SPACE, path) from error
        raise


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
    index = shard + records.SOURCES_SUFFIX
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
    index = Path(str(shard) + records.SOURCES_SUFFIX)
    if not (shard.is_file() and index.is_file()):
        return False
    try:
        return json.loads(index.read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def _filter(
    rows: list[records.ImageRecord],
) -> tuple[dict[str, list[records.ImageRecord]], dict[str, dict[str, list[str]]]]:
    """Per split (every split of the records, one left empty too): what training can use, sorted
    by image, and what was dropped, by reason. People without visible joints are dropped."""
    kept: dict[str, list[records.ImageRecord]] = {}
    skipped: dict[str, dict[str, list[str]]] = {}
    for record in sorted(rows, key=lambda r: (r.split, r.image)):
        rows = kept.setdefault(record.split, [])
        reasons = skipped.setdefault(record.split, collections.defaultdict(list))
        record.people = [p for p in record.people if p.visible.any()]
        if not record.people:
            reasons["no visible joints"].append(record.image)
        elif not any(t.strip() for t in record.descriptions.values()):
            reasons["no description"].append(record.image)
        else:
            rows.append(record)
    return kept, skipped


def _fingerprint(rows: list[records.ImageRecord], images: str, settings: str) -> str:
    """Identifies a shard by all its inputs: the settings, each record's annotations and
    descriptions, and its image file's size and modification time. A rerun after any of them
    changes (an image repaired, a description fixed) rewrites exactly the shards concerned."""
    digest = hashlib.sha256(settings.encode())
    for r in rows:
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


@dataclasses.dataclass(frozen=True)
class _Shard:
    """A planned shard: its split, its records, their fingerprint, and the same slice's shard in
    the earlier plain layout (converted when it is there)."""

    split: str
    rows: list[records.ImageRecord]
    fingerprint: str
    legacy: str


def _plan(
    by_split: Mapping[str, list[records.ImageRecord]],
    images: str,
    out_dir: Path,
    name: str,
    settings: str,
    records_per_shard: int,
) -> dict[str, _Shard]:
    """Each split's records in fixed, sorted slices: shard file name → shard."""
    plan = {}
    for split, rows in by_split.items():
        n = max(1, -(-len(rows) // records_per_shard))
        for i in range(n):
            shard_rows = rows[i * records_per_shard : (i + 1) * records_per_shard]
            tag = _fingerprint(shard_rows, images, settings)
            legacy = out_dir / f"{split}-{tag}-{i:05d}-of-{n:05d}.array_record"
            shard = f"{name}-{split}.array_record-{i:05d}-of-{n:05d}"
            plan[shard] = _Shard(split, shard_rows, tag, str(legacy))
    return plan


def _missing_images(rows: list[records.ImageRecord], images: str) -> list[str]:
    return [str(Path(images) / r.image) for r in rows if not (Path(images) / r.image).is_file()]


def _refuse_if_worse(
    images: Mapping[str, int],
    annotated: Mapping[str, int],
    skips: Mapping[str, Mapping[str, int]],
    paths: Mapping[str, Mapping[str, list[str]]],
    finished: Mapping[str, int],
    overwrite: bool,
    bound: str = "",
) -> None:
    """Refuses in one line a run that would leave a split without images (`overwrite` or not) or
    with fewer than the finished dataset it replaces (unless `overwrite`), a split it lacks
    counting as none: for each such split its images of those annotated, why the others were
    skipped (`skips`: counts by split and reason; `paths`: the skipped paths known, for an
    example) and the finished dataset's count. `bound`: "at most " while the images are unread."""
    empty = {split for split, n in images.items() if not n}
    fewer = {split for split, n in finished.items() if images.get(split, 0) < n}
    if not empty and (overwrite or not fewer):
        return
    parts = []
    for split in sorted(empty | fewer):
        if split not in images:
            parts.append(
                f"split {split}: not in this run's inputs, the finished dataset has "
                f"{finished[split]}"
            )
            continue
        reasons = []
        for reason, n in sorted(skips[split].items()):
            if not n:
                continue
            example = paths.get(split, {}).get(reason)
            reasons.append(f"{n} {reason}" + (f", e.g. {example[0]}" if example else ""))
        part = f"split {split}: {bound if images[split] else ''}{images[split]} images of "
        part += f"{annotated[split]}" + (f" ({'; '.join(reasons)})" if reasons else "")
        part += f", the finished dataset has {finished[split]}" if split in finished else ""
        parts.append(part)
    outcome = "nothing replaced" if finished else "nothing written"
    if empty:
        raise InputDataError(f"{'; '.join(parts)}: {outcome} (a split is never left empty)")
    raise InputDataError(f"{'; '.join(parts)}: {outcome}; rerun with --overwrite to replace it")


def _finished_counts(version_dir: Path, out_dir: Path) -> dict[str, int]:
    """Images per split of the finished dataset a run would replace: the TFDS one's (from its
    dataset_info.json), else that of a preparation in the earlier plain layout; {} if none."""
    info = version_dir / records.INFO_FILE
    try:
        if info.is_file():
            splits = json.loads(info.read_text())["splits"]
            return {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in splits}
        meta = out_dir / records.META_FILE
        if meta.is_file() and any(LEGACY_SHARD.fullmatch(p.name) for p in out_dir.iterdir()):
            splits = json.loads(meta.read_text())["splits"]
            return {split: int(split_meta["images"]) for split, split_meta in splits.items()}
    except (ValueError, KeyError, TypeError) as error:
        raise InputDataError(
            f"--out={out_dir}: the finished dataset's metadata is unreadable ({error}); move it "
            "away to prepare anew"
        ) from None
    return {}


def _up_to_date(version_dir: Path, plan: Mapping[str, _Shard]) -> bool:
    """The finished dataset holds exactly the planned shards, each from the same inputs."""
    if not (version_dir / records.INFO_FILE).is_file():
        return False
    shards = {p.name for p in version_dir.iterdir() if SHARD_NAME.fullmatch(p.name)}
    return shards == set(plan) and all(
        _is_done(version_dir / name, shard.fingerprint) for name, shard in plan.items()
    )


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / records.META_FILE).read_text())
    except (OSError, ValueError):
        return None


def _collect_meta(
    folder: Path,
    plan: Mapping[str, _Shard],
    base: dict,
    skipped: Mapping[str, Mapping[str, list[str]]],
) -> tuple[dict, dict[str, collections.Counter]]:
    """meta.json of the planned shards in `folder`, counted from the shards and their indexes
    (the same after a resume as after one run; `base`: the settings, `corrected` while reading,
    and each split's people per image), and each split's skips by reason."""
    meta = json.loads(json.dumps(base))  # a copy
    skips = {split: collections.Counter() for split in meta["splits"]}
    written: collections.Counter = collections.Counter()
    corrected = collections.Counter(meta["corrected"])
    for split, split_meta in meta["splits"].items():
        shards = [name for name, shard in plan.items() if shard.split == split]
        lengths = [_num_records(folder / shard) for shard in shards]
        indexes = [records.read_index(str(folder / shard)) for shard in shards]
        sources = collections.Counter(s for index in indexes for r in index["sources"] for s in r)
        split_meta |= {
            "shards": shards,
            "images": sum(lengths),
            "shard_lengths": lengths,
            "descriptions": dict(sorted(sources.items())),
        }
        skips[split].update({reason: len(paths) for reason, paths in skipped[split].items()})
        for index in indexes:
            skips[split].update(index["skipped"])
            written.update(index["skipped"])
            corrected.update(index["corrected"])
    reasons: collections.Counter = collections.Counter()
    for split_skips in skipped.values():
        reasons.update({reason: len(paths) for reason, paths in split_skips.items()})
    meta["skipped"] = {reason: n for reason, n in reasons.items() if n}
    meta["skipped"] |= {reason: n for reason, n in sorted(written.items()) if n}
    meta["corrected"] = {reason: n for reason, n in sorted(corrected.items()) if n}
    return meta, skips


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _link(source: Path, target: Path) -> None:
    """`source` at `target` too: a hard link, a copy where the file system has none. Shards and
    indexes are never changed in place, so the two may share their data."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _reuse(plan: Mapping[str, _Shard], staging: Path, version_dir: Path) -> dict[str, _Shard]:
    """Keeps the staging folder's planned shards that are done (an interrupted run's) and links in
    the finished dataset's, both only when written from the same inputs; removes everything else
    from the staging folder. Returns the shards left to write."""
    for path in staging.iterdir():
        name = path.name.removesuffix(records.SOURCES_SUFFIX)
        if not (name in plan and _is_done(staging / name, plan[name].fingerprint)):
            _remove(path)
    todo = {}
    for name, shard in plan.items():
        if _is_done(staging / name, shard.fingerprint):
            continue
        if _is_done(version_dir / name, shard.fingerprint):
            for file in (name, name + records.SOURCES_SUFFIX):
                _link(version_dir / file, staging / file)
        else:
            todo[name] = shard
    return todo


def _write_shards(
    todo: Mapping[str, _Shard],
    images: str,
    folder: Path,
    encoding: Encoding,
    workers: int,
    start: float,
) -> dict[str, dict[str, list[str]]]:
    """Writes the shards `todo` into `folder`, over `workers` processes; returns the images it
    skipped, by split and reason. On a failure no further shard starts."""
    skipped: dict[str, dict[str, list[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    args = [
        (shard.rows, images, str(folder / name), encoding, shard.fingerprint, shard.legacy)
        for name, shard in todo.items()
    ]
    with contextlib.ExitStack() as stack:
        if min(workers, len(args)) > 1:
            spawn = multiprocessing.get_context("spawn")  # fork is unsafe once threads (JAX) run
            pool = stack.enter_context(
                concurrent.futures.ProcessPoolExecutor(
                    workers, spawn, initializer=_exit_with_parent, initargs=(os.getpid(),)
                )
            )
            stack.callback(pool.shutdown, cancel_futures=True)  # runs first, on a failure too
            results = pool.map(_write_shard, *zip(*args, strict=True))
        else:  # no pool to start for a single writer
            results = (_write_shard(*a) for a in args)
        for done, ((name, shard), (written, shard_skipped)) in enumerate(
            zip(todo.items(), results, strict=True), 1
        ):
            for reason, paths in shard_skipped.items():
                skipped[shard.split][reason] += paths
            elapsed = time.perf_counter() - start
            logging.info(
                "[%d/%d shards] %s: %d images | %.0f s elapsed, ETA %.0f s", done, len(todo),
                name, written, elapsed, elapsed / done * (len(todo) - done),
            )  # fmt: skip
    return skipped


def _replaced(version_dir: Path) -> Path:
    return version_dir.with_name(records.REPLACED + version_dir.name)


def _recover(version_dir: Path) -> None:
    """Undoes a swap cut short: the finished dataset renamed aside goes back when no new one took
    its place; an old one left aside after the new one took its place is removed."""
    aside = _replaced(version_dir)
    if not aside.exists():
        return
    if version_dir.exists():
        shutil.rmtree(aside)
    else:
        os.rename(aside, version_dir)
        logging.warning("put back %s, left aside by a preparation cut short", version_dir)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _flush(folder: Path) -> None:
    """Every file in `folder` on disk, then the folder's entries: what is swapped in survives a
    power cut (a file system that cannot flush a folder keeps its own order)."""
    for path in folder.iterdir():
        _fsync(path)
    with contextlib.suppress(OSError):
        _fsync(folder)


def _swap(staging: Path, version_dir: Path) -> None:
    """The finished folder aside, the staging folder in its place, the old one removed: at every
    moment one complete dataset is there or aside (`_recover`)."""
    aside = _replaced(version_dir)
    if version_dir.exists():
        os.rename(version_dir, aside)
    try:
        os.rename(staging, version_dir)
    except BaseException:
        if aside.exists():
            os.rename(aside, version_dir)
        raise
    with contextlib.suppress(OSError):
        _fsync(version_dir.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what creating it creates)."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            return missing
        missing = folder
    return missing


@contextlib.contextmanager
def _staged(version_dir: Path, out: str) -> Iterator[Path]:
    """The staging folder beside `version_dir`, swapped in when the body completes. A failure
    removes it (and the folders it needed) with every temporary file and leaves the finished
    dataset as it was; a full disk becomes one line naming --out. An interruption (Ctrl-C) keeps
    its finished shards for the next run."""
    staging = version_dir.with_name(records.STAGING + version_dir.name)
    created = _first_missing(staging)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
        _flush(staging)
    except BaseException as error:
        if isinstance(error, Exception):
            shutil.rmtree(created or staging, ignore_errors=True)
        else:
            for temporary in staging.glob("*.tmp"):
                _remove(temporary)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise InputDataError(
                f"--out={out}: no space left on the device (writing {error.filename}); nothing "
                "replaced, the temporary files removed"
            ) from None
        raise
    _swap(staging, version_dir)


def write_prepared(
    rows: list[records.ImageRecord],
    images: str,
    out: str,
    *,
    name: str,
    expected: Mapping[str, int] | None = None,
    overwrite: bool = False,
    corrected: Mapping[str, int] | None = None,
    max_side: int = 512,
    quality: int = 90,
    squash_side: int = 224,
    copy_format: str = "jpeg",
    person_side: int = 0,
    person_margin: float = 0.15,
    image_format: str = "jpeg",
    records_per_shard: int = 512,
    workers: int = 0,
    takeover_lock: bool = False,
) -> dict:
    """Filter, shard and write records of any skeleton as the TFDS dataset `name` under `out`:
    aside, swapped in when complete and no worse (see the module's docstring; `overwrite` accepts
    fewer images), by one preparation at a time (`writer_lock`; `takeover_lock` takes it from a
    run on another host). `corrected`: corrections made while reading the inputs, counted in
    meta.json; `expected`: the images per split a complete source has (the log notes a
    difference). Returns (and writes as meta.json) the counts per split."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputDataError(f"--out={out}: not a folder")
    dataset_dir = out_dir / name
    made = _first_missing(dataset_dir)
    try:
        with writer_lock.hold(
            dataset_dir / writer_lock.LOCK_FILE,
            f"--out={out}",
            writer_lock.PREPARATION,
            takeover=takeover_lock,
        ):
            return _write_prepared(
                rows, images, out, name=name, expected=expected, overwrite=overwrite,
                corrected=corrected, records_per_shard=records_per_shard, workers=workers,
                encoding=Encoding(
                    max_side, quality, squash_side, copy_format, person_side, person_margin,
                    image_format,
                ),
            )  # fmt: skip
    except Exception:
        _remove_empty_folders(dataset_dir, made)
        raise


def _remove_empty_folders(folder: Path, made: Path | None) -> None:
    """The folders from `folder` up to `made` that a failed run created, where they are empty."""
    if made is None:
        return
    for empty in [folder, *folder.parents]:
        try:
            empty.rmdir()
        except OSError:
            return
        if empty == made:
            return


def _write_prepared(
    rows: list[records.ImageRecord],
    images: str,
    out: str,
    *,
    name: str,
    expected: Mapping[str, int] | None,
    overwrite: bool,
    corrected: Mapping[str, int] | None,
    records_per_shard: int,
    workers: int,
    encoding: Encoding,
) -> dict:
    """`write_prepared`'s work, under the dataset's lock."""
    start = time.perf_counter()
    out_dir = Path(out)
    version_dir = out_dir / name / VERSION
    _recover(version_dir)
    finished = _finished_counts(version_dir, out_dir)
    by_split, skipped = _filter(rows)
    if not by_split:
        raise InputDataError("--annotations: no annotated image in the inputs: nothing written")
    annotated = {
        split: len(rows) + sum(map(len, skipped[split].values()))
        for split, rows in by_split.items()
    }
    missing = {split: _missing_images(rows, images) for split, rows in by_split.items()}
    known = _by_split(
        skipped, {split: {"missing image": paths} for split, paths in missing.items()}
    )
    there = {split: len(rows) - len(missing[split]) for split, rows in by_split.items()}
    _refuse_if_worse(there, annotated, _counts(known), known, finished, overwrite, "at most ")
    plan = _plan(by_split, images, out_dir, name, encoding.fingerprint_text(), records_per_shard)
    splits = {
        split: {"people_per_image": _people_per_image(rows)} for split, rows in by_split.items()
    }
    base = encoding.meta() | {"splits": splits, "corrected": dict(corrected or {})}
    if _up_to_date(version_dir, plan):
        meta, _ = _collect_meta(version_dir, plan, base, skipped)
        if meta == _read_meta(version_dir):
            shutil.rmtree(version_dir.with_name(records.STAGING + VERSION), ignore_errors=True)
            logging.info("%s: up to date with the inputs, nothing rewritten", version_dir)
            _remove_legacy(out_dir)
            _report(meta, _all_splits(skipped), version_dir, expected or {})
            return meta
    with _staged(version_dir, out) as staging:
        todo = _reuse(plan, staging, version_dir)
        logging.info(
            "%d shards, %d finished before, %d to write", len(plan), len(plan) - len(todo),
            len(todo),
        )  # fmt: skip
        workers = workers or os.cpu_count() or 1
        written = _write_shards(todo, images, staging, encoding, workers, start)
        meta, skips = _collect_meta(staging, plan, base, skipped)
        images_per_split = {
            split: split_meta["images"] for split, split_meta in meta["splits"].items()
        }
        _refuse_if_worse(
            images_per_split, annotated, skips, _by_split(skipped, written), finished, overwrite
        )
        finish(staging, name, meta)
    _remove_legacy(out_dir)
    _report(meta, _all_splits(skipped, written), version_dir, expected or {})
    return meta


def _counts(paths: Mapping[str, Mapping[str, list[str]]]) -> dict[str, dict[str, int]]:
    """Skipped paths by split and reason → their counts."""
    return {
        split: {reason: len(found) for reason, found in reasons.items() if found}
        for split, reasons in paths.items()
    }


def _people_per_image(rows: list[records.ImageRecord]) -> dict[str, int]:
    """Annotated people per image (data.max_people keeps P), before writing corrects any."""
    people = collections.Counter(len(r.people) for r in rows)
    return {str(k): people[k] for k in sorted(people)}


def _by_split(
    *skips: Mapping[str, Mapping[str, list[str]]],
) -> dict[str, dict[str, list[str]]]:
    """Skipped paths by split and reason, from several such mappings."""
    merged: dict[str, dict[str, list[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for mapping in skips:
        for split, reasons in mapping.items():
            for reason, paths in reasons.items():
                merged[split][reason] += paths
    return merged


def _all_splits(*skips: Mapping[str, Mapping[str, list[str]]]) -> dict[str, list[str]]:
    """Skipped paths by reason, all splits together."""
    merged: dict[str, list[str]] = collections.defaultdict(list)
    for reasons in _by_split(*skips).values():
        for reason, paths in reasons.items():
            merged[reason] += paths
    return merged


def _remove_legacy(out_dir: Path) -> None:
    """The earlier plain layout's shards, indexes and meta.json, once converted."""
    legacy = [p for p in out_dir.iterdir() if LEGACY_SHARD.fullmatch(p.name)]
    for shard in legacy:
        shard.unlink()
        Path(str(shard) + records.SOURCES_SUFFIX).unlink(missing_ok=True)
    if legacy:
        (out_dir / records.META_FILE).unlink(missing_ok=True)
        logging.info("converted %d plain ArrayRecord shards to the TFDS dataset", len(legacy))


def finish(folder: Path, name: str, meta: dict) -> None:
    """meta.json, then the TFDS metadata (features.json, dataset_info.json with each split's
    shard lengths and bytes), written through TFDS's DatasetInfo and renamed into place:
    dataset_info.json last, as it marks a finished preparation. Checked by opening it as TFDS
    does: each split's count, and the last record of each shard read and decoded."""
    import tensorflow_datasets as tfds

    _atomic_write(folder / records.META_FILE, json.dumps(meta, indent=1))
    identity = tfds.core.DatasetIdentity(
        name=name, version=tfds.core.Version(VERSION), data_dir=str(folder), module_name=""
    )
    info = tfds.core.DatasetInfo(
        builder=identity, description=DESCRIPTION, features=records.tfds_features()
    )
    info.set_file_format("array_record")
    template = tfds.core.ShardedFileTemplate(
        data_dir=epath.Path(folder), dataset_name=name, filetype_suffix="array_record"
    )
    splits = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=split_meta["shard_lengths"],
            num_bytes=sum((folder / s).stat().st_size for s in split_meta["shards"]),
            filename_template=template,
        )
        for split, split_meta in meta["splits"].items()
    ]
    info.set_splits(tfds.core.SplitDict(splits))
    staging = folder / "info.tmp"
    staging.mkdir(exist_ok=True)
    info.write_to_directory(staging)
    for file in sorted(staging.iterdir(), key=lambda p: p.name == records.INFO_FILE):
        os.replace(file, folder / file.name)
    staging.rmdir()
    opened = tfds.builder_from_directory(str(folder))
    for split, split_meta in meta["splits"].items():
        source = opened.as_data_source(split=split)
        if len(source) != split_meta["images"]:
            raise RuntimeError(f"{folder}: TFDS reads another count for split {split!r}")
        for end in itertools.accumulate(split_meta["shard_lengths"]):
            records.decode_prepared(source[end - 1][records.ENTRY])


def _atomic_write(path: Path, text: str) -> None:
    Path(str(path) + ".tmp").write_text(text)
    os.replace(str(path) + ".tmp", path)


def write_split(
    out: str | Path,
    split: str,
    entries: list[bytes],
    *,
    name: str,
    records_per_shard: int = 512,
) -> dict:
    """`encode_prepared` entries written as `split` of the dataset `name` under `out`, its other
    splits kept, swapped in as a preparation is: for fixtures and benchmarks that make records
    without images."""
    if not entries:
        raise ValueError(f"split {split!r}: no entries (a split is never empty)")
    version_dir = Path(out) / name / VERSION
    _recover(version_dir)
    meta = _read_meta(version_dir) or {"splits": {}}
    n = -(-len(entries) // records_per_shard)
    shards = [f"{name}-{split}.array_record-{i:05d}-of-{n:05d}" for i in range(n)]
    with _staged(version_dir, str(out)) as staging:
        for path in staging.iterdir():
            _remove(path)
        for other, split_meta in meta["splits"].items():
            for shard in split_meta["shards"] if other != split else ():
                for file in (shard, shard + records.SOURCES_SUFFIX):
                    _link(version_dir / file, staging / file)
        lengths = []
        for i, shard in enumerate(shards):
            chunk = entries[i * records_per_shard : (i + 1) * records_per_shard]
            sources = [sorted(records.decode_prepared(e).header["descriptions"]) for e in chunk]
            _write_entries(str(staging / shard), chunk)
            _write_index(str(staging / shard), sources, {}, {}, fingerprint="")
            lengths.append(len(chunk))
        meta["splits"][split] = {"shards": shards, "shard_lengths": lengths, "images": len(entries)}
        finish(staging, name, meta)
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


def _report(
    meta: dict, skipped: Mapping[str, list[str]], version_dir: Path, expected: Mapping[str, int]
) -> None:
    """Counts per split (checked against what a complete source has) and skips."""
    for split, info in meta["splits"].items():
        complete = expected.get(split)
        note = "" if complete in (None, info["images"]) else f" (the complete split: {complete})"
        shards = len(info["shards"])
        logging.info("split %s: %d images in %d shards%s", split, info["images"], shards, note)
    for reason, paths in skipped.items():
        logging.warning("skipped %d (%s), e.g. %s", len(paths), reason, paths[:SKIP_EXAMPLES])
    logging.info("TFDS dataset at %s", version_dir)


def define_writer_flags(name: str) -> None:
    """The flags every preparation shares: where and how its shards are written."""
    flags.DEFINE_string("out", None, f"Output TFDS data_dir (the dataset: <out>/{name}/).")
    flags.DEFINE_integer("max_side", 512, "Longest side of the stored images, pixels.")
    flags.DEFINE_integer("quality", 90, "JPEG quality of the re-encoded images.")
    flags.DEFINE_integer(
        "squash_side",
        224,
        "Side of a stored copy squashed to a square (the `squash` crop at "
        "this data.image_size decodes it without resizing); 0: none.",
    )
    flags.DEFINE_integer(
        "person_side",
        0,
        "Side of a stored copy of the people's box (the `person` crop at this data.image_size "
        "and --person_margin reads it without resizing); 0: none.",
    )
    flags.DEFINE_float(
        "person_margin", 0.15, "The stored person copy's box margin (data.person_margin's)."
    )
    flags.DEFINE_enum(
        "copy_format",
        "jpeg",
        records.COPY_FORMATS,
        "How the squashed and person copies are stored: jpeg (about 17 KB at 224²), or raw "
        "uint8 pixels (147 KB at 224²): their crops then decode nothing, at 9x the storage.",
    )
    flags.DEFINE_enum(
        "image_format",
        "jpeg",
        records.COPY_FORMATS,
        "How the image itself (longest side --max_side) is stored: jpeg (about 40 KB at 512x288), "
        "or raw uint8 pixels (442 KB at 512x288): crops taken from it, `random_resized`'s and "
        "those without a stored copy, then decode nothing, at about 11x the storage.",
    )
    flags.DEFINE_integer("records_per_shard", 512, "Images per ArrayRecord shard.")
    flags.DEFINE_integer("workers", 0, "Parallel shard writers; 0: one per core.")
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace a finished dataset even where this run has fewer images in a split, or lacks "
        "one of its splits (a split without images is never written).",
    )
    writer_lock.define_takeover_flag()
    cli.check_flags(
        out=cli.Path("new_folder"),
        max_side=cli.Number(integer=True, at_least=1),
        quality=cli.Number(integer=True, at_least=1, at_most=100),
        squash_side=cli.Number(integer=True, at_least=0),
        person_side=cli.Number(integer=True, at_least=0),
        person_margin=cli.Number(at_least=0),
        records_per_shard=cli.Number(integer=True, at_least=1),
        workers=cli.Number(integer=True, at_least=0),
    )


WRITER_FLAGS = (
    "max_side",
    "quality",
    "squash_side",
    "copy_format",
    "person_side",
    "person_margin",
    "image_format",
    "records_per_shard",
    "workers",
    "overwrite",
    "takeover_lock",
)


def writer_options() -> dict[str, Any]:
    """The values of `define_writer_flags`'s flags (checked as they are parsed), as
    `write_prepared` takes them."""
    return {name: flags.FLAGS[name].value for name in WRITER_FLAGS}
