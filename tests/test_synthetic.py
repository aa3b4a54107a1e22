"""Synthetic people: deterministic, geometry matches labels, heatmap covers the target."""

import pickle
import re

import grain
import numpy as np
import pytest

from input_pipeline import synthetic
from input_pipeline.heatmaps import render_heatmap_np
from input_pipeline.synthetic import (
    HEAD_TOP,
    L_ANKLE,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    POSE_CLASSES,
    R_ANKLE,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    SyntheticPeople,
    make_example,
    make_scene,
)

NUM_SCENES = 240


@pytest.fixture(scope="module")
def scenes() -> list[synthetic.Scene]:
    return [make_scene(i, seed=0) for i in range(NUM_SCENES)]


def test_examples_are_deterministic_in_seed_and_index():
    a, b = make_example(7, seed=3), make_example(7, seed=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], make_example(8, seed=3)["image"])
    assert not np.array_equal(a["image"], make_example(7, seed=4)["image"])


@pytest.mark.parametrize("size", [32, 64, 100])
def test_example_layout(size):
    ex = make_example(0, seed=1, image_size=size, max_people=3)
    assert ex["image"].shape == (size, size, 3) and ex["image"].dtype == np.uint8
    assert ex["keypoints"].shape == (3, 16, 2) and ex["keypoints"].dtype == np.float32
    assert ex["visible"].shape == (3, 16) and ex["visible"][0].all() and not ex["visible"][1:].any()
    assert ex["person_mask"].tolist() == [True, False, False]
    assert ex["label"].dtype == np.int32 and 0 <= ex["label"] < len(POSE_CLASSES)
    kp = ex["keypoints"][0]
    assert (kp >= -0.5).all() and (kp < size - 0.5).all()


def test_every_class_and_distractor_count_occurs(scenes):
    assert {s.people[0].label for s in scenes} == set(range(len(POSE_CLASSES)))
    assert {len(s.people) for s in scenes} == {1, 2, 3}
    for s in scenes:
        assert all(p.label != s.people[0].label for p in s.people[1:])
        assert all(p.shirt != s.people[0].shirt for p in s.people[1:])
        assert all(p.height < s.people[0].height for p in s.people[1:])
    assert {s.people[0].shirt for s in scenes} == set(range(len(synthetic.SHIRT_COLOURS)))


def test_target_shirt_is_drawn_in_its_named_colour():
    """The target's torso centre pixel is close to its shirt colour (jitter ±15 per channel)."""
    for index in range(20):
        scene = synthetic.make_scene(index, seed=11, image_size=64)
        target = scene.people[0]
        thorax, pelvis = target.keypoints[7], target.keypoints[6]
        x, y = np.round((thorax + pelvis) / 2).astype(int)
        expected = np.array(list(synthetic.SHIRT_COLOURS.values())[target.shirt])
        assert np.abs(scene.image[y, x].astype(float) - expected).max() < 15 + 4 * 6.0 + 1


def test_keypoint_geometry_matches_the_label(scenes):
    for s in scenes:
        j, h, name = s.people[0].keypoints, s.people[0].height, POSE_CLASSES[s.people[0].label]
        # The person faces the viewer: their left is the image's right.
        assert j[L_SHOULDER, 0] > j[R_SHOULDER, 0] and j[L_HIP, 0] > j[R_HIP, 0]
        above_head = j[[L_WRIST, R_WRIST], 1] < j[HEAD_TOP, 1]
        below_shoulder = j[[L_WRIST, R_WRIST], 1] > j[[L_SHOULDER, R_SHOULDER], 1]
        ankle_y, hip_y = j[[L_ANKLE, R_ANKLE], 1].mean(), j[[L_HIP, R_HIP], 1].mean()
        legs_share = (ankle_y - hip_y) / (ankle_y - j[HEAD_TOP, 1])
        knee_spread = (j[L_KNEE, 0] - j[R_KNEE, 0]) / (j[L_HIP, 0] - j[R_HIP, 0])
        if name == "standing":
            assert below_shoulder.all() and legs_share > 0.455
        elif name == "raising both arms":
            assert above_head.all() and legs_share > 0.455
        elif name == "raising the left arm":
            assert above_head[0] and below_shoulder[1]
        elif name == "stretching out both arms":
            dy = np.abs(j[[L_WRIST, R_WRIST], 1] - j[[L_SHOULDER, R_SHOULDER], 1])
            dx = (j[[L_WRIST, R_WRIST], 0] - j[[L_SHOULDER, R_SHOULDER], 0]) * [1, -1]
            assert (dy < 0.12 * h).all() and (dx > 0.2 * h).all()
        elif name == "sitting":
            assert legs_share < 0.455 and knee_spread < 2.5 and below_shoulder.all()
        else:
            assert name == "squatting" and legs_share < 0.455 and knee_spread > 2.5


def test_target_is_drawn_where_its_keypoints_are(scenes):
    for s in scenes[:60]:
        diff = np.abs(s.image.astype(int) - s.background.astype(int)).sum(-1)
        cov = s.coverage[0]
        assert diff[cov > 0.9].mean() > 40  # the target's limbs change the image
        assert (diff[sum(s.coverage) == 0] == 0).mean() > 0.8  # mostly untouched elsewhere
        for x, y in np.round(s.people[0].keypoints).astype(int):
            assert cov[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].max() >= 0.5


def test_target_heatmap_is_high_on_target_and_low_on_distractors(scenes):
    on_target, on_distractors = [], []
    for i, s in enumerate(scenes[:80]):
        ex = make_example(i, seed=0)
        hm = render_heatmap_np(ex["keypoints"], ex["visible"], ex["person_mask"], 64, 64)
        on_target.append(hm[s.coverage[0] > 0.9].mean())
        for cov in s.coverage[1:]:
            alone = (cov > 0.9) & (s.coverage[0] == 0)
            if alone.any():
                on_distractors.append(hm[alone].mean())
    assert min(on_target) > 0.7 and np.mean(on_target) > 0.85
    assert len(on_distractors) > 20 and np.median(on_distractors) < 0.05


def test_descriptions_follow_the_mpii_structure_and_vocabulary(scenes):
    vocab = set(synthetic.vocabulary())
    for s in scenes:
        phrase = POSE_CLASSES[s.people[0].label]
        assert s.description.startswith(f"There is one person in the image who is {phrase}. ")
        assert re.fullmatch(r"[A-Za-z ,.]+", s.description)
        assert set(re.findall(r"[a-z]+", s.description.lower())) <= vocab
        legs = {"sitting": "seat", "squatting": "deeply"}.get(phrase, "straight")
        assert legs in s.description.split(". ")[2]  # the legs sentence follows the geometry
        colour = list(synthetic.SHIRT_COLOURS)[s.people[0].shirt]
        assert f" {colour} shirt. " in s.description
    assert len({s.description for s in scenes}) > NUM_SCENES // 2  # phrasings vary
    for prompt in synthetic.POSE_PROMPTS:
        assert set(re.findall(r"[a-z]+", prompt)) <= vocab
    assert synthetic.POSE_PROMPTS[1] == "a photo of a person raising both arms."


def test_grain_source_serves_make_example():
    source = SyntheticPeople(num_records=10, seed=5, image_size=32, max_people=2)
    assert isinstance(source, grain.sources.RandomAccessDataSource) and len(source) == 10
    record = grain.MapDataset.source(source)[3]
    expected = make_example(3, seed=5, image_size=32, max_people=2)
    for key in expected:
        np.testing.assert_array_equal(record[key], expected[key])
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone[3]["image"], expected["image"])
    assert "seed=5" in repr(source)
    with pytest.raises(IndexError):
        source[10]
    held_out = SyntheticPeople(num_records=10, seed=6, image_size=32, max_people=2)
    assert not np.array_equal(held_out[3]["image"], expected["image"])
