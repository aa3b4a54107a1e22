"""SynthPose: an embedded benchmark of articulated people for subject-level guidance, offline.

Each image shows one TARGET person in one of `POSE_CLASSES` (a skeleton with sampled limb lengths
and joint angles in per-class ranges) drawn with body-part shapes and colours (shirt, trousers,
skin, a head disc; a chair under a sitting person) over a cluttered background, plus 0–3 smaller
DISTRACTOR people in other poses, with scale and position jitter. Only the target is annotated and
described (by the rule-based describer `synthpose.describe`), so the target's heatmap is what
tells the subject from the distractors, as on MPII where FocusCLIP's heatmaps come from the
annotated people only.

Keypoints are MPII's 16 joints as (x, y) in image pixels (y down), pixel (row i, col j) centred at
x = j, y = i (the convention of `input_pipeline.heatmaps`). Standing people face the viewer, so a
person's left side (joints 3, 4, 5, 13, 14, 15) is on the image's right; sitting and squatting
people are seen from the side.

The zero-shot split is another seed labelled with the target's pose class; its prompts ("a photo
of a person <phrase>.") are worded unlike the descriptions. `python -m synthpose.scenes
--export=<dir> --num_images=N` writes the MPII layout (JPEGs, mmpose JSON, descriptions JSON) that
`input_pipeline.prepare.mpii` reads. Host-only numpy and Pillow; deterministic in (seed, index).
"""

import dataclasses
import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image, ImageChops, ImageDraw

from input_pipeline import cli
from synthpose import describe
from synthpose.describe import (
    HEAD_TOP,
    L_ANKLE,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    PELVIS,
    R_ANKLE,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    THORAX,
    UPPER_NECK,
)

POSE_CLASSES: tuple[str, ...] = (
    "standing",
    "both arms raised",
    "one arm raised",
    "arms spread",
    "sitting",
    "squatting",
    "lying",
    "kicking",
)
# The zero-shot prompts: phrased unlike the describer's sentences, so they test what was learnt.
PROMPT_TEMPLATE = "a photo of a person {}."
# In the describer's words (a word it never says has no trained embedding), not its sentences.
CLASS_PHRASES: tuple[str, ...] = (
    "standing with the arms down",
    "with both arms raised high",
    "with one arm raised high",
    "with both arms spread out sideways",
    "sitting on a seat",
    "squatting down",
    "lying flat on the ground",
    "kicking with one leg",
)
POSE_PROMPTS: tuple[str, ...] = tuple(PROMPT_TEMPLATE.format(p) for p in CLASS_PHRASES)
# The describer's measured `PoseFacts.posture` of each class (the geometry the class stands for).
POSTURES: dict[str, str] = {
    "standing": "standing",
    "both arms raised": "standing",
    "one arm raised": "standing",
    "arms spread": "standing",
    "sitting": "sitting",
    "squatting": "squatting",
    "lying": "lying",
    "kicking": "standing",
}
MAX_DISTRACTORS = 3


# Body proportions as fractions of the standing height, and how much each one varies.
_LENGTHS = {
    "head": 0.13, "neck": 0.04, "torso": 0.30, "shoulder": 0.10, "hip": 0.065,
    "upper_arm": 0.17, "lower_arm": 0.15, "upper_leg": 0.25, "lower_leg": 0.24,
}  # fmt: skip
_LENGTH_JITTER = 0.08
_HEAD_RADIUS = 0.6  # of the neck–head-top distance: the head disc covers both joints

# Drawn segments (joint a, joint b, radius as a fraction of the height) per colour group, in
# drawing order: trousers, shirt, skin.
_TROUSERS = ((R_HIP, L_HIP, 0.05), (R_HIP, R_KNEE, 0.05), (R_KNEE, R_ANKLE, 0.04),
             (L_HIP, L_KNEE, 0.05), (L_KNEE, L_ANKLE, 0.04))  # fmt: skip
_SHIRT = ((THORAX, PELVIS, 0.085), (R_SHOULDER, L_SHOULDER, 0.045), (R_SHOULDER, R_ELBOW, 0.035),
          (L_SHOULDER, L_ELBOW, 0.035))  # fmt: skip
_SKIN_PARTS = ((THORAX, UPPER_NECK, 0.025), (R_ELBOW, R_WRIST, 0.03), (L_ELBOW, L_WRIST, 0.03))
# People are dark and the background light: the silhouette, not colour, is what a tiny model can
# learn the pose from within minutes (random colours everywhere hid it: pose stayed at chance).
_SKIN = np.array([[120, 80, 45], [100, 62, 35], [80, 50, 30], [60, 38, 22], [135, 95, 60]])
_CLOTHES_MAX = 100  # per channel
_BACKGROUND_MIN = 140
# Images smaller than this draw their people 2–7 times finer and reduce them: anti-aliased edges
# where pixels are coarse (`_supersampling`); at 224 px one drawing pixel per pixel.
_DRAW_SIZE = 200
# Per-pixel grey noise: uniform in [-8, 7] (std 4.6), added modulo 256, which is exact because
# every colour drawn lies in [8, 247] (`_COLOURS`).
_NOISE_LEVELS = 16
_COLOURS = (_NOISE_LEVELS // 2, 255 - _NOISE_LEVELS // 2)


@dataclasses.dataclass(frozen=True)
class Person:
    """One drawn person: keypoints [16, 2] (x, y) in image pixels, pose class, height in pixels."""

    keypoints: np.ndarray
    label: int
    height: float


@dataclasses.dataclass(frozen=True)
class Scene:
    """A rendered image with everything known about it; the target is `people[0]`.

    `coverage` holds the opacity [H, W] in [0, 1] each person was drawn with (the target is drawn
    last, on top of the others): what tests and inspection need beyond `make_example`.
    """

    image: np.ndarray
    people: list[Person]
    coverage: list[np.ndarray]
    description: str


@dataclasses.dataclass(frozen=True)
class _Angles:
    """A pose in image-frame limb directions, degrees: 0 points down, +90 to the image's right,
    180 up. Arms are relative to the torso (`lean`), legs absolute; `turn` rotates everything
    about the pelvis (lying); `width` < 1 narrows shoulders and hips (people seen from the side)."""

    l_arm: tuple[float, float]
    r_arm: tuple[float, float]
    l_leg: tuple[float, float]
    r_leg: tuple[float, float]
    lean: float = 0.0
    turn: float = 0.0
    width: float = 1.0


def _arm_down(u: Callable, side: float) -> tuple[float, float]:
    return side * u(5, 25), side * u(0, 35)


def _arm_up(u: Callable, side: float) -> tuple[float, float]:
    return side * u(140, 175), side * u(150, 190)


def _arm_out(u: Callable, side: float) -> tuple[float, float]:
    return side * u(78, 95), side * u(75, 100)


def _leg_straight(u: Callable, side: float) -> tuple[float, float]:
    return side * u(2, 12), side * u(-4, 10)


def _pose_angles(rng: np.random.Generator, pose: str) -> _Angles:
    """Joint angles in the ranges that define a pose class (person's left = image right = +1)."""
    u = rng.uniform
    side = 1.0 if rng.random() < 0.5 else -1.0  # the raised arm, kicking leg, or facing direction
    lean = u(-8, 8)
    legs = {"l_leg": _leg_straight(u, 1.0), "r_leg": _leg_straight(u, -1.0)}
    if pose == "standing":
        return _Angles(_arm_down(u, 1.0), _arm_down(u, -1.0), **legs, lean=lean)
    if pose == "both arms raised":
        return _Angles(_arm_up(u, 1.0), _arm_up(u, -1.0), **legs, lean=lean)
    if pose == "one arm raised":
        raised, lowered = _arm_up(u, side), _arm_down(u, -side)
        arms = (raised, lowered) if side > 0 else (lowered, raised)
        return _Angles(*arms, **legs, lean=lean)
    if pose == "arms spread":
        return _Angles(_arm_out(u, 1.0), _arm_out(u, -1.0), **legs, lean=lean)
    if pose == "kicking":
        kick = (side * u(60, 95), side * u(60, 120))
        legs["l_leg" if side > 0 else "r_leg"] = kick
        arms = [(s * u(20, 60), s * u(10, 70)) for s in (1.0, -1.0)]
        return _Angles(*arms, **legs, lean=-side * u(0, 12))
    if pose == "lying":
        return _Angles(
            _arm_down(u, 1.0), _arm_down(u, -1.0), **legs, turn=side * u(78, 102), lean=0.0
        )
    if pose == "sitting":  # seen from the side: thighs level, shins down, hands on the lap
        thighs = [(side * u(82, 98), side * u(-12, 8)) for _ in range(2)]
        arms = [(side * u(5, 35), side * u(45, 85)) for _ in range(2)]
        return _Angles(*arms, *thighs, lean=side * u(-8, 5), width=u(0.3, 0.5))
    if pose == "squatting":  # from the side: knees up and forward, hips low, leaning forward
        legs_bent = [(side * u(110, 135), -side * u(10, 35)) for _ in range(2)]
        arms = [(side * u(40, 80), side * u(50, 100)) for _ in range(2)]
        return _Angles(*arms, *legs_bent, lean=side * u(15, 35), width=u(0.3, 0.5))
    raise ValueError(f"unknown pose class {pose!r}; expected one of {POSE_CLASSES}")


def _direction(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([np.sin(a), np.cos(a)])


def pose_skeleton(rng: np.random.Generator, label: int) -> np.ndarray:
    """Joints [16, 2] of a person of unit standing height in pose class `label`, pelvis at 0."""
    angles = _pose_angles(rng, POSE_CLASSES[label])
    n = {k: v * rng.uniform(1 - _LENGTH_JITTER, 1 + _LENGTH_JITTER) for k, v in _LENGTHS.items()}
    up = _direction(180.0 - angles.lean)
    across = np.array([-up[1], up[0]]) * angles.width  # towards the image's right
    j = np.zeros((16, 2))
    j[THORAX] = n["torso"] * up
    j[UPPER_NECK] = j[THORAX] + n["neck"] * up
    j[HEAD_TOP] = j[UPPER_NECK] + n["head"] * up
    limbs = (
        (THORAX, n["shoulder"], L_SHOULDER, L_ELBOW, L_WRIST, angles.l_arm, angles.lean, 1.0),
        (THORAX, n["shoulder"], R_SHOULDER, R_ELBOW, R_WRIST, angles.r_arm, angles.lean, -1.0),
        (PELVIS, n["hip"], L_HIP, L_KNEE, L_ANKLE, angles.l_leg, 0.0, 1.0),
        (PELVIS, n["hip"], R_HIP, R_KNEE, R_ANKLE, angles.r_leg, 0.0, -1.0),
    )
    for root, offset, base, mid, end, (first, second), tilt, side in limbs:
        upper, lower = ("upper_arm", "lower_arm") if base in (L_SHOULDER, R_SHOULDER) else (
            "upper_leg", "lower_leg")  # fmt: skip
        j[base] = j[root] + side * offset * across
        j[mid] = j[base] + n[upper] * _direction(first - tilt)
        j[end] = j[mid] + n[lower] * _direction(second - tilt)
    turn = np.deg2rad(angles.turn)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    return j @ rotation.T


def _person_strokes(rng: np.random.Generator, person: Person) -> list[tuple[tuple, list]]:
    """The person's drawing (a chair under a sitting person, then trousers, shirt, skin and head)
    as (RGBA fill, [((ax, ay), (bx, by), radius), ...]) groups in image pixels, in drawing order.

    Colours come from `rng`, the person's own stream, in the same order as ever."""
    j, h = person.keypoints.tolist(), person.height
    groups = []
    if POSE_CLASSES[person.label] == "sitting":
        seat_y = max(j[R_HIP][1], j[L_HIP][1]) + 0.06 * h
        floor_y = max(j[R_ANKLE][1], j[L_ANKLE][1])
        back_x = j[PELVIS][0] - 0.06 * h * float(np.sign(j[R_KNEE][0] - j[PELVIS][0]))
        front_x = (j[R_KNEE][0] + j[L_KNEE][0]) / 2
        chair = (((back_x, seat_y), (front_x, seat_y), 0.03),
                 ((back_x, seat_y), (back_x, floor_y), 0.015),
                 ((front_x, seat_y), (front_x, floor_y), 0.015),
                 ((back_x, seat_y), (back_x, j[THORAX][1]), 0.015))  # fmt: skip
        colour = rng.uniform(90, 130, 3) * [1.0, 0.75, 0.5]
        groups.append((colour, [(a, b, max(r * h, 0.6)) for a, b, r in chair]))
    skin = _SKIN[rng.integers(len(_SKIN))]
    trousers, shirt = rng.uniform(0, _CLOTHES_MAX, (2, 3))
    for parts, colour in ((_TROUSERS, trousers), (_SHIRT, shirt), (_SKIN_PARTS, skin)):
        groups.append((colour, [(j[a], j[b], max(r * h, 0.6)) for a, b, r in parts]))
    head = ((j[HEAD_TOP][0] + j[UPPER_NECK][0]) / 2, (j[HEAD_TOP][1] + j[UPPER_NECK][1]) / 2)
    head_radius = _HEAD_RADIUS * math.dist(j[HEAD_TOP], j[UPPER_NECK])
    groups[-1][1].append((head, head, max(head_radius, 1.0)))  # a disc: a segment of length 0
    return [(_fill(colour), segs) for colour, segs in groups]


def _fill(colour: np.ndarray, alpha: int = 255) -> tuple[int, int, int, int]:
    """An RGBA fill for Pillow, the colour clamped into `_COLOURS` (room for the noise)."""
    low, high = _COLOURS
    return (*(min(max(round(c), low), high) for c in colour.tolist()), alpha)


def _draw_person(canvas: Image.Image, rng: np.random.Generator, person: Person) -> np.ndarray:
    """Paints a person onto the RGB `canvas` as opaque round-capped thick segments and returns its
    coverage (opacity [H, W] float32, the chair's included).

    The person is drawn by Pillow's C rasteriser (numpy distance fields took 3.7 ms per 224 px
    image) on an RGBA layer over its own box only, `_supersampling` times finer and reduced where
    the image is small (the box average is the anti-aliased coverage), then pasted through its
    alpha."""
    groups = _person_strokes(rng, person)
    size = canvas.size[0]
    scale = _supersampling(size)
    segments = [segment for _, segs in groups for segment in segs]
    xs, ys = zip(*[end for a, b, _ in segments for end in (a, b)], strict=True)
    reach = max(radius for *_, radius in segments) + 2.0  # a box that holds every stroke
    x0, y0 = (min(max(math.floor(min(v) - reach), 0), size) for v in (xs, ys))
    x1, y1 = (min(max(math.ceil(max(v) + reach), 0), size) for v in (xs, ys))
    coverage = np.zeros((size, size), np.float32)
    if x1 <= x0 or y1 <= y0:  # wholly outside the image
        return coverage
    # Premultiplied ("RGBa") where it is reduced: Pillow's reduce would convert RGBA to it and back
    # at the drawing size; converted back here at the image size instead, 4-16 times cheaper.
    layer = Image.new("RGBa" if scale > 1 else "RGBA", ((x1 - x0) * scale, (y1 - y0) * scale))
    draw = ImageDraw.Draw(layer)
    # Output pixel x = j is the centre of drawing pixels s·j … s·j + s - 1 (box relative).
    shift_x, shift_y = (0.5 - x0) * scale - 0.5, (0.5 - y0) * scale - 0.5
    for fill, segs in groups:
        caps: dict[tuple[int, int], int] = {}  # the largest disc at each end point in the group
        for (ax, ay), (bx, by), radius in segs:
            k = max(round(radius * scale - 0.5), 0)  # Pillow fills 2k + 1 pixels across
            a = (round(ax * scale + shift_x), round(ay * scale + shift_y))
            b = (round(bx * scale + shift_x), round(by * scale + shift_y))
            if a != b:
                draw.line([a, b], fill, 2 * k + 1)
            for end in (a, b):
                caps[end] = max(caps.get(end, 0), k)
        for (x, y), k in caps.items():  # round ends: discs of the stroke's width
            draw.ellipse((x - k, y - k, x + k, y + k), fill)
    if scale > 1:
        layer = layer.reduce(scale).convert("RGBA")
    canvas.paste(layer, (x0, y0), layer)
    coverage[y0:y1, x0:x1] = np.asarray(layer.getchannel("A"), np.float32) / 255
    return coverage


def _supersampling(image_size: int) -> int:
    """How many times finer people are drawn than the image: enough for anti-aliased edges at
    small sizes, and 1 where pixels are small already (drawing costs the square of it)."""
    return max(1, -(-_DRAW_SIZE // image_size))


def _extent(joints: np.ndarray, height: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (lo, hi) of everything drawn for a person (joints plus stroke widths)."""
    margin = 0.09 * height
    return joints.min(0) - margin, joints.max(0) + margin


def _place(
    rng: np.random.Generator,
    label: int,
    rel_height: float,
    size: int,
    avoid: tuple[np.ndarray, np.ndarray] | None = None,
) -> Person:
    """Samples a pose, scales it into the image and positions it (away from `avoid`'s box)."""
    unit = pose_skeleton(rng, label)
    lo, hi = _extent(unit, 1.0)
    height = min(rel_height * size, 0.96 * size / float((hi - lo).max()))
    lo, hi = lo * height, hi * height
    candidates = rng.uniform(0.0, 1.0, size=(6 if avoid is not None else 1, 2))
    offsets = -lo + candidates * np.maximum(size - 1 - (hi - lo), 0.0)
    if avoid is not None:  # the candidate whose box overlaps the avoided box least
        a_lo, a_hi = avoid
        overlap = np.clip(np.minimum(offsets + hi, a_hi) - np.maximum(offsets + lo, a_lo), 0, None)
        offsets = offsets[np.argmin(overlap.prod(1))][None]
    return Person(unit * height + offsets[0], label, height)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A light colour gradient with 2–5 faint rectangles and ellipses: clutter to ignore.

    The gradient is a ramp along a random direction, quantised to 256 levels and coloured through
    a palette; the shapes are alpha-blended by Pillow (RGBA drawing on an RGB image)."""
    axis = np.arange(size, dtype=np.float32) / max(size - 1, 1) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.add(
        np.float32(np.cos(angle)) * axis[None, :], np.float32(np.sin(angle)) * axis[:, None]
    )
    ramp += 0.5
    np.clip(ramp, 0, 1, out=ramp)
    ramp *= 255  # the palette index
    c0, c1 = rng.uniform(_BACKGROUND_MIN + 30, 255, (2, 3))
    levels = np.linspace(0.0, 1.0, 256)[:, None]
    palette = np.round(c0 + (c1 - c0) * levels).clip(*_COLOURS).astype(np.uint8)
    canvas = Image.fromarray(ramp.round().astype(np.uint8), "L")
    canvas.putpalette(palette.tobytes(), "RGB")
    canvas = canvas.convert("RGB")
    draw = ImageDraw.Draw(canvas, "RGBA")
    for _ in range(rng.integers(2, 6)):
        (cx, cy), (rx, ry) = rng.uniform(0, 1, 2) * size, rng.uniform(0.04, 0.15, 2) * size
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        alpha = round(255 * rng.uniform(0.3, 0.7))
        fill = _fill(rng.uniform(_BACKGROUND_MIN, 255, 3), alpha)
        shape((round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry)), fill)
    return canvas


def _noise(rng: np.random.Generator, size: int) -> Image.Image:
    """Mild grey per-pixel noise in [-8, 7] as an RGB image of bytes modulo 256, for
    `ImageChops.add_modulo`: random bytes' low bits are far cheaper than normals."""
    noise = np.frombuffer(rng.bytes(size * size), np.uint8) & (_NOISE_LEVELS - 1)
    noise -= _NOISE_LEVELS // 2  # wraps around
    grey = Image.fromarray(noise.reshape(size, size))
    return Image.merge("RGB", (grey, grey, grey))


def in_frame(keypoints: np.ndarray, image_size: int) -> np.ndarray:
    """Which joints lie on a pixel of the image: the visible ones (bool [..., 16])."""
    return np.all((keypoints >= -0.5) & (keypoints < image_size - 0.5), axis=-1)


def make_scene(
    index: int, *, seed: int, image_size: int = 64, max_distractors: int = MAX_DISTRACTORS
) -> Scene:
    """Renders example `index` of the dataset `seed` with everything known about it.

    `max_distractors=0` draws the same targets (poses, places, backgrounds) without distractors.
    """
    rng = np.random.default_rng((seed, index))
    label = int(rng.integers(len(POSE_CLASSES)))
    canvas = _background(rng, image_size)
    target = _place(rng, label, rng.uniform(0.7, 0.95), image_size)
    others = [c for c in range(len(POSE_CLASSES)) if c != label]
    box = _extent(target.keypoints, target.height)
    # Always drawn from the stream, used or not: the same index keeps its target either way.
    wanted = int(rng.integers(0, MAX_DISTRACTORS + 1))
    candidates = [  # smaller than the target: it is the subject, in the foreground
        _place(rng, others[rng.integers(len(others))],
               target.height / image_size * rng.uniform(0.55, 0.85), image_size, box)
        for _ in range(MAX_DISTRACTORS)
    ]  # fmt: skip
    noise = _noise(rng, image_size)  # the main stream's last draw: nothing else depends on it
    people = [target, *candidates[: min(wanted, max_distractors)]]
    # Colours and words from streams of their own: a person looks the same, and the target is
    # described the same, whichever distractors are drawn.
    colours = [np.random.default_rng((seed, index, 1, slot)) for slot in range(len(people))]
    coverage = [_draw_person(canvas, c, p) for c, p in zip(colours[1:], people[1:], strict=True)]
    coverage.insert(0, _draw_person(canvas, colours[0], target))  # last: on top
    # Modulo 256: exact, as every colour lies in `_COLOURS`.
    image = np.array(ImageChops.add_modulo(canvas, noise))
    visible = in_frame(target.keypoints, image_size)
    words = np.random.default_rng((seed, index, 2))
    description = describe.describe_scene([(target.keypoints, visible)], rng=words)
    return Scene(image, people, coverage, description)


def make_example(
    index: int,
    *,
    seed: int,
    image_size: int = 64,
    max_people: int = 4,
    max_distractors: int = MAX_DISTRACTORS,
) -> dict:
    """One training record: image, the target's keypoints padded to `max_people`, label, text.

    Only slot 0 (the target) is annotated (`person_mask` [True, False, ...]), so the heatmap
    rendered from the record covers the target and not the distractors.
    """
    if max_people < 1:
        raise ValueError(f"max_people must be >= 1, got {max_people}")
    scene = make_scene(index, seed=seed, image_size=image_size, max_distractors=max_distractors)
    target = scene.people[0]
    keypoints = np.zeros((max_people, 16, 2), np.float32)
    keypoints[0] = target.keypoints
    visible = np.zeros((max_people, 16), bool)
    visible[0] = in_frame(target.keypoints, image_size)
    person_mask = np.zeros(max_people, bool)
    person_mask[0] = True
    return {
        "image": scene.image,
        "keypoints": keypoints,
        "visible": visible,
        "person_mask": person_mask,
        "label": np.int32(target.label),
        "description": scene.description,
    }


class SynthPose:
    """A grain random-access source of `make_example` records; splits are different seeds.

    Structurally a `grain.sources.RandomAccessDataSource` (len, getitem, picklable, a repr for
    checkpoints), usable as `grain.MapDataset.source(SynthPose(...))`.
    """

    def __init__(
        self,
        num_records: int,
        seed: int,
        image_size: int = 64,
        max_people: int = 4,
        max_distractors: int = MAX_DISTRACTORS,
    ):
        self.num_records, self.seed = num_records, seed
        self.image_size, self.max_people = image_size, max_people
        self.max_distractors = max_distractors

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_records:
            raise IndexError(f"index {index} out of range for {self.num_records} records")
        return make_example(
            int(index),
            seed=self.seed,
            image_size=self.image_size,
            max_people=self.max_people,
            max_distractors=self.max_distractors,
        )

    def __repr__(self) -> str:
        return (
            f"SynthPose(num_records={self.num_records}, seed={self.seed}, "
            f"image_size={self.image_size}, max_people={self.max_people}, "
            f"max_distractors={self.max_distractors})"
        )


def corpus() -> list[str]:
    """Texts holding every word and punctuation mark that descriptions and prompts can contain:
    fitting a word-level tokenizer on them equals fitting it on all data, without generating any."""
    return [" ".join(describe.vocabulary()) + " . , ;", *POSE_PROMPTS]


def vocabulary() -> list[str]:
    """Every word (lower-case run of letters) of `corpus()`, sorted."""
    return sorted({w for text in corpus() for w in re.findall(r"[a-z]+", text.lower())})


# --- export to the MPII layout ----------------------------------------------------------------

EXPORT_SOURCE = "synthpose"  # the descriptions' source folder (`data.description_sources`)


def export(out: str | Path, num_images: int, *, seed: int, image_size: int, split: str) -> None:
    """Writes `images/*.jpg`, `annotations/mpii_<split>.json` (mmpose rows: 1-based joints) and
    `descriptions/synthpose/*.json` (the published descriptions format): MPII's layout."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    out = Path(out)
    for folder in ("images", "annotations", f"descriptions/{EXPORT_SOURCE}"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(num_images):
        scene = make_scene(index, seed=seed, image_size=image_size)
        name = f"synthpose_{seed}_{split}_{index:06d}.jpg"
        buffer = io.BytesIO()
        Image.fromarray(scene.image).save(buffer, format="JPEG", quality=95)
        (out / "images" / name).write_bytes(buffer.getvalue())
        target = scene.people[0]
        visible = in_frame(target.keypoints, image_size)
        joints = np.where(visible[:, None], target.keypoints + 1.0, -1.0).round(3).tolist()
        lo, hi = _extent(target.keypoints, target.height)
        center, scale = ((lo + hi) / 2 + 1.0).round(3).tolist(), round(target.height / 200, 4)
        rows.append({
            "image": name, "center": center, "scale": scale,
            "joints": joints, "joints_vis": visible.astype(int).tolist(),
        })  # fmt: skip
        item = {
            "image": name,
            "activity": POSE_CLASSES[target.label],
            "count": 1,
            "people": [{"id": 0, "center": center, "scale": scale, "kpts": joints,
                        "kpts_vis": visible.astype(int).tolist()}],
            "description": scene.description,
        }  # fmt: skip
        (out / "descriptions" / EXPORT_SOURCE / f"{Path(name).stem}.json").write_text(
            json.dumps(item)
        )
    (out / "annotations" / f"mpii_{split}.json").write_text(json.dumps(rows))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    export(
        args.export, args.num_images, seed=args.seed, image_size=args.image_size, split=args.split
    )
    print(
        f"Wrote {args.num_images} images to {args.export}; prepare them with: python -m "
        f"input_pipeline.prepare.mpii --images={args.export}/images "
        f"--annotations={args.export}/annotations/mpii_{args.split}.json "
        f"--descriptions={args.export}/descriptions --out=<prepared dir>"
    )


def define_flags() -> None:
    """Flags only when run as a program: importing the module defines none."""
    flags.DEFINE_string("export", None, "Folder to write the MPII-layout export to.")
    flags.DEFINE_integer("num_images", 1000, "Images to export.")
    flags.DEFINE_integer("seed", 1, "Dataset seed (the demo trains on 1, evaluates on 2).")
    flags.DEFINE_integer("image_size", 224, "Image side, pixels.")
    flags.DEFINE_enum("split", "train", ["train", "val"], "Which mpii_<split>.json to write.")
    flags.mark_flags_as_required(["export"])
    cli.check_flags(
        export=cli.Path("new_folder"),
        num_images=cli.Number(integer=True, at_least=1),
        seed=cli.Number(integer=True, at_least=0),
        image_size=cli.Number(integer=True, at_least=1),
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
