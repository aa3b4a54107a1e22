"""Decode, crop, resize, flip — keypoints transformed with the pixels; pick a description.

Every geometric step is one axis-aligned box of the source image resampled to S×S, so keypoints
follow with one affine map (pixel centres at integer coordinates, box edges at half-integers):

    x' = (x + 0.5 - x0) · S / (x1 - x0) - 0.5

Crop modes: `squash` (the whole image squashed to S×S, as the paper; decoded as is from the
prepared squashed copy when its side is S: no resize at train time), `person` (a square box
around the annotated people, grown by `person_margin`, clipped to the image; decoded as is from
the prepared person copy when it is that crop), `random_resized`
(Inception-style: area fraction and aspect ratio sampled). Flip is off by default (the paper uses no
augmentation); when on, left/right joints swap and the words "left"/"right" swap in the text, so
the description stays true of the flipped image.

Where the crop is taken on the device (`config.data.crop_on`, `device_crop`), the transform
decodes the stored image and draws the box, keypoints, flip and text exactly as above (the same
random draws, in the same order), and the training step resamples the pixels.
"""

import dataclasses
import io
import re
from collections.abc import Buffer, Mapping, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
import simplejpeg
from PIL import Image

from input_pipeline import device_crop
from input_pipeline import skeleton as skeletons
from input_pipeline.errors import InputDataError, check_choice, check_number
from input_pipeline.records import decode_prepared
from input_pipeline.skeleton import Skeleton

CROP_MODES = ("squash", "person", "random_resized")
_LEFT_RIGHT = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left",
         "LEFT": "RIGHT", "RIGHT": "LEFT"}  # fmt: skip

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixel-edge coordinates


def box_keypoints(keypoints: np.ndarray, box: Box, out_w: int, out_h: int) -> np.ndarray:
    """Keypoints [..., 2] of the source → those of `box` resampled to out_w × out_h."""
    x0, y0, x1, y1 = box
    scale = np.array([out_w / (x1 - x0), out_h / (y1 - y0)], np.float32)
    return ((keypoints + 0.5 - np.array([x0, y0], np.float32)) * scale - 0.5).astype(np.float32)


def flip_keypoints(keypoints: np.ndarray, visible: np.ndarray, width: int, skeleton: Skeleton):
    """Mirror x and swap left/right joints (the skeleton's pairs): the flipped person's left is
    still MPII's joint 3, 4, 5..."""
    permutation = skeleton.flip_permutation
    flipped = keypoints[..., permutation, :].copy()
    flipped[..., 0] = width - 1 - flipped[..., 0]
    return flipped, visible[..., permutation]


def swap_left_right(text: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: _SWAP[m.group(0)], text)


def person_box(
    keypoints: np.ndarray, visible: np.ndarray, width: int, height: int, margin: float
) -> Box:
    """A square box around all visible joints, grown by `margin` of its side, clipped to the image;
    the whole image when no joint is visible."""
    pts = keypoints[visible]
    if len(pts) == 0:
        return (0.0, 0.0, float(width), float(height))
    lo, hi = pts.min(axis=0) + 0.5, pts.max(axis=0) + 0.5
    side = max(hi - lo) * (1 + 2 * margin) + 1.0
    cx, cy = (lo + hi) / 2
    # Inside the image whatever the joints say (at least one pixel wide).
    x0 = float(np.clip(cx - side / 2, 0, width - 1))
    y0 = float(np.clip(cy - side / 2, 0, height - 1))
    x1 = float(np.clip(cx + side / 2, x0 + 1, width))
    y1 = float(np.clip(cy + side / 2, y0 + 1, height))
    return (x0, y0, x1, y1)


def random_resized_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """Inception-style crop: 10 tries at a random area fraction and aspect; else the whole image."""
    area, log_ratio = width * height, (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_ratio))
        w, h = np.sqrt(target * aspect), np.sqrt(target / aspect)
        if w <= width and h <= height:
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return (float(x0), float(y0), float(x0 + w), float(y0 + h))
    return (0.0, 0.0, float(width), float(height))


def decode_rgb(data: Buffer) -> np.ndarray:
    """uint8 [H, W, 3] of an encoded image.

    A YCbCr or greyscale JPEG is decoded straight into numpy by libjpeg-turbo's TurboJPEG API
    (simplejpeg): the same pixels as Pillow's decoder and `convert("RGB")` (libjpeg-turbo there too,
    with the same default integer IDCT and smooth chroma upsampling; tests/test_mpii.py compares
    them), at 0.45-0.7 of the CPU (2-core CPU, 2026-12-07): no Python header parsing, no copy
    out of a Pillow image.
    Anything else (PNG, CMYK, a JPEG that libjpeg-turbo warns about) goes through Pillow.
    """
    decoded = _decode_jpeg(data) if _jpeg_size(data) is not None else None
    if decoded is not None:
        return decoded
    image = Image.open(io.BytesIO(data))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _jpeg_size(data: Buffer) -> tuple[int, int] | None:
    """(width, height) of a JPEG simplejpeg decodes (YCbCr or greyscale), else None: not a JPEG,
    or a damaged one, which Pillow decodes or refuses as always."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (width, height) if colorspace in ("YCbCr", "Gray") else None


def _decode_jpeg(data: Buffer, need: tuple[int, int] = (0, 0)) -> np.ndarray | None:
    """simplejpeg's decode at the smallest DCT scale keeping `need` (width, height) pixels; None
    for a JPEG libjpeg-turbo warns about (Pillow decodes or refuses it)."""
    try:
        return simplejpeg.decode_jpeg(data, "RGB", min_width=need[0], min_height=need[1])
    except ValueError:
        return None


def copy_pixels(header: Mapping[str, Any], name: str, data: Buffer) -> np.ndarray:
    """uint8 [S, S, 3] of an entry's stored copy `name` (`records.COPIES`): decoded from JPEG, or
    a read-only view of its raw pixels (`records.COPY_FORMATS`)."""
    side = header[f"{name}_side"]
    return _pixels(header, f"{name} copy", data, header.get(f"{name}_format", "jpeg"), side, side)


def stored_pixels(header: Mapping[str, Any], data: Buffer) -> np.ndarray:
    """uint8 [H, W, 3] of an entry's stored image: decoded from JPEG, or a read-only view of its
    raw pixels (header["image_format"], `records.COPY_FORMATS`)."""
    width, height = header.get("size") or (0, 0)
    return _pixels(header, "image", data, header.get("image_format", "jpeg"), width, height)


def _pixels(
    header: Mapping[str, Any], what: str, data: Buffer, form: str, width: int, height: int
) -> np.ndarray:
    """`data` as `form` says: a decoded JPEG, or a view of raw pixels checked against their
    size (an InputDataError naming the image, not a reshape's traceback)."""
    if form == "jpeg":
        return decode_rgb(data)
    if form != "raw" or len(data) != width * height * 3:
        raise InputDataError(
            f"{header['image']}: {what} of {len(data)} bytes in format {form!r}; "
            f"expected raw {width}x{height}x3 uint8 pixels"
        )
    return np.frombuffer(data, np.uint8).reshape(height, width, 3)


def resize_box(pixels: np.ndarray, box_fn, size: int, keypoints: np.ndarray):
    """Resample `box_fn(w, h)` of decoded pixels to size² (`decode_and_resize` without decoding:
    an image stored as raw pixels)."""
    box = box_fn(pixels.shape[1], pixels.shape[0])
    resized = Image.fromarray(pixels).resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(resized), box_keypoints(keypoints, box, size, size)


def decode_and_resize(jpeg: Buffer, box_fn, size: int, keypoints: np.ndarray):
    """Decode (at a reduced JPEG scale when the box allows) and resample `box_fn(w, h)` to size².

    `box_fn` gets the full-resolution width and height and returns the box in those coordinates.
    The decoder scales straight from the DCT (1/2, 1/4, 1/8) where the box keeps at least `size`
    pixels a side. simplejpeg decodes what it can (YCbCr and greyscale JPEGs) into numpy, the
    same pixels as Pillow's draft mode at 0.8x the crop's CPU; Pillow the rest.
    """
    by_simplejpeg = _jpeg_size(jpeg)
    image = None if by_simplejpeg else Image.open(io.BytesIO(jpeg))
    full_w, full_h = by_simplejpeg or image.size
    box = box_fn(full_w, full_h)
    need = (  # decoded size at which the box still has >= size pixels on each side
        int(np.ceil(size * full_w / (box[2] - box[0]))),
        int(np.ceil(size * full_h / (box[3] - box[1]))),
    )
    # The largest of 1/1, 1/2, 1/4, 1/8 (libjpeg-turbo's SIMD scales, Pillow's draft scales;
    # its other M/8 scales decode slower than the full image) keeping `need`.
    scale = max((k for k in (1, 2, 4, 8) if full_w // k >= need[0] and full_h // k >= need[1]),
                default=1)  # fmt: skip
    at_scale = (-(-full_w // scale), -(-full_h // scale))
    decoded = _decode_jpeg(jpeg, at_scale) if by_simplejpeg else None
    if decoded is not None:
        image = Image.fromarray(decoded)
    else:
        image = image or Image.open(io.BytesIO(jpeg))
        image.draft("RGB", need)
        image = image if image.mode == "RGB" else image.convert("RGB")  # convert always copies
    sx, sy = image.size[0] / full_w, image.size[1] / full_h
    small_box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    pixels = np.asarray(image.resize((size, size), Image.BILINEAR, box=small_box))
    return pixels, box_keypoints(keypoints, box, size, size)


@dataclasses.dataclass(frozen=True)
class PreparedRecordTransform(grain.transforms.RandomMap):
    """A prepared entry (`records`) → image uint8 [S, S, 3], keypoints [P, J, 2], visible [P, J]
    (J: the source skeleton's joints, MPII's 16 or COCO's 17), person_mask [P], and one
    description (sampled among `sources`). Cropped on the device (`on_device`): the image is the
    decoded stored one, [H, W, 3], with `crop_box` and `crop_flip` (`device_crop`)."""

    image_size: int
    max_people: int
    crop: str = "squash"
    flip: bool = False
    sources: tuple[str, ...] = ()
    person_margin: float = 0.15
    crop_scale: tuple[float, float] = (0.5, 1.0)
    skeleton: Skeleton = skeletons.MPII
    crop_on: str = "host"
    canvas_side: int = 512

    def __post_init__(self):
        """Every option of `config.data` it reads, whichever crop uses it: ValueError naming the
        key."""
        check_choice("config data.crop", self.crop, CROP_MODES)
        check_choice("config data.crop_on", self.crop_on, device_crop.CROP_ON)
        check_number("config data.canvas_side", self.canvas_side, integer=True, at_least=1)
        check_number("config data.image_size", self.image_size, integer=True, at_least=1)
        check_number("config data.max_people", self.max_people, integer=True, at_least=1)
        if not isinstance(self.flip, bool):
            raise ValueError(f"config data.flip={self.flip!r}: must be True or False")
        check_number("config data.person_margin", self.person_margin, at_least=0)
        scale = self.crop_scale
        if not (
            len(scale) == 2
            and all(isinstance(x, int | float) and 0 < x <= 1 for x in scale)
            and scale[0] <= scale[1]
        ):
            raise ValueError(
                f"config data.crop_scale={scale!r}: expected (low, high) area fractions, "
                "0 < low <= high <= 1"
            )
        if not all(isinstance(s, str) and s for s in self.sources):
            raise ValueError(
                f"config data.description_sources={self.sources!r}: expected names of "
                "description sources, e.g. ('gpt-4',)"
            )

    @classmethod
    def from_config(
        cls, data: ml_collections.ConfigDict, skeleton: Skeleton
    ) -> "PreparedRecordTransform":
        return cls(
            image_size=data.image_size,
            max_people=data.max_people,
            crop=data.crop,
            flip=data.flip,
            sources=tuple(data.description_sources),
            person_margin=data.person_margin,
            crop_scale=tuple(data.crop_scale),
            skeleton=skeleton,
            crop_on=data.crop_on,
            canvas_side=data.canvas_side,
        )

    @property
    def on_device(self) -> bool:
        """Whether the training step takes the crop (`device_crop`): records then carry the
        decoded stored image and `device_crop.CROP_FIELDS`."""
        return device_crop.crops_on_device(self.crop_on, self.crop)

    def random_map(self, entry: bytes, rng: np.random.Generator) -> dict[str, Any]:
        header, image, squashed, person = decode_prepared(entry)
        return self.apply(header, image, rng, squashed, person)

    def stored_crop(self, copy: str, side: int | None, margin: float | None = None) -> bool:
        """Whether a stored copy (`records.COPIES`) of `side` (the person copy's: and `margin`)
        is the crop this transform takes, read as it is: what a record's header says, and what
        `sources` warns of from a preparation's meta.json. None is, where the device crops."""
        if self.on_device:
            return False
        if copy == "squashed":
            return self.crop == "squash" and side == self.image_size
        return self.crop == "person" and side == self.image_size and margin == self.person_margin

    def apply(
        self,
        header: Mapping[str, Any],
        stored_image: Buffer,
        rng: np.random.Generator,
        squashed: Buffer = b"",
        person: Buffer = b"",
    ) -> dict[str, Any]:
        """`stored_image`, `squashed`, `person`: the entry's image and stored copies
        (`records.PreparedEntry`). The `squash`
        crop reads the squashed copy when its side is the image size; the `person` crop reads the
        person copy when its side is the image size, its margin `person_margin`, and its box the
        same people's (the image has at most `max_people`): neither resizes anything."""
        people = min(len(header["keypoints"]), self.max_people)
        joints = self.skeleton.num_joints
        if people and len(header["keypoints"][0]) != joints:
            raise InputDataError(
                f"{header['image']}: {len(header['keypoints'][0])} joints per person, but the "
                f"{self.skeleton.name} skeleton has {joints}: config data.name names the wrong "
                "source for data.prepared"
            )
        keypoints = np.zeros((self.max_people, joints, 2), np.float32)
        visible = np.zeros((self.max_people, joints), bool)
        if people:
            keypoints[:people] = np.asarray(header["keypoints"][:people], np.float32)
            visible[:people] = np.asarray(header["visible"][:people], bool)
        person_mask = np.arange(self.max_people) < people

        def box_fn(w: int, h: int) -> Box:
            if self.crop == "person":
                return person_box(keypoints, visible, w, h, self.person_margin)
            if self.crop == "random_resized":
                return random_resized_box(rng, w, h, self.crop_scale)
            return (0.0, 0.0, float(w), float(h))

        size = self.image_size
        stored = None  # the crop as the preparation stored it, where it did
        if squashed and self.stored_crop("squashed", header["squashed_side"]):
            stored = copy_pixels(header, "squashed", squashed)
        elif (
            person
            and self.stored_crop("person", header["person_side"], header["person_margin"])
            and len(header["keypoints"]) <= self.max_people  # the box is all the people's
        ):
            stored = copy_pixels(header, "person", person)
        crop = {}
        if self.on_device:
            image = self._decode_for_canvas(header, stored_image)
            box = box_fn(image.shape[1], image.shape[0])
            keypoints = box_keypoints(keypoints, box, size, size)
            crop["crop_box"] = np.asarray(box, np.float32)
        elif stored is not None:
            image = stored
            keypoints = box_keypoints(keypoints, box_fn(*header["size"]), size, size)
        elif header.get("image_format", "jpeg") != "jpeg":
            pixels = stored_pixels(header, stored_image)
            image, keypoints = resize_box(pixels, box_fn, size, keypoints)
        else:
            image, keypoints = decode_and_resize(stored_image, box_fn, size, keypoints)
        text = choose_description(header["descriptions"], self.sources, rng)
        flipped = self.flip and rng.random() < 0.5
        if flipped:
            keypoints, visible = flip_keypoints(keypoints, visible, self.image_size, self.skeleton)
            text = swap_left_right(text)
        if self.on_device:
            crop["crop_flip"] = np.bool_(flipped)  # the step mirrors the resampled crop
        elif flipped:
            image = image[:, ::-1]
        return crop | {
            "image": np.ascontiguousarray(image),  # a flipped crop's view is copied here
            "keypoints": keypoints,
            "visible": visible,
            "person_mask": person_mask,
            "description": text,
        }

    def _decode_for_canvas(self, header: Mapping[str, Any], data: Buffer) -> np.ndarray:
        """The stored image, whole, for the device's crop: it must fit the canvas."""
        image = stored_pixels(header, data)
        if max(image.shape[:2]) > self.canvas_side:
            raise InputDataError(
                f"{header['image']}: a stored image of {image.shape[1]}x{image.shape[0]} does not "
                f"fit config data.canvas_side={self.canvas_side}; set it to the preparation's "
                "--max_side"
            )
        return image


def choose_description(
    descriptions: Mapping[str, str], sources: Sequence[str], rng: np.random.Generator
) -> str:
    """One description, uniformly among the selected sources the image has. Images with none of
    them are left out of the stream (`sources.PreparedSource`, from the shards' indexes); another
    caller's image with none takes any of its sources."""
    chosen = [descriptions[s] for s in sources if s in descriptions] or list(descriptions.values())
    if not chosen:
        return ""
    return chosen[int(rng.integers(len(chosen)))] if len(chosen) > 1 else chosen[0]
