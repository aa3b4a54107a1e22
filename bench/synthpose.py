"""SynthPose benchmark: CLIP vs FocusCLIP, same data, seed and budget, zero-shot pose accuracy on a
held-out seed with and without distractors, over several seeds.

    python -m bench.synthpose [--seeds=0,1,2] [--workdir=workdirs/synthpose_bench] \\
        [--config=configs/synthpose.py] [--config.train.num_steps=N ...]

`--config` (with any overrides) is the FocusCLIP run; the CLIP run is the same config with
pretrain.py's `clip` variant applied (the (image, text) pair alone). Other comparisons, each a
change to that run (`VARIANTS`): `--variants=nt_xent,siglip` (the loss), `--variants=batch16,
batch64_as_16x4` (4x the steps at batch 16 against batch 64 accumulated from chunks of 16: the
same images seen, and 4x the negatives per step). With variants other than clip and focusclip the
table has a column per variant: zero-shot top-1 with and without distractors and retrieval
recall@1 both ways.

Prints one Markdown table (accuracy per variant and condition, mean ± std over seeds, and the
FocusCLIP − CLIP gap, mean ± std of the per-seed differences) and writes every run's numbers to
`<workdir>/results.json`. The hypothesis, the paper's claim in miniature: the focus branch helps
most when distractors are present.
"""

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

from configs import pretrain
from focusclip_jax import train
from input_pipeline import cli
from synthpose import scenes

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined when run as a command only: importing the module (tests) defines none."""
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (initialisation and data order).")
    flags.DEFINE_list("variants", ["clip", "focusclip"], "Which to train, of VARIANTS.")
    cli.define_config_file(
        "config", cli.project_path("configs/synthpose.py"), "The FocusCLIP run's config."
    )
    flags.DEFINE_string("workdir", "workdirs/synthpose_bench", "Runs go here (replaced).")
    cli.check_flags(
        seeds=cli.Number(integer=True, at_least=0),
        variants=cli.Choices(tuple(VARIANTS)),
        workdir=cli.Path("new_folder"),
    )


def _batch16(config) -> None:
    config.train.num_steps *= config.train.batch_size // 16
    config.train.batch_size = 16


VARIANTS = {
    "focusclip": lambda config: None,
    "clip": lambda config: pretrain.apply_variants(config, "clip"),
    "nt_xent": lambda config: setattr(config.loss, "kind", "nt_xent"),
    "siglip": lambda config: pretrain.apply_variants(config, "siglip"),
    "batch16": _batch16,
    "batch64_as_16x4": lambda config: setattr(
        config.train, "accumulate_steps", config.train.batch_size // 16
    ),
}
CONDITIONS = {"synthpose_pose": "with distractors", "synthpose_pose_alone": "alone"}
COMPARED = {
    "synthpose_pose/top1": "zero-shot top-1, with distractors",
    "synthpose_pose_alone/top1": "zero-shot top-1, alone",
    "synthpose/image_to_text_R@1": "image→text R@1",
    "synthpose/text_to_image_R@1": "text→image R@1",
}
METRICS = ("top1", "top3")


def _mean_std(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def table(runs: dict[str, dict[int, dict[str, float]]], num_classes: int) -> str:
    """Markdown: rows condition × metric; columns CLIP, FocusCLIP, the gap and chance."""
    clip, focus = runs["clip"], runs["focusclip"]
    seeds = sorted(clip)
    lines = [
        "| condition | metric | CLIP | FocusCLIP | FocusCLIP − CLIP | chance (%) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for dataset, condition in CONDITIONS.items():
        for metric in METRICS:
            key = f"{dataset}/{metric}"
            chance = 100 * int(metric[3:]) / num_classes
            gap = [focus[s][key] - clip[s][key] for s in seeds]
            lines.append(
                f"| {condition} | {metric} | {_mean_std([clip[s][key] for s in seeds])} | "
                f"{_mean_std([focus[s][key] for s in seeds])} | {_mean_std(gap)} | {chance:.1f} |"
            )
    return "\n".join(lines)


def variants_table(runs: dict[str, dict[int, dict[str, float]]]) -> str:
    """Markdown: a row per compared metric, a column per variant (mean ± std over seeds)."""
    names = list(runs)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label in COMPARED.items():
        cells = [_mean_std([runs[v][s][key] for s in sorted(runs[v])]) for v in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    root = Path(FLAGS.workdir)
    shutil.rmtree(root, ignore_errors=True)
    seeds = [int(s) for s in FLAGS.seeds]
    runs: dict[str, dict[int, dict[str, float]]] = {v: {} for v in FLAGS.variants}
    seconds: dict[str, list[float]] = {v: [] for v in runs}
    start = time.perf_counter()
    for seed in seeds:
        for variant in runs:
            config = FLAGS.config.copy_and_resolve_references()
            VARIANTS[variant](config)
            config.seed = seed
            run_start = time.perf_counter()
            results = train.train_and_evaluate(config, root / f"{variant}_seed{seed}")
            seconds[variant].append(time.perf_counter() - run_start)
            runs[variant][seed] = {k: float(v) for k, v in results.items()}
            print(
                f"[{time.perf_counter() - start:.0f} s] {variant} seed {seed}: "
                + ", ".join(
                    f"{k} {v:g}" if k.endswith(train.NOT_PERCENT) else f"{k} {100 * v:.1f}%"
                    for k, v in results.items()
                ),
                flush=True,
            )
    steps = config.train.num_steps
    summary = {"num_steps": steps, "seeds": seeds, "runs": runs, "seconds": seconds}
    (root / "results.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\nSynthPose zero-shot pose accuracy (%), {len(seeds)} seeds, {steps} steps per run, "
        f"{config.data.train_records} training images; "
        + ", ".join(f"{v} {np.mean(s):.0f} s/run" for v, s in seconds.items())
    )
    if set(runs) == {"clip", "focusclip"}:
        print(table(runs, num_classes=len(scenes.POSE_CLASSES)))
    else:
        print(variants_table(runs))
    sys.stdout.flush()


if __name__ == "__main__":
    define_flags()
    cli.run(main)
