"""COCO-2017 people with keypoints and captions → a prepared dataset (`records`), as MPII's.

    python -m input_pipeline.prepare.coco --images=<train2017/> \\
        --annotations=<person_keypoints_train2017.json> --captions=<captions_train2017.json> \\
        --out=<dir> [--overwrite]

The split is the annotation file's (`..._train2017.json` → train, `..._val2017.json` → val).
Give every split in one run (repeat `--images`, `--annotations` and `--captions`, in the same
order): like every preparation (`shards`), a run writes the dataset it is given, aside, and swaps
it in for the one in `--out` only when complete and no worse: a split of the finished dataset
that this run lacks or has fewer images of is replaced only with `--overwrite`, and a split left
without images (crowd regions only, captions of unknown images, unreadable images) is refused,
never written.
Files that do not exist, or a keypoints file given as `--captions` (and the reverse), are refused
before anything is written. People are COCO's keypoint annotations as its keypoint
evaluation counts them: crowd regions (`iscrowd=1`) and people with no labelled keypoint
(`num_keypoints=0`) are left out; a keypoint is usable when labelled (`v` 1 or 2: its place is
known, visible or not) and its [x, y] are 0-based pixels. An image keeps its captions (COCO's five
human-written ones, sometimes more) as the description sources `caption_0`, `caption_1`, ...: the
`:coco` config samples one per step. Images with no usable person or no caption are skipped and
counted, as are captions that are empty or not text (a `null`) and people or captions of images
missing from the keypoints file's `images`; crops, the squashed copy and the dataset format are
`shards`'; the TFDS dataset is `<out>/coco_pose_captions/`.
"""

import collections
import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from input_pipeline import cli, records
from input_pipeline.errors import InputDataError
from input_pipeline.prepare import shards
from input_pipeline.skeleton import COCO

FLAGS = flags.FLAGS
NAME = "coco_pose_captions"  # the TFDS dataset name (TFDS's own `coco` is another dataset)
CAPTION_SOURCES = tuple(f"caption_{i}" for i in range(7))  # COCO gives 5 to 7 per image


@dataclasses.dataclass(frozen=True)
class _Kind:
    """A COCO annotation file a flag names: what it holds, and the key of its annotations."""

    flag: str
    what: str
    key: str


KEYPOINTS = _Kind("--annotations", "person keypoints", "keypoints")
CAPTIONS = _Kind("--captions", "captions", "caption")


def _load(path: str, kind: _Kind) -> dict[str, Any]:
    """The COCO JSON at `path`, checked to hold `kind` (one that holds the other kind: the two
    flags swapped)."""
    try:
        content = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputDataError(
            f"{kind.flag}={path}: not found (COCO-2017 {kind.what}, cocodataset.org)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputDataError(f"{kind.flag}={path}: unreadable JSON ({error})") from None
    if not isinstance(content, dict) or not isinstance(content.get("annotations"), list):
        raise InputDataError(
            f"{kind.flag}={path}: expected COCO's {kind.what} (a dict with a list 'annotations')"
        )
    other = CAPTIONS if kind is KEYPOINTS else KEYPOINTS
    first = content["annotations"][0] if content["annotations"] else {}
    if isinstance(first, dict) and kind.key not in first and other.key in first:
        raise InputDataError(
            f"{kind.flag}={path}: holds COCO {other.what} (annotations with '{other.key}'), not "
            f"{kind.what}: are {kind.flag} and {other.flag} swapped?"
        )
    for i, annotation in enumerate(content["annotations"]):
        if not isinstance(annotation, dict):
            raise InputDataError(f"{kind.flag}={path}: annotations[{i}]: expected a dict")
    return content


def split_of(path: str) -> str:
    """`person_keypoints_val2017.json` → `val`."""
    found = re.search(r"_(train|val)\d*\.json$", Path(path).name)
    if not found:
        raise InputDataError(
            f"--annotations={path}: expected a COCO name ending in _train2017.json or _val2017.json"
        )
    return found.group(1)


UNLISTED = "of images not in the keypoints file's 'images'"


def _image_names(content: dict[str, Any], path: str) -> dict[int | str, str]:
    """The keypoints file's `images` as {id: file_name}; InputDataError naming the file and the
    image (its index and id) whose id or file_name is missing or of the wrong kind."""
    images = content.get("images", [])
    if not isinstance(images, list):
        raise InputDataError(f"{path}: 'images': expected a list of {{'id', 'file_name'}}")
    names = {}
    for i, image in enumerate(images):
        image_id = image.get("id") if isinstance(image, dict) else None
        if not isinstance(image_id, int | str) or isinstance(image_id, bool):
            raise InputDataError(
                f"{path}: images[{i}]: expected a dict with an integer 'id' and a 'file_name'"
            )
        name = image.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise InputDataError(
                f"{path}: images[{i}] (id {image_id}).file_name={name!r}: expected a file name"
            )
        names[image_id] = name
    return names


def _listed(image_id: Any, names: dict[int | str, str]) -> bool:
    """Whether an annotation's `image_id` is one of the images' (a list or null one is not)."""
    return isinstance(image_id, int | str) and image_id in names


def read_coco(
    annotations: str, captions: str
) -> tuple[list[records.ImageRecord], collections.Counter]:
    """Records (17-joint people, captions as descriptions) and what was left out, counted; a
    split left without an image is refused, naming the file and the counts."""
    keypoints_file, captions_file = _load(annotations, KEYPOINTS), _load(captions, CAPTIONS)
    split = split_of(annotations)
    names = _image_names(keypoints_file, annotations)
    people: dict[int, list[records.Person]] = collections.defaultdict(list)
    left_out: collections.Counter = collections.Counter()
    for i, annotation in enumerate(keypoints_file["annotations"]):
        if annotation.get("iscrowd", 0):
            left_out["crowd regions"] += 1
            continue
        if not annotation.get("num_keypoints", 0):
            left_out["people without keypoints"] += 1
            continue
        if not _listed(annotation.get("image_id"), names):
            left_out[f"people {UNLISTED}"] += 1
            continue
        try:
            values = np.asarray(annotation["keypoints"], np.float64).reshape(COCO.num_joints, 3)
        except (KeyError, TypeError, ValueError) as error:
            raise InputDataError(
                f"{annotations}: annotations[{i}].keypoints: expected 17 [x, y, v] ({error})"
            ) from None
        people[annotation["image_id"]].append(
            records.Person(keypoints=values[:, :2].astype(np.float32), visible=values[:, 2] > 0)
        )
    texts: dict[int, list[str]] = collections.defaultdict(list)
    for annotation in sorted(captions_file["annotations"], key=lambda a: a.get("id", 0)):
        caption = annotation.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            left_out["captions empty or not text"] += 1
        elif not _listed(annotation.get("image_id"), names):
            left_out[f"captions {UNLISTED}"] += 1
        else:
            texts[annotation["image_id"]].append(caption.strip())
    found = []
    for image_id, name in sorted(names.items(), key=lambda item: item[1]):
        if not people.get(image_id):
            left_out["images without a usable person"] += 1
        elif not texts.get(image_id):
            left_out["images without a caption"] += 1
        else:
            described = dict(zip(CAPTION_SOURCES, texts[image_id], strict=False))
            found.append(records.ImageRecord(name, people[image_id], "", described, split))
    if not found:
        counts = ", ".join(f"{n} {reason}" for reason, n in left_out.items()) or "no image"
        raise InputDataError(
            f"--annotations={annotations}: no image of split {split} has a usable person and a "
            f"caption (left out: {counts}); nothing written"
        )
    return found, left_out


def _under(record: records.ImageRecord, images: str) -> records.ImageRecord:
    """The record with its image's absolute path (the splits' images live in their folders)."""
    record.image = str(Path(images).absolute() / record.image)
    return record


def prepare(
    images: Sequence[str],
    annotations: Sequence[str],
    captions: Sequence[str],
    out: str,
    **options: Any,
) -> tuple[dict, collections.Counter]:
    """Every split (its images folder, keypoints and captions files, in the same order) read and
    written as every preparation is (`options`: `shards.write_prepared`'s, --overwrite among them);
    returns its meta.json and what COCO's files left out, counted. Inputs that do not exist or
    hold nothing usable are refused before anything is written."""
    if not len(images) == len(annotations) == len(captions):
        raise InputDataError(
            "--images, --annotations and --captions: give one of each per split, in order"
        )
    for folder in images:
        if not Path(folder).is_dir():
            problem = "not a folder" if Path(folder).exists() else "not found"
            raise InputDataError(f"--images={folder}: {problem} (a COCO images folder)")
    read, left_out = [], collections.Counter()
    for folder, keypoints_file, captions_file in zip(images, annotations, captions, strict=True):
        found, skipped = read_coco(keypoints_file, captions_file)
        read += [_under(record, folder) for record in found]
        left_out += skipped
    logging.info(
        "COCO: %d images with people and captions; left out: %s", len(read), dict(left_out)
    )
    meta = shards.write_prepared(read, "/", out, name=NAME, **options)
    return meta, left_out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    meta, left_out = prepare(
        FLAGS.images, FLAGS.annotations, FLAGS.captions, FLAGS.out, **shards.writer_options()
    )
    counts = {split: info["images"] for split, info in meta["splits"].items()}
    print(json.dumps(counts | {"skipped": meta["skipped"], "left_out": dict(left_out)}))


def define_flags() -> None:
    flags.DEFINE_multi_string("images", None, "COCO images folder of a split (train2017/).")
    flags.DEFINE_multi_string("annotations", None, "person_keypoints_{train,val}2017.json")
    flags.DEFINE_multi_string("captions", None, "captions_{train,val}2017.json")
    shards.define_writer_flags(NAME)
    flags.mark_flags_as_required(["images", "annotations", "captions", "out"])
    cli.check_flags(
        images=cli.Path("folder"), annotations=cli.Path("file"), captions=cli.Path("file")
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
