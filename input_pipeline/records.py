"""The prepared-record format every preparation writes and the training stream reads.

A preparation (`input_pipeline.prepare`: MPII's, COCO's) is a TFDS dataset of ArrayRecord shards
whose one feature (`entry`) holds an image resized, as a JPEG or its raw pixels (and a copy
squashed to the training size) plus its people's keypoints and its descriptions, encoded by
`encode_prepared`.
It is opened with `tfds.builder_from_directory(...).as_data_source()` (no TensorFlow) through
`etils.epath`, so `data.prepared` may be a gs:// bucket. A shard or index missing from it is named
in one line when the split is opened, not met mid-stream. Coordinates are 0-based pixels with
pixel (row i, col j) centred at x = j, y = i (the heatmap convention).
"""

import dataclasses
import functools
import json
import os
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from etils import epath

from input_pipeline.errors import InputDataError

PREPARE = (
    "prepare it with python -m input_pipeline.prepare.mpii (MPII) or input_pipeline.prepare.coco "
    "(COCO), see docs/data.md"
)

ENTRY = "entry"  # the prepared dataset's one TFDS feature: an `encode_prepared` entry
INFO_FILE = "dataset_info.json"  # written last: marks a finished preparation
META_FILE = "meta.json"  # beside the shards: settings, skips, corrections, people per image
SOURCES_SUFFIX = ".sources.json"  # beside each shard: every record's description sources
# A preparation writes <name>/incomplete.<version>/ (TFDS's prefix for unfinished folders) and swaps
# it in, the finished <name>/<version>/ renamed to <name>/replaced.<version>/ meanwhile.
STAGING = "incomplete."
REPLACED = "replaced."
COPY_FORMATS = ("jpeg", "raw")  # how an entry's image and copies are stored


@dataclasses.dataclass
class Person:
    """One annotated person: its skeleton's joints (x, y) in 0-based pixels, which are annotated
    and visible."""

    keypoints: np.ndarray  # float32 [J, 2]
    visible: np.ndarray  # bool [J]
    center: tuple[float, float] | None = None
    scale: float | None = None  # person height / 200 px
    head_box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2


@dataclasses.dataclass
class ImageRecord:
    """One image: its file name (under the images folder, or absolute), its people, activity and
    descriptions by source, and its split."""

    image: str
    people: list[Person]
    activity: str = ""
    descriptions: dict[str, str] = dataclasses.field(default_factory=dict)
    split: str = "train"


class PreparedEntry(NamedTuple):
    """A decoded `encode_prepared` entry: the header, the stored image (longest side <= max_side)
    and the bytes of each stored copy (b"" when none): the whole image squashed to
    header["squashed_side"]², and the people's box (`transforms.person_box` with margin
    header["person_margin"]) resampled to header["person_side"]². The image is a JPEG, or its
    uint8 [height, width, 3] pixels (header["size"] is [width, height]) when
    header["image_format"] is "raw"; a copy is a JPEG, or its uint8 [side, side, 3] pixels when
    header["<copy>_format"] is "raw". The bytes are views of the entry's: raw pixels are copied
    once, into the batch."""

    header: dict[str, Any]
    image: memoryview
    squashed: memoryview
    person: memoryview


@dataclasses.dataclass(frozen=True)
class StoredCopy:
    """A square copy stored beside the image (`PreparedEntry`): its bytes, side and format."""

    data: bytes
    side: int
    format: str = "jpeg"


COPIES = ("squashed", "person")  # stored in this order after the JPEG


def stored_keypoints(record: ImageRecord) -> list[np.ndarray]:
    """Each person's keypoints as an entry stores them (3 decimals): what training reads, and
    what a stored person copy's box is computed from."""
    return [p.keypoints.round(3) for p in record.people]


def encode_prepared(
    record: ImageRecord,
    image: bytes,
    *,
    size: tuple[int, int] | None = None,
    image_format: str = "jpeg",
    squashed: StoredCopy | None = None,
    person: StoredCopy | None = None,
    person_margin: float = 0.0,
) -> bytes:
    """One ArrayRecord entry: a little-endian u32 header length, a JSON header, the image's bytes
    (a JPEG, or with `image_format="raw"` its pixels), then those of each copy there is (`size`:
    the stored image's width and height, which raw pixels need).

    JSON rather than pickle: readable from any language and safe to load from untrusted files.
    """
    header = {
        "image": record.image,
        "activity": record.activity,
        "descriptions": record.descriptions,
        "keypoints": [k.tolist() for k in stored_keypoints(record)],
        "visible": [p.visible.astype(int).tolist() for p in record.people],
    }
    if size is not None:
        header["size"] = list(size)
    if image_format != "jpeg":
        if size is None:
            raise ValueError(f"image_format={image_format!r} needs the image's size")
        header["image_format"] = image_format
    copies = {"squashed": squashed, "person": person}
    for name, copy in copies.items():
        if copy is not None and copy.data:
            header |= {f"{name}_side": copy.side, f"{name}_bytes": len(copy.data)}
            if copy.format != "jpeg":
                header[f"{name}_format"] = copy.format
    if person is not None and person.data:
        header["person_margin"] = person_margin
    blob = json.dumps(header, separators=(",", ":")).encode()
    tail = b"".join(copy.data for copy in copies.values() if copy is not None)
    return struct.pack("<I", len(blob)) + blob + image + tail


def decode_prepared(entry: bytes) -> PreparedEntry:
    """The header, image and copies (`PreparedEntry`) of an `encode_prepared` entry."""
    (size,) = struct.unpack_from("<I", entry)
    header = json.loads(entry[4 : 4 + size])
    view = memoryview(entry)
    end, copies = len(entry), {}
    for name in reversed(COPIES):
        start = end - header.get(f"{name}_bytes", 0)
        copies[name], end = view[start:end], start
    return PreparedEntry(header, view[4 + size : end], **copies)


def tfds_features() -> Any:
    """The prepared dataset's TFDS features: one bytes tensor per record, so that writing and
    reading need no TensorFlow and the entry decodes as before (`decode_prepared`)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {ENTRY: tfds.features.Tensor(shape=(), dtype=np.object_, doc="encode_prepared entry")}
    )


def read_meta(prepared: str) -> dict[str, Any]:
    """The meta.json of a finished preparation (settings, splits, skips, corrections)."""
    return json.loads((dataset_dir(prepared) / META_FILE).read_text())


def finished(prepared: str) -> epath.Path | None:
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
            f"run the same prepare command with --out={prepared} again: "
            "it converts them without re-encoding images"
        )
    return max(found, key=lambda p: Version(p.name)) if found else None


def dataset_dir(prepared: str) -> epath.Path:
    """The TFDS version folder of a finished preparation; an error naming `prepared` if none."""
    found = finished(prepared)
    if found is None:
        root = epath.Path(prepared)
        aside = [*root.glob(f"*/{REPLACED}*/{INFO_FILE}"), root.parent / f"{REPLACED}{root.name}"]
        if any(path.exists() for path in aside):
            raise InputDataError(
                f"{prepared}: a preparation was cut short while swapping in its new dataset; "
                "rerun the same prepare command: it puts the finished dataset back first"
            )
        raise InputDataError(f"{prepared}: no finished preparation (no {INFO_FILE}); {PREPARE}")
    return found


@functools.cache
def _example_proto() -> Any:
    """TFDS's copy of TensorFlow's `Example` protocol buffer (no TensorFlow needed)."""
    from tensorflow_datasets.proto import tf_example_pb2

    return tf_example_pb2.Example


class PreparedSplit:
    """A split of a preparation as grain reads it (len, getitem): record i is its
    `encode_prepared` entry. Pickles (grain's workers) as its TFDS data source does.

    A record is read from the ArrayRecord shards as it is stored, a serialized `tf.train.Example`
    with one bytes feature, and its bytes taken out of the parsed protocol buffer: TFDS's
    `__getitem__` gives the same bytes through its features' numpy decoding at twice the CPU."""

    def __init__(self, source: Any):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> bytes:
        example = _example_proto().FromString(self.source.data_source[index])
        return example.features.feature[ENTRY].bytes_list.value[0]


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
            f"{len(shards)}); {PREPARE} again"
        )
    return PreparedSplit(builder.as_data_source(split=split)), shards


def read_index(shard: str) -> dict[str, Any]:
    """A shard's `.sources.json`: `sources` (each record's description sources),
    `skipped` and `corrected` (counts by reason) and the `fingerprint` of its inputs."""
    index = epath.Path(shard + SOURCES_SUFFIX)
    if not index.exists():
        raise InputDataError(f"{index}: missing, the index of a prepared shard; {PREPARE}")
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
