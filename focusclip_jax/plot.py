"""Curves of a training run, drawn from its metrics.jsonl with pillow (no matplotlib).

    python -m focusclip_jax.plot --workdir=<training workdir> [--out=<dir>]

Writes under `--out` (default `<workdir>/plots/`) one PNG per chart, against the step:
losses.png (the total and each pair's), alpha.png, temperature.png, learning_rate.png,
grad_norm.png, images_per_s.png and, per evaluated dataset, eval_<dataset>.png (accuracies and
recalls in percent) and eval_<dataset>_other.png (median ranks and other counts). Each file is
written whole: beside, then renamed over. Training draws them at its end too.
"""

import dataclasses
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence

from absl import app, flags
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from focusclip_jax.evaluators.table import NOT_PERCENT
from input_pipeline import cli
from input_pipeline.errors import InputDataError

METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"
TRAINING_SCALARS = {  # metrics.jsonl key → chart title, each on its own chart after the losses
    "alpha": "alpha (focus: image * (alpha + (1 - alpha) * heatmap))",
    "temperature": "Temperature",
    "learning_rate": "Learning rate",
    "grad_norm": "Gradient norm (before clipping)",
    "images_per_s": "Images per second",
}

Points = list[tuple[int, float]]  # (step, value) by increasing step; non-finite values kept


def _number(value: object) -> float | None:
    """A JSON number, or the string the writer puts for a non-finite one ("nan", "inf")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return None


def read_metrics(path: epath.Path) -> dict[str, Points]:
    """Every scalar's points. A line that is not a JSON object with an integer `step` (such as a
    half-written last line) or a value that is not a number is skipped, and counted in one
    warning; a step written twice (a run resumed from an earlier checkpoint) keeps its last."""
    if not path.exists():
        raise InputDataError(f"{path}: not found (training writes it from its first logged step)")
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as error:
        raise InputDataError(f"{path}: not readable ({error.strerror or error})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputDataError(f"{path}: empty, no metrics to plot")
    values: dict[str, dict[int, float]] = {}
    bad_lines = bad_values = 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            bad_lines += 1
            continue
        for name, value in record.items():
            number = _number(value)
            if number is None:
                bad_values += 1
            elif name != "step":
                values.setdefault(name, {})[step] = number
    if not values:
        raise InputDataError(f"{path}: none of its {len(lines)} lines is a step's metrics")
    if bad_lines or bad_values:
        logging.warning(
            "%s: skipped %d line(s) that are not a JSON object with an integer step and %d "
            "value(s) that are not numbers",
            path,
            bad_lines,
            bad_values,
        )
    return {name: sorted(points.items()) for name, points in values.items()}


@dataclasses.dataclass(frozen=True)
class Chart:
    name: str  # the PNG's file name without .png
    title: str
    y_label: str
    lines: dict[str, Points]  # legend label → points


def charts(metrics: Mapping[str, Points]) -> list[Chart]:
    """The run's charts: the losses, the training scalars, then each evaluated dataset's."""
    found = []
    losses = {
        "total" if name == "loss" else name.removeprefix("loss/"): points
        for name, points in metrics.items()
        if name == "loss" or name.startswith("loss/")
    }
    if losses:
        found.append(Chart("losses", "Loss: total and per pair", "loss", losses))
    for name, title in TRAINING_SCALARS.items():
        if name in metrics:
            found.append(Chart(name, title, name, {name: metrics[name]}))
    by_dataset: dict[str, dict[str, Points]] = {}
    for name, points in metrics.items():
        if name.startswith("eval/"):
            dataset, _, metric = name.removeprefix("eval/").partition("/")
            by_dataset.setdefault(dataset, {})[metric or dataset] = points
    for dataset, results in sorted(by_dataset.items()):
        stem = "eval_" + re.sub(r"[^\w.\-]", "_", dataset)
        scores = {
            metric: [(step, 100 * value) for step, value in points]
            for metric, points in results.items()
            if not metric.endswith(NOT_PERCENT)
        }
        others = {m: p for m, p in results.items() if m.endswith(NOT_PERCENT)}
        if scores:
            found.append(Chart(stem, f"Evaluation: {dataset}", "%", scores))
        if others:
            found.append(Chart(f"{stem}_other", f"Evaluation: {dataset}", "value", others))
    return found


WIDTH, HEIGHT = 900, 450
AXES = (90, 40, 640, 390)  # left, top, right, bottom of the plotting area, in pixels
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
MARKERS_UP_TO = 60  # points per line drawn as dots too (single evaluations stay visible)


def ticks(low: float, high: float, *, integer: bool = False) -> list[float]:
    """About six round values (1, 2 or 5 × 10^k apart) from at or below `low` to at or above
    `high`: the first and last are the axis's ends."""
    if high <= low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / 6
    magnitude = 10 ** math.floor(math.log10(raw))
    spacing = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * 0.999)
    if integer:
        spacing = max(spacing, 1)
    first, last = math.floor(low / spacing), math.ceil(high / spacing)
    return [i * spacing for i in range(first, last + 1)]


def _finite_runs(points: Points) -> list[Points]:
    """The stretches of a line between its non-finite values (drawn as gaps)."""
    runs: list[Points] = [[]]
    for step, value in points:
        if math.isfinite(value):
            runs[-1].append((step, value))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def draw(chart: Chart) -> Image.Image:
    """A line chart with axes, ticks, grid, labels, a title and a legend."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    pen = ImageDraw.Draw(image)
    font, title_font = ImageFont.load_default(size=13), ImageFont.load_default(size=16)
    steps = [step for points in chart.lines.values() for step, _ in points]
    values = [v for points in chart.lines.values() for _, v in points if math.isfinite(v)] or [0.0]
    x_ticks = ticks(min(steps), max(steps), integer=True)
    y_ticks = ticks(min(values), max(values))
    left, top, right, bottom = AXES

    def position(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * (right - left)
        y = bottom - (value - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (bottom - top)
        return x, y

    for tick in x_ticks:
        x, _ = position(tick, y_ticks[0])
        pen.line([(x, top), (x, bottom)], fill="#e6e6e6")
        pen.text((x, bottom + 6), f"{tick:g}", fill="black", font=font, anchor="mt")
    for tick in y_ticks:
        _, y = position(x_ticks[0], tick)
        pen.line([(left, y), (right, y)], fill="#e6e6e6")
        pen.text((left - 6, y), f"{tick:.6g}", fill="black", font=font, anchor="rm")
    pen.rectangle(AXES, outline="black")
    pen.text(((left + right) / 2, 12), chart.title, fill="black", font=title_font, anchor="mt")
    pen.text(((left + right) / 2, bottom + 28), "step", fill="black", font=font, anchor="mt")
    label = Image.new("L", (bottom - top, 18), 0)
    ImageDraw.Draw(label).text(((bottom - top) / 2, 9), chart.y_label, 255, font, anchor="mm")
    image.paste("black", (8, top), label.rotate(90, expand=True))

    for index, (name, points) in enumerate(chart.lines.items()):
        color = COLORS[index % len(COLORS)]
        for run_points in _finite_runs(points):
            pixels = [position(step, value) for step, value in run_points]
            if len(pixels) > 1:
                pen.line(pixels, fill=color, width=2)
            if len(points) <= MARKERS_UP_TO or len(pixels) == 1:
                for x, y in pixels:
                    pen.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=color)
        nonfinite = sum(not math.isfinite(v) for _, v in points)
        legend = f"{name} ({nonfinite} non-finite)" if nonfinite else name
        y = top + 10 + 20 * index
        pen.line([(right + 16, y), (right + 40, y)], fill=color, width=3)
        pen.text((right + 48, y), legend[:34], fill="black", font=font, anchor="lm")
    return image


def write_plots(workdir: str, out: str | None = None) -> list[epath.Path]:
    """Draws the charts of `<workdir>/metrics.jsonl` into `out` (default `<workdir>/plots`)."""
    root = epath.Path(workdir)
    if not root.is_dir():
        raise InputDataError(f"--workdir={workdir}: no such folder")
    metrics_path = root / METRICS_FILE
    found = charts(read_metrics(metrics_path))
    if not found:
        raise InputDataError(
            f"{metrics_path}: none of the metrics drawn here (loss, {', '.join(TRAINING_SCALARS)}, "
            "eval/<dataset>/<metric>)"
        )
    folder = epath.Path(out) if out else root / PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in found:
        png = io.BytesIO()
        draw(chart).save(png, format="PNG")
        cli.write_whole(folder / f"{chart.name}.png", png.getvalue())
        written.append(folder / f"{chart.name}.png")
    return written


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined only when run as a program: main.py imports this module for `write_plots`."""
    flags.DEFINE_string("workdir", None, "A training workdir (it holds metrics.jsonl).")
    flags.DEFINE_string("out", None, "Where the PNGs go (default <workdir>/plots).")
    flags.mark_flags_as_required(["workdir"])
    cli.check_flags(workdir=cli.Path("folder"), out=cli.Path("new_folder"))


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    written = write_plots(FLAGS.workdir, FLAGS.out)
    names = ", ".join(path.name for path in written)
    print(f"wrote {len(written)} plots to {written[0].parent}: {names}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
