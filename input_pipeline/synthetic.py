"""A minimal embedded synthetic dataset of people, so the whole pipeline runs on a laptop offline.

Each image shows one TARGET person in one of `POSE_CLASSES` (joint angles sampled in class ranges,
limb lengths jittered), drawn as thick anti-aliased segments with a disc head over a cluttered,
noisy background, plus 0–2 smaller, fainter DISTRACTOR people in other poses. Only the target is
annotated, so its heatmap is what tells the two apart, as on MPII where FocusCLIP's heatmaps come
from the annotated people only.

Keypoints are MPII's 16 joints as (x, y) in image pixels, with pixel (row i, col j) centred at
x = j, y = i (the heatmap convention of `input_pipeline.heatmaps`). People face the viewer, so a
person's left side (joints 3, 4, 5, 13, 14, 15) is on the image's right. Descriptions follow the
published MPII pose descriptions ("There is one person in the image who is ...", then legs, arms,
torso, head), written by simple rules from the target's actual geometry; `vocabulary()` lists every
word they and the prompts can contain.

Host-only numpy; deterministic in (seed, index).
"""

import dataclasses
import re

import numpy as np

POSE_CLASSES: tuple[str, ...] = (
    "standing",
    "raising both arms",
    "raising the left arm",
    "stretching out both arms",
    "sitting",
    "squatting",
)
PROMPT_TEMPLATE = "a photo of a person {}."
POSE_PROMPTS: tuple[str, ...] = tuple(PROMPT_TEMPLATE.format(c) for c in POSE_CLASSES)
CLASS_PHRASES = POSE_CLASSES  # the zero-shot class names are the pose phrases themselves

# Named shirt colours: an attribute a tiny model learns within a demo's budget. Distractors never
# wear the target's colour, so only the subject's shirt answers "a person wearing a <c> shirt".
SHIRT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 210),
    "yellow": (235, 205, 40),
    "white": (235, 235, 235),
    "black": (30, 30, 30),
}
SHIRT_PROMPT_TEMPLATE = "a photo of a person wearing a {} shirt."
_SHIRT_JITTER = 15.0

# Joint ids (MPII order).
R_ANKLE, R_KNEE, R_HIP, L_HIP, L_KNEE, L_ANKLE, PELVIS, THORAX = range(8)
UPPER_NECK, HEAD_TOP, R_WRIST, R_ELBOW, R_SHOULDER, L_SHOULDER, L_ELBOW, L_WRIST = range(8, 16)

# Body proportions as fractions of the standing height, and how much each one varies.
_LENGTHS = {
    "head": 0.13, "neck": 0.04, "torso": 0.30, "shoulder": 0.10, "hip": 0.065,
    "upper_arm": 0.17, "lower_arm": 0.15, "upper_leg": 0.25, "lower_leg": 0.24,
}  # fmt: skip
_LENGTH_JITTER = 0.08

# Per class, ranges in degrees of each limb's absolute abduction angle (0 = pointing down,
# 90 = out to the person's side, 180 = up): (upper arm, lower arm) per arm, (thigh, shin) per leg,
# plus how much thigh and shin are foreshortened (sitting, squatting: they point at the viewer).
_ARM_DOWN = ((5, 25), (0, 40))
_ARM_UP = ((140, 175), (150, 185))
_ARM_OUT = ((80, 100), (78, 102))
_LEG_STRAIGHT = ((0, 12), (-4, 14), (1.0, 1.0), (1.0, 1.0))
_POSES: dict[str, dict[str, tuple]] = {
    "standing": {"left_arm": _ARM_DOWN, "right_arm": _ARM_DOWN, "legs": _LEG_STRAIGHT},
    "raising both arms": {"left_arm": _ARM_UP, "right_arm": _ARM_UP, "legs": _LEG_STRAIGHT},
    "raising the left arm": {"left_arm": _ARM_UP, "right_arm": _ARM_DOWN, "legs": _LEG_STRAIGHT},
    "stretching out both arms": {
        "left_arm": _ARM_OUT,
        "right_arm": _ARM_OUT,
        "legs": _LEG_STRAIGHT,
    },
    "sitting": {
        "left_arm": ((5, 30), (5, 60)),
        "right_arm": ((5, 30), (5, 60)),
        "legs": ((5, 25), (-5, 8), (0.15, 0.35), (1.0, 1.0)),
    },
    "squatting": {
        "left_arm": ((10, 45), (10, 60)),
        "right_arm": ((10, 45), (10, 60)),
        "legs": ((60, 85), (-10, 5), (0.9, 1.0), (0.7, 0.9)),
    },
}
_MAX_LEAN_DEG = 8.0

_SKIN = np.array([[241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [255, 219, 172]])

# Every text fragment a description can contain (vocabulary() reads them all).
_OPENING = "There is one person in the image who is {}."
_ARM_STATES = {
    "above_head": ("raised above the head", "lifted high above the head"),
    "raised": ("raised to the side", "lifted up to the side"),
    "out": ("stretched out to the side at shoulder height", "held out horizontally"),
    "down": ("hanging down by the side", "lowered along the body"),
    "low_out": ("held slightly away from the body", "lowered and angled outward"),
}
_ELBOW = {
    True: ("bent at the elbow", "with the elbow bent"),
    False: ("straight", "nearly straight"),
}
_BOTH_ARMS = ("Both arms are {} and {}.", "The arms are both {} and {}.")
_EACH_ARM = (
    "The left arm is {} and {}, while the right arm is {} and {}.",
    "Their left arm is {} and {}, and their right arm is {} and {}.",
)
_LEGS = {
    "squat": (
        "The legs are bent deeply at the knees, with the knees spread apart.",
        "The knees are bent deeply and pushed outward, with the hips lowered.",
    ),
    "seated": (
        "The legs are bent at the knees, with the thighs resting on a seat.",
        "The knees are bent and the feet rest on the ground in front of the seat.",
    ),
    "apart": (
        "The legs are straight and set apart.",
        "Both legs are straight, with the feet apart.",
    ),
    "together": (
        "The legs are straight and close together.",
        "Both legs are straight, with the feet close together.",
    ),
}
_TORSO = {
    "upright": ("The torso is upright.", "The torso is held straight."),
    "left": ("The torso leans slightly to the left.", "The upper body tilts a little to the left."),
    "right": (
        "The torso leans slightly to the right.",
        "The upper body tilts a little to the right.",
    ),
}
_HEAD = ("The head is facing forward.", "The head faces the camera.", "The head is held upright.")
_CLOTHES = ("The person wears a {} shirt.", "They are wearing a {} shirt.")


@dataclasses.dataclass(frozen=True)
class Person:
    """One drawn person: keypoints [16, 2] (x, y) in image pixels, pose label, height in pixels."""

    keypoints: np.ndarray
    label: int
    height: float
    lean_deg: float
    shirt: int  # index into SHIRT_COLOURS


@dataclasses.dataclass(frozen=True)
class Scene:
    """A rendered image with everything known about it; the target is `people[0]`.

    `background` is the image before any person was drawn (same noise), `coverage` the per-person
    drawn opacity [H, W] in [0, 1]: what tests and inspection need beyond `make_example`.
    """

    image: np.ndarray
    background: np.ndarray
    people: list[Person]
    coverage: list[np.ndarray]
    description: str


def _deg_dir(angle_deg: np.ndarray | float, side: float) -> np.ndarray:
    """Unit direction (x, y-down) of a limb at an abduction angle on the person's side (+1 left)."""
    a = np.deg2rad(angle_deg)
    return np.array([side * np.sin(a), np.cos(a)])


def _pose_skeleton(rng: np.random.Generator, label: int) -> tuple[np.ndarray, float]:
    """Joints [16, 2] of a person of unit standing height with the pelvis at the origin."""
    pose = _POSES[POSE_CLASSES[label]]
    n = {k: v * rng.uniform(1 - _LENGTH_JITTER, 1 + _LENGTH_JITTER) for k, v in _LENGTHS.items()}
    lean = rng.uniform(-_MAX_LEAN_DEG, _MAX_LEAN_DEG)
    up = _deg_dir(180 + lean, -1.0)  # lean > 0 tilts the head to the person's left (image right)
    across = np.array([-up[1], up[0]])  # towards the person's left
    j = np.zeros((16, 2))
    j[THORAX] = n["torso"] * up
    j[UPPER_NECK] = j[THORAX] + n["neck"] * up
    j[HEAD_TOP] = j[UPPER_NECK] + n["head"] * up
    for side, (sh, el, wr, hip, kn, an, arm) in {
        1.0: (L_SHOULDER, L_ELBOW, L_WRIST, L_HIP, L_KNEE, L_ANKLE, "left_arm"),
        -1.0: (R_SHOULDER, R_ELBOW, R_WRIST, R_HIP, R_KNEE, R_ANKLE, "right_arm"),
    }.items():
        (ua_lo, ua_hi), (la_lo, la_hi) = pose[arm]
        j[sh] = j[THORAX] + side * n["shoulder"] * across
        j[el] = j[sh] + n["upper_arm"] * _deg_dir(rng.uniform(ua_lo, ua_hi), side)
        j[wr] = j[el] + n["lower_arm"] * _deg_dir(rng.uniform(la_lo, la_hi), side)
        (th_lo, th_hi), (sn_lo, sn_hi), thigh_f, shin_f = pose["legs"]
        j[hip] = side * n["hip"] * across
        thigh = n["upper_leg"] * rng.uniform(*thigh_f)
        j[kn] = j[hip] + thigh * _deg_dir(rng.uniform(th_lo, th_hi), side)
        shin = n["lower_leg"] * rng.uniform(*shin_f)
        j[an] = j[kn] + shin * _deg_dir(rng.uniform(sn_lo, sn_hi), side)
    return j, lean


# Drawn segments (joint a, joint b, radius as a fraction of height), in three colour groups.
_PANTS = ((R_HIP, L_HIP, 0.05), (R_HIP, R_KNEE, 0.045), (R_KNEE, R_ANKLE, 0.04),
          (L_HIP, L_KNEE, 0.045), (L_KNEE, L_ANKLE, 0.04))  # fmt: skip
_SHIRT = ((THORAX, PELVIS, 0.085), (R_SHOULDER, L_SHOULDER, 0.045),
          (R_SHOULDER, R_ELBOW, 0.035), (L_SHOULDER, L_ELBOW, 0.035))  # fmt: skip
_SKIN_SEGMENTS = ((THORAX, UPPER_NECK, 0.025), (R_ELBOW, R_WRIST, 0.03), (L_ELBOW, L_WRIST, 0.03))


def _coverage(segments: np.ndarray, radii: np.ndarray, groups: list[int], size: int):
    """Anti-aliased unions of thick segments [S, 2, 2] with radii [S], one per consecutive group.

    Returns opacities in [0, 1] [len(groups), h, w] over the segments' bounding window, and that
    window; `groups` holds the number of segments in each union.
    """
    segments, radii = segments.astype(np.float32), radii.astype(np.float32)
    pts = segments.reshape(-1, 2)
    lo = np.clip(np.floor(pts.min(0) - radii.max() - 1), 0, size).astype(int)
    hi = np.maximum(np.clip(np.ceil(pts.max(0) + radii.max() + 2), 0, size).astype(int), lo)
    window = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    ys = np.arange(lo[1], hi[1], dtype=np.float32)[:, None]
    xs = np.arange(lo[0], hi[0], dtype=np.float32)[None, :]
    a, b = segments[:, 0, :, None, None], segments[:, 1, :, None, None]
    ab = b - a
    px, py = xs - a[:, 0], ys - a[:, 1]
    t = (px * ab[:, 0] + py * ab[:, 1]) / np.maximum(ab[:, 0] ** 2 + ab[:, 1] ** 2, 1e-9)
    np.clip(t, 0.0, 1.0, out=t)
    dist = np.hypot(px - t * ab[:, 0], py - t * ab[:, 1])
    cov = np.clip(radii[:, None, None] + 0.5 - dist, 0.0, 1.0)
    if cov.size == 0:
        return np.zeros((len(groups), *cov.shape[1:]), np.float32), window
    return np.maximum.reduceat(cov, np.cumsum([0, *groups[:-1]]), axis=0), window


def _segments(joints: np.ndarray, spec: tuple, height: float) -> tuple[np.ndarray, np.ndarray]:
    seg = np.array([[joints[a], joints[b]] for a, b, _ in spec])
    radii = np.maximum(np.array([r for _, _, r in spec]) * height, 0.6)
    return seg, radii


def _draw(
    canvas: np.ndarray, cov: np.ndarray, window: tuple, colour: np.ndarray, alpha: float
) -> None:
    """Alpha-blends a colour into the canvas's window with opacity `alpha * cov`."""
    w = (np.float32(alpha) * cov)[..., None]
    region = canvas[window]
    region *= 1 - w
    region += w * colour.astype(np.float32)


def _draw_person(
    canvas: np.ndarray, rng: np.random.Generator, person: Person, alpha: float
) -> np.ndarray:
    """Draws a person (and a seat when sitting) onto a float canvas; returns its coverage."""
    j, h, size = person.keypoints, person.height, canvas.shape[0]
    if POSE_CLASSES[person.label] == "sitting":
        y_seat = (j[R_HIP, 1] + j[R_KNEE, 1] + j[L_HIP, 1] + j[L_KNEE, 1]) / 4
        x0, x1 = j[R_KNEE, 0] - 0.05 * h, j[L_KNEE, 0] + 0.05 * h
        y_floor = max(j[R_ANKLE, 1], j[L_ANKLE, 1])
        seat = np.array([[[x0, y_seat], [x1, y_seat]], [[x0, y_seat], [x0, y_floor]],
                         [[x1, y_seat], [x1, y_floor]]])  # fmt: skip
        radii = np.maximum(np.array([0.05, 0.02, 0.02]) * h, 0.6)
        (seat_cov,), window = _coverage(seat, radii, [3], size)
        _draw(canvas, seat_cov, window, rng.uniform(60, 160, 3) * [1.0, 0.7, 0.4], alpha)
    head_c = (j[HEAD_TOP] + j[UPPER_NECK]) / 2
    head_r = max(0.47 * np.linalg.norm(j[HEAD_TOP] - j[UPPER_NECK]), 1.0)
    parts = [_segments(j, spec, h) for spec in (_PANTS, _SHIRT, _SKIN_SEGMENTS)]
    parts.append((np.array([[head_c, head_c]]), np.array([head_r])))  # the head: a disc
    covs, window = _coverage(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        [len(_PANTS), len(_SHIRT), len(_SKIN_SEGMENTS) + 1],
        size,
    )
    skin = _SKIN[rng.integers(len(_SKIN))]
    shirt = np.array(list(SHIRT_COLOURS.values())[person.shirt], np.float32)
    shirt = np.clip(shirt + rng.uniform(-_SHIRT_JITTER, _SHIRT_JITTER, 3), 0, 255)
    for cov, colour in zip(covs, (rng.uniform(0, 255, 3), shirt, skin), strict=True):
        _draw(canvas, cov, window, colour, alpha)
    total = np.zeros(canvas.shape[:2], np.float32)
    total[window] = covs.max(0, initial=0.0)
    return total


def _extent(joints: np.ndarray, height: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (lo, hi) of everything drawn for a person (joints plus stroke widths)."""
    margin = 0.09 * height
    return joints.min(0) - margin, joints.max(0) + margin


def _place(
    rng: np.random.Generator, label: int, shirt: int, rel_height: float, size: int, avoid=None
) -> Person:
    """Samples a pose, scales it into the image and positions it (away from `avoid`'s box)."""
    unit, lean = _pose_skeleton(rng, label)
    lo, hi = _extent(unit, 1.0)
    height = min(rel_height * size, 0.96 * size / float((hi - lo).max()))
    lo, hi = lo * height, hi * height
    candidates = rng.uniform(0.0, 1.0, size=(6 if avoid is not None else 1, 2))
    offsets = -lo + candidates * np.maximum(size - 1 - (hi - lo), 0.0)
    if avoid is not None:  # the candidate whose box overlaps the avoided box least
        a_lo, a_hi = avoid
        inter = np.clip(
            np.minimum(offsets + hi, a_hi) - np.maximum(offsets + lo, a_lo), 0.0, None
        ).prod(1)
        offsets = offsets[np.argmin(inter)][None]
    return Person(unit * height + offsets[0], label, height, lean, shirt)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour gradient with 3–7 random rectangles and ellipses: clutter the model must ignore."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / max(size - 1, 1)
    ramp = np.clip(ramp - (np.cos(angle) + np.sin(angle)) / 2 + 0.5, 0, 1)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    canvas = c0 + ramp[..., None] * (c1 - c0)
    for _ in range(rng.integers(3, 8)):
        (cx, cy), (rx, ry) = rng.uniform(0, 1, 2) * size, rng.uniform(0.03, 0.2, 2) * size
        window = tuple(
            slice(int(np.clip(c - r, 0, size)), int(np.clip(np.ceil(c + r) + 1, 0, size)))
            for c, r in ((cy, ry), (cx, rx))
        )
        dx, dy = np.abs(xs[window] - cx) / rx, np.abs(ys[window] - cy) / ry
        shape = np.maximum(dx, dy) <= 1 if rng.random() < 0.5 else dx**2 + dy**2 <= 1
        colour, alpha = rng.uniform(0, 255, 3), rng.uniform(0.5, 1.0)
        _draw(canvas, shape.astype(np.float32), window, colour, alpha)
    return canvas


def _arm_state(shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray, head_top: np.ndarray,
               side: float, height: float) -> tuple[str, bool]:  # fmt: skip
    """Which `_ARM_STATES` entry describes an arm, and whether its elbow is bent."""
    if wrist[1] < head_top[1]:
        state = "above_head"
    elif wrist[1] < shoulder[1] - 0.08 * height:
        state = "raised"
    elif abs(wrist[1] - shoulder[1]) <= 0.08 * height and side * (wrist[0] - shoulder[0]) > 0:
        state = "out"
    elif side * (wrist[0] - shoulder[0]) < 0.1 * height:
        state = "down"
    else:
        state = "low_out"
    upper, lower = elbow - shoulder, wrist - elbow
    cos = upper @ lower / (np.linalg.norm(upper) * np.linalg.norm(lower))
    return state, bool(cos < np.cos(np.deg2rad(35)))


def _describe(rng: np.random.Generator, person: Person) -> str:
    """An MPII-style pose description of one person, from its geometry by simple rules."""
    j, h = person.keypoints, person.height
    pick = lambda options: options[rng.integers(len(options))]
    arms = [
        _arm_state(j[L_SHOULDER], j[L_ELBOW], j[L_WRIST], j[HEAD_TOP], 1.0, h),
        _arm_state(j[R_SHOULDER], j[R_ELBOW], j[R_WRIST], j[HEAD_TOP], -1.0, h),
    ]
    if arms[0] == arms[1]:
        arm_text = pick(_BOTH_ARMS).format(pick(_ARM_STATES[arms[0][0]]), pick(_ELBOW[arms[0][1]]))
    else:
        words = [w for s, bent in arms for w in (pick(_ARM_STATES[s]), pick(_ELBOW[bent]))]
        arm_text = pick(_EACH_ARM).format(*words)
    ankle_y, hip_y = (j[R_ANKLE, 1] + j[L_ANKLE, 1]) / 2, (j[R_HIP, 1] + j[L_HIP, 1]) / 2
    hips_low = (ankle_y - hip_y) / (ankle_y - j[HEAD_TOP, 1]) < 0.455
    hip_w = j[L_HIP, 0] - j[R_HIP, 0]
    if hips_low:
        legs = "squat" if j[L_KNEE, 0] - j[R_KNEE, 0] > 2.5 * hip_w else "seated"
    else:
        legs = "apart" if j[L_ANKLE, 0] - j[R_ANKLE, 0] > 1.8 * hip_w else "together"
    lean = "upright" if abs(person.lean_deg) < 3 else ("left" if person.lean_deg > 0 else "right")
    return " ".join([
        _OPENING.format(POSE_CLASSES[person.label]),
        pick(_CLOTHES).format(list(SHIRT_COLOURS)[person.shirt]),
        pick(_LEGS[legs]), arm_text, pick(_TORSO[lean]), pick(_HEAD),
    ])  # fmt: skip


def make_scene(index: int, *, seed: int, image_size: int = 64) -> Scene:
    """Renders example `index` of the dataset `seed` with everything known about it."""
    rng = np.random.default_rng((seed, index))
    label = int(rng.integers(len(POSE_CLASSES)))
    canvas = _background(rng, image_size)
    shirt = int(rng.integers(len(SHIRT_COLOURS)))
    target = _place(rng, label, shirt, rng.uniform(0.6, 0.85), image_size)
    others = [c for c in range(len(POSE_CLASSES)) if c != label]
    other_shirts = [c for c in range(len(SHIRT_COLOURS)) if c != shirt]
    distractors = [
        _place(rng, others[rng.integers(len(others))],
               other_shirts[rng.integers(len(other_shirts))], rng.uniform(0.3, 0.5), image_size,
               avoid=_extent(target.keypoints, target.height))
        for _ in range(rng.integers(0, 3))
    ]  # fmt: skip
    noise = 6.0 * rng.standard_normal(canvas.shape, dtype=np.float32)
    background = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    coverage = [np.zeros(canvas.shape[:2], np.float32)]  # the target is drawn last, on top
    for d in distractors:
        coverage.append(_draw_person(canvas, rng, d, alpha=rng.uniform(0.35, 0.65)))
    coverage[0] = _draw_person(canvas, rng, target, alpha=1.0)
    image = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    return Scene(image, background, [target, *distractors], coverage, _describe(rng, target))


def make_example(index: int, *, seed: int, image_size: int = 64, max_people: int = 4) -> dict:
    """One training record: image, the target's keypoints padded to `max_people`, label, text.

    Only slot 0 (the target) is annotated (`person_mask` [True, False, ...]), so the heatmap
    rendered from the record covers the target and not the distractors.
    """
    if max_people < 1:
        raise ValueError(f"max_people must be >= 1, got {max_people}")
    scene = make_scene(index, seed=seed, image_size=image_size)
    target = scene.people[0]
    keypoints = np.zeros((max_people, 16, 2), np.float32)
    keypoints[0] = target.keypoints
    visible = np.zeros((max_people, 16), bool)
    visible[0] = np.all((target.keypoints >= -0.5) & (target.keypoints < image_size - 0.5), axis=1)
    person_mask = np.zeros(max_people, bool)
    person_mask[0] = True
    return {
        "image": scene.image,
        "keypoints": keypoints,
        "visible": visible,
        "person_mask": person_mask,
        "label": np.int32(target.label),
        "shirt": np.int32(target.shirt),
        "description": scene.description,
    }


class SyntheticPeople:
    """A grain random-access source of `make_example` records; splits are different seeds.

    Structurally a `grain.sources.RandomAccessDataSource` (len, getitem, picklable, a repr for
    checkpoints), usable as `grain.MapDataset.source(SyntheticPeople(...))`.
    """

    def __init__(self, num_records: int, seed: int, image_size: int = 64, max_people: int = 4):
        self.num_records, self.seed = num_records, seed
        self.image_size, self.max_people = image_size, max_people

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_records:
            raise IndexError(f"index {index} out of range for {self.num_records} records")
        return make_example(
            int(index), seed=self.seed, image_size=self.image_size, max_people=self.max_people
        )

    def __repr__(self) -> str:
        return (
            f"SyntheticPeople(num_records={self.num_records}, seed={self.seed}, "
            f"image_size={self.image_size}, max_people={self.max_people})"
        )


def corpus() -> list[str]:
    """Texts holding every word and punctuation mark that descriptions and prompts can contain.

    Fitting a word-level tokenizer on them equals fitting it on all data, without generating any.
    """
    texts = [_OPENING, PROMPT_TEMPLATE, *POSE_CLASSES, *_BOTH_ARMS, *_EACH_ARM, *_HEAD]
    texts += [SHIRT_PROMPT_TEMPLATE, *SHIRT_COLOURS, *_CLOTHES]
    for table in (_ARM_STATES, _ELBOW, _LEGS, _TORSO):
        texts += [t for options in table.values() for t in options]
    return [t.replace("{}", " ") for t in texts]


def vocabulary() -> list[str]:
    """Every word (lower-case run of letters) of `corpus()`, sorted; punctuation is '.' and ','."""
    return sorted({w for text in corpus() for w in re.findall(r"[a-z]+", text.lower())})
