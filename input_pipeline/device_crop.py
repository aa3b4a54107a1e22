"""The crop and resize of a training image on the accelerator, as Pillow's bilinear does it.

With `config.data.crop_on="device"` the host decodes the stored image and sends it as it is,
top-left on a zeroed `canvas_side`² canvas, with the crop's box, the image's extent on the canvas
and whether to mirror it (`CROP_FIELDS`); the training step resamples the box to the model's
image size here. The host then spends its CPU on the decode alone: Pillow's resample of a
`random_resized` box took as long as the decode (2-core CPU, 2026-12-07, PERFORMANCE.md).

The resample is Pillow's `Image.resize(size, BILINEAR, box=box)`, written as two dense matrix
products per image: a triangle filter widened by the downscale factor (antialiasing), clamped
to the image (not to the box) and normalised, horizontal pass first, each pass rounded to 8 bits
as Pillow's uint8 intermediate is. Pillow's 22-bit fixed-point weights and its round-half-up
leave the pixels within a level of it (tests/test_device_crop.py). Matrix products run at full
float32 precision: the inputs are integers and the TPU's default one-pass bfloat16 would round
the weights.
"""

import jax
import jax.numpy as jnp

CROP_ON = ("auto", "host", "device")
# The fields a batch cropped on the device adds: box (x0, y0, x1, y1) in the stored image's
# pixels, the image's (width, height) on the canvas, and the mirror applied after the resize.
CROP_FIELDS = ("crop_box", "crop_extent", "crop_flip")


def crops_on_device(crop_on: str, crop: str) -> bool:
    """`config.data.crop_on` resolved: "auto" crops `random_resized` boxes on the device (their
    resample cost as much CPU as their decode) and reads `squash` and `person` crops on the host,
    where the preparation may store them ready (`--squash_side`, `--person_side`)."""
    return crop_on == "device" or (crop_on == "auto" and crop == "random_resized")


def _bilinear_weights(
    start: jax.Array, length: jax.Array, extent: jax.Array, in_side: int, out_side: int
) -> jax.Array:
    """[B, out_side, in_side]: each output pixel's weights over one axis of the canvas, for boxes
    [start, start + length) of images `extent` pixels long on that axis."""
    scale = length / out_side
    support = jnp.maximum(scale, 1.0)  # the triangle widens when downscaling
    centers = start[:, None] + (jnp.arange(out_side) + 0.5) * scale[:, None]
    pixels = jnp.arange(in_side)
    distance = jnp.abs(pixels[None, None, :] + 0.5 - centers[:, :, None]) / support[:, None, None]
    weights = jnp.maximum(1.0 - distance, 0.0)
    weights = jnp.where(pixels[None, None, :] < extent[:, None, None], weights, 0.0)
    total = weights.sum(-1, keepdims=True)
    return weights / jnp.where(total > 0, total, 1.0)


def _to_8_bits(pixels: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round(pixels), 0, 255)


def crop_and_resize(
    canvas: jax.Array, box: jax.Array, extent: jax.Array, flip: jax.Array, size: int
) -> jax.Array:
    """uint8 [B, size, size, 3]: each canvas's box (float [B, 4], x0 y0 x1 y1) resampled from its
    image (int [B, 2], width and height, top-left on the canvas), mirrored where `flip` [B]."""
    side = canvas.shape[1]
    box, extent = box.astype(jnp.float32), extent.astype(jnp.float32)
    across = _bilinear_weights(box[:, 0], box[:, 2] - box[:, 0], extent[:, 0], side, size)
    down = _bilinear_weights(box[:, 1], box[:, 3] - box[:, 1], extent[:, 1], side, size)
    exact = jax.lax.Precision.HIGHEST
    rows = jnp.einsum("bxw,bhwc->bhxc", across, canvas.astype(jnp.float32), precision=exact)
    image = jnp.einsum("byh,bhxc->byxc", down, _to_8_bits(rows), precision=exact)
    image = jnp.where(flip[:, None, None, None], image[:, :, ::-1], image)
    return _to_8_bits(image).astype(jnp.uint8)


def crop_batch(batch: dict[str, jax.Array], size: int) -> dict[str, jax.Array]:
    """A batch with `CROP_FIELDS` as the training step reads one: its canvases cropped to
    size² images, the crop fields dropped; any other batch as it is."""
    if "crop_box" not in batch:
        return batch
    image = crop_and_resize(
        batch["image"], batch["crop_box"], batch["crop_extent"], batch["crop_flip"], size
    )
    return {k: v for k, v in batch.items() if k not in CROP_FIELDS} | {"image": image}
