"""Pose descriptions without an LLM: MPII keypoints → text in the published FocusCLIP structure.

The published "MPII Human Pose Descriptions" were written by an LLM from keypoints alone: an
opening sentence ("There is one person in the image who is <activity>." / "There are <count>
people in the image who are <activity>."), then per person the legs, arms, torso and head. This
module writes the same structure from *measured* geometry by rules, so every sentence is true of
the keypoints it came from: a free, offline, deterministic stand-in for the LLM, and labels
(`PoseFacts.posture`, arm positions) for poses built or annotated by hand.

Conventions: keypoints are (x, y) image pixels with y pointing DOWN, in MPII joint order. Left and
right are the PERSON's own (the joint labels), never the image's side; only "on the left side of the
image" (a person's place among several) refers to the image. Joints that are not visible are never
measured: a limb missing joints is said to be hidden.

Lengths are measured in torso lengths (thorax–pelvis, about 30 % of a standing height), so rules
do not depend on the image resolution. Each fact has several phrasings; an `np.random.Generator`
(or an int seed) picks them, so the same seed gives the same text. Punctuation is only ". , ;".
Pure Python/numpy on 16 points: well under a millisecond per person.
"""

import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from input_pipeline.skeleton import MPII

NUM_JOINTS = MPII.num_joints

# Joint ids (MPII order); scenes.py draws with these too.
R_ANKLE, R_KNEE, R_HIP, L_HIP, L_KNEE, L_ANKLE, PELVIS, THORAX = range(8)
UPPER_NECK, HEAD_TOP, R_WRIST, R_ELBOW, R_SHOULDER, L_SHOULDER, L_ELBOW, L_WRIST = range(8, 16)
_ARM_JOINTS = {"left": (L_SHOULDER, L_ELBOW, L_WRIST), "right": (R_SHOULDER, R_ELBOW, R_WRIST)}
_LEG_JOINTS = {"left": (L_HIP, L_KNEE, L_ANKLE), "right": (R_HIP, R_KNEE, R_ANKLE)}

# The documented sets of measured values (PoseFacts fields).
POSTURES = ("standing", "sitting", "squatting", "kneeling", "lying", "upside_down", "unknown")
VIEWS = ("front", "back", "side", "unknown")  # front: the person faces the camera
ARM_POSITIONS = (
    "above_head", "raised", "out", "forearm_up", "down", "low_out", "partly_hidden", "hidden",
)  # fmt: skip
BENDS = ("straight", "slightly_bent", "bent", "sharply_bent", "unknown")
LEANS = ("upright", "left", "right", "forward", "back", "sideways", "none", "hidden")
HEAD_TILTS = ("upright", "left", "right", "forward", "back", "sideways", "hidden")
STANCES = ("wide", "normal", "narrow", "unknown")

# Rule thresholds (lengths in torso lengths, angles in degrees). A standing adult measures about
# 0.85 from hip to knee and 0.8 from knee to ankle, shoulders 0.65 and hips 0.45 wide.
_BEND_LIMITS = (25.0, 60.0, 110.0)  # straight < 25 ≤ slightly bent < 60 ≤ bent < 110 ≤ sharply
_FRONTAL_WIDTH = 0.3  # shoulders (else hips) at least this wide: facing to or from the camera
_STANDING_DROP = 1.1  # hip above ankle by at least this: standing
_THIGH_DOWN, _SHIN_DOWN, _SHIN_LEVEL = 0.45, 0.4, 0.3  # knee below hip / ankle below knee
_SQUAT_DROP, _SQUAT_BEND, _SQUAT_KNEES = 0.6, 120.0, 3.0  # hip-ankle, knee bend, knees / hip width
_LIFTED_FOOT = 0.35  # one ankle above the other by this: that leg is lifted
_LYING_TILT, _INVERTED_TILT, _LEGS_DOWN = 60.0, 130.0, 35.0
_LEAN_LIMITS = (10.0, 25.0, 50.0)  # upright < 10 ≤ slight < 25 ≤ leaning < 50 ≤ far
_HEAD_TILT = 20.0
_RAISED, _OUT_LEVEL, _OUT_REACH, _DOWN_REACH = 0.1, 0.3, 0.6, 0.35
_HEAD_ABOVE_THORAX = 0.6  # head top above the thorax, used when the head top is hidden
_STANCE_LIMITS = (0.3, 0.8)  # ankles apart: narrow < 0.3 ≤ normal < 0.8 ≤ wide
# A limb's length in torso lengths: each visible limb estimates the torso when the torso is hidden.
_LIMB_IN_TORSOS = {
    (L_HIP, L_KNEE): 0.83, (R_HIP, R_KNEE): 0.83, (L_KNEE, L_ANKLE): 0.8, (R_KNEE, R_ANKLE): 0.8,
    (L_SHOULDER, L_ELBOW): 0.57, (R_SHOULDER, R_ELBOW): 0.57, (L_ELBOW, L_WRIST): 0.5,
    (R_ELBOW, R_WRIST): 0.5, (UPPER_NECK, HEAD_TOP): 0.43,
}  # fmt: skip

# --- phrasings: every string the describer can emit lives in `_TEXT` (vocabulary() reads it) ----
_TEXT: dict[str, Any] = {
    "opening_one": "There is one person in the image{clause}.",
    "opening_many": "There are {count} people in the image{clause}.",
    "clause_one": " who is {what}",
    "clause_many": " who are {what}",
    "engaged": "engaged in {activity}",
    "and": " and ",
    "counts": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    "ordinals": (
        "first",
        "second",
        "third",
        "fourth",
        "fifth",
        "sixth",
        "seventh",
        "eighth",
        "ninth",
        "tenth",
    ),
    "ordinal_beyond": "number {n}",
    "places": {
        "left": "on the left side of the image",
        "middle": "in the middle of the image",
        "right": "on the right side of the image",
    },
    "person_one": "The person is {posture}.",
    "person_many": "The {ordinal} person, {place}, is {posture}.",
    "person_hidden_one": "The person is hidden from view.",
    "person_hidden_many": "The {ordinal} person is hidden from view.",
    "posture_scene": {
        "standing": "standing",
        "sitting": "sitting",
        "squatting": "squatting",
        "kneeling": "kneeling",
        "lying": "lying down",
        "upside_down": "upside down",
    },
    "posture": {
        "standing": ("standing", "standing up", "standing on their feet"),
        "sitting": ("sitting", "sitting down", "in a sitting position"),
        "squatting": ("squatting", "squatting down", "in a squatting position"),
        "kneeling": ("kneeling", "kneeling down", "in a kneeling position"),
        "lying": ("lying down", "lying flat", "lying horizontally"),
        "upside_down": ("upside down", "turned upside down"),
        "unknown": ("only partly visible", "partly out of view"),
    },
    # Legs: a bend phrase per leg, or one for both.
    "leg_one": {
        "straight": ("straight", "fully extended", "held straight"),
        "slightly_bent": ("slightly bent at the knee", "bent a little at the knee"),
        "bent": ("bent at the knee", "clearly bent at the knee"),
        "sharply_bent": ("sharply bent at the knee", "folded tightly at the knee"),
        "partly_hidden": ("partly hidden",),
        "hidden": ("hidden", "hidden from view"),
    },
    "leg_both": {
        "straight": ("straight", "fully extended", "held straight"),
        "slightly_bent": ("slightly bent at the knees", "bent a little at the knees"),
        "bent": ("bent at the knees", "clearly bent at the knees"),
        "sharply_bent": ("sharply bent at the knees", "folded tightly at the knees"),
        "partly_hidden": ("partly hidden",),
        "hidden": ("hidden", "hidden from view"),
    },
    "legs_same": ("Both legs are {both}.", "The legs are both {both}."),
    "legs_each": (
        "The left leg is {left}, while the right leg is {right}.",
        "The left leg is {left}, and the right leg is {right}.",
    ),
    "stance": {
        "wide": ("The feet are wide apart.", "The stance is wide, with the feet far apart."),
        "normal": ("The feet are about hip width apart.", "The feet are a little apart."),
        "narrow": ("The feet are close together.", "The legs are close together."),
    },
    "lifted": (
        "The {side} foot is lifted off the ground, as if kicking or stepping.",
        "The {side} leg is raised off the ground, as in a kick or a step.",
    ),
    "posture_legs": {
        "sitting": (
            "The hips are lowered to about knee height, as on a seat.",
            "The hips rest low, about level with the knees.",
        ),
        "squatting": (
            "The hips are lowered close to the feet.",
            "The body is lowered into a deep crouch.",
        ),
        "kneeling": ("The knees rest on the ground.", "The body is supported on the knees."),
        "lying": ("The body lies horizontally.", "The body is stretched out horizontally."),
        "upside_down": ("The legs are above the head.", "The feet point upward."),
    },
    # Arms: a position phrase (+ an elbow phrase) per arm, or one for both.
    "arm_one": {
        "above_head": (
            "raised above the head",
            "lifted high above the head",
            "reaching up above the head",
        ),
        "raised": ("raised above the shoulder", "lifted above shoulder height"),
        "out_side": (
            "stretched out to the side at shoulder height",
            "extended sideways at shoulder level",
        ),
        "out": (
            "stretched out at shoulder height",
            "extended away from the body at shoulder level",
        ),
        "forearm_up": (
            "bent at the elbow with the forearm pointing up",
            "bent so that the hand is raised toward the shoulder",
        ),
        "down": ("held down by the side", "lowered along the body", "held alongside the body"),
        "low_out": ("held down and away from the body", "lowered and angled away from the body"),
        "partly_hidden": ("partly hidden",),
        "hidden": ("hidden", "hidden from view"),
    },
    "arm_both": {
        "above_head": ("raised above the head", "lifted high above the head"),
        "raised": ("raised above the shoulders", "lifted above shoulder height"),
        "out_side": (
            "spread out to the sides at shoulder height",
            "stretched out sideways at shoulder level",
        ),
        "out": (
            "stretched out at shoulder height",
            "extended away from the body at shoulder level",
        ),
        "forearm_up": ("bent at the elbows with the forearms pointing up",),
        "down": ("held down by the sides", "lowered along the body", "held alongside the body"),
        "low_out": ("held down and away from the body", "lowered and angled away from the body"),
        "partly_hidden": ("partly hidden",),
        "hidden": ("hidden", "hidden from view"),
    },
    "elbow_one": {
        "straight": ("with the elbow straight", "with a straight elbow"),
        "slightly_bent": ("with the elbow slightly bent", "with a slight bend at the elbow"),
        "bent": ("with the elbow bent", "bent at the elbow"),
        "sharply_bent": ("with the elbow sharply bent", "with the elbow folded tightly"),
    },
    "elbow_both": {
        "straight": ("with the elbows straight", "with straight elbows"),
        "slightly_bent": ("with the elbows slightly bent", "with a slight bend at the elbows"),
        "bent": ("with the elbows bent", "bent at the elbows"),
        "sharply_bent": ("with the elbows sharply bent", "with the elbows folded tightly"),
    },
    "with": "{position}, {elbow}",
    "arms_same": ("Both arms are {both}.", "The arms are both {both}."),
    "arms_each": (
        "The left arm is {left}, while the right arm is {right}.",
        "The left arm is {left}; the right arm is {right}.",
    ),
    # Torso: lean (+ which way the body faces).
    "torso": {
        "upright": (
            "The torso is upright",
            "The upper body is held upright",
            "The torso is straight",
        ),
        "slight": ("The torso leans slightly {way}", "The upper body tilts slightly {way}"),
        "lean": ("The torso leans {way}", "The upper body is tilted {way}"),
        "far": ("The torso is bent far {way}", "The upper body bends far {way}"),
        "lying": ("The torso is horizontal", "The torso lies flat"),
        "upside_down": ("The torso is upside down",),
        "hidden": ("The torso is hidden", "The torso is hidden from view"),
    },
    "ways": {
        "left": "to the left",
        "right": "to the right",
        "forward": "forward",
        "back": "backward",
        "sideways": "to one side",
    },
    "view": {
        "front": ("the body faces the camera", "the person faces the camera"),
        "back": (
            "the body is turned away from the camera",
            "the person faces away from the camera",
        ),
        "side": ("the body is seen from the side", "the person is turned sideways to the camera"),
    },
    "torso_view": ("{torso}, and {view}.", "{torso}; {view}."),
    "head": {
        "upright": (
            "The head is not tilted.",
            "The head is held straight.",
            "The head is in line with the torso.",
        ),
        "left": ("The head is tilted to the left.", "The head tilts to the left."),
        "right": ("The head is tilted to the right.", "The head tilts to the right."),
        "forward": ("The head is bowed forward.", "The head is tilted forward."),
        "back": ("The head is tilted back.", "The head leans back."),
        "sideways": ("The head is tilted to one side.", "The head leans to one side."),
        "hidden": ("The head is hidden.", "The head is hidden from view."),
    },
}


@dataclasses.dataclass(frozen=True)
class ArmFacts:
    """One arm: `position` in ARM_POSITIONS (relative to the torso axis), elbow `bend` in BENDS.

    Angles in degrees, NaN when not measurable: `elbow_bend_deg` 0 = straight; `elevation_deg`
    the upper arm against the torso's downward axis (0 hanging down, 90 level, 180 straight up).
    """

    position: str
    bend: str
    elbow_bend_deg: float
    elevation_deg: float


@dataclasses.dataclass(frozen=True)
class LegFacts:
    """One leg: knee `bend` in BENDS plus "partly_hidden"/"hidden"; `knee_bend_deg` 0 = straight,
    `thigh_deg` the hip→knee direction against the image's down (0 down, 90 level); NaN: hidden."""

    bend: str
    knee_bend_deg: float
    thigh_deg: float


@dataclasses.dataclass(frozen=True)
class PoseFacts:
    """The measured geometry of one person; every value is in the documented sets above.

    `posture` in POSTURES, `view` in VIEWS, `lean` in LEANS (`lean_deg`: the torso against the
    image's vertical, 0 upright), `head` in HEAD_TILTS, `stance` in STANCES (standing only),
    `lifted_leg` "left"/"right"/None (one foot well above the other while standing: a kick or a
    step), `scale` the torso length in pixels every rule measures in (NaN when there is nothing
    to measure), `any_visible` False when no joint is visible (the person is "hidden from view").
    """

    posture: str
    view: str
    lean: str
    lean_deg: float
    left_arm: ArmFacts
    right_arm: ArmFacts
    left_leg: LegFacts
    right_leg: LegFacts
    stance: str
    lifted_leg: str | None
    head: str
    head_tilt_deg: float
    scale: float
    any_visible: bool


# --- geometry on plain (x, y) tuples: 16 points are faster in Python floats than in numpy ------

Point = tuple[float, float]
_NAN = float("nan")


def _sub(a: Point, b: Point) -> Point:
    return a[0] - b[0], a[1] - b[1]


def _mid(a: Point, b: Point) -> Point:
    return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2


def _dot(a: Point, b: Point) -> float:
    return a[0] * b[0] + a[1] * b[1]


def _unit(v: Point) -> Point | None:
    n = math.hypot(*v)
    return (v[0] / n, v[1] / n) if n > 1e-6 else None


def _angle(a: Point, b: Point) -> float:
    """Unsigned angle between two vectors, degrees."""
    cos = _dot(a, b) / max(math.hypot(*a) * math.hypot(*b), 1e-12)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _signed_angle(a: Point, b: Point) -> float:
    """Angle from a to b, degrees, positive when b turns towards +x of an upward a (y down)."""
    return math.degrees(math.atan2(a[0] * b[1] - a[1] * b[0], _dot(a, b)))


def _bend_class(degrees: float) -> str:
    for name, limit in zip(BENDS, _BEND_LIMITS, strict=False):
        if degrees < limit:
            return name
    return "sharply_bent"


def _joint_bend(a: Point, b: Point, c: Point) -> float:
    """How far the limb a→b→c bends at b: 0 for a straight limb, 180 folded back."""
    return _angle(_sub(b, a), _sub(c, b))


class _Body:
    """The visible joints of one person and the body frame every rule measures in."""

    def __init__(self, keypoints: np.ndarray, visible: np.ndarray):
        kp = np.asarray(keypoints, np.float64)
        vis = np.asarray(visible, bool)
        if kp.shape != (NUM_JOINTS, 2) or vis.shape != (NUM_JOINTS,):
            raise ValueError(
                f"expected keypoints (16, 2) and visible (16,), got {kp.shape} and {vis.shape}"
            )
        vis = vis & np.isfinite(kp).all(axis=1)
        self.p: list[Point | None] = [
            (float(x), float(y)) if v else None
            for (x, y), v in zip(kp.tolist(), vis.tolist(), strict=True)
        ]
        self.any_visible = bool(vis.any())
        self.torso = self._torso()  # (bottom, top) points, or None
        self.scale = self._scale()
        # Body frame: `up` along the torso (image up when the torso is hidden), `right` = up
        # turned 90° clockwise (the image's +x for an upright person).
        self.up: Point = (0.0, -1.0)
        if self.torso is not None:
            self.up = _unit(_sub(self.torso[1], self.torso[0])) or self.up
        self.right: Point = (-self.up[1], self.up[0])

    def has(self, *ids: int) -> bool:
        return all(self.p[i] is not None for i in ids)

    def _torso(self) -> tuple[Point, Point] | None:
        if self.has(PELVIS, THORAX) and self.p[PELVIS] != self.p[THORAX]:
            return self.p[PELVIS], self.p[THORAX]
        if self.has(L_HIP, R_HIP, L_SHOULDER, R_SHOULDER):
            hips = _mid(self.p[L_HIP], self.p[R_HIP])
            shoulders = _mid(self.p[L_SHOULDER], self.p[R_SHOULDER])
            if hips != shoulders:
                return hips, shoulders
        return None

    def _scale(self) -> float:
        """Torso length in pixels; from the limbs (the longest estimate: limbs foreshorten) when
        the torso is hidden or much shorter than the limbs say (bent towards the camera)."""
        limbs = [
            math.dist(self.p[a], self.p[b]) / ratio
            for (a, b), ratio in _LIMB_IN_TORSOS.items()
            if self.has(a, b)
        ]
        from_limbs = max(limbs, default=0.0)
        torso = math.dist(*self.torso) if self.torso is not None else 0.0
        scale = torso if torso >= 0.5 * from_limbs else from_limbs
        return scale if scale > 1e-6 else _NAN

    def across(self) -> Point | None:
        """The person's right→left vector (shoulders, else hips)."""
        for left, right in ((L_SHOULDER, R_SHOULDER), (L_HIP, R_HIP)):
            if self.has(left, right):
                return _sub(self.p[left], self.p[right])
        return None


def _view(body: _Body) -> str:
    across = body.across()
    if across is None or not body.scale > 0:
        return "unknown"
    width = _dot(across, body.right) / body.scale
    if abs(width) < _FRONTAL_WIDTH:
        return "side"
    return "front" if width > 0 else "back"  # front: the person's left is on the body frame's +x


def _facing(body: _Body, view: str) -> float:
    """+1/-1: the person faces the body frame's +x/-x (side view); 0 when unknown or frontal.

    Knees bend forward, so a bent knee ahead of its hip–ankle line says which way the person
    faces; failing that, hands are usually held in front of the body.
    """
    if view != "side":
        return 0.0
    votes = 0.0
    for hip, knee, ankle in _LEG_JOINTS.values():
        if body.has(hip, knee, ankle):
            ahead = _dot(_sub(body.p[knee], _mid(body.p[hip], body.p[ankle])), body.right)
            if abs(ahead) > 0.08 * body.scale:
                votes += 2.0 * math.copysign(1.0, ahead)
    if votes == 0 and body.torso is not None:
        for _, _, wrist in _ARM_JOINTS.values():
            if body.has(wrist):
                ahead = _dot(_sub(body.p[wrist], body.torso[1]), body.right)
                if abs(ahead) > 0.2 * body.scale:
                    votes += math.copysign(1.0, ahead)
    return math.copysign(1.0, votes) if votes else 0.0


def _direction(component: float, view: str, facing: float, body_left_sign: float) -> str:
    """A sideways displacement along the frame's +x in the person's words: left/right (frontal
    views), forward/back (side view, facing known), else sideways."""
    if view in ("front", "back"):
        return "left" if component * body_left_sign > 0 else "right"
    if facing:
        return "forward" if component * facing > 0 else "back"
    return "sideways"


def _arm(body: _Body, side: str, view: str) -> ArmFacts:
    ids = _ARM_JOINTS[side]
    if not body.has(*ids) or not body.scale > 0:  # no scale: all visible joints in one point
        partly = body.scale > 0 and (body.has(ids[1]) or body.has(ids[2]))
        position = "partly_hidden" if partly else "hidden"
        return ArmFacts(position, "unknown", _NAN, _NAN)
    shoulder, elbow, wrist = (body.p[i] for i in ids)
    s, up, right = body.scale, body.up, body.right
    bend = _joint_bend(shoulder, elbow, wrist)
    elevation = _angle(_sub(elbow, shoulder), (-up[0], -up[1]))
    height = _dot(_sub(wrist, shoulder), up) / s  # wrist above the shoulder
    head = (
        _dot(_sub(body.p[HEAD_TOP], shoulder), up) / s if body.has(HEAD_TOP) else _HEAD_ABOVE_THORAX
    )
    midline = body.torso[1] if body.torso is not None else shoulder
    reach = (abs(_dot(_sub(wrist, midline), right)) - abs(_dot(_sub(shoulder, midline), right))) / s
    if height > head:
        position = "above_head"
    elif height > _RAISED:
        position = "raised"
    elif abs(height) <= _OUT_LEVEL and reach > _OUT_REACH:
        position = "out"
    elif bend >= _BEND_LIMITS[1] and _dot(_sub(wrist, elbow), up) > 0:
        position = "forearm_up"
    elif reach < _DOWN_REACH:
        position = "down"
    else:
        position = "low_out"
    return ArmFacts(position, _bend_class(bend), bend, elevation)


def _leg(body: _Body, side: str) -> LegFacts:
    ids = _LEG_JOINTS[side]
    if not body.has(*ids):
        hidden = not (body.has(ids[1]) or body.has(ids[2]))
        return LegFacts("hidden" if hidden else "partly_hidden", _NAN, _NAN)
    hip, knee, ankle = (body.p[i] for i in ids)
    bend = _joint_bend(hip, knee, ankle)
    return LegFacts(_bend_class(bend), bend, _angle(_sub(knee, hip), (0.0, 1.0)))


def _drops(body: _Body, side: str) -> tuple[float, float, float]:
    """How far (torso lengths, image down) the knee is below the hip, the ankle below the knee and
    the ankle below the hip."""
    hip, knee, ankle = (body.p[i] for i in _LEG_JOINTS[side])
    s = body.scale
    return (knee[1] - hip[1]) / s, (ankle[1] - knee[1]) / s, (ankle[1] - hip[1]) / s


def _lifted_leg(body: _Body, full_legs: list[str]) -> str | None:
    if not body.has(L_ANKLE, R_ANKLE) or not full_legs:
        return None
    rise = (body.p[R_ANKLE][1] - body.p[L_ANKLE][1]) / body.scale  # > 0: the left foot is higher
    if abs(rise) < _LIFTED_FOOT:
        return None
    return "left" if rise > 0 else "right"


def _posture(body: _Body, full_legs: list[str], lifted: str | None, tilt: float) -> str:
    """Posture from the torso's orientation and the hip–knee–ankle geometry (image frame)."""
    supporting = [s for s in full_legs if s != lifted] or full_legs
    drops = [_drops(body, s) for s in supporting]
    legs_down = any(
        _angle(_sub(body.p[_LEG_JOINTS[s][2]], body.p[_LEG_JOINTS[s][0]]), (0.0, 1.0)) < _LEGS_DOWN
        and d[2] >= _STANDING_DROP * 0.8
        for s, d in zip(supporting, drops, strict=True)
    )
    if not math.isnan(tilt) and tilt >= _LYING_TILT:
        if legs_down:
            return "standing"  # bent over at the waist
        legs_up = drops and all(d[2] < -_STANDING_DROP * 0.8 for d in drops)
        return "upside_down" if tilt >= _INVERTED_TILT and (legs_up or not drops) else "lying"
    if not drops:
        return "unknown"
    thigh = sum(d[0] for d in drops) / len(drops)
    shin = sum(d[1] for d in drops) / len(drops)
    hip_to_ankle = max(d[2] for d in drops)
    if hip_to_ankle >= _STANDING_DROP or (thigh >= _THIGH_DOWN and shin >= _SHIN_DOWN):
        return "standing"
    if thigh >= _THIGH_DOWN and shin < _SHIN_LEVEL:
        return "kneeling"
    knee_bend = sum(_joint_bend(*(body.p[i] for i in _LEG_JOINTS[s])) for s in supporting)
    knee_bend /= len(supporting)
    knees_wide = False
    if body.has(L_KNEE, R_KNEE, L_HIP, R_HIP):
        hip_width = abs(body.p[L_HIP][0] - body.p[R_HIP][0])
        knee_width = abs(body.p[L_KNEE][0] - body.p[R_KNEE][0])
        knees_wide = knee_width > _SQUAT_KNEES * max(hip_width, 0.1 * body.scale)
    if shin >= _SHIN_DOWN and (
        hip_to_ankle < _SQUAT_DROP or knee_bend >= _SQUAT_BEND or knees_wide
    ):
        return "squatting"
    return "sitting"


def _stance(body: _Body) -> str:
    if not body.has(L_ANKLE, R_ANKLE):
        return "unknown"
    apart = abs(_dot(_sub(body.p[L_ANKLE], body.p[R_ANKLE]), body.right)) / body.scale
    return (
        "narrow" if apart < _STANCE_LIMITS[0] else "normal" if apart < _STANCE_LIMITS[1] else "wide"
    )


def _head(body: _Body, view: str, facing: float, left_sign: float) -> tuple[str, float]:
    if not body.has(UPPER_NECK, HEAD_TOP) or body.p[UPPER_NECK] == body.p[HEAD_TOP]:
        return "hidden", _NAN
    tilt = _signed_angle(body.up, _sub(body.p[HEAD_TOP], body.p[UPPER_NECK]))
    if abs(tilt) < _HEAD_TILT:
        return "upright", tilt
    return _direction(tilt, view, facing, left_sign), tilt


def measure(keypoints: np.ndarray, visible: np.ndarray) -> PoseFacts:
    """The geometry of one person from MPII keypoints [16, 2] (x, y pixels, y down) and visibility
    [16]; only visible, finite joints are used."""
    body = _Body(keypoints, visible)
    view = _view(body)
    facing = _facing(body, view)
    across = body.across()
    left_sign = math.copysign(1.0, _dot(across, body.right)) if across is not None else 0.0
    legs = {side: _leg(body, side) for side in ("left", "right")}
    full_legs = [s for s in ("left", "right") if body.has(*_LEG_JOINTS[s])]
    if not body.scale > 0:  # at most one visible joint: nothing to measure
        full_legs = []
    tilt = _NAN
    if body.torso is not None:
        tilt = _angle(_sub(body.torso[1], body.torso[0]), (0.0, -1.0))
    lifted = _lifted_leg(body, full_legs)
    posture = _posture(body, full_legs, lifted, tilt)
    if posture != "standing":
        lifted = None
    if math.isnan(tilt):
        lean = "hidden"
    elif posture in ("lying", "upside_down"):
        lean = "none"
    elif tilt < _LEAN_LIMITS[0]:
        lean = "upright"
    else:  # tilt towards the image's +x when the torso's top is right of its bottom
        dx = body.torso[1][0] - body.torso[0][0]
        lean = _direction(dx, view, facing, left_sign)
    head, head_tilt = _head(body, view, facing, left_sign)
    return PoseFacts(
        posture=posture,
        view=view,
        lean=lean,
        lean_deg=tilt,
        left_arm=_arm(body, "left", view),
        right_arm=_arm(body, "right", view),
        left_leg=legs["left"],
        right_leg=legs["right"],
        stance=_stance(body) if posture == "standing" and full_legs else "unknown",
        lifted_leg=lifted,
        head=head,
        head_tilt_deg=head_tilt,
        scale=body.scale,
        any_visible=body.any_visible,
    )


# --- text ---------------------------------------------------------------------------------------


class _Chooser:
    """Picks phrasings, drawing uniforms from the generator 16 at a time: one numpy call per
    person instead of one per phrase (numpy calls cost more than all the rules)."""

    def __init__(self, rng: np.random.Generator | int):
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.uniforms: list[float] = []

    def __call__(self, options: str | tuple[str, ...]) -> str:
        if isinstance(options, str):
            return options
        if not self.uniforms:
            self.uniforms = self.rng.random(16).tolist()
        return options[int(self.uniforms.pop() * len(options))]


def _legs_text(facts: PoseFacts, pick: _Chooser) -> list[str]:
    left, right = facts.left_leg.bend, facts.right_leg.bend
    if left == right:
        sentences = [pick(_TEXT["legs_same"]).format(both=pick(_TEXT["leg_both"][left]))]
    else:
        sentences = [
            pick(_TEXT["legs_each"]).format(
                left=pick(_TEXT["leg_one"][left]), right=pick(_TEXT["leg_one"][right])
            )
        ]
    if facts.lifted_leg is not None:
        sentences.append(pick(_TEXT["lifted"]).format(side=facts.lifted_leg))
    elif facts.stance in _TEXT["stance"]:
        sentences.append(pick(_TEXT["stance"][facts.stance]))
    if facts.posture in _TEXT["posture_legs"]:
        sentences.append(pick(_TEXT["posture_legs"][facts.posture]))
    return sentences


def _arm_phrase(arm: ArmFacts, view: str, table: str, pick: _Chooser) -> str:
    key = "out_side" if arm.position == "out" and view in ("front", "back") else arm.position
    position = pick(_TEXT[f"arm_{table}"][key])
    if arm.bend == "unknown" or arm.position == "forearm_up":
        return position
    elbow = pick(_TEXT[f"elbow_{table}"][arm.bend])
    return _TEXT["with"].format(position=position, elbow=elbow)


def _arms_text(facts: PoseFacts, pick: _Chooser) -> str:
    left, right = facts.left_arm, facts.right_arm
    if (left.position, left.bend) == (right.position, right.bend):
        both = _arm_phrase(left, facts.view, "both", pick)
        return pick(_TEXT["arms_same"]).format(both=both)
    return pick(_TEXT["arms_each"]).format(
        left=_arm_phrase(left, facts.view, "one", pick),
        right=_arm_phrase(right, facts.view, "one", pick),
    )


def _torso_text(facts: PoseFacts, pick: _Chooser) -> str:
    table = _TEXT["torso"]
    if facts.lean in ("hidden", "upright"):
        torso = pick(table[facts.lean])
    elif facts.lean == "none":
        torso = pick(table[facts.posture])
    else:
        degree = "slight" if facts.lean_deg < _LEAN_LIMITS[1] else "lean"
        degree = "far" if facts.lean_deg >= _LEAN_LIMITS[2] else degree
        torso = pick(table[degree]).format(way=_TEXT["ways"][facts.lean])
    if facts.view not in _TEXT["view"]:
        return torso + "."
    view = pick(_TEXT["view"][facts.view])
    return pick(_TEXT["torso_view"]).format(torso=torso, view=view)


def _person_paragraph(
    facts: PoseFacts, pick: _Chooser, ordinal: str | None, place: str | None
) -> str:
    if not facts.any_visible:
        if ordinal is None:
            return _TEXT["person_hidden_one"]
        return _TEXT["person_hidden_many"].format(ordinal=ordinal)
    posture = pick(_TEXT["posture"][facts.posture])
    if ordinal is None:
        opener = _TEXT["person_one"].format(posture=posture)
    else:
        opener = _TEXT["person_many"].format(ordinal=ordinal, place=place, posture=posture)
    parts = [opener, *_legs_text(facts, pick), _arms_text(facts, pick), _torso_text(facts, pick)]
    parts.append(pick(_TEXT["head"][facts.head]))
    return " ".join(parts)


def describe_person(
    keypoints: np.ndarray, visible: np.ndarray, *, rng: np.random.Generator | int
) -> str:
    """One person's paragraph: posture, then legs, arms, torso and head."""
    return _person_paragraph(measure(keypoints, visible), _Chooser(rng), None, None)


def _count_word(n: int) -> str:
    return _TEXT["counts"][n - 2] if 2 <= n <= len(_TEXT["counts"]) + 1 else str(n)


def _ordinal(i: int) -> str:
    ordinals = _TEXT["ordinals"]
    return ordinals[i] if i < len(ordinals) else _TEXT["ordinal_beyond"].format(n=i + 1)


def _places(people: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """Each person's place among the others: left/right for the extremes, middle otherwise."""
    xs = []
    for keypoints, visible in people:
        kp, vis = np.asarray(keypoints, np.float64), np.asarray(visible, bool)
        vis = vis & np.isfinite(kp).all(axis=1)
        xs.append(float(kp[vis, 0].mean()) if vis.any() else math.nan)
    known = sorted((x, i) for i, x in enumerate(xs) if not math.isnan(x))
    places = ["middle"] * len(people)
    if len(known) >= 2:
        places[known[0][1]], places[known[-1][1]] = "left", "right"
    return [_TEXT["places"][p] for p in places]


def _opening(postures: list[str], activity: str | None) -> str:
    count = len(postures)
    if activity and activity.strip():
        what = activity.strip()
        if not what.split()[0].lower().endswith("ing"):
            what = _TEXT["engaged"].format(activity=what)
    else:
        named = [_TEXT["posture_scene"][p] for p in postures if p in _TEXT["posture_scene"]]
        named = list(dict.fromkeys(named))  # unique, in order
        what = (
            ", ".join(named[:-1]) + _TEXT["and"] + named[-1] if len(named) > 1 else "".join(named)
        )
    if count == 1:
        clause = _TEXT["clause_one"].format(what=what) if what else ""
        return _TEXT["opening_one"].format(clause=clause)
    clause = _TEXT["clause_many"].format(what=what) if what else ""
    return _TEXT["opening_many"].format(count=_count_word(count), clause=clause)


def describe_scene(
    people: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    activity: str | None = None,
    rng: np.random.Generator | int,
) -> str:
    """The published structure: an opening sentence (the activity, else the postures), then one
    paragraph per person (separated by blank lines); several people are told apart by ordinal and
    by their place in the image."""
    if not people:
        raise ValueError("describe_scene needs at least one person")
    pick = _Chooser(rng)
    facts = [measure(kp, vis) for kp, vis in people]
    opening = _opening([f.posture for f in facts], activity)
    if len(people) == 1:
        return opening + "\n\n" + _person_paragraph(facts[0], pick, None, None)
    places = _places(people)
    paragraphs = [_person_paragraph(f, pick, _ordinal(i), places[i]) for i, f in enumerate(facts)]
    return "\n\n".join([opening, *paragraphs])


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    else:
        for v in value:
            yield from _strings(v)


def vocabulary() -> list[str]:
    """Every word (lower-case run of letters) the describer can emit, sorted; the caller's activity
    names are not included. Punctuation is ". , ;"."""
    words = set()
    for text in _strings(_TEXT):
        words.update(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text).lower()))
    words.update(("left", "right"))  # the `{side}` of a lifted leg
    return sorted(words)
