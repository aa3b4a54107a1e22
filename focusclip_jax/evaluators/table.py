"""The paper's results table: per dataset, per task, and the mean over activity, age and emotion.

The paper's arithmetic (Table 2 of arXiv 2403.06904 v3, checked against its numbers in
tests/test_eval_table.py): each task's mean is the plain mean of its datasets' scores, activity =
Stanford40 alone, age = EMOTIC, LAGENDA body, LAGENDA face and UTKFace, emotion = EMOTIC and
FER2013; the headline is the mean of the three task means (CLIP 25.04 → FocusCLIP 33.65).
Kinetics-400, FER+, FairFace and CUB are extras outside the mean.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

TASKS = ("activity", "age", "emotion")


@dataclasses.dataclass(frozen=True)
class Row:
    dataset: str  # registry name in input_pipeline.benchmarks.readers
    title: str
    task: str
    metric: str  # the evaluator's result key suffix, e.g. "top3"
    paper_clip: float | None  # percent
    paper_focusclip: float | None
    in_mean: bool = True


ROWS = (
    Row("stanford40", "Stanford40", "activity", "top3", 6.49, 10.47),
    Row("emotic_age", "EMOTIC", "age", "top1", 37.56, 41.80),
    Row("lagenda_body", "LAGENDA (body)", "age", "top1", 39.48, 59.44),
    Row("lagenda_face", "LAGENDA (face)", "age", "top1", 44.56, 71.41),
    Row("utkface", "UTKFace", "age", "top1", 27.02, 35.13),
    Row("emotic_emotion", "EMOTIC", "emotion", "top3", 10.39, 13.73),
    Row("fer2013", "FER2013", "emotion", "top3", 52.56, 63.35),
    Row("kinetics400", "Kinetics-400", "activity", "top3", 15.00, 15.18, in_mean=False),
    Row("ferplus", "FER+", "emotion", "top3", 47.38, 47.57, in_mean=False),
    Row("fairface_race", "FairFace (race)", "race", "top1", 13.47, 15.78, in_mean=False),
    Row("fairface_age", "FairFace (age)", "age", "top1", None, None, in_mean=False),
    Row("cub200", "CUB-200-2011", "birds", "top1", None, None, in_mean=False),
)


def paper_scores(model: str) -> dict[str, float]:
    """The paper's per-dataset percentages for `model` ("clip" or "focusclip")."""
    scores = {row.dataset: getattr(row, f"paper_{model}") for row in ROWS}
    return {k: v for k, v in scores.items() if v is not None}


def task_means(scores: Mapping[str, float]) -> dict[str, float]:
    """Per-task means over the datasets present and, when all three tasks are, their mean."""
    means = {}
    for task in TASKS:
        values = [scores.get(r.dataset) for r in ROWS if r.in_mean and r.task == task]
        values = [v for v in values if v is not None and not math.isnan(v)]
        if values:
            means[task] = sum(values) / len(values)
    if all(task in means for task in TASKS):
        means["mean"] = sum(means[task] for task in TASKS) / len(TASKS)
    return means


def _missing_in_mean(scores: Mapping[str, float], task: str) -> list[str]:
    return [r.title for r in ROWS if r.in_mean and r.task == task and r.dataset not in scores]


def report(results: Mapping[str, float]) -> dict[str, Any]:
    """Evaluator results (fractions, `<dataset>/<metric>`) → the table's rows and means (%)."""
    ours = {
        r.dataset: 100 * results[f"{r.dataset}/{r.metric}"]
        for r in ROWS
        if f"{r.dataset}/{r.metric}" in results
    }
    rows = [
        dataclasses.asdict(r)
        | {
            "ours": ours.get(r.dataset),
            "mean_per_class_top1": _percent(results.get(f"{r.dataset}/mean_per_class_top1")),
        }
        for r in ROWS
        if r.dataset in ours or r.in_mean
    ]
    return {
        "rows": rows,
        "means": {
            "ours": task_means(ours),
            "paper_clip": task_means(paper_scores("clip")),
            "paper_focusclip": task_means(paper_scores("focusclip")),
        },
        "incomplete": {t: m for t in TASKS if (m := _missing_in_mean(ours, t))},
    }


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown(table: Mapping[str, Any]) -> str:
    """The report as a Markdown table in the paper's layout (percent)."""
    lines = [
        "| task | dataset | metric | ours | mean per-class top-1 | paper CLIP | paper FocusCLIP |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in table["rows"]:
        extra = "" if row["in_mean"] else " *"
        lines.append(
            f"| {row['task']} | {row['title']}{extra} | {row['metric']} | {_cell(row['ours'])} "
            f"| {_cell(row['mean_per_class_top1'])} | {_cell(row['paper_clip'])} "
            f"| {_cell(row['paper_focusclip'])} |"
        )
    means = table["means"]
    for key in (*TASKS, "mean"):
        title = "mean (activity, age, emotion)" if key == "mean" else f"{key} mean"
        lines.append(
            f"| **{title}** | | | {_cell(means['ours'].get(key))} | "
            f"| {_cell(means['paper_clip'][key])} | {_cell(means['paper_focusclip'][key])} |"
        )
    notes = ["\n\n\\* outside the paper's mean."]
    for task, missing in table["incomplete"].items():
        notes.append(f"{task} mean without {', '.join(missing)} (not evaluated).")
    return "\n".join(lines) + "\n".join(notes)


NOT_PERCENT = ("median_rank", "_l2")  # metric names ending so are counts or settings


def results_table(results: Mapping[str, float]) -> str:
    """A Markdown table of evaluation results: accuracies and recalls in percent, ranks and
    chosen penalties as they are."""
    lines = ["| metric | value |", "|---|---:|"]
    for name, value in results.items():
        shown = f"{value:g}" if name.endswith(NOT_PERCENT) else f"{100 * value:.2f}%"
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)
