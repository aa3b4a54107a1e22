"""MPII Human Pose with the published pose descriptions: readers, one record type, prepared shards.

Readers for the official `mpii_human_pose_v1_u12_1.mat`, mmpose's `mpii_{train,val}.json` and the
"MPII Human Pose Descriptions" JSON all return `MpiiRecord`s (one per image). Coordinates are
0-based pixels with pixel (row i, col j) centred at x = j, y = i (the heatmap convention): the three
formats store MATLAB's 1-based coordinates, so every reader subtracts 1, as mmpose does.

Training streams *prepared* records (`python -m input_pipeline.prepare_mpii`): a TFDS dataset of
ArrayRecord shards whose one feature (`entry`) holds resized JPEG bytes (and a copy squashed to the
training size) plus keypoints and descriptions, encoded by `encode_prepared`. It is opened with
`tfds.builder_from_directory(...).as_data_source()` (no TensorFlow) through `etils.epath`, so
`data.prepared` may be a gs:// bucket. A shard or index missing from it is named in one line when
the split is opened, not met mid-stream.
"""

import dataclasses
import json
import logging
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from etils import epath

from input_pipeline.errors import InputDataError, RequiredFile, require_files

MPII_IMAGES = "the MPII Human Pose Dataset, mpii_human_pose_v1.tar.gz (images/), https://human-pose.mpi-inf.mpg.de/"
MMPOSE_ANNOTATIONS = (
    "mmpose's MPII annotations (mpii_train.json, mpii_val.json), see the mmpose docs, "
    "'2D Body Keypoint Datasets' → MPII; or the official mpii_human_pose_v1_u12_1.mat "
    "from the MPII site"
)
DESCRIPTIONS = (
    "the 'MPII Human Pose Descriptions' JSON published by the FocusCLIP authors "
    "(linked from https://saifkhichi.com/research/focusclip)"
)
PREPARED = (
    "a prepared TFDS dataset: python -m input_pipeline.prepare_mpii --images=<data.images> "
    "--annotations=<data.annotations> --descriptions=<data.descriptions> --out=<data.prepared>"
)
NUM_JOINTS = 16
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
ENTRY = "entry"  # the prepared dataset's one TFDS feature: an `encode_prepared` entry
INFO_FILE = "dataset_info.json"  # written last by prepare_mpii: marks a finished preparation
META_FILE = "meta.json"  # beside the shards: settings, skips, corrections, people per image
SOURCES_SUFFIX = ".sources.json"  # beside each shard: every record's description sources
# prepare_mpii writes <name>/incomplete.<version>/ (TFDS's prefix for unfinished folders) and swaps
# it in, the finished <name>/<version>/ renamed to <name>/replaced.<version>/ meanwhile.
STAGING = "incomplete."
REPLACED = "replaced."


@dataclasses.dataclass
class Person:
    """One annotated person: 16 joints (x, y) 0-based pixels, which are annotated and visible."""

    keypoints: np.ndarray  # float32 [16, 2]
    visible: np.ndarray  # bool [16]
    center: tuple[float, float] | None = None
    scale: float | None = None  # person height / 200 px
    head_box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2


@dataclasses.dataclass
class MpiiRecord:
    """One image: its file name under the images folder, its people, activity and descriptions."""

    image: str
    people: list[Person]
    activity: str = ""
    descriptions: dict[str, str] = dataclasses.field(default_factory=dict)
    split: str = "train"


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
    return Person(
        keypoints=kp,
        visible=visible,
        center=None if center is None else (float(center[0]) - 1, float(center[1]) - 1),
        scale=None if scale is None else float(scale),
    )


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputDataError(f"{path}: not readable JSON ({e})") from e


def read_mmpose_json(path: str | Path) -> list[MpiiRecord]:
    """mmpose's `mpii_{train,val}.json` (one record per person) → one record per image.

    The split is the file name's, exactly: `mpii_val.json` → val, `mpii_train.json` → train,
    `mpii_trainval.json` → trainval (`data.split` picks the one to train on).
    """
    path = Path(path)
    rows = _load_json(path)
    if not isinstance(rows, list) or not rows:
        raise InputDataError(f"{path}: expected a non-empty JSON list of person records (mmpose)")
    split = path.stem.removeprefix("mpii_")
    by_image: dict[str, MpiiRecord] = {}
    for i, row in enumerate(rows):
        where = f"{path} [record {i}]"
        if not isinstance(row, dict) or not {"image", "joints", "joints_vis"} <= row.keys():
            raise InputDataError(f"{where}: expected keys 'image', 'joints', 'joints_vis'")
        joints, vis = row["joints"], row["joints_vis"]
        person = _person(joints, vis, where, row.get("center"), row.get("scale"))
        record = by_image.setdefault(row["image"], MpiiRecord(row["image"], [], split=split))
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


def read_official_mat(path: str | Path) -> list[MpiiRecord]:
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
        records.append(MpiiRecord(name, people, activity if isinstance(activity, str) else ""))
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
) -> dict[str, MpiiRecord]:
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
    records: dict[str, MpiiRecord] = {}
    for source, file in files:
        if sources is not None and source not in sources:
            continue
        items = _load_json(file)
        for k, item in enumerate(items if isinstance(items, list) else [items]):
            where = f"{file} [item {k}]"
            if not isinstance(item, dict) or "image" not in item:
                raise InputDataError(f"{where}: expected a dict with 'image' and 'description'")
            record = records.get(item["image"])
            if record is None:
                people = [
                    _person(p.get("kpts"), p.get("kpts_vis"), f"{where} people[{j}]",
                            p.get("center"), p.get("scale"))
                    for j, p in enumerate(item.get("people") or [])
                ]  # fmt: skip
                record = MpiiRecord(item["image"], people, str(item.get("activity") or ""))
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


def read_annotations(path: str | Path) -> list[MpiiRecord]:
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
    records: Iterable[MpiiRecord], descriptions: Mapping[str, MpiiRecord]
) -> list[MpiiRecord]:
    """Descriptions (and the activity, where the annotations lack it) joined by image name."""
    out = []
    for record in records:
        described = descriptions.get(record.image) or descriptions.get(Path(record.image).name)
        if described is not None:
            record.descriptions |= described.descriptions
            record.activity = record.activity or described.activity
        out.append(record)
    return out


# --- prepared records -------------------------------------------------------------------------


class PreparedEntry(NamedTuple):
    """A decoded `encode_prepared` entry."""

    header: dict[str, Any]
    jpeg: bytes  # the stored image, longest side <= max_side
    squashed: bytes  # the whole image squashed to header["squashed_side"]², or b"" when none


def encode_prepared(
    record: MpiiRecord,
    jpeg: bytes,
    *,
    size: tuple[int, int] | None = None,
    squashed: bytes = b"",
    squashed_side: int = 0,
) -> bytes:
    """One ArrayRecord entry: a little-endian u32 header length, a JSON header, the JPEG bytes,
    then those of the optional squashed copy (`size`: the stored image's width and height).

    JSON rather than pickle: readable from any language and safe to load from untrusted files.
    """
    header = {
        "image": record.image,
        "activity": record.activity,
        "descriptions": record.descriptions,
        "keypoints": [p.keypoints.round(3).tolist() for p in record.people],
        "visible": [p.visible.astype(int).tolist() for p in record.people],
    }
    if size is not None:
        header["size"] = list(size)
    if squashed:
        header |= {"squashed_side": squashed_side, "squashed_bytes": len(squashed)}
    blob = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(blob)) + blob + jpeg + squashed


def decode_prepared(entry: bytes) -> PreparedEntry:
    """(header, JPEG bytes, squashed JPEG bytes or b"") of an `encode_prepared` entry."""
    (size,) = struct.unpack_from("<I", entry)
    header = json.loads(entry[4 : 4 + size])
    squashed_start = len(entry) - header.get("squashed_bytes", 0)
    return PreparedEntry(header, entry[4 + size : squashed_start], entry[squashed_start:])


def tfds_features() -> Any:
    """The prepared dataset's TFDS features: one bytes tensor per record, so that writing and
    reading need no TensorFlow and the entry decodes as before (`decode_prepared`)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {ENTRY: tfds.features.Tensor(shape=(), dtype=np.object_, doc="encode_prepared entry")}
    )


def _finished(prepared: str) -> epath.Path | None:
    """The TFDS version folder of a finished preparation: `prepared` itself when it holds a
    dataset_info.json, else the newest version of the one dataset under it (a TFDS data_dir);
    None when there is none. A preparation from before they were TFDS datasets is an error."""
    from tensorflow_datasets.core.utils.version import Version

    root = epath.Path(prepared)
    if (root / INFO_FILE).exists():
        return root
    found = [p.parent for p in root.glob(f"*/*/{INFO_FILE}") if Version.is_valid(p.parent.name)]
    names = sorted({p.parent.name for p in found})
    if len(names) > 1:
        raise InputDataError(
            f"{prepared}: holds the TFDS datasets {names}; point data.prepared at one of "
            f"their version folders (<data_dir>/<name>/<version>)"
        )
    if not found and (root / META_FILE).exists():
        raise InputDataError(
            f"{prepared}: plain ArrayRecord shards from before preparations were TFDS datasets; "
            f"run the same prepare_mpii (or prepare_coco) command with --out={prepared} again: "
            "it converts them without re-encoding images"
        )
    return max(found, key=lambda p: Version(p.name)) if found else None


def dataset_dir(prepared: str) -> epath.Path:
    """The TFDS version folder of a finished preparation; an error naming `prepared` if none."""
    found = _finished(prepared)
    if found is None:
        root = epath.Path(prepared)
        aside = [*root.glob(f"*/{REPLACED}*/{INFO_FILE}"), root.parent / f"{REPLACED}{root.name}"]
        if any(path.exists() for path in aside):
            raise InputDataError(
                f"{prepared}: a preparation was cut short while swapping in its new dataset; "
                "rerun the same prepare command: it puts the finished dataset back first"
            )
        raise InputDataError(f"{prepared}: no finished preparation (no {INFO_FILE}); {PREPARED}")
    return found


class PreparedSplit:
    """A split of a preparation as grain reads it (len, getitem): record i is its
    `encode_prepared` entry. Pickles (grain's workers) as its TFDS data source does."""

    def __init__(self, source: Any):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> bytes:
        return self.source[index][ENTRY]


def open_split(prepared: str, split: str) -> tuple[PreparedSplit, list[str]]:
    """A prepared split and its shard paths (their indexes beside them), opened with TFDS's
    `builder_from_directory(...).as_data_source()`: no TensorFlow; gs:// paths work."""
    import tensorflow_datasets as tfds

    version_dir = dataset_dir(prepared)
    builder = tfds.builder_from_directory(os.fspath(version_dir))
    if split not in builder.info.splits:
        raise InputDataError(
            f"{version_dir}: no split {split!r} (it has {sorted(builder.info.splits)})"
        )
    shards = [os.fspath(path) for path in builder.info.splits[split].filepaths]
    missing = [shard for shard in shards if not epath.Path(shard).exists()]
    if missing:
        raise InputDataError(
            f"{missing[0]}: a shard of split {split!r} is missing ({len(missing)} of "
            f"{len(shards)}); prepare the dataset again: {PREPARED}"
        )
    return PreparedSplit(builder.as_data_source(split=split)), shards


def required_files(data: ml_collections.ConfigDict) -> list[RequiredFile]:
    """A finished preparation when there is one; else the raw files and the prepared folder."""
    prepared = data.get("prepared", "")
    found = _finished(prepared) if prepared else None
    if found is not None:
        return [RequiredFile("data.prepared", os.fspath(found / INFO_FILE), PREPARED)]
    files = [
        RequiredFile("data.images", data.images, MPII_IMAGES),
        RequiredFile("data.annotations", data.annotations, MMPOSE_ANNOTATIONS),
        RequiredFile("data.descriptions", data.descriptions, DESCRIPTIONS),
    ]
    if prepared:
        expected = f"{prepared}/<dataset>/<version>/{INFO_FILE}"
        files.append(RequiredFile("data.prepared", expected, PREPARED))
    return files


def read_index(shard: str) -> dict[str, Any]:
    """A shard's `.sources.json` (prepare_mpii): `sources` (each record's description sources),
    `skipped` and `corrected` (counts by reason) and the `fingerprint` of its inputs."""
    index = epath.Path(shard + SOURCES_SUFFIX)
    if not index.exists():
        raise InputDataError(f"{index}: missing, the index of a prepared shard; {PREPARED}")
    return json.loads(index.read_text())


def record_sources(shards: Sequence[str]) -> list[list[str]]:
    """Every record's description sources, in stream order, from the shards' indexes."""
    return [sources for shard in shards for sources in read_index(shard)["sources"]]


class Subset:
    """Records `indices` of a random-access source, renumbered 0..n-1 (grain's source protocol)."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[self.indices[index]]


def described_by(index: Sequence[Sequence[str]], chosen: Sequence[str], where: str) -> list[int]:
    """The records that have a description from one of the `chosen` sources; an error listing the
    sources there are when none has."""
    keep = [i for i, sources in enumerate(index) if set(sources) & set(chosen)]
    if not keep:
        counts: dict[str, int] = {}
        for sources in index:
            for source in sources:
                counts[source] = counts.get(source, 0) + 1
        found = ", ".join(f"{k} ({v} images)" for k, v in sorted(counts.items())) or "none"
        raise InputDataError(
            f"config data.description_sources={tuple(chosen)}: no image of {where} has "
            f"descriptions from them; its sources are: {found}"
        )
    return keep


def _warn_of_crowds(data: ml_collections.ConfigDict, split: str) -> None:
    """The original renders every annotated person; `data.max_people` keeps the first P."""
    meta = json.loads((dataset_dir(data.prepared) / META_FILE).read_text())
    counts = meta["splits"][split].get("people_per_image")
    more = sum(n for people, n in (counts or {}).items() if int(people) > data.max_people)
    if more:
        logging.warning(
            "MPII: %d %s images have more than data.max_people=%d annotated people (at most "
            "%s); only the first %d are in their heatmaps",
            more, split, data.max_people, max(counts, key=int), data.max_people,
        )  # fmt: skip


def train_source(data: ml_collections.ConfigDict) -> Any:
    """The prepared MPII training records (a TFDS data source grain reads); fails early, naming
    files.

    Only images described by one of `data.description_sources` are streamed: those without are
    counted and logged, never given another source's text.
    """
    require_files(required_files(data))
    split = data.get("split", "train")
    source, shards = open_split(data.prepared, split)
    logging.info("MPII: %d prepared records in %d shards", len(source), len(shards))
    _warn_of_crowds(data, split)
    index = record_sources(shards)
    keep = described_by(index, data.description_sources, f"{data.prepared} ({split})")
    if len(keep) < len(index):
        logging.warning(
            "MPII: %d of %d %s images have no description from %s: left out of training",
            len(index) - len(keep),
            len(index),
            split,
            tuple(data.description_sources),
        )
        return Subset(source, keep)
    return source


def record_map(data: ml_collections.ConfigDict) -> Any:
    """The per-record random map of the training stream: decode, crop/resize, pick a text."""
    from input_pipeline.transforms import MpiiTrainTransform

    return MpiiTrainTransform.from_config(data)
