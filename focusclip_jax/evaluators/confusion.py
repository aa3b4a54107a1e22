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


def save_png(matrix: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """Row-normalised matrix, dark = frequent, class names down the left, diagonal outlined."""
    num = len(class_names)
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    shade = (255 * (1 - matrix / totals)).astype(np.uint8)
    cells = Image.fromarray(shade).resize((num * CELL, num * CELL), Image.Resampling.NEAREST)
    image = Image.new("L", (LABEL_WIDTH + num * CELL, num * CELL), 255)
    image.paste(cells, (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(class_names):
        draw.text((2, i * CELL + 1), name[:26], fill=0)
        x, y = LABEL_WIDTH + i * CELL, i * CELL
        draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), outline=128)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
