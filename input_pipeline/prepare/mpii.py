"""MPII images + annotations + pose descriptions → a prepared dataset (`records`) training streams.

    python -m input_pipeline.prepare.mpii --images=<dir> --annotations=<mpii_train.json> \\
        --annotations=<mpii_val.json> --descriptions=<dir> --out=<dir> [--max_side=512] \\
        [--squash_side=224] [--person_side=224] [--copy_format=raw] [--overwrite]

Readers for the official `mpii_human_pose_v1_u12_1.mat`, mmpose's `mpii_{train,val}.json` and the
"MPII Human Pose Descriptions" JSON all return `records.ImageRecord`s (one per image).
Coordinates are 0-based pixels (the heatmap convention): the three formats store MATLAB's 1-based
coordinates, so every reader subtracts 1, as mmpose does. The dataset is written by `shards`
(aside, swapped in when complete and no worse: see there) as `<out>/mpii_pose_descriptions/`.

Inputs that do not exist or hold nothing usable (an images path that is not a folder, a
descriptions folder without JSON) are refused, naming the flag, before anything is written. A
description that is blank or not text (a number, a list) is dropped and counted in meta.json's
`corrected`, its file and item named in the log, while the image keeps its other sources' texts:
one malformed item among thousands of LLM outputs should neither stop a preparation nor cost a
described image, and the count shows whether a source is broken rather than glitched.
"""

import collections
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from input_pipeline import cli, skeleton
from input_pipeline.errors import InputDataError
from input_pipeline.prepare import shards
from input_pipeline.records import ImageRecord, Person

FLAGS = flags.FLAGS
NAME = "mpii_pose_descriptions"  # the TFDS dataset name
NUM_JOINTS = skeleton.MPII.num_joints
# mmpose splits, images (people: 22,246 train / 2,958 val).
EXPECTED_IMAGES = {"train": 14_644, "val": 2_723}
DEFAULT_SOURCE = "default"  # description source name of files not under a per-source folder
# The published dataset's folders (Hugging Face `saifkhichi96/mpii-human-pose-captions`) → its
# config names, which are the source names here: `data.description_sources=("gpt-4",)` picks
# gpt-4-0613/. Folders already named by config name (gpt-4/, llama-2/, ...) are taken as they are.
PUBLISHED_FOLDERS = {
    "gpt-4-0613": "gpt-4",
    "gpt-3.5-turbo-0613": "gpt-3.5-turbo",
    "gpt-3.5-turbo-0301": "gpt-3.5-turbo-legacy",
    "llama-2-70b-chat-hf": "llama-2",
}


def _person(joints: Any, vis: Any, where: str, center: Any = None, scale: Any = None) -> Person:
    """A person from 1-based joints; missing ([-1, -1]) and non-finite joints are not visible."""
    try:
        kp = np.asarray(joints, np.float64).reshape(NUM_JOINTS, 2)
        visible = np.asarray(vis, np.float64).reshape(NUM_JOINTS) > 0
    except (TypeError, ValueError) as e:
        raise InputDataError(
            f"{where}: expected 16 [x, y] joints and 16 visibility flags ({e})"
        ) from e
    finite = np.all(np.isfinite(kp), axis=1)
    visible &= finite & np.any(kp != -1, axis=1)
    kp = np.where(finite[:, None], kp - 1.0, 0.0).astype(np.float32)
    try:
        xy = None if center is None else np.asarray(center, np.float64).reshape(2)
        size = None if scale is None else float(np.asarray(scale, np.float64).reshape(()))
    except (TypeError, ValueError):
        xy, size = np.full(2, np.nan), np.nan
    if (xy is not None and not np.all(np.isfinite(xy))) or (
        size is not None and not np.isfinite(size)
    ):
        raise InputDataError(
            f"{where}: expected 'center' [x, y] and 'scale' as finite numbers, got center "
            f"{_short(center)} and scale {_short(scale)}"
        )
    return Person(
        keypoints=kp,
        visible=visible,
        center=None if xy is None else (float(xy[0]) - 1, float(xy[1]) - 1),
        scale=size,
    )


def _short(value: Any) -> str:
    """A value as a message shows it: on one line, at most 60 characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _image_name(value: Any, where: str) -> str:
    """An annotation's `image`: a file name (a non-empty string)."""
    if not isinstance(value, str) or not value.strip():
        raise InputDataError(f"{where}: 'image' must be a file name, got {_short(value)}")
    return value


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputDataError(f"{path}: not readable JSON ({e})") from e


def read_mmpose_json(path: str | Path) -> list[ImageRecord]:
    """mmpose's `mpii_{train,val}.json` (one record per person) → one record per image.

    The split is the file name's, exactly: `mpii_val.json` → val, `mpii_train.json` → train,
    `mpii_trainval.json` → trainval (`data.split` picks the one to train on).
    """
    path = Path(path)
    rows = _load_json(path)
    if not isinstance(rows, list) or not rows:
        raise InputDataError(f"{path}: expected a non-empty JSON list of person records (mmpose)")
    split = path.stem.removeprefix("mpii_")
    by_image: dict[str, ImageRecord] = {}
    for i, row in enumerate(rows):
        where = f"{path} [record {i}]"
        if not isinstance(row, dict) or not {"image", "joints", "joints_vis"} <= row.keys():
            raise InputDataError(f"{where}: expected keys 'image', 'joints', 'joints_vis'")
        image = _image_name(row["image"], where)
        joints, vis = row["joints"], row["joints_vis"]
        person = _person(joints, vis, where, row.get("center"), row.get("scale"))
        record = by_image.setdefault(image, ImageRecord(image, [], split=split))
        record.people.append(person)
    return list(by_image.values())


def _as_list(value: Any) -> list[Any]:
    """MATLAB struct arrays load as a single struct, an object array, or an empty array."""
    if isinstance(value, np.ndarray):
        return list(value.ravel()) if value.size else []
    return [value]


def _field(obj: Any, name: str, default: Any = None) -> Any:
    value = getattr(obj, name, default)
    if isinstance(value, np.ndarray) and value.size == 0:
        return default
    return value


def _is_visible(value: Any) -> bool:
    """`is_visible` is missing, empty, numeric, or the string '0'/'1' in the official file."""
    if value is None:
        return True  # annotated but unflagged: the official toolkit treats it as visible
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return True
        value = value.ravel()[0]
    if isinstance(value, str):
        return value.strip() not in ("0", "")
    return bool(value)


def _mat_person(rect: Any, where: str) -> Person | None:
    """A person of `annorect`; None when it has no annotated points (test images, some people)."""
    annopoints = _field(rect, "annopoints")
    points = _as_list(_field(annopoints, "point", np.empty(0))) if annopoints is not None else []
    if not points:
        return None
    joints = np.full((NUM_JOINTS, 2), -1.0)
    vis = np.zeros(NUM_JOINTS)
    for point in points:
        try:
            jid = int(_field(point, "id"))
            joints[jid] = float(_field(point, "x")), float(_field(point, "y"))
        except (TypeError, ValueError, IndexError) as e:
            raise InputDataError(f"{where}: a point lacks a valid id/x/y ({e})") from e
        vis[jid] = _is_visible(_field(point, "is_visible"))
    objpos, scale = _field(rect, "objpos"), _field(rect, "scale")
    center = (_field(objpos, "x"), _field(objpos, "y")) if objpos is not None else (None, None)
    center = None if None in center else center  # objpos may be empty, or its x/y
    person = _person(joints, vis, where, center, scale)
    box = [_field(rect, k) for k in ("x1", "y1", "x2", "y2")]
    if all(v is not None for v in box):
        person.head_box = tuple(float(v) - 1 for v in box)
    return person


def read_official_mat(path: str | Path) -> list[ImageRecord]:
    """The official `mpii_human_pose_v1_u12_1.mat` (struct RELEASE) → records with keypoints.

    Train images (`img_train` = 1) become split "train"; test images have no keypoints and are left
    out, as are people without `annopoints`. The activity is `act.act_name` (empty when unlabeled).
    """
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... on bad files
        raise InputDataError(f"{path}: not a readable MATLAB .mat file ({e})") from e
    if "RELEASE" not in mat:
        raise InputDataError(f"{path}: expected the struct 'RELEASE' (official MPII annotations)")
    release = mat["RELEASE"]
    annolist = _as_list(_field(release, "annolist", np.empty(0)))
    if not annolist:
        raise InputDataError(f"{path}: RELEASE.annolist is missing or empty")
    img_train = np.atleast_1d(_field(release, "img_train", np.ones(len(annolist))))
    acts = _as_list(_field(release, "act", np.empty(0)))
    records = []
    for i, anno in enumerate(annolist):
        where = f"{path} RELEASE.annolist({i + 1})"
        name = _field(_field(anno, "image"), "name")
        if not isinstance(name, str):
            raise InputDataError(f"{where}.image.name: expected a file name, got {name!r}")
        if i < len(img_train) and not img_train[i]:
            continue
        people = [
            p
            for r, rect in enumerate(_as_list(_field(anno, "annorect", np.empty(0))))
            if (p := _mat_person(rect, f"{where}.annorect({r + 1})")) is not None
        ]
        activity = _field(acts[i], "act_name", "") if i < len(acts) else ""
        records.append(ImageRecord(name, people, activity if isinstance(activity, str) else ""))
    return records


def _description_files(root: Path) -> list[tuple[str, Path]]:
    """(source, file) pairs: `root/<source>/**/*.json` (published folder names mapped to their
    config names), or files directly under root (the default source)."""
    if root.is_file():
        return [(DEFAULT_SOURCE, root)]
    pairs = []
    for file in sorted(root.rglob("*.json")):
        parts = file.relative_to(root).parts
        folder = parts[0] if len(parts) > 1 else DEFAULT_SOURCE
        pairs.append((PUBLISHED_FOLDERS.get(folder, folder), file))
    return pairs


def read_descriptions(
    root: str | Path,
    sources: Sequence[str] | None = None,
    dropped: dict[str, list[str]] | None = None,
) -> dict[str, ImageRecord]:
    """The pose-description JSON (a file, or a folder of them, one subfolder per source such as
    `gpt-4/`, `llama-2/`) → records by image name, each with its descriptions by source.

    A file holds one image's dict (`image`, `activity`, `count`, `people[{kpts, kpts_vis, center,
    scale}]`, `description`) or a list of them. `sources` keeps only the named ones. A
    description that is blank or not text (a number, a list) is left out; `dropped` collects
    where each was (`<file> [item k].description`) by reason. A null one is an image not
    described yet.
    """
    root = Path(root)
    if not root.exists():
        raise InputDataError(f"{root}: descriptions not found")
    files = _description_files(root)
    if not files:
        raise InputDataError(f"{root}: a folder with no description JSON (*.json)")
    records: dict[str, ImageRecord] = {}
    for source, file in files:
        if sources is not None and source not in sources:
            continue
        items = _load_json(file)
        for k, item in enumerate(items if isinstance(items, list) else [items]):
            where = f"{file} [item {k}]"
            if not isinstance(item, dict) or "image" not in item:
                raise InputDataError(f"{where}: expected a dict with 'image' and 'description'")
            record = records.get(_image_name(item["image"], where))
            if record is None:
                listed = item.get("people") or []
                if not isinstance(listed, list) or not all(isinstance(p, dict) for p in listed):
                    raise InputDataError(f"{where}: 'people' must be a list of dicts")
                people = [
                    _person(p.get("kpts"), p.get("kpts_vis"), f"{where} people[{j}]",
                            p.get("center"), p.get("scale"))
                    for j, p in enumerate(listed)
                ]  # fmt: skip
                record = ImageRecord(item["image"], people, str(item.get("activity") or ""))
                records[item["image"]] = record
            text = item.get("description")
            if isinstance(text, str) and text.strip():
                record.descriptions[source] = text.strip()
            elif text is not None and dropped is not None:  # null: not described (yet)
                kind = "blank" if isinstance(text, str) else "not text"
                dropped[f"descriptions that are {kind} (dropped)"].append(f"{where}.description")
    if sources is not None and not {s for r in records.values() for s in r.descriptions}:
        raise InputDataError(f"{root}: no descriptions from the sources {list(sources)}")
    return records


def read_annotations(path: str | Path) -> list[ImageRecord]:
    """Any supported annotation file, by its suffix: .mat (official), .json (mmpose or
    descriptions), or a folder of description JSON."""
    path = Path(path)
    if path.suffix == ".mat":
        return read_official_mat(path)
    if path.is_dir():
        return list(read_descriptions(path).values())
    rows = _load_json(path)
    if rows == []:
        raise InputDataError(f"{path}: expected a non-empty JSON list of records, got []")
    first = rows[0] if isinstance(rows, list) else rows
    if isinstance(first, dict) and "joints" in first:
        return read_mmpose_json(path)
    if isinstance(first, dict) and ("people" in first or "description" in first):
        return list(read_descriptions(path).values())  # described already, or to describe
    raise InputDataError(
        f"{path}: neither mmpose annotations (a non-empty list of records with 'image', "
        "'joints', 'joints_vis') nor pose-description records ('image', 'people', and "
        "'description' once described); an official .mat must end in .mat"
    )


def attach_descriptions(
    records: Iterable[ImageRecord], descriptions: Mapping[str, ImageRecord]
) -> list[ImageRecord]:
    """Descriptions (and the activity, where the annotations lack it) joined by image name."""
    out = []
    for record in records:
        described = descriptions.get(record.image) or descriptions.get(Path(record.image).name)
        if described is not None:
            record.descriptions |= described.descriptions
            record.activity = record.activity or described.activity
        out.append(record)
    return out


def _check_inputs(images: str, annotations: list[str], descriptions: str) -> None:
    """Inputs that do not exist or hold nothing usable, refused naming the flag before anything
    is read or written."""
    if not Path(images).is_dir():
        problem = "not a folder" if Path(images).exists() else "not found"
        raise InputDataError(f"--images={images}: {problem} (the MPII images folder)")
    for path in annotations:
        if not Path(path).exists():
            raise InputDataError(f"--annotations={path}: not found")
    if not Path(descriptions).exists():
        raise InputDataError(f"--descriptions={descriptions}: not found")
    if Path(descriptions).is_dir() and not any(Path(descriptions).rglob("*.json")):
        raise InputDataError(
            f"--descriptions={descriptions}: a folder with no description JSON (*.json, one "
            "subfolder per source)"
        )


def prepare(
    images: str,
    annotations: list[str],
    descriptions: str,
    out: str,
    **options: Any,
) -> dict:
    """Check, read, filter, shard and write (`options`: `shards.write_prepared`'s: overwrite,
    max_side, quality, squash_side, copy_format, person_side, person_margin, image_format,
    records_per_shard, workers); returns (and writes as meta.json) the counts per split."""
    _check_inputs(images, annotations, descriptions)
    annotated = [r for a in annotations for r in read_annotations(a)]
    dropped: dict[str, list[str]] = collections.defaultdict(list)
    described = read_descriptions(descriptions, dropped=dropped)
    for reason, where in dropped.items():
        logging.warning("%d %s, e.g. %s", len(where), reason, where[: shards.SKIP_EXAMPLES])
    return shards.write_prepared(
        attach_descriptions(annotated, described),
        images,
        out,
        name=NAME,
        expected=EXPECTED_IMAGES,
        corrected={reason: len(where) for reason, where in dropped.items()},
        **options,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    meta = prepare(
        FLAGS.images, FLAGS.annotations, FLAGS.descriptions, FLAGS.out, **shards.writer_options()
    )
    counts = {split: info["images"] for split, info in meta["splits"].items()}
    print(json.dumps(counts | {"skipped": meta["skipped"]}))


def define_flags() -> None:
    """Only when run as a program: importing this module must not claim flag names."""
    flags.DEFINE_string("images", None, "MPII images folder.")
    flags.DEFINE_multi_string("annotations", None, "mmpose JSON(s), official .mat or descriptions.")
    flags.DEFINE_string(
        "descriptions", None, "Description JSON file or folder (one subfolder per source)."
    )
    shards.define_writer_flags(NAME)
    flags.mark_flags_as_required(["images", "annotations", "descriptions", "out"])
    cli.check_flags(
        images=cli.Path("folder"),
        annotations=cli.Path("file"),
        descriptions=cli.Path("file_or_folder"),
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
