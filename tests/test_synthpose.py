"""SynthPose: drawn keypoints, pose classes against geometry and the describer, determinism,
distractors, the zero-shot split, and export → input_pipeline.prepare.mpii → the MPII stream."""

import json
import pickle
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from input_pipeline import pipeline
from input_pipeline.benchmarks import registry
from input_pipeline.prepare import mpii
from input_pipeline.tokenizers import UNK
from synthpose import describe
from synthpose import scenes as synthpose
from synthpose.scenes import (
    HEAD_TOP,
    L_ANKLE,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    PELVIS,
    POSE_CLASSES,
    R_ANKLE,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    THORAX,
    UPPER_NECK,
)
from tests.tiny import tiny_config

SIZE = 64
SCENES = 96


@pytest.fixture(scope="module")
def scenes() -> list[synthpose.Scene]:
    return [synthpose.make_scene(i, seed=11, image_size=SIZE) for i in range(SCENES)]


def geometry_class(kp: np.ndarray) -> str:
    """The pose class read back from joint positions by the definitions of the classes alone (an
    independent reference for the sampler): y is down, `h` the person's torso + leg length."""
    torso = kp[THORAX] - kp[PELVIS]
    if abs(torso[0]) > abs(torso[1]):
        return "lying"
    h = np.linalg.norm(torso) / 0.3
    hip_y, knee_y = kp[[R_HIP, L_HIP], 1].mean(), kp[[R_KNEE, L_KNEE], 1].mean()
    ankle_y = kp[[R_ANKLE, L_ANKLE], 1]
    if knee_y < hip_y - 0.06 * h:
        return "squatting"
    if abs(knee_y - hip_y) < 0.1 * h:
        return "sitting"
    if abs(ankle_y[0] - ankle_y[1]) > 0.12 * h:
        return "kicking"
    shoulder_y = kp[[R_SHOULDER, L_SHOULDER], 1]
    wrist = kp[[R_WRIST, L_WRIST]]
    above_head = wrist[:, 1] < kp[HEAD_TOP, 1]
    if above_head.all():
        return "both arms raised"
    if above_head.any():
        return "one arm raised"
    if np.all(np.abs(wrist[:, 1] - shoulder_y) < 0.15 * h) and (
        wrist[1, 0] - wrist[0, 0] > 0.6 * h
    ):
        return "arms spread"
    return "standing"


def test_pose_classes_match_their_geometry_and_the_describers_posture(scenes) -> None:
    labels = [POSE_CLASSES[s.people[0].label] for s in scenes]
    assert set(labels) == set(POSE_CLASSES)
    for index in range(40):  # every class, with distractors drawn from all of them
        for person in synthpose.make_scene(index, seed=5, image_size=SIZE).people:
            assert geometry_class(person.keypoints) == POSE_CLASSES[person.label], index
    for scene in scenes:
        target = scene.people[0]
        visible = synthpose.in_frame(target.keypoints, SIZE)
        facts = describe.measure(target.keypoints, visible)
        assert facts.posture == synthpose.POSTURES[POSE_CLASSES[target.label]]


def test_target_joints_lie_on_its_drawn_body(scenes) -> None:
    for scene in scenes:
        target, covered = scene.people[0], scene.coverage[0]
        inside = synthpose.in_frame(target.keypoints, SIZE)
        assert inside.sum() >= 12  # people are placed in the frame
        cols, rows = np.round(target.keypoints[inside]).astype(int).T
        assert np.all(covered[rows, cols] > 0.25)  # the pixel under each joint is painted
        # and the drawing is what the image shows there: not the background's colours alone
        assert covered.sum() > 0.05 * SIZE * SIZE


def test_same_seed_and_index_give_the_same_record_and_seeds_differ() -> None:
    source = synthpose.SynthPose(8, seed=3, image_size=SIZE)
    again = pickle.loads(pickle.dumps(source))
    for i in (0, 5):
        a, b = source[i], again[i]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    other = synthpose.make_example(0, seed=4, image_size=SIZE)
    assert not np.array_equal(other["image"], source[0]["image"])
    with pytest.raises(IndexError, match="out of range"):
        source[8]


def test_distractors_are_in_range_never_the_targets_class_and_only_the_target_is_annotated(
    scenes,
) -> None:
    counts = [len(s.people) - 1 for s in scenes]
    assert set(counts) == set(range(synthpose.MAX_DISTRACTORS + 1))
    for scene in scenes:
        target = scene.people[0]
        assert all(p.label != target.label for p in scene.people[1:])
        assert all(p.height < target.height for p in scene.people[1:])
    record = synthpose.make_example(1, seed=11, image_size=SIZE, max_people=4)
    np.testing.assert_array_equal(record["person_mask"], [True, False, False, False])
    np.testing.assert_allclose(record["keypoints"][0], scenes[1].people[0].keypoints, atol=1e-4)
    assert not record["visible"][1:].any() and record["description"] == scenes[1].description


def test_alone_split_keeps_the_targets_and_drops_the_distractors(scenes) -> None:
    for index in range(12):
        alone = synthpose.make_scene(index, seed=11, image_size=SIZE, max_distractors=0)
        crowded = scenes[index]
        assert len(alone.people) == 1 and alone.description == crowded.description
        np.testing.assert_array_equal(alone.people[0].keypoints, crowded.people[0].keypoints)
        # Pixels are identical wherever no distractor was drawn.
        free = sum(crowded.coverage[1:], np.zeros((SIZE, SIZE))) == 0
        np.testing.assert_array_equal(alone.image[free], crowded.image[free])


def test_zero_shot_split_labels_prompts_and_tokens() -> None:
    config = tiny_config()
    data = config.data
    options = config.evals.zero_shot
    crowded = registry.zero_shot_data("synthpose_pose", data, options)
    alone = registry.zero_shot_data("synthpose_pose_alone", data, options)
    expected = [
        synthpose.make_example(i, seed=data.eval_seed, image_size=data.image_size)
        for i in range(data.eval_records)
    ]
    np.testing.assert_array_equal(crowded.labels, [r["label"] for r in expected])
    np.testing.assert_array_equal(alone.labels, crowded.labels)
    np.testing.assert_array_equal(crowded.images, np.stack([r["image"] for r in expected]))
    assert crowded.images.shape == (data.eval_records, data.image_size, data.image_size, 3)
    assert len(crowded.class_names) == len(POSE_CLASSES) == 8
    prompts = [t.format(c) for t in crowded.templates for c in crowded.class_names]
    assert prompts == list(synthpose.POSE_PROMPTS)
    assert prompts[1] == "a photo of a person with both arms raised high."
    # The class phrases use only the describer's words; the template adds "photo" to all alike.
    assert set(synthpose.vocabulary()) - set(describe.vocabulary()) == {"photo"}
    descriptions = [synthpose.make_scene(i, seed=7).description for i in range(30)]
    assert not any(p.rstrip(".") in d.lower() for p in prompts for d in descriptions)
    tokenizer = pipeline.create_tokenizer(config)
    ids, _ = tokenizer([*prompts, *descriptions], 200)
    assert not (ids == tokenizer.ids[UNK]).any()  # the corpus covers every word
    assert set(synthpose.vocabulary()) >= set(describe.vocabulary())


def test_export_prepares_and_streams_through_the_mpii_path(tmp_path: Path) -> None:
    synthpose.export(tmp_path / "export", 6, seed=9, image_size=SIZE, split="train")
    root = tmp_path / "export"
    meta = mpii.prepare(
        str(root / "images"),
        [str(root / "annotations" / "mpii_train.json")],
        str(root / "descriptions"),
        str(tmp_path / "prepared"),
        max_side=SIZE,
        workers=1,
    )
    assert meta["splits"]["train"]["images"] == 6 and not meta["skipped"]
    described = mpii.read_descriptions(root / "descriptions")
    rows = json.loads((root / "annotations" / "mpii_train.json").read_text())
    for index, row in enumerate(rows):
        scene = synthpose.make_scene(index, seed=9, image_size=SIZE)
        record = described[row["image"]]
        assert record.descriptions == {synthpose.EXPORT_SOURCE: scene.description}
        visible = synthpose.in_frame(scene.people[0].keypoints, SIZE)
        np.testing.assert_array_equal(record.people[0].visible, visible)
        np.testing.assert_allclose(
            record.people[0].keypoints[visible], scene.people[0].keypoints[visible], atol=1e-3
        )
    config = tiny_config()
    config.data = ml_collections.ConfigDict({
        "name": "mpii", "images": "", "annotations": "", "descriptions": "",
        "prepared": str(tmp_path / "prepared"), "split": "train", "train_records": 6,
        "image_size": SIZE, "max_people": 4, "worker_count": 0, "crop": "squash",
        "crop_scale": (0.5, 1.0), "person_margin": 0.15, "flip": False,
        "crop_on": "auto", "canvas_side": 512,
        "description_sources": (synthpose.EXPORT_SOURCE,),
    })  # fmt: skip
    config.model.image_size = SIZE
    config.train.batch_size = 6
    batch = next(pipeline.train_iterator(config, pipeline.create_tokenizer(config)))
    assert batch["image"].shape == (6, SIZE, SIZE, 3) and batch["person_mask"][:, 0].all()
    pelvises = [synthpose.make_scene(i, seed=9, image_size=SIZE).people[0].keypoints[PELVIS]
                for i in range(6)]  # fmt: skip
    got = batch["keypoints"][:, 0, PELVIS]
    np.testing.assert_allclose(got[np.argsort(got[:, 0])], sorted(pelvises, key=lambda p: p[0]),
                               atol=1e-3)  # fmt: skip


def distance_to_segments(
    size: int, segments: list[tuple[np.ndarray, np.ndarray, float]]
) -> np.ndarray:
    """Per pixel, the least of (distance to segment a–b) − radius over `segments` (naive numpy)."""
    ys, xs = np.mgrid[:size, :size].astype(np.float64)
    least = np.full((size, size), np.inf)
    for a, b, radius in segments:
        ab = b - a
        t = ((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / max(ab @ ab, 1e-12)
        t = t.clip(0.0, 1.0)
        distance = np.hypot(xs - a[0] - t * ab[0], ys - a[1] - t * ab[1])
        least = np.minimum(least, distance - radius)
    return least


@pytest.mark.parametrize("size, count", [(SIZE, 24), (224, 3)])
def test_coverage_is_the_round_capped_strokes_of_the_body_parts(size: int, count: int) -> None:
    """Every pixel well inside a stroke (radius: its fraction of the height; round ends; the head
    a disc) is covered, and none beyond radius + 2 px of every stroke is."""
    checked = 0
    for index in range(count * 2):
        scene = synthpose.make_scene(index, seed=13, image_size=size, max_distractors=0)
        target = scene.people[0]
        if POSE_CLASSES[target.label] == "sitting":  # its chair is drawn too
            continue
        kp, height = target.keypoints, target.height
        parts = synthpose._TROUSERS + synthpose._SHIRT + synthpose._SKIN_PARTS
        segments = [(kp[a], kp[b], max(r * height, 0.6)) for a, b, r in parts]
        head = (kp[HEAD_TOP] + kp[UPPER_NECK]) / 2
        head_radius = synthpose._HEAD_RADIUS * np.linalg.norm(kp[HEAD_TOP] - kp[UPPER_NECK])
        segments.append((head, head, max(head_radius, 1.0)))
        beyond_radius = distance_to_segments(size, segments)
        covered = scene.coverage[0]
        assert np.all(covered[beyond_radius <= -1.5] >= 0.5), index
        assert np.all(covered[beyond_radius > 2.0] == 0.0), index
        assert (beyond_radius <= -1.5).sum() > 0.02 * size * size
        checked += 1
    assert checked >= count
