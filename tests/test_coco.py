"""COCO-2017 as a second real data source: preparation from fixtures in COCO's own JSON formats,
then `configs/pretrain.py:tiny,coco` trains on it and retrieves its val captions."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from input_pipeline import records
from input_pipeline.errors import InputDataError
from input_pipeline.prepare import coco
from tests.conftest import REPO


def _person(rng, image_id, ann_id, *, crowd=0, labelled=17):
    values = []
    for j in range(17):
        v = 2 if j < labelled else 0
        x, y = (rng.uniform(4, 60), rng.uniform(4, 44)) if v else (0.0, 0.0)
        values += [round(x, 1), round(y, 1), v]
    return {
        "id": ann_id, "image_id": image_id, "iscrowd": crowd, "num_keypoints": labelled,
        "keypoints": values, "category_id": 1, "bbox": [0, 0, 64, 48],
    }  # fmt: skip


def _split(root: Path, split: str, first_id: int, rng) -> tuple[Path, Path, Path]:
    """Four images: two with a person (one also with a crowd region and a person without
    keypoints), one with only a crowd region, one with a person but no caption."""
    folder = root / f"{split}2017"
    folder.mkdir(parents=True)
    ids = range(first_id, first_id + 4)
    images = []
    for image_id in ids:
        name = f"{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / name)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
    a, b, only_crowd, uncaptioned = ids
    people = [
        _person(rng, a, 1),
        _person(rng, a, 2, crowd=1),
        _person(rng, a, 3, labelled=0),
        _person(rng, b, 4, labelled=9),
        _person(rng, only_crowd, 5, crowd=1),
        _person(rng, uncaptioned, 6),
    ]
    captions = [
        {"id": 10 * image_id + k, "image_id": image_id, "caption": f"photo {image_id} caption {k}"}
        for image_id in (a, b, only_crowd)
        for k in range(5)
    ]
    keypoints_file = root / f"person_keypoints_{split}2017.json"
    keypoints_file.write_text(json.dumps({"images": images, "annotations": people}))
    captions_file = root / f"captions_{split}2017.json"
    captions_file.write_text(json.dumps({"images": images, "annotations": captions}))
    return folder, keypoints_file, captions_file


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    splits = [_split(root, "train", 100, rng), _split(root, "val", 200, rng)]
    args = [f"--out={root / 'prepared'}", "--workers=1"]
    for images, annotations, captions in splits:
        args += [f"--images={images}", f"--annotations={annotations}", f"--captions={captions}"]
    done = subprocess.run(
        [sys.executable, "-m", "input_pipeline.prepare.coco", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["train"] == counts["val"] == 2
    assert counts["left_out"] == {
        "crowd regions": 4,
        "people without keypoints": 2,
        "images without a usable person": 2,
        "images without a caption": 2,
    }
    return root / "prepared"


def test_prepared_coco_keeps_17_joints_labelled_ones_usable_and_the_captions(prepared) -> None:
    source, _ = records.open_split(str(prepared / coco.NAME / "1.0.0"), "train")
    headers = [records.decode_prepared(source[i]).header for i in range(len(source))]
    assert [len(h["keypoints"]) for h in headers] == [1, 1]  # the crowd and empty people left out
    assert all(len(h["keypoints"][0]) == 17 for h in headers)
    assert [sum(h["visible"][0]) for h in headers] == [17, 9]  # v > 0: labelled
    assert headers[0]["descriptions"] == {
        f"caption_{k}": f"photo 100 caption {k}" for k in range(5)
    }
    assert coco.split_of("person_keypoints_val2017.json") == "val"


def test_pretrain_tiny_coco_trains_and_retrieves_val_captions(prepared, tmp_path) -> None:
    from configs import pretrain
    from focusclip_jax import train

    config = pretrain.get_config("tiny,coco")
    config.data.prepared = str(prepared)
    config.data.worker_count = 0
    config.mesh.data = 1
    config.train.batch_size, config.train.num_steps = 2, 2
    config.evals.zero_shot.datasets = ()
    results = train.train_and_evaluate(config, tmp_path)
    assert set(results) == {
        f"coco_val/{direction}_{metric}"
        for direction in ("image_to_text", "text_to_image")
        for metric in ("R@1", "R@5", "R@10", "median_rank")
    }
    assert config.data.description_sources == coco.CAPTION_SOURCES


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (
            {"id": 101, "file_name": None},
            r"images\[1\] \(id 101\)\.file_name=None: expected a file",
        ),
        ({"id": 101, "file_name": ""}, r"images\[1\] \(id 101\)\.file_name='': expected a file"),
        ({"file_name": "x.jpg"}, r"images\[1\]: expected a dict with an integer 'id'"),
        ("x.jpg", r"images\[1\]: expected a dict with an integer 'id'"),
    ],
)
def test_a_bad_image_entry_names_the_file_and_image(tmp_path, image, message) -> None:
    _, keypoints_file, captions_file = _split(tmp_path, "train", 100, np.random.default_rng(0))
    content = json.loads(keypoints_file.read_text())
    content["images"][1] = image
    keypoints_file.write_text(json.dumps(content))
    with pytest.raises(InputDataError, match=r"person_keypoints_train2017\.json: " + message):
        coco.read_coco(str(keypoints_file), str(captions_file))


def test_an_annotation_of_an_unhashable_image_id_is_left_out_as_unlisted(tmp_path) -> None:
    _, keypoints_file, captions_file = _split(tmp_path, "train", 100, np.random.default_rng(0))
    content = json.loads(keypoints_file.read_text())
    content["annotations"][0]["image_id"] = [100]
    keypoints_file.write_text(json.dumps(content))
    found, left_out = coco.read_coco(str(keypoints_file), str(captions_file))
    assert [r.image for r in found] == ["000000000101.jpg"]
    assert left_out[f"people {coco.UNLISTED}"] == 1
