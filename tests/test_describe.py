"""The rule-based pose describer on hand-built skeletons whose pose is known by construction."""

import math
import re
import time

import numpy as np
import pytest

from synthpose import describe as pt

# A standing person facing the camera (their left on the image's right), torso 60 px, y down.
_STANDING = {
    pt.PELVIS: (100, 150), pt.THORAX: (100, 90), pt.UPPER_NECK: (100, 82), pt.HEAD_TOP: (100, 56),
    pt.R_SHOULDER: (80, 90), pt.L_SHOULDER: (120, 90), pt.R_ELBOW: (78, 124),
    pt.L_ELBOW: (122, 124),
    pt.R_WRIST: (79, 154), pt.L_WRIST: (121, 154), pt.R_HIP: (87, 150), pt.L_HIP: (113, 150),
    pt.R_KNEE: (87, 200), pt.L_KNEE: (113, 200), pt.R_ANKLE: (87, 248), pt.L_ANKLE: (113, 248),
}  # fmt: skip
_UPPER_BODY = (pt.THORAX, pt.UPPER_NECK, pt.HEAD_TOP, pt.R_SHOULDER, pt.L_SHOULDER, pt.R_ELBOW,
               pt.L_ELBOW, pt.R_WRIST, pt.L_WRIST)  # fmt: skip


def standing(**moved: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints [16, 2], visible [16]) of the standing person, joints moved by name (L_WRIST=)."""
    kp = np.zeros((16, 2), np.float32)
    for joint, xy in _STANDING.items():
        kp[joint] = xy
    for name, xy in moved.items():
        kp[getattr(pt, name)] = xy
    return kp, np.ones(16, bool)


def mirrored(person: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The same person turned around (seen from the back): x mirrored, joint labels kept, so the
    person's left wrist is now on the image's left."""
    kp, vis = person
    kp = kp.copy()
    kp[:, 0] = 200 - kp[:, 0]
    return kp, vis


def rotated(person, degrees: float, joints=range(16), centre=(100, 150)):
    """Joints rotated about `centre`; positive turns an upward vector towards the image's +x."""
    kp, vis = person
    kp = kp.copy().astype(np.float64)
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    idx = list(joints)
    kp[idx] = (kp[idx] - centre) @ rot.T + centre
    return kp.astype(np.float32), vis


def side_sitting():
    """Seen from the side, facing the image's +x: thighs level, shins vertical."""
    return standing(
        R_SHOULDER=(100, 90), L_SHOULDER=(102, 90), R_HIP=(100, 150), L_HIP=(102, 150),
        R_ELBOW=(104, 122), L_ELBOW=(106, 122), R_WRIST=(130, 130), L_WRIST=(132, 130),
        R_KNEE=(150, 150), L_KNEE=(152, 150), R_ANKLE=(150, 198), L_ANKLE=(152, 198),
    )  # fmt: skip


def text(person, seed=0) -> str:
    return pt.describe_person(*person, rng=np.random.default_rng(seed))


def sentence(text_: str, *starts: str) -> str:
    """The first sentence of `text_` that starts with one of `starts` (sentences end with '.')."""
    return next(s for s in re.split(r"(?<=\.)\s+", text_) if s.startswith(starts))


ARMS, LEGS, TORSO = ("Both arms", "The arms"), ("Both legs", "The legs"), ("The torso", "The upper")


def test_standing_person_is_measured_as_built():
    facts = pt.measure(*standing())
    assert (facts.posture, facts.view, facts.lean, facts.head) == (
        "standing", "front", "upright", "upright"
    )  # fmt: skip
    assert facts.left_arm.position == facts.right_arm.position == "down"
    assert facts.left_leg.bend == facts.right_leg.bend == "straight"
    assert facts.scale == pytest.approx(60.0)
    # Knee bend: thigh (0, 50) and shin (0, 48) are parallel → 0°; elbow: reference via arccos.
    assert facts.left_leg.knee_bend_deg == pytest.approx(0.0, abs=1e-6)
    upper, lower = np.array([2.0, 34.0]), np.array([-1.0, 30.0])
    expected = np.degrees(np.arccos(upper @ lower / np.linalg.norm(upper) / np.linalg.norm(lower)))
    assert facts.left_arm.elbow_bend_deg == pytest.approx(expected, rel=1e-5)
    for seed in range(10):
        assert "standing" in text(standing(), seed)


def test_both_arms_above_head():
    person = standing(R_ELBOW=(76, 62), L_ELBOW=(124, 62), R_WRIST=(74, 30), L_WRIST=(126, 30))
    facts = pt.measure(*person)
    assert facts.left_arm.position == facts.right_arm.position == "above_head"
    assert facts.left_arm.elevation_deg > 160
    for seed in range(10):
        arms = sentence(text(person, seed), *ARMS)
        assert "above the head" in arms and re.search("Both arms|arms are both", arms), arms


@pytest.mark.parametrize("turned_around", [False, True])
def test_only_left_arm_raised_says_left(turned_around):
    person = standing(L_ELBOW=(124, 62), L_WRIST=(126, 30))
    if turned_around:
        person = mirrored(person)
        assert person[0][pt.L_WRIST, 0] < person[0][pt.R_WRIST, 0]  # left wrist on image left
    facts = pt.measure(*person)
    assert facts.view == ("back" if turned_around else "front")
    assert (facts.left_arm.position, facts.right_arm.position) == ("above_head", "down")
    for seed in range(10):
        arms = sentence(text(person, seed), "The left arm")
        left, right = arms.split("right arm")
        assert "above the head" in left and "above the head" not in right, arms


def test_arms_spread_sideways():
    person = standing(R_ELBOW=(46, 92), L_ELBOW=(154, 92), R_WRIST=(16, 94), L_WRIST=(184, 94))
    facts = pt.measure(*person)
    assert facts.left_arm.position == facts.right_arm.position == "out"
    for seed in range(10):
        arms = sentence(text(person, seed), *ARMS)
        assert "to the sides" in arms or "sideways" in arms, arms


def test_sitting():
    facts = pt.measure(*side_sitting())
    assert facts.view == "side" and facts.posture == "sitting"
    assert facts.left_leg.thigh_deg == pytest.approx(90.0)
    assert facts.left_leg.knee_bend_deg == pytest.approx(90.0)
    for seed in range(10):
        assert "sitting" in text(side_sitting(), seed)


def test_lying():
    for degrees in (90, -90, 80):
        person = rotated(standing(), degrees)
        assert pt.measure(*person).posture == "lying", degrees
    assert "lying" in text(rotated(standing(), 90))


def test_upside_down_and_bent_over_are_not_lying():
    assert pt.measure(*rotated(standing(), 180)).posture == "upside_down"
    bent_over = rotated(standing(), 80, joints=_UPPER_BODY)  # legs still vertical
    facts = pt.measure(*bent_over)
    assert facts.posture == "standing" and facts.lean_deg == pytest.approx(80.0)


def test_squatting():
    person = standing(
        PELVIS=(100, 200), THORAX=(112, 142), UPPER_NECK=(113, 134), HEAD_TOP=(116, 108),
        R_SHOULDER=(111, 142), L_SHOULDER=(113, 142), R_ELBOW=(125, 170), L_ELBOW=(127, 170),
        R_WRIST=(150, 175), L_WRIST=(152, 175), R_HIP=(100, 200), L_HIP=(102, 200),
        R_KNEE=(145, 185), L_KNEE=(147, 185), R_ANKLE=(130, 235), L_ANKLE=(132, 235),
    )  # fmt: skip
    facts = pt.measure(*person)
    assert facts.posture == "squatting"
    assert facts.left_leg.bend == "sharply_bent"
    assert "squatting" in text(person)


def test_kneeling():
    person = standing(R_ANKLE=(60, 205), L_ANKLE=(86, 205))  # shins level behind the knees
    assert pt.measure(*person).posture == "kneeling"


def test_knees_bent():
    person = standing(
        R_SHOULDER=(100, 90), L_SHOULDER=(102, 90), R_HIP=(100, 150), L_HIP=(102, 150),
        R_KNEE=(125, 190), L_KNEE=(127, 190), R_ANKLE=(100, 230), L_ANKLE=(102, 230),
    )  # fmt: skip
    facts = pt.measure(*person)
    expected = 2 * math.degrees(math.atan2(25, 40))  # thigh (25, 40), shin (-25, 40)
    assert facts.left_leg.knee_bend_deg == pytest.approx(expected)
    assert facts.posture == "standing" and facts.left_leg.bend == "bent"
    for seed in range(10):
        legs = sentence(text(person, seed), *LEGS)
        assert "bent at the knees" in legs, legs


def test_one_leg_lifted():
    person = standing(L_KNEE=(130, 185), L_ANKLE=(150, 215))
    facts = pt.measure(*person)
    assert facts.posture == "standing" and facts.lifted_leg == "left"
    assert re.search("left (foot|leg) is (lifted|raised) off the ground", text(person))


@pytest.mark.parametrize("turned_around", [False, True])
def test_torso_lean_left_and_right(turned_around):
    # Top towards the image's +x: the person's left when facing the camera.
    for degrees, way in ((30, "left"), (-30, "right")):
        person = rotated(standing(), degrees, joints=_UPPER_BODY)
        if turned_around:
            person = mirrored(person)
        facts = pt.measure(*person)
        assert facts.lean == way and facts.lean_deg == pytest.approx(30.0, abs=1e-3)
        assert f"to the {way}" in sentence(text(person), *TORSO), text(person)
    assert pt.measure(*rotated(standing(), 5, joints=_UPPER_BODY)).lean == "upright"


def test_torso_lean_forward_in_side_view():
    person = side_sitting()  # faces the image's +x (knees ahead)
    forward = rotated(person, 30, joints=_UPPER_BODY)
    backward = rotated(person, -30, joints=_UPPER_BODY)
    assert pt.measure(*forward).lean == "forward"
    assert pt.measure(*backward).lean == "back"
    assert "forward" in sentence(text(forward), *TORSO)


def test_head_tilt():
    person = standing(HEAD_TOP=(100 + 26 * math.sin(0.5), 82 - 26 * math.cos(0.5)))
    facts = pt.measure(*person)
    assert facts.head == "left" and facts.head_tilt_deg == pytest.approx(math.degrees(0.5))
    assert "tilt" in sentence(text(person), "The head")


def test_hidden_joints_are_said_hidden_never_measured():
    kp, vis = standing()
    vis[[pt.L_KNEE, pt.L_ANKLE]] = False
    kp[[pt.L_KNEE, pt.L_ANKLE]] = (-1e6, 3e7)  # garbage coordinates of invisible joints
    facts = pt.measure(kp, vis)
    assert facts.left_leg.bend == "hidden" and math.isnan(facts.left_leg.knee_bend_deg)
    assert facts.posture == "standing"  # from the visible right leg
    for seed in range(5):
        assert "The left leg is hidden" in text((kp, vis), seed)
    vis[:] = False
    vis[[pt.L_SHOULDER, pt.R_SHOULDER]] = True
    facts = pt.measure(kp, vis)
    assert facts.head == "hidden" and facts.lean == "hidden" and facts.posture == "unknown"
    words = text((kp, vis))
    assert "head is hidden" in words and "torso is hidden" in words
    vis[:] = False
    assert text((kp, vis)) == "The person is hidden from view."
    kp[:] = 7.0  # every joint visible in one point: nothing can be measured
    facts = pt.measure(kp, np.ones(16, bool))
    assert facts.posture == "unknown" and facts.left_arm.position == "hidden"


def test_two_people():
    left_person = standing()
    right_person = (standing()[0] + [300, 0], standing()[1])
    scene = pt.describe_scene([right_person, left_person], rng=np.random.default_rng(0))
    paragraphs = scene.split("\n\n")
    assert paragraphs[0] == "There are two people in the image who are standing."
    assert len(paragraphs) == 3
    assert paragraphs[1].startswith("The first person, on the right side of the image, is")
    assert paragraphs[2].startswith("The second person, on the left side of the image, is")
    with_activity = pt.describe_scene(
        [left_person, rotated(standing(), 90)], activity="playing tennis", rng=1
    )
    assert with_activity.startswith("There are two people in the image who are playing tennis.")
    mixed = pt.describe_scene([left_person, rotated(standing(), 90)], rng=1)
    assert mixed.startswith("There are two people in the image who are standing and lying down.")
    one = pt.describe_scene([left_person], activity="carpentry, general", rng=0)
    assert one.startswith("There is one person in the image who is engaged in carpentry, general.")


def test_same_seed_same_text_other_seeds_other_phrasings():
    person = standing(L_ELBOW=(124, 62), L_WRIST=(126, 30))
    texts = {pt.describe_scene([person], rng=np.random.default_rng(s)) for s in range(12)}
    assert len(texts) >= 6
    for seed in (0, 5):
        a = pt.describe_scene([person], rng=np.random.default_rng(seed))
        assert a == pt.describe_scene([person], rng=np.random.default_rng(seed))
        assert a == pt.describe_scene([person], rng=seed)


def random_people(rng: np.random.Generator, count: int):
    """Plausible and implausible skeletons: the standing pose jittered, rotated, partly hidden,
    and uniformly random joints."""
    people = []
    for _ in range(count):
        kp, vis = standing()
        if rng.random() < 0.3:
            kp = rng.uniform(0, 300, (16, 2)).astype(np.float32)
        else:
            kp = kp + rng.normal(0, rng.choice([3.0, 15.0, 40.0]), kp.shape).astype(np.float32)
            kp, vis = rotated((kp, vis), rng.uniform(-180, 180))
        vis = rng.random(16) > rng.choice([0.0, 0.2, 0.6])
        people.append((kp, vis))
    return people


def test_vocabulary_covers_every_emitted_word():
    vocab = set(pt.vocabulary())
    assert {"left", "right", "hidden", "standing", "sitting", "lying", "squatting"} <= vocab
    assert all(w == w.lower() and w.isalpha() for w in vocab)
    rng = np.random.default_rng(0)
    postures = set()
    for i in range(300):
        people = random_people(rng, int(rng.integers(1, 4)))
        postures |= {pt.measure(*p).posture for p in people}
        scene = pt.describe_scene(people, rng=i)
        assert set(re.findall(r"[a-z]+", scene.lower())) <= vocab, scene
        assert set(re.sub(r"[A-Za-z\s]", "", scene)) <= set(".,;"), scene
    assert postures <= set(pt.POSTURES) and len(postures) >= 4


def test_fast_enough():
    people = random_people(np.random.default_rng(1), 200)
    start = time.perf_counter()
    for i, (kp, vis) in enumerate(people):
        pt.describe_person(kp, vis, rng=i)
    per_person = (time.perf_counter() - start) / len(people)
    assert per_person < 2e-3  # measured ~0.1 ms; generous for a loaded CI machine


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="16, 2"):
        pt.measure(np.zeros((17, 2)), np.ones(17, bool))
    with pytest.raises(ValueError, match="at least one person"):
        pt.describe_scene([], rng=0)
