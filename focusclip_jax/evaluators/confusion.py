"""Confusion matrices: mean per-class accuracy and a PNG drawn with pillow (no matplotlib)."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CELL = 14  # pixels per matrix cell
LABEL_WIDTH = 160  # pixels for the class names left of the rows


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts: row = true class, column = top-1 prediction."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, np.argmax(scores, axis=1)), 1)
    return matrix


def mean_per_class_accuracy(matrix: np.ndarray) -> float:
    """Top-1 accuracy averaged over the classes that have images (unweighted by class size)."""
    totals = matrix.sum(axis=1)
    present = totals > 0
    return float(np.mean(np.diag(matrix)[present] / totals[present]))


HEADER = 44  # pixels above the cells: the title, the axis caption and the column numbers


def save_png(
    matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> None:
    """Row-normalised matrix, dark = frequent, diagonal outlined: rows are the true classes
    (numbered, named down the left), columns the predicted ones (numbered along the top); the
    title and the top-1 accuracy above."""
    num = len(class_names)
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    shade = (255 * (1 - matrix / totals)).astype(np.uint8)
    cells = Image.fromarray(shade).resize((num * CELL, num * CELL), Image.Resampling.NEAREST)
    width = max(LABEL_WIDTH + num * CELL, 320)
    image = Image.new("L", (width, HEADER + num * CELL), 255)
    image.paste(cells, (LABEL_WIDTH, HEADER))
    draw = ImageDraw.Draw(image)
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    draw.text((2, 2), f"{title}  top-1 {accuracy:.1%} of {matrix.sum()}".strip(), fill=0)
    draw.text((2, 16), "true class (rows) / predicted class (columns)", fill=0)
    for i, name in enumerate(class_names):
        y = HEADER + i * CELL
        draw.text((2, y + 1), f"{i:>2} {name}"[:26], fill=0)
        x = LABEL_WIDTH + i * CELL
        if num <= 40 or i % 5 == 0:  # column numbers: every one, or every 5th when crowded
            draw.text((x + 1, 30), str(i), fill=0)
        draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), outline=128)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
