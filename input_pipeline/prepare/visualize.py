"""See what training sees: keypoints, the heatmap overlay and the focused image, side by side.

    python -m input_pipeline.prepare.visualize \\
        --annotations=<mmpose json | .mat | descriptions json> \\
        --images=<dir> --out=<dir> [--num=8] [--descriptions=<dir>] [--heatmap_mode=joints]

One PNG per image; the description (wrapped) below when there is one. A rerun replaces the panels
it drew before (each carries a PNG text mark) and nothing else: `--out` may not be the images
folder, nor hold a file of a panel's name that this command did not draw. The heatmap is the paper's
(`input_pipeline.heatmaps`), so it must cover the annotated people and nobody else.
"""

import io
import logging
import textwrap
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw, PngImagePlugin

from input_pipeline import cli, heatmaps, records
from input_pipeline.errors import InputDataError
from input_pipeline.prepare import mpii

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


TITLE_HEIGHT = 16  # pixels above the panels for their titles
# A PNG text chunk on every panel: a rerun replaces its own panels and nothing else.
PANEL_MARK = ("Software", "focusclip_jax visualize")


def render(
    record: records.ImageRecord,
    image: Image.Image,
    size: int,
    alpha: float,
    settings: heatmaps.HeatmapSettings = heatmaps.PAPER,
) -> Image.Image:
    """[keypoints | heatmap overlay | focused], each titled, with the description below."""
    scale = size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    pixels = np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR), np.float32)
    joints = settings.skeleton.num_joints
    people = record.people or [
        records.Person(np.zeros((joints, 2), np.float32), np.zeros(joints, bool))
    ]
    kp = np.stack([(p.keypoints + 0.5) * scale - 0.5 for p in people])
    vis = np.stack([p.visible for p in people])
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
    height = TITLE_HEIGHT + h + 14 * len(lines) + (8 if lines else 0)
    canvas = Image.new("RGB", (3 * w, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    titles = (
        f"{Path(record.image).name}: {len(record.people)} people",
        f"heatmap ({settings.mode})",
        f"focused, alpha {alpha:.2f}",
    )
    panels = (np.asarray(skeleton), overlay, focused)
    for k, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        picture = Image.fromarray(np.clip(panel, 0, 255).astype(np.uint8))
        canvas.paste(picture, (k * w, TITLE_HEIGHT))
        draw.text((k * w + 4, 2), title[: max(8, w // 7)], fill=(0, 0, 0))
    for k, line in enumerate(lines):
        draw.text((4, TITLE_HEIGHT + h + 4 + 14 * k), line, fill=(0, 0, 0))
    return canvas


def visualize(
    annotations: str,
    images: str,
    out: str,
    num: int = 8,
    descriptions: str | None = None,
    size: int = 384,
    alpha: float = 0.5,
    settings: heatmaps.HeatmapSettings = heatmaps.PAPER,
) -> list[Path]:
    """Writes up to `num` PNGs (skipping unreadable images, with a warning); returns their paths."""
    if not Path(images).is_dir():
        raise InputDataError(f"--images={images}: not a folder")
    annotated = mpii.read_annotations(annotations)
    if descriptions:
        annotated = mpii.attach_descriptions(annotated, mpii.read_descriptions(descriptions))
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputDataError(f"--out={out}: not a folder")
    cli.refuse_inputs_as_output("--out", out, {"--images": images, "--annotations": annotations})
    chosen = annotated[:num]
    panels = [out_dir / f"{Path(record.image).stem}.png" for record in chosen]
    for panel in panels:  # all checked before the first is written
        cli.refuse_foreign("--out", panel, _is_panel, "a panel this command drew")
    written = []
    for record, path in zip(chosen, panels, strict=True):
        try:
            image = Image.open(Path(images) / record.image)
            image.load()
        except OSError as e:
            logging.warning("skipping %s: %s", record.image, e)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        encoded = io.BytesIO()
        marked = PngImagePlugin.PngInfo()
        marked.add_text(*PANEL_MARK)
        render(record, image, size, alpha, settings).save(encoded, "PNG", pnginfo=marked)
        cli.write_whole(path, encoded.getvalue())
        written.append(path)
    return written


def _is_panel(path: Path) -> bool:
    """Whether `path` is a PNG `visualize` drew (it carries `PANEL_MARK`)."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get(PANEL_MARK[0]) == PANEL_MARK[1]
    except OSError:
        return False


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    settings = heatmaps.HeatmapSettings(mode=FLAGS.heatmap_mode, joint_sigma=FLAGS.joint_sigma)
    paths = visualize(
        FLAGS.annotations, FLAGS.images, FLAGS.out, FLAGS.num, FLAGS.descriptions, FLAGS.size,
        FLAGS.alpha, settings,
    )  # fmt: skip
    print(f"wrote {len(paths)} images to {FLAGS.out}")


def define_flags() -> None:
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
    flags.mark_flags_as_required(["annotations", "images", "out"])
    cli.check_flags(
        annotations=cli.Path("file"),
        images=cli.Path("folder"),
        out=cli.Path("new_folder"),
        descriptions=cli.Path("file_or_folder"),
        num=cli.Number(integer=True, at_least=1),
        size=cli.Number(integer=True, at_least=1),
        alpha=cli.Number(at_least=0, at_most=1),
        joint_sigma=cli.Number(above=0),
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
