"""COCO-2017 people with keypoints and captions → a prepared TFDS dataset, as prepare_mpii writes.

    python -m input_pipeline.prepare_coco --images=<train2017/> \\
        --annotations=<person_keypoints_train2017.json> --captions=<captions_train2017.json> \\
        --out=<dir>

The split is the annotation file's (`..._train2017.json` → train, `..._val2017.json` → val).
Give every split in one run (repeat `--images`, `--annotations` and `--captions`, in the same
order): like prepare_mpii, a run writes the dataset it is given and removes other shards from
`--out`. People are COCO's keypoint annotations as its keypoint
evaluation counts them: crowd regions (`iscrowd=1`) and people with no labelled keypoint
(`num_keypoints=0`) are left out; a keypoint is usable when labelled (`v` 1 or 2: its place is
known, visible or not) and its [x, y] are 0-based pixels. An image keeps its captions (COCO's five
human-written ones, sometimes more) as the description sources `caption_0`, `caption_1`, ...: the
`:coco` config samples one per step. Images with no usable person or no caption are skipped and
counted; crops, the squashed copy and the dataset format are prepare_mpii's; the TFDS dataset is
`<out>/coco_pose_captions/`.
"""

import collections
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from input_pipeline import files, mpii, prepare_mpii
from input_pipeline.files import InputDataError
from input_pipeline.skeleton import COCO

FLAGS = flags.FLAGS
NAME = "coco_pose_captions"  # the TFDS dataset name (TFDS's own `coco` is another dataset)
CAPTION_SOURCES = tuple(f"caption_{i}" for i in range(7))  # COCO gives 5 to 7 per image


def _load(path: str, what: str) -> dict[str, Any]:
    try:
        content = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputDataError(f"{path}: not found (COCO-2017 {what}, cocodataset.org)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise InputDataError(f"{path}: unreadable JSON ({error})") from None
    if not isinstance(content, dict) or "annotations" not in content:
        raise InputDataError(f"{path}: expected COCO's {what} (a dict with 'annotations')")
    return content


def split_of(path: str) -> str:
    """`person_keypoints_val2017.json` → `val`."""
    found = re.search(r"_(train|val)\d*\.json$", Path(path).name)
    if not found:
        raise InputDataError(
            f"{path}: expected a COCO name ending in _train2017.json or _val2017.json"
        )
    return found.group(1)


def read_coco(annotations: str, captions: str) -> tuple[list[mpii.MpiiRecord], collections.Counter]:
    """Records (17-joint people, captions as descriptions) and what was left out, counted."""
    keypoints_file, captions_file = (
        _load(annotations, "person keypoints"),
        _load(captions, "captions"),
    )
    split = split_of(annotations)
    names = {image["id"]: image["file_name"] for image in keypoints_file.get("images", [])}
    people: dict[int, list[mpii.Person]] = collections.defaultdict(list)
    left_out: collections.Counter = collections.Counter()
    for i, annotation in enumerate(keypoints_file["annotations"]):
        if annotation.get("iscrowd", 0):
            left_out["crowd regions"] += 1
            continue
        if not annotation.get("num_keypoints", 0):
            left_out["people without keypoints"] += 1
            continue
        try:
            values = np.asarray(annotation["keypoints"], np.float64).reshape(COCO.num_joints, 3)
        except (KeyError, TypeError, ValueError) as error:
            raise InputDataError(
                f"{annotations}: annotations[{i}].keypoints: expected 17 [x, y, v] ({error})"
            ) from None
        people[annotation["image_id"]].append(
            mpii.Person(keypoints=values[:, :2].astype(np.float32), visible=values[:, 2] > 0)
        )
    texts: dict[int, list[str]] = collections.defaultdict(list)
    for annotation in sorted(captions_file["annotations"], key=lambda a: a.get("id", 0)):
        texts[annotation["image_id"]].append(str(annotation["caption"]).strip())
    records = []
    for image_id, name in sorted(names.items(), key=lambda item: item[1]):
        if not people.get(image_id):
            left_out["images without a usable person"] += 1
        elif not texts.get(image_id):
            left_out["images without a caption"] += 1
        else:
            described = dict(zip(CAPTION_SOURCES, texts[image_id], strict=False))
            records.append(mpii.MpiiRecord(name, people[image_id], "", described, split))
    return records, left_out


def _under(record: mpii.MpiiRecord, images: str) -> mpii.MpiiRecord:
    """The record with its image's absolute path (the splits' images live in their folders)."""
    record.image = str(Path(images).absolute() / record.image)
    return record


def main(argv: list[str]) -> None:
    del argv
    for name in ("images", "annotations", "captions", "out"):
        if not FLAGS[name].value:
            files.fail(f"--{name} is required")
    if not len(FLAGS.images) == len(FLAGS.annotations) == len(FLAGS.captions):
        files.fail("--images, --annotations and --captions: give one of each per split, in order")
    records, left_out = [], collections.Counter()
    for images, annotations, captions in zip(
        FLAGS.images, FLAGS.annotations, FLAGS.captions, strict=True
    ):
        found, skipped = read_coco(annotations, captions)
        records += [_under(record, images) for record in found]
        left_out += skipped
    logging.info(
        "COCO: %d images with people and captions; left out: %s", len(records), dict(left_out)
    )
    meta = prepare_mpii.write_prepared(
        records,
        "/",
        FLAGS.out,
        name=NAME,
        max_side=FLAGS.max_side,
        quality=FLAGS.quality,
        squash_side=FLAGS.squash_side,
        records_per_shard=FLAGS.records_per_shard,
        workers=FLAGS.workers,
    )
    counts = {split: info["images"] for split, info in meta["splits"].items()}
    print(json.dumps(counts | {"skipped": meta["skipped"], "left_out": dict(left_out)}))


def _define_flags() -> None:
    flags.DEFINE_multi_string("images", None, "COCO images folder of a split (train2017/).")
    flags.DEFINE_multi_string("annotations", None, "person_keypoints_{train,val}2017.json")
    flags.DEFINE_multi_string("captions", None, "captions_{train,val}2017.json")
    flags.DEFINE_string("out", None, f"Output TFDS data_dir (the dataset: <out>/{NAME}/).")
    flags.DEFINE_integer("max_side", 512, "Longest side of the re-encoded JPEGs, pixels.")
    flags.DEFINE_integer("quality", 90, "JPEG quality of the re-encoded images.")
    flags.DEFINE_integer("squash_side", 224, "Side of the stored squashed copy (0: none).")
    flags.DEFINE_integer("records_per_shard", 512, "Images per ArrayRecord shard.")
    flags.DEFINE_integer("workers", 0, "Parallel shard writers; 0: one per core.")


if __name__ == "__main__":
    _define_flags()
    files.run(main)
