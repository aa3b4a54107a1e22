"""MPII readers on fixtures in the real formats (quirks included), transforms, the real sample."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from input_pipeline import heatmaps, skeleton, transforms
from input_pipeline.errors import InputDataError
from input_pipeline.prepare import mpii
from tests.conftest import MPII_SAMPLE

IMAGE_W, IMAGE_H = 96, 72


def joints_1based(seed: int) -> np.ndarray:
    """16 distinct joints (1-based MATLAB pixels) inside a 96×72 image."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(10, IMAGE_W - 10, 16), rng.uniform(8, IMAGE_H - 8, 16)], 1).round(
        1
    )


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (IMAGE_W, IMAGE_H)) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), rng.integers(0, 255, 3), np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _structs(rows: list[dict], fields: list[str]) -> np.ndarray:
    """A MATLAB 1×N struct array (scipy.io.savemat writes a structured object array as one)."""
    array = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            array[0, i][f] = row.get(f, np.zeros((0, 0)))
    return array


def _points(joints: np.ndarray, vis: list, ids: list[int] | None = None) -> np.ndarray:
    ids = list(range(16)) if ids is None else ids
    fields = ["x", "y", "id"] + (["is_visible"] if vis else [])
    rows = [
        {"x": joints[j, 0], "y": joints[j, 1], "id": j} | ({"is_visible": vis[k]} if vis else {})
        for k, j in enumerate(ids)
    ]
    return _structs(rows, fields)


def write_official_mat(path: Path) -> None:
    """RELEASE in the official layout, with the quirks: is_visible missing / numeric / '0','1' /
    empty, a person without annopoints, single structs squeezed, a test image, unlabeled act."""
    rect_fields = ["x1", "y1", "x2", "y2", "scale", "objpos", "annopoints"]
    vis_mixed = ["1", "0", 1, 0, np.zeros((0, 0)), "1", 1, 1, 1, 1, "1", 1, 1, 1, 1, 0]

    def rect(joints, vis, **extra):
        return {
            "x1": 20.0, "y1": 5.0, "x2": 40.0, "y2": 25.0, "scale": 1.5,
            "objpos": {"x": 48.0, "y": 36.0},
            "annopoints": {"point": _points(joints, vis)},
        } | extra  # fmt: skip

    img0 = _structs(
        [
            rect(joints_1based(0), vis_mixed),
            rect(joints_1based(1), [], annopoints=np.zeros((0, 0))),
        ],
        rect_fields,
    )
    empty_pos = {"x": np.zeros((0, 0)), "y": np.zeros((0, 0))}
    img1 = _structs([rect(joints_1based(2), [], objpos=empty_pos)], rect_fields)  # no is_visible
    img2 = _structs([{"scale": 1.0, "objpos": {"x": 5.0, "y": 5.0}}], ["scale", "objpos"])
    # an image whose only person has a single annotated point (a squeezed 1×1 point struct)
    img3 = _structs([rect(joints_1based(3), []) | {"annopoints": {
        "point": _points(joints_1based(3), ["1"], ids=[9])}}], rect_fields)  # fmt: skip
    annolist = _structs(
        [
            {"image": {"name": "a.jpg"}, "annorect": img0, "frame_sec": 1, "vididx": 1},
            {"image": {"name": "b.jpg"}, "annorect": img1, "frame_sec": 2, "vididx": 1},
            {"image": {"name": "test.jpg"}, "annorect": img2, "frame_sec": 3, "vididx": 2},
            {"image": {"name": "c.jpg"}, "annorect": img3, "frame_sec": 4, "vididx": 2},
        ],
        ["image", "annorect", "frame_sec", "vididx"],
    )
    act = _structs(
        [
            {"cat_name": "sports", "act_name": "running", "act_id": 3},
            {"cat_name": np.zeros((0, 0)), "act_name": np.zeros((0, 0)), "act_id": -1},
            {"cat_name": "", "act_name": "", "act_id": -1},
            {"cat_name": "home", "act_name": "cooking", "act_id": 7},
        ],
        ["cat_name", "act_name", "act_id"],
    )
    release = {
        "annolist": annolist,
        "img_train": np.array([[1, 1, 0, 1]]),
        "single_person": np.array([[1, 1, 0, 1]], object),
        "act": act.T,
        "video_list": np.array([["v1", "v2"]], object),
    }
    scipy.io.savemat(path, {"RELEASE": release})


def mmpose_rows(images: list[str], seed: int = 0) -> list[dict]:
    """mmpose MPII records: one per person, 1-based joints, missing = [-1, -1]."""
    rows = []
    for i, name in enumerate(images):
        for p in range(1 + i % 2):
            joints = joints_1based(seed + 10 * i + p)
            vis = np.ones(16)
            joints[15], vis[15] = -1, 0  # a missing joint, as mmpose stores them
            rows.append({
                "image": name, "center": [48.0, 36.0], "scale": 0.5,
                "joints": joints.tolist(), "joints_vis": vis.tolist(),
            })  # fmt: skip
    return rows


def description_item(name: str, text: str) -> dict:
    kpts = joints_1based(99)
    person = {
        "id": 0,
        "center": [48, 36],
        "scale": 0.5,
        "kpts": kpts.tolist(),
        "kpts_vis": [1] * 16,
    }
    return {
        "image": name,
        "activity": "dancing",
        "count": 1,
        "people": [person],
        "description": text,
    }


def write_descriptions(root: Path, images: list[str], sources=("gpt-4", "llama-2")) -> None:
    """One folder per source, one JSON per image (the published layout)."""
    for source in sources:
        (root / source).mkdir(parents=True, exist_ok=True)
        for name in images:
            text = f"{source} says the person in {name} raises the left arm."
            item = description_item(name, text)
            (root / source / f"{Path(name).stem}.json").write_text(json.dumps(item))


def test_official_mat_with_its_quirks(tmp_path: Path) -> None:
    write_official_mat(tmp_path / "release.mat")
    records = {r.image: r for r in mpii.read_official_mat(tmp_path / "release.mat")}
    assert sorted(records) == ["a.jpg", "b.jpg", "c.jpg"]  # the test image is left out
    a = records["a.jpg"]
    assert len(a.people) == 1 and a.activity == "running"  # the person without annopoints dropped
    np.testing.assert_allclose(a.people[0].keypoints, joints_1based(0) - 1, atol=1e-5)
    expected_vis = [1, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # empty is_visible → visible
    np.testing.assert_array_equal(a.people[0].visible, np.array(expected_vis, bool))
    assert a.people[0].head_box == (19.0, 4.0, 39.0, 24.0)
    assert a.people[0].center == (47.0, 35.0) and a.people[0].scale == 1.5
    b = records["b.jpg"]
    assert b.activity == "" and b.people[0].visible.all()  # no is_visible field: all visible
    assert b.people[0].center is None  # empty objpos.x/y
    c = records["c.jpg"].people[0]
    assert c.visible.sum() == 1 and c.visible[9] and records["c.jpg"].activity == "cooking"


def test_mmpose_json_groups_people_per_image(tmp_path: Path) -> None:
    path = tmp_path / "mpii_val.json"
    path.write_text(json.dumps(mmpose_rows(["x.jpg", "y.jpg"])))
    records = mpii.read_mmpose_json(path)
    assert [(r.image, len(r.people), r.split) for r in records] == [
        ("x.jpg", 1, "val"),
        ("y.jpg", 2, "val"),
    ]
    person = records[1].people[1]
    assert not person.visible[15] and person.visible[:15].all()
    np.testing.assert_allclose(person.keypoints[:15], joints_1based(11)[:15] - 1, atol=1e-5)
    assert person.center == (47.0, 35.0)


def test_descriptions_by_source(tmp_path: Path) -> None:
    write_descriptions(tmp_path / "desc", ["x.jpg", "y.jpg"])
    records = mpii.read_descriptions(tmp_path / "desc")
    assert set(records["x.jpg"].descriptions) == {"gpt-4", "llama-2"}
    assert records["x.jpg"].activity == "dancing" and len(records["x.jpg"].people) == 1
    only = mpii.read_descriptions(tmp_path / "desc", sources=["llama-2"])
    assert set(only["y.jpg"].descriptions) == {"llama-2"}
    with pytest.raises(InputDataError, match="no descriptions from the sources"):
        mpii.read_descriptions(tmp_path / "desc", sources=["gpt-5"])
    single = tmp_path / "all.json"  # one file holding a list, no source folders
    single.write_text(json.dumps([description_item("z.jpg", "A person stands.")]))
    assert mpii.read_descriptions(single)["z.jpg"].descriptions == {"default": "A person stands."}
    joined = mpii.attach_descriptions(mpii.read_mmpose_json(_mmpose(tmp_path)), records)
    assert joined[0].descriptions == records["x.jpg"].descriptions


def _mmpose(tmp_path: Path) -> Path:
    path = tmp_path / "mpii_train.json"
    path.write_text(json.dumps(mmpose_rows(["x.jpg"])))
    return path


def test_bad_files_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    bad = tmp_path / "mpii_train.json"
    bad.write_text("{not json")
    with pytest.raises(InputDataError, match=r"mpii_train\.json: not readable JSON"):
        mpii.read_annotations(bad)
    bad.write_text(json.dumps([{"image": "x.jpg", "joints": [[1, 2]] * 3, "joints_vis": [1] * 3}]))
    with pytest.raises(InputDataError, match=r"mpii_train.json \[record 0\]: expected 16"):
        mpii.read_mmpose_json(bad)
    bad.write_text(json.dumps({"image": "x.jpg"}))
    with pytest.raises(InputDataError, match="expected a non-empty JSON list"):
        mpii.read_mmpose_json(bad)
    bad.write_text("[]")  # an empty list was accepted: an empty preparation followed
    with pytest.raises(InputDataError, match=r"mpii_train\.json: expected a non-empty JSON list"):
        mpii.read_annotations(bad)
    bad.write_text(json.dumps([{"image": "x.jpg", "keypoints": [], "vis": []}]))  # wrong shape
    with pytest.raises(InputDataError, match=r"mpii_train\.json: neither mmpose annotations"):
        mpii.read_annotations(bad)
    for stem, split in (("mpii_val", "val"), ("mpii_trainval", "trainval"), ("train", "train")):
        path = tmp_path / f"{stem}.json"
        path.write_text(json.dumps(mmpose_rows(["x.jpg"])))
        assert mpii.read_annotations(path)[0].split == split  # "val" in the name is not val
    mat = tmp_path / "bad.mat"
    mat.write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(InputDataError, match=r"bad\.mat: not a readable MATLAB"):
        mpii.read_official_mat(mat)
    scipy.io.savemat(mat, {"other": np.ones(3)})
    with pytest.raises(InputDataError, match="expected the struct 'RELEASE'"):
        mpii.read_official_mat(mat)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scale", "big", r"\[record 1\]: expected 'center' \[x, y\] and 'scale' as finite numbers, "
         r"got center \[48.0, 36.0\] and scale 'big'$"),
        ("scale", [1, 2], r"\[record 1\]: expected 'center' .* and scale \[1, 2\]$"),
        ("center", [1], r"\[record 1\]: expected 'center' \[x, y\] .*got center \[1\] and"),
        ("center", "middle", r"\[record 1\]: expected 'center' .*got center 'middle'"),
        ("image", 123, r"\[record 1\]: 'image' must be a file name, got 123$"),
        ("image", "", r"\[record 1\]: 'image' must be a file name, got ''$"),
    ],
)  # fmt: skip
def test_mmpose_bad_center_scale_or_image_named(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    rows = mmpose_rows(["x.jpg", "y.jpg"])
    rows[1][field] = value
    path = tmp_path / "mpii_train.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(InputDataError, match=r"mpii_train\.json " + message) as error:
        mpii.read_annotations(path)
    assert "\n" not in str(error.value)


def test_description_bad_image_or_people_named(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([description_item("x.jpg", "A."), description_item(7, "B.")]))
    with pytest.raises(InputDataError, match=r"d\.json \[item 1\]: 'image' must be a file name"):
        mpii.read_descriptions(path)
    item = description_item("y.jpg", "C.") | {"people": ["not a person"]}
    path.write_text(json.dumps([item]))
    with pytest.raises(InputDataError, match=r"\[item 0\]: 'people' must be a list of dicts"):
        mpii.read_descriptions(path)
    item["people"] = [description_item("y.jpg", "C.")["people"][0] | {"scale": None, "center": [1]}]
    path.write_text(json.dumps([item]))
    with pytest.raises(InputDataError, match=r"\[item 0\] people\[0\]: expected 'center'"):
        mpii.read_descriptions(path)


def _dot_image(w: int, h: int, xy: tuple[float, float]) -> bytes:
    """A black JPEG-free PNG-like image with one bright 3×3 dot: where a keypoint must land."""
    pixels = np.zeros((h, w, 3), np.uint8)
    x, y = round(xy[0]), round(xy[1])
    pixels[y - 1 : y + 2, x - 1 : x + 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _header(keypoint: tuple[float, float]) -> dict:
    kp = np.tile(np.array(keypoint, np.float32), (16, 1))
    kp[0] = (30, 40)  # a second joint, so the person box has extent
    kp[5] = (keypoint[0] + 20, keypoint[1] + 10)
    return {
        "keypoints": [kp.tolist()],
        "visible": [[1] * 16],
        "descriptions": {"gpt-4": "The left arm is raised.", "llama-2": "Right knee bent."},
    }


@pytest.mark.parametrize("crop", ["squash", "person", "random_resized"])
def test_keypoints_follow_crops_resizes_and_flips(crop: str) -> None:
    """A bright dot drawn at a joint is where the transformed joint says, flipped or not."""
    point = (101.0, 61.0)
    image = _dot_image(160, 120, point)
    transform = transforms.PreparedRecordTransform(
        image_size=48, max_people=2, crop=crop, flip=True, crop_scale=(0.8, 1.0)
    )
    for seed in range(4):
        out = transform.apply(_header(point), image, np.random.default_rng(seed))
        assert out["image"].shape == (48, 48, 3) and out["person_mask"].tolist() == [True, False]
        x, y = out["keypoints"][0, 7]  # thorax: its own mirror image under the flip
        assert 0 <= x < 47 and 0 <= y < 47, (seed, x, y)
        row, col = np.unravel_index(np.argmax(out["image"][..., 0]), (48, 48))
        assert abs(col - x) <= 1.0 and abs(row - y) <= 1.0, (seed, x, y)


def test_flip_mirrors_pixels_swaps_joints_and_words() -> None:
    point = (101.0, 61.0)
    image, header = _dot_image(160, 120, point), _header(point)
    plain = transforms.PreparedRecordTransform(image_size=48, max_people=2)
    flipping = transforms.PreparedRecordTransform(image_size=48, max_people=2, flip=True)
    flipped_seen = 0
    for seed in range(8):  # squash mode: the rng picks the text, then the flip
        a = plain.apply(header, image, np.random.default_rng(seed))
        b = flipping.apply(header, image, np.random.default_rng(seed))
        if np.array_equal(a["image"], b["image"]):
            continue
        flipped_seen += 1
        np.testing.assert_array_equal(b["image"], a["image"][:, ::-1])
        perm = skeleton.MPII.flip_permutation
        np.testing.assert_allclose(b["keypoints"][0, :, 0], 47 - a["keypoints"][0, perm, 0])
        np.testing.assert_allclose(b["keypoints"][0, :, 1], a["keypoints"][0, perm, 1])
        assert b["description"] == transforms.swap_left_right(a["description"])
    assert 0 < flipped_seen < 8


@pytest.mark.parametrize("copy_format", ["jpeg", "raw"])
def test_squash_decodes_the_stored_square_copy_when_its_side_matches(copy_format: str) -> None:
    """Prepared squashed copy (an encoded image, or raw pixels with `--copy_format=raw`): the
    resize path's keypoints, flip and text, its own pixels as they are; at another image size the
    stored image is resized as before."""
    point = (101.0, 61.0)
    image = _dot_image(160, 120, point)
    square = np.asarray(Image.open(io.BytesIO(image)).resize((48, 48), Image.LANCZOS))
    buffer = io.BytesIO()
    Image.fromarray(square).save(buffer, format="PNG")
    header = _header(point) | {"size": [160, 120], "squashed_side": 48}
    stored = header | {"squashed_format": copy_format}
    copy = square.tobytes() if copy_format == "raw" else buffer.getvalue()
    transform = transforms.PreparedRecordTransform(image_size=48, max_people=2, flip=True)
    flips = 0
    for seed in range(6):
        resized = transform.apply(header, image, np.random.default_rng(seed))
        copied = transform.apply(stored, image, np.random.default_rng(seed), copy)
        for key in ("keypoints", "visible", "person_mask", "description"):
            np.testing.assert_array_equal(copied[key], resized[key], err_msg=key)
        flipped = not np.array_equal(copied["image"], square)
        flips += flipped
        np.testing.assert_array_equal(copied["image"], square[:, ::-1] if flipped else square)
        x, y = copied["keypoints"][0, 7]
        row, col = np.unravel_index(np.argmax(copied["image"][..., 0]), (48, 48))
        assert abs(col - x) <= 1.0 and abs(row - y) <= 1.0, (seed, x, y)
    assert 0 < flips < 6
    other_size = transforms.PreparedRecordTransform(image_size=32, max_people=2)
    out = other_size.apply(stored, image, np.random.default_rng(0), copy)
    assert out["image"].shape == (32, 32, 3)


def test_a_raw_copy_of_the_wrong_length_names_the_image() -> None:
    header = _header((101.0, 61.0)) | {"size": [160, 120], "image": "dot.jpg"}
    header |= {"squashed_side": 48, "squashed_format": "raw"}
    transform = transforms.PreparedRecordTransform(image_size=48, max_people=2)
    with pytest.raises(InputDataError, match=r"dot\.jpg: squashed copy of 6911 bytes"):
        transform.apply(header, b"", np.random.default_rng(0), bytes(48 * 48 * 3 - 1))


@pytest.mark.parametrize("crop_on", ["host", "device"])
def test_a_raw_image_of_the_wrong_length_or_format_names_the_image(crop_on: str) -> None:
    header = _header((101.0, 61.0)) | {"size": [160, 120], "image": "dot.jpg"}
    transform = transforms.PreparedRecordTransform(
        image_size=48, max_people=2, crop="random_resized", crop_on=crop_on
    )
    for form, size, message in (
        ("raw", 160 * 120 * 3 - 1, r"dot\.jpg: image of 57599 bytes in format 'raw'; expected "
         r"raw 160x120x3"),
        ("png", 160 * 120 * 3, r"dot\.jpg: image of 57600 bytes in format 'png'"),
    ):  # fmt: skip
        with pytest.raises(InputDataError, match=message):
            transform.apply(header | {"image_format": form}, bytes(size), np.random.default_rng(0))
    pixels = np.arange(160 * 120 * 3, dtype=np.uint8).reshape(120, 160, 3)
    raw = header | {"image_format": "raw"}
    out = transform.apply(raw, pixels.tobytes(), np.random.default_rng(0))
    if crop_on == "device":
        np.testing.assert_array_equal(out["image"], pixels)


def test_person_crop_reads_the_stored_person_copy_only_where_it_is_that_crop() -> None:
    """A person copy (`--person_side`) is read as it is, with the resize path's keypoints, flip
    and text, when its side, margin and people are the transform's; otherwise the crop is
    resampled from the stored image as without one. The dot lands on its joint either way."""
    point = (101.0, 61.0)
    image = _dot_image(160, 120, point)
    header = _header(point) | {"size": [160, 120], "image": "dot.jpg"}
    on_the_fly = transforms.PreparedRecordTransform(image_size=48, max_people=2, crop="person")
    expected = on_the_fly.apply(header, image, np.random.default_rng(0))
    marker = expected["image"].copy()
    marker[0, 0] = (1, 2, 3)  # tells the stored copy's pixels from a fresh resample
    stored = header | {"person_side": 48, "person_margin": 0.15, "person_format": "raw"}
    for flip in (False, True):
        transform = transforms.PreparedRecordTransform(
            image_size=48, max_people=2, crop="person", flip=flip
        )
        for seed in range(4):
            resized = transform.apply(header, image, np.random.default_rng(seed))
            copied = transform.apply(
                stored, image, np.random.default_rng(seed), person=marker.tobytes()
            )
            for key in ("keypoints", "visible", "person_mask", "description"):
                np.testing.assert_array_equal(copied[key], resized[key], err_msg=key)
            flipped = not np.array_equal(resized["image"], expected["image"])
            np.testing.assert_array_equal(copied["image"], marker[:, ::-1] if flipped else marker)
    others = {
        "another side": (stored | {"person_side": 32}, {}),
        "another margin": (stored, {"person_margin": 0.3}),
        "fewer people kept": (stored | {"keypoints": header["keypoints"] * 3,
                                        "visible": header["visible"] * 3}, {}),
    }  # fmt: skip
    for name, (other_header, options) in others.items():
        transform = transforms.PreparedRecordTransform(
            **{"image_size": 48, "max_people": 2, "crop": "person"} | options
        )
        out = transform.apply(
            other_header, image, np.random.default_rng(0), person=marker.tobytes()
        )
        assert out["image"][0, 0].tolist() != [1, 2, 3], name
        x, y = out["keypoints"][0, 7]
        row, col = np.unravel_index(np.argmax(out["image"][..., 0]), (48, 48))
        assert abs(col - x) <= 1.0 and abs(row - y) <= 1.0, name


def _encoded(pixels: np.ndarray, mode: str = "RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, **{"format": "JPEG"} | options)
    return buffer.getvalue()


def _pillow_rgb(data: bytes) -> np.ndarray:
    """How images were decoded before `decode_rgb` took JPEGs to libjpeg-turbo itself."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _jpeg_variants() -> dict[str, bytes]:
    """Noise over a gradient (every DCT coefficient busy, chroma edges for the upsampling), odd
    sizes, each chroma subsampling, grey, progressive, restart markers; CMYK and PNG take
    Pillow's path."""
    rng = np.random.default_rng(7)
    out = {}
    for w, h in ((224, 224), (97, 61), (512, 288)):
        ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
        pixels = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        for subsampling in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0 (Pillow's default, the prepared one)
            out[f"{w}x{h} sub{subsampling}"] = _encoded(pixels, subsampling=subsampling, quality=90)
        out[f"{w}x{h} grey"] = _encoded(pixels, "L", quality=75)
        out[f"{w}x{h} progressive"] = _encoded(pixels, progressive=True, quality=85)
        out[f"{w}x{h} restarts"] = _encoded(pixels, restart_marker_blocks=3)
        out[f"{w}x{h} cmyk"] = _encoded(pixels, "CMYK")
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        out[f"{w}x{h} png"] = png.getvalue()
    return out


@pytest.mark.parametrize("name", list(_jpeg_variants()))
def test_decode_rgb_gives_pillows_pixels(name: str) -> None:
    data = _jpeg_variants()[name]
    np.testing.assert_array_equal(transforms.decode_rgb(data), _pillow_rgb(data))


@pytest.mark.skipif(not MPII_SAMPLE.is_dir(), reason="no real MPII sample")
def test_decode_rgb_gives_pillows_pixels_on_real_frames() -> None:
    """Real MPII frames, and the copies a preparation stores (resized, squashed to 224²)."""
    for path in sorted(MPII_SAMPLE.glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        stored = image.resize((512, 288), Image.LANCZOS)
        squashed = image.resize((224, 224), Image.LANCZOS)
        for data in (
            path.read_bytes(),
            _encoded(np.asarray(stored)),
            _encoded(np.asarray(squashed)),
        ):
            np.testing.assert_array_equal(transforms.decode_rgb(data), _pillow_rgb(data))


def test_squash_pixels_are_pillows_decode_of_the_stored_jpeg() -> None:
    """The whole transform on a JPEG squashed copy: Pillow's pixels, flipped or not."""
    rng = np.random.default_rng(3)
    square = _encoded(rng.integers(0, 255, (48, 48, 3), np.uint8))
    reference = _pillow_rgb(square)
    header = _header((101.0, 61.0)) | {"size": [160, 120], "squashed_side": 48}
    transform = transforms.PreparedRecordTransform(image_size=48, max_people=2, flip=True)
    flips = 0
    for seed in range(6):
        out = transform.apply(header, b"", np.random.default_rng(seed), square)
        flipped = not np.array_equal(out["image"], reference)
        flips += flipped
        np.testing.assert_array_equal(out["image"], reference[:, ::-1] if flipped else reference)
        assert out["image"].flags.c_contiguous
    assert 0 < flips < 6


def test_a_crop_decodes_at_pillows_draft_scale_and_gives_its_pixels(monkeypatch) -> None:
    """A crop that needs fewer pixels than the image has decodes at the DCT scale Pillow's draft
    mode picks (1/2, 1/4, 1/8), through simplejpeg: the pixels of Pillow's draft decode
    resampled, bit for bit, and the box's keypoints."""
    y, x = np.mgrid[0:288, 0:512].astype(np.float32)
    smooth = np.stack([x / 2, y / 1.2, 128 + 100 * np.sin(x / 40) * np.cos(y / 30)], -1)
    jpeg = _encoded(smooth.clip(0, 255).astype(np.uint8))
    widths = []
    decode = transforms.simplejpeg.decode_jpeg
    monkeypatch.setattr(
        transforms.simplejpeg, "decode_jpeg",
        lambda *a, **k: widths.append((out := decode(*a, **k)).shape[1]) or out,
    )  # fmt: skip
    keypoints = np.array([[[100.0, 50.0], [300.0, 200.0]]], np.float32)
    cases = [((40.0, 20.0, 440.0, 280.0), 224, 512), ((0, 0, 512, 288), 96, 256),
             ((3.5, 7.0, 500.0, 280.5), 64, 128), ((0, 0, 510, 288), 32, 64)]  # fmt: skip
    for box, size, width in cases:
        pixels, moved = transforms.decode_and_resize(jpeg, lambda w, h, b=box: b, size, keypoints)
        assert widths[-1] == width, box
        draft = Image.open(io.BytesIO(jpeg))
        draft.draft("RGB", (int(np.ceil(size * 512 / (box[2] - box[0]))),
                            int(np.ceil(size * 288 / (box[3] - box[1])))))  # fmt: skip
        assert draft.size[0] == width
        small = tuple(v * width / 512 for v in box)
        reference = np.asarray(draft.convert("RGB").resize((size, size), Image.BILINEAR, box=small))
        np.testing.assert_array_equal(pixels, reference)
        np.testing.assert_array_equal(moved, transforms.box_keypoints(keypoints, box, size, size))


def test_box_keypoints_pixel_centres() -> None:
    box = (10.0, 20.0, 30.0, 60.0)  # 20×40 px → 10×10: x halves, y quarters
    out = transforms.box_keypoints(np.array([[10.0 - 0.5, 20.0 - 0.5], [29.5, 59.5]]), box, 10, 10)
    np.testing.assert_allclose(out, [[-0.5, -0.5], [9.5, 9.5]], atol=1e-6)


def test_description_sampled_among_selected_sources() -> None:
    texts = {"gpt-4": "a", "llama-2": "b", "gpt-3.5-turbo": "c"}
    rng = np.random.default_rng(0)
    picks = {transforms.choose_description(texts, ("gpt-4", "llama-2"), rng) for _ in range(40)}
    assert picks == {"a", "b"}
    assert transforms.choose_description(texts, ("gpt-4",), rng) == "a"
    assert transforms.choose_description({"x": "z"}, ("gpt-4",), rng) == "z"  # fallback, no crash
    assert transforms.swap_left_right("Left hand, right leg; leftover.") == (
        "Right hand, left leg; leftover."
    )


@pytest.mark.skipif(not MPII_SAMPLE.is_dir(), reason="no real MPII sample")
def test_real_sample_reader_transforms_heatmaps() -> None:
    records = mpii.read_annotations(MPII_SAMPLE / "test_mpii.json")
    assert len(records) == 5 and all(len(r.people) == 1 for r in records)
    for record in records:
        jpeg = (MPII_SAMPLE / record.image).read_bytes()
        w, h = Image.open(io.BytesIO(jpeg)).size
        person = record.people[0]
        inside = (person.keypoints >= 0) & (person.keypoints < [w, h])
        assert inside[person.visible].all(), record.image
        header = {
            "keypoints": [person.keypoints.tolist()],
            "visible": [person.visible.tolist()],
            "descriptions": {},
        }
        for crop in ("squash", "person"):
            transform = transforms.PreparedRecordTransform(image_size=64, max_people=2, crop=crop)
            out = transform.apply(header, jpeg, np.random.default_rng(0))
            heat = heatmaps.render_heatmap_np(
                out["keypoints"], out["visible"], out["person_mask"], 64, 64
            )
            kp = np.clip(out["keypoints"][0][person.visible].round().astype(int), 0, 63)
            assert heat[kp[:, 1], kp[:, 0]].mean() > 0.3, (record.image, crop)
            assert heat.max() == pytest.approx(1.0, abs=0.05)
            if crop == "person":  # the person fills the crop
                assert np.ptp(out["keypoints"][0][person.visible], axis=0).max() > 40


def test_visualize_writes_panels_and_the_description(tmp_path: Path) -> None:
    from input_pipeline.prepare import visualize

    (tmp_path / "mpii_train.json").write_text(json.dumps(mmpose_rows(["x.jpg", "y.jpg"])))
    write_jpeg(tmp_path / "x.jpg", 0)
    write_descriptions(tmp_path / "desc", ["x.jpg"], sources=("gpt-4",))
    paths = visualize.visualize(
        str(tmp_path / "mpii_train.json"), str(tmp_path), str(tmp_path / "out"),
        descriptions=str(tmp_path / "desc"), size=96,
    )  # fmt: skip
    assert [p.name for p in paths] == ["x.png"]  # y.jpg is missing: skipped with a warning
    image = Image.open(paths[0])
    assert image.width == 3 * 96 and image.height > 72  # three panels, text below


def test_visualize_replaces_its_own_panels_and_nothing_else(tmp_path: Path) -> None:
    """`--out` set to the images folder overwrote the user's PNG images with panels."""
    from input_pipeline.prepare import visualize

    annotations = tmp_path / "mpii_train.json"
    annotations.write_text(json.dumps(mmpose_rows(["x.png", "y.jpg"])))
    Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / "x.png")
    write_jpeg(tmp_path / "y.jpg", 1)
    source = (tmp_path / "x.png").read_bytes()
    run = lambda out: visualize.visualize(str(annotations), str(tmp_path), str(out), size=64)
    with pytest.raises(InputDataError, match=rf"^--out={tmp_path}: is --images={tmp_path}"):
        run(tmp_path)
    out = tmp_path / "out"
    assert [p.name for p in run(out)] == ["x.png", "y.png"]
    drawn = (out / "y.png").read_bytes()
    assert [p.name for p in run(out)] == ["x.png", "y.png"]  # a rerun replaces its panels
    (out / "y.png").write_bytes(source)  # a file of a panel's name it did not draw
    with pytest.raises(InputDataError, match=r"y.png: exists and is not a panel"):
        run(out)
    assert (out / "y.png").read_bytes() == source and (tmp_path / "x.png").read_bytes() == source
    assert drawn != source
