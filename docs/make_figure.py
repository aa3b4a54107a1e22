"""Draws docs/focus.png: a SynthPose image, its subject's heatmap and the focused image.

    python docs/make_figure.py   (from the repository root)

The heatmap and the focus are the training's own: `input_pipeline.heatmaps` renders the paper's
body-part Gaussians from the annotated subject's keypoints, and the focused image is
`image * (alpha + (1 - alpha) * heatmap)` at the initial alpha of 0.5.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from input_pipeline import heatmaps
from synthpose import scenes

SEED, INDEX = 2, 6  # a held-out scene: a subject among distractors
SIZE, ALPHA, TITLE = 224, 0.5, 18
OUT = Path(__file__).with_name("focus.png")


def main() -> None:
    example = scenes.make_example(INDEX, seed=SEED, image_size=SIZE)
    image = example["image"].astype(np.float32)
    heat = heatmaps.render_heatmap_np(
        example["keypoints"], example["visible"], example["person_mask"], SIZE, SIZE
    )
    focused = image * (ALPHA + (1 - ALPHA) * heat[..., None])
    panels = {
        "image": image,
        "heatmap of the subject": np.repeat(255 * heat[..., None], 3, axis=-1),
        f"focused (alpha {ALPHA})": focused,
    }
    canvas = Image.new("RGB", (3 * SIZE + 2 * 4, SIZE + TITLE), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (title, pixels) in enumerate(panels.items()):
        x = k * (SIZE + 4)
        canvas.paste(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), (x, TITLE))
        draw.text((x + 2, 3), title, fill=(0, 0, 0))
    # 256 colours: the noisy backgrounds would make a full-colour PNG several times larger.
    canvas.quantize(256, dither=Image.Dither.NONE).save(OUT, optimize=True)
    print(f"{OUT}: {OUT.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
