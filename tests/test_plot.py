"""`focusclip_jax.plot`: the curves of a metrics.jsonl written by the training's own writer, and
one clear error for each kind of bad input."""

import logging
import math
from pathlib import Path

import pytest
from PIL import Image

from focusclip_jax import logs, plot
from input_pipeline.errors import InputDataError

STEPS = range(0, 101, 5)
EVAL_STEPS = (50, 100)


def _write_run(workdir: Path) -> None:
    """A run's metrics.jsonl as training writes it: the loss falls linearly from 10 to 0, the
    pair a_b is 2 except non-finite from step 40 to 60, evaluations at steps 50 and 100."""
    writer = logs.MetricWriter(workdir, enabled=True)
    for step in STEPS:
        writer.write(
            step,
            {
                "loss": 10 - step / 10,
                "loss/a_b": math.nan if 40 <= step <= 60 else 2.0,
                "alpha": 0.5 + step / 1000,
                "temperature": 0.07,
                "learning_rate": 1e-3 * step / 100,
                "grad_norm": 1.0,
                "images_per_s": 100.0,
                "nonfinite_count": 0.0,
            },
            echo=False,
        )
        if step in EVAL_STEPS:
            metrics = {"top1": step / 200, "image_to_text_median_rank": 100 / step}
            writer.write(step, {f"eval/birds/{k}": v for k, v in metrics.items()}, echo=False)
    writer.close()


def _colors_at(
    image: Image.Image, step: float, value: float, x_axis: tuple, y_axis: tuple
) -> set[tuple[int, ...]]:
    """The colours within a pixel of where (step, value) lands on axes spanning x_axis, y_axis
    (the ranges worked out by hand from the data for each chart)."""
    left, top, right, bottom = plot.AXES
    x = left + (step - x_axis[0]) / (x_axis[1] - x_axis[0]) * (right - left)
    y = bottom - (value - y_axis[0]) / (y_axis[1] - y_axis[0]) * (bottom - top)
    return {
        image.getpixel((round(x) + dx, round(y) + dy)) for dx in (-1, 0, 1) for dy in (-1, 0, 1)
    }


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def test_curves_are_drawn_where_the_values_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        _write_run(tmp_path)
    assert not caplog.records  # non-finite values are the trainer's to report, once a window
    written = plot.write_plots(str(tmp_path))
    names = sorted(path.name for path in written)
    expected = [
        "alpha", "eval_birds", "eval_birds_other", "grad_norm", "images_per_s", "learning_rate",
        "losses", "temperature",
    ]  # fmt: skip
    assert names == [f"{name}.png" for name in expected]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names  # no temporary left
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (plot.WIDTH, plot.HEIGHT)

    losses = Image.open(tmp_path / "plots" / "losses.png").convert("RGB")
    total, pair = _rgb(plot.COLORS[0]), _rgb(plot.COLORS[1])
    white = (255, 255, 255)
    steps, loss = (0, 100), (0, 10)  # the axes: steps 0..100 and the values' 0..10
    for step in (10, 32, 50, 77):  # on the line from (0, 10) to (100, 0)
        assert total in _colors_at(losses, step, 10 - step / 10, steps, loss), step
    for step, value in ((10, 5), (32, 9), (50, 7.5), (77, 5)):  # off every line and grid line
        assert _colors_at(losses, step, value, steps, loss) == {white}, step
    assert pair in _colors_at(losses, 20, 2, steps, loss) & _colors_at(losses, 80, 2, steps, loss)
    assert pair not in _colors_at(losses, 50, 2, steps, loss)  # non-finite: a gap, not a zero

    scores = Image.open(tmp_path / "plots" / "eval_birds.png").convert("RGB")
    steps, percent = (50, 100), (25, 50)  # top1 25% at step 50, 50% at step 100
    for step in (50, 75, 100):
        assert total in _colors_at(scores, step, step / 2, steps, percent), step
    assert _colors_at(scores, 75, 42.5, steps, percent) == {white}


def test_a_skipped_line_is_counted_and_a_rewritten_step_keeps_its_last_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = ['{"step": 1, "loss": 3.0}', "not json", '{"step": 1, "loss": "nan", "alpha": []}']
    lines += ['["step", 2]', '{"step": 2, "loss": 2', ""]  # the last a half-written line
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING):
        metrics = plot.read_metrics(plot.epath.Path(tmp_path / "metrics.jsonl"))
    assert list(metrics) == ["loss"] and math.isnan(metrics["loss"][0][1])
    assert len(caplog.records) == 1
    assert "skipped 3 line(s)" in caplog.text and "1 value(s) that are not numbers" in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"metrics\.jsonl: not found"),
        ("", r"metrics\.jsonl: empty"),
        ("\n  \n", r"metrics\.jsonl: empty"),
        ("garbage\n{}\n", r"none of its 2 lines is a step's metrics"),
        ('{"step": 3, "first_nonfinite_step": -1}\n', r"none of the metrics drawn here"),
    ],
)
def test_bad_metrics_are_named(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(InputDataError, match=message):
        plot.write_plots(str(tmp_path))
    assert not (tmp_path / "plots").exists()


def test_an_unreadable_file_and_a_missing_workdir_are_named(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(InputDataError, match=r"metrics\.jsonl: not readable"):
        plot.write_plots(str(tmp_path))
    with pytest.raises(InputDataError, match=r"--workdir=.*/nowhere: no such folder"):
        plot.write_plots(str(tmp_path / "nowhere"))


def test_ticks_are_round_and_cover_the_range() -> None:
    assert plot.ticks(1, 8, integer=True) == [0, 2, 4, 6, 8]
    assert plot.ticks(0.0, 0.00099) == pytest.approx([i * 2e-4 for i in range(6)])
    assert plot.ticks(3, 3, integer=True) == [2, 3, 4]  # one point: padded around it
    assert plot.ticks(-7.5, 12) == [-10, -5, 0, 5, 10, 15]


def test_a_failure_to_plot_is_a_warning_at_the_end_of_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from focusclip_jax import main  # its flags: as in `python -m focusclip_jax.main`

    with caplog.at_level(logging.WARNING):
        assert not main._plots(str(tmp_path))  # no metrics.jsonl: nothing to draw
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "Plots not drawn (InputDataError: " in caplog.text
    assert "plots/           not drawn: see the warning above" in main.where_and_next("w", False)
