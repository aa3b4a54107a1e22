"""The crop taken on the device (`input_pipeline.device_crop`) against Pillow's, the host's.

The reference is Pillow's `Image.resize(size, BILINEAR, box=box)`, which the host path runs; the
device's pixels must be within a level of it, and a host and a device stream drawn with one seed
must agree on every other field.
"""

import io
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from focusclip_jax import config_checks, train
from input_pipeline import device_crop, pipeline, transforms
from input_pipeline.errors import ConfigError, InputDataError
from tests.conftest import MPII_SAMPLE, tiny_config
from tests.test_prepare_and_stream import mpii_config, prepared, raw  # noqa: F401 (fixtures)

SIZE = 48


def _textured(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like uint8 image: smooth gradients with fine noise, so a resample error shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    waves = [np.sin(x / (5 + 7 * c) + y / (9 + 3 * c) + c) for c in range(3)]
    smooth = 127.5 + 100 * np.stack(waves, -1)
    return np.clip(smooth + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def _pillow(image: np.ndarray, box: transforms.Box, flip: bool) -> np.ndarray:
    out = np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BILINEAR, box=box))
    return out[:, ::-1] if flip else out


def _images() -> list[np.ndarray]:
    """Generated landscape and portrait images, and the real MPII sample when it is there."""
    found = [_textured(160, 96, 0), _textured(90, 150, 1), _textured(150, 150, 2)]
    for path in sorted(MPII_SAMPLE.glob("*.jpg"))[:2]:
        with Image.open(path) as image:
            image.thumbnail((160, 160))
            found.append(np.asarray(image.convert("RGB")))
    return found


def test_the_device_resamples_boxes_as_pillow_does() -> None:
    """Boxes at every scale (down 3x to up 2x), whole images and edge-touching boxes, flips,
    on a canvas whose margin is white: the margin never leaks into a crop."""
    rng, side = np.random.default_rng(0), 160
    canvases, boxes, extents, flips, expected = [], [], [], [], []
    for i, image in enumerate(_images() * 4):
        height, width = image.shape[:2]
        canvas = np.full((side, side, 3), 255, np.uint8)
        canvas[:height, :width] = image
        if i % 4 == 0:
            box = (0.0, 0.0, float(width), float(height))
        elif i % 4 == 1:  # touches the bottom-right corner
            box = (width * 0.4, height * 0.3, float(width), float(height))
        else:
            box = transforms.random_resized_box(rng, width, height, (0.08, 1.0))
        flip = i % 3 == 0
        canvases.append(canvas)
        boxes.append(box)
        extents.append((width, height))
        flips.append(flip)
        expected.append(_pillow(image, box, flip))
    got = device_crop.crop_and_resize(
        jnp.asarray(np.stack(canvases)), jnp.asarray(boxes, jnp.float32),
        jnp.asarray(extents), jnp.asarray(flips), SIZE,
    )  # fmt: skip
    assert got.dtype == jnp.uint8 and got.shape == (len(boxes), SIZE, SIZE, 3)
    difference = np.abs(np.asarray(got, np.int32) - np.stack(expected))
    assert difference.mean() < 0.1 and difference.max() <= 2, (difference.mean(), difference.max())


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _header() -> dict:
    keypoints = np.random.default_rng(3).uniform(10, 90, (16, 2))
    return {
        "image": "textured.jpg",
        "keypoints": [keypoints.tolist()],
        "visible": [[1] * 16],
        "descriptions": {"gpt-4": "The left arm is raised.", "llama-2": "Right knee bent."},
    }


@pytest.mark.parametrize("crop", ["random_resized", "person", "squash"])
def test_a_record_cropped_on_the_device_draws_what_the_host_draws(crop: str) -> None:
    """One seed: the same box, keypoints, text and flip; the device's crop is Pillow's resample
    of the whole decoded image within a level (as the host's is where it decodes at full scale;
    where the box allows, the host decodes at a reduced DCT scale: `decode_and_resize`)."""
    jpeg = _jpeg(_textured(120, 100, 4))
    decoded = transforms.decode_rgb(jpeg)
    options = dict(image_size=SIZE, max_people=2, crop=crop, flip=True, sources=("gpt-4",))
    host = transforms.PreparedRecordTransform(**options)
    device = transforms.PreparedRecordTransform(**options, crop_on="device", canvas_side=128)
    assert not host.on_device and device.on_device
    for seed in range(6):
        a = host.apply(_header(), jpeg, np.random.default_rng(seed))
        b = device.apply(_header(), jpeg, np.random.default_rng(seed))
        for key in ("keypoints", "visible", "person_mask", "description"):
            np.testing.assert_array_equal(a[key], b[key])
        assert b["image"].shape == (100, 120, 3)
        canvas = np.zeros((1, 128, 128, 3), np.uint8)
        canvas[0, :100, :120] = b["image"]
        got = device_crop.crop_and_resize(
            canvas, b["crop_box"][None], np.array([[120, 100]]), b["crop_flip"][None], SIZE
        )
        expected = _pillow(decoded, tuple(b["crop_box"].tolist()), bool(b["crop_flip"]))
        difference = np.abs(np.asarray(got[0], np.int32) - expected)
        assert difference.mean() < 0.1 and difference.max() <= 2, (seed, difference.max())


def test_a_stored_image_larger_than_the_canvas_is_named() -> None:
    transform = transforms.PreparedRecordTransform(
        image_size=SIZE, max_people=2, crop="random_resized", crop_on="device", canvas_side=64
    )
    jpeg = _jpeg(_textured(120, 100, 5))
    with pytest.raises(InputDataError, match=r"textured\.jpg: .* 120x100 .*data\.canvas_side=64"):
        transform.apply(_header(), jpeg, np.random.default_rng(0))


def test_auto_crops_random_resized_boxes_on_the_device_only() -> None:
    assert device_crop.crops_on_device("auto", "random_resized")
    assert not device_crop.crops_on_device("auto", "squash")
    assert not device_crop.crops_on_device("host", "random_resized")
    assert device_crop.crops_on_device("device", "person")
    with pytest.raises(ValueError, match=r"config data\.crop_on='gpu'"):
        transforms.PreparedRecordTransform(image_size=SIZE, max_people=2, crop_on="gpu")


def _device_config(prepared_dir: Path, canvas_side: int = 64) -> ml_collections.ConfigDict:
    config = mpii_config(prepared_dir, batch_size=4)
    config.data.update({"crop": "random_resized", "canvas_side": canvas_side, "flip": True})
    return config


def test_a_device_cropped_stream_matches_its_spec_and_the_host_stream(prepared: Path) -> None:  # noqa: F811
    """The batch holds canvases as `batch_spec` says; cropped, it is the host's batch."""
    config = _device_config(prepared)
    tokenizer = pipeline.create_tokenizer(config)
    batch = next(pipeline.train_iterator(config, tokenizer))
    spec = pipeline.batch_spec(config)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: (v.shape, v.dtype) for k, v in spec.items()
    }
    assert batch["image"].shape[1:] == (64, 64, 3)
    width, height = batch["crop_extent"][0]
    assert (width, height) == (64, 48)  # 160x120 fixtures stored at --max_side=64
    assert not batch["image"][:, height:].any()  # the canvas's margin is zero
    config.data.crop_on = "host"
    host = next(pipeline.train_iterator(config, tokenizer))
    assert set(host) == set(pipeline.TRAIN_FIELDS) | {"tokens", "mask"}
    for key in ("keypoints", "visible", "person_mask", "tokens", "mask"):
        np.testing.assert_array_equal(host[key], batch[key])
    cropped = device_crop.crop_batch(batch, config.data.image_size)
    assert set(cropped) == set(host)
    difference = np.abs(np.asarray(cropped["image"], np.int32) - host["image"])
    assert difference.max() <= 2


def test_a_canvas_smaller_than_the_stored_images_is_refused(prepared: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=r"config data\.canvas_side=32: .* --max_side=64"):
        pipeline.check_input_files(_device_config(prepared, canvas_side=32))


def test_the_training_step_crops_a_canvas_batch_to_the_model_size() -> None:
    """The jitted step on a canvas batch, split over the test's 8 devices, is the step on that
    batch cropped first."""
    config = tiny_config()
    mesh = config_checks.validated_mesh(config)
    assert mesh.devices.size == 8
    trainer = train.Trainer(config, mesh, vocab_size=64)
    state = trainer.init_state()
    size, rows = config.model.image_size, config.train.batch_size
    rng = np.random.default_rng(0)
    canvas_batch = {
        "image": rng.integers(0, 256, (rows, 50, 50, 3), np.uint8),
        "crop_box": np.tile(np.array([2.0, 3.0, 45.0, 40.0], np.float32), (rows, 1)),
        "crop_extent": np.tile(np.array([48, 44], np.int32), (rows, 1)),
        "crop_flip": np.arange(rows) % 2 == 0,
        "keypoints": rng.uniform(0, size, (rows, config.data.max_people, 16, 2)).astype(np.float32),
        "visible": np.ones((rows, config.data.max_people, 16), bool),
        "person_mask": np.ones((rows, config.data.max_people), bool),
        "tokens": rng.integers(1, 64, (rows, config.model.text.max_len), np.int32),
        "mask": np.ones((rows, config.model.text.max_len), bool),
    }
    cropped = jax.tree.map(np.asarray, device_crop.crop_batch(canvas_batch, size))
    assert cropped["image"].shape == (rows, size, size, 3)
    _, on_canvas = trainer.step(state, canvas_batch)
    state = trainer.init_state()
    _, precropped = trainer.step(state, cropped)
    assert float(on_canvas["loss"]) == pytest.approx(float(precropped["loss"]), rel=1e-6)
