"""The paper's table arithmetic, the Markdown layout, confusion matrices and chance-level scores."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focusclip_jax.evaluators import confusion, table
from focusclip_jax.evaluators.zero_shot import top_k_accuracy


def test_paper_numbers_reproduce_the_papers_means() -> None:
    clip, focusclip = (
        table.task_means(table.paper_scores("clip")),
        table.task_means(table.paper_scores("focusclip")),
    )
    assert round(clip["mean"], 2) == 25.04
    assert round(focusclip["mean"], 2) == 33.65
    assert focusclip["activity"] == pytest.approx(10.47)
    assert focusclip["age"] == pytest.approx((41.80 + 59.44 + 71.41 + 35.13) / 4)
    assert focusclip["emotion"] == pytest.approx((13.73 + 63.35) / 2)


def test_extras_stay_out_of_the_mean() -> None:
    scores = table.paper_scores("focusclip") | {"kinetics400": 99.0, "ferplus": 0.0}
    assert round(table.task_means(scores)["mean"], 2) == 33.65


def test_report_and_markdown_from_evaluator_results() -> None:
    results = {f"{d}/{m}": v / 100 for d, m, v in [("stanford40", "top3", 10.47)]}
    results |= {f"{r.dataset}/{r.metric}": r.paper_focusclip / 100 for r in table.ROWS[1:7]}
    results |= {"kinetics400/top3": 0.2, "fer2013/mean_per_class_top1": 0.5}
    report = table.report(results)
    assert round(report["means"]["ours"]["mean"], 2) == 33.65
    assert report["incomplete"] == {}
    text = table.markdown(report)
    assert "| activity | Kinetics-400 * | top3 | 20.00 |" in text
    assert "| emotion | FER2013 | top3 | 63.35 | 50.00 | 52.56 | 63.35 |" in text
    assert "| **mean (activity, age, emotion)** | | | 33.65 | | 25.04 | 33.65 |" in text
    assert "ferplus" not in text.lower()  # not evaluated, outside the mean: no row


def test_missing_datasets_are_named_and_the_overall_mean_withheld() -> None:
    report = table.report({"fer2013/top3": 0.6})
    assert "mean" not in report["means"]["ours"]
    assert report["incomplete"]["age"] == ["EMOTIC", "LAGENDA (body)", "LAGENDA (face)", "UTKFace"]
    assert "activity mean without Stanford40 (not evaluated)." in table.markdown(report)


def test_confusion_matrix_mean_per_class_and_png(tmp_path: Path) -> None:
    labels = np.array([0, 0, 0, 0, 1, 2])
    predictions = np.array([0, 0, 0, 1, 1, 0])
    matrix = confusion.confusion_matrix(np.eye(3)[predictions], labels, 3)
    assert matrix.tolist() == [[3, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert confusion.mean_per_class_accuracy(matrix) == pytest.approx((0.75 + 1 + 0) / 3)
    confusion.save_png(matrix, ["a", "b", "c"], tmp_path / "m.png", title="letters")
    image = np.asarray(Image.open(tmp_path / "m.png"))
    assert image.shape == (confusion.HEADER + 3 * confusion.CELL, 320)  # wide enough for titles
    cells = image[confusion.HEADER :, confusion.LABEL_WIDTH : confusion.LABEL_WIDTH + 3 * 14]
    inside = lambda i, j: cells[i * 14 + 7, j * 14 + 7]
    assert inside(0, 0) < inside(0, 1) < inside(0, 2) == 255  # row-normalised: 3/4, 1/4, 0
    assert inside(1, 1) == 0 and inside(2, 0) == 0  # all of their rows
    assert image[: confusion.HEADER].min() < 64  # the title and axis captions are drawn


def test_a_random_model_scores_near_chance() -> None:
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(20_000, 10)), rng.integers(0, 10, 20_000)
    assert top_k_accuracy(scores, labels, 1) == pytest.approx(0.1, abs=0.01)
    assert top_k_accuracy(scores, labels, 3) == pytest.approx(0.3, abs=0.015)
