"""See what training sees: keypoints, the heatmap overlay and the focused image, side by side.

    python -m input_pipeline.visualize --annotations=<mmpose json | .mat | descriptions json> \\
        --images=<dir> --out=<dir> [--num=8] [--descriptions=<dir>] [--heatmap_mode=joints]

One PNG per image; the description (wrapped) below when there is one. The heatmap is the paper's
(`input_pipeline.heatmaps`), so it must cover the annotated people and nobody else.
"""

import logging
import textwrap
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from input_pipeline import cli, heatmaps, mpii

FLAGS = flags.FLAGS

# Limbs drawn between MPII joints; left side blue, right side red, centre green.
_BONES = [(0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
          (10, 11), (11, 12), (12, 7), (13, 7), (13, 14), (14, 15)]  # fmt: skip
_LEFT, _RIGHT = {3, 4, 5, 13, 14, 15}, {0, 1, 2, 10, 11, 12}


def _colour(*joints: int) -> tuple[int, int, int]:
    if all(j in _LEFT for j in joints):
        return (60, 120, 255)
    if all(j in _RIGHT for j in joints):
        return (255, 60, 60)
    return (60, 220, 60)


def render(
    record: mpii.MpiiRecord,
    image: Image.Image,
    size: int,
    alpha: float,
    heatmap_mode: str = "parts",
    joint_sigma: float = 2.0,
) -> Image.Image:
    """[keypoints | heatmap overlay | focused] with the description below."""
    scale = size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    pixels = np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR), np.float32)
    people = record.people or [mpii.Person(np.zeros((16, 2), np.float32), np.zeros(16, bool))]
    kp = np.stack([(p.keypoints + 0.5) * scale - 0.5 for p in people])
    vis = np.stack([p.visible for p in people])
    settings = heatmaps.HeatmapSettings(mode=heatmap_mode, joint_sigma=joint_sigma)
    heat = heatmaps.render_heatmap_np(kp, vis, np.ones(len(people), bool), h, w, settings)

    skeleton = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(skeleton)
    for points, visible in zip(kp, vis, strict=True):
        for a, b in _BONES:
            if visible[a] and visible[b]:
                draw.line([tuple(points[a]), tuple(points[b])], fill=_colour(a, b), width=3)
        for j in np.flatnonzero(visible):
            x, y = points[j]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_colour(j), outline=(0, 0, 0))
    jet = np.stack([np.clip(1.5 - abs(4 * heat - k), 0, 1) for k in (3, 2, 1)], -1) * 255
    overlay = 0.5 * pixels + 0.5 * jet
    focused = pixels * (alpha + (1 - alpha) * heat[..., None])

    text = " / ".join(record.descriptions.values())
    lines = textwrap.wrap(text, width=max(40, 3 * w // 7))[:12] if text else []
    canvas = Image.new("RGB", (3 * w, h + 14 * len(lines) + (8 if lines else 0)), (255, 255, 255))
    for k, panel in enumerate((np.asarray(skeleton), overlay, focused)):
        canvas.paste(Image.fromarray(np.clip(panel, 0, 255).astype(np.uint8)), (k * w, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, h + 4 + 14 * k), line, fill=(0, 0, 0))
    return canvas


def visualize(
    annotations: str,
    images: str,
    out: str,
    num: int = 8,
    descriptions: str | None = None,
    size: int = 384,
    alpha: float = 0.5,
    heatmap_mode: str = "parts",
    joint_sigma: float = 2.0,
) -> list[Path]:
    """Writes up to `num` PNGs (skipping unreadable images, with a warning); returns their paths."""
    records = mpii.read_annotations(annotations)
    if descriptions:
        records = mpii.attach_descriptions(records, mpii.read_descriptions(descriptions))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for record in records[:num]:
        try:
            image = Image.open(Path(images) / record.image)
            image.load()
        except OSError as e:
            logging.warning("skipping %s: %s", record.image, e)
            continue
        path = out_dir / f"{Path(record.image).stem}.png"
        render(record, image, size, alpha, heatmap_mode, joint_sigma).save(path)
        written.append(path)
    return written


def main(argv: list[str]) -> None:
    del argv
    for name in ("annotations", "images", "out"):
        if not FLAGS[name].value:
            raise app.UsageError(f"--{name} is required")
    paths = visualize(
        FLAGS.annotations, FLAGS.images, FLAGS.out, FLAGS.num, FLAGS.descriptions, FLAGS.size,
        FLAGS.alpha, FLAGS.heatmap_mode, FLAGS.joint_sigma,
    )  # fmt: skip
    print(f"wrote {len(paths)} images to {FLAGS.out}")


def _define_flags() -> None:
    """Only when run as a program: importing this module must not claim flag names."""
    flags.DEFINE_string("annotations", None, "mmpose JSON, official .mat, or descriptions JSON.")
    flags.DEFINE_string("images", None, "Images folder.")
    flags.DEFINE_string("out", None, "Output folder for the PNGs.")
    flags.DEFINE_string("descriptions", None, "Optional descriptions to show (file or folder).")
    flags.DEFINE_integer("num", 8, "Images to draw.")
    flags.DEFINE_integer("size", 384, "Longest side of each panel, pixels.")
    flags.DEFINE_float("alpha", 0.5, "Focus: focused = image · (alpha + (1 - alpha) · heatmap).")
    flags.DEFINE_enum("heatmap_mode", "parts", list(heatmaps.HEATMAP_MODES), "Heatmap recipe.")
    flags.DEFINE_float("joint_sigma", 2.0, "σ of each joint's Gaussian in panel pixels (joints).")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
