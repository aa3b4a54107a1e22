"""One-off zero-shot labelling of a few images with a trained checkpoint.

    python -m focusclip_jax.predict --checkpoint=<workdir or step dir> --images=<files or dirs> \\
        --labels="riding a bike,cooking,running" [--template="a photo of a person {}"] \\
        [--top_k=3] [--out=predictions.csv|.json] [--config=configs/pretrain.py[:variant]]

Prints the top-k labels with probabilities per image. The model, tokenizer and loss come from the
checkpoint's workdir (recorded by training); `--config` gives the rest (batch size, mesh), and is
needed to describe the model only for workdirs trained before runs were recorded. Probabilities are
a softmax over the cosine similarities scaled as in training: by the learnt CLIP scale, or by 1 /
the NT-Xent temperature.
"""

import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags

from focusclip_jax import run_record
from focusclip_jax.setup import check_template, load_trained, template_problem
from input_pipeline import cli
from input_pipeline.errors import InputDataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_paths(specs: Sequence[str]) -> list[Path]:
    """Files as given; folders expanded to their images, sorted."""
    paths = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise InputDataError(f"--images: {path} is neither an image file nor a folder")
    if not paths:
        raise InputDataError(f"--images: no image ({', '.join(IMAGE_SUFFIXES)}) in {list(specs)}")
    return paths


def predict(
    config: ml_collections.ConfigDict | None,
    checkpoint: str,
    images: Sequence[Path],
    labels: Sequence[str],
    *,
    template: str = "{}",
    top_k: int = 3,
    batch_size: int = 64,
    overridden: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Per readable image: its path and the top-k (label, probability) pairs. The model comes
    from the checkpoint's workdir when it recorded one (`config` then gives evaluation keys)."""
    check_template(template)
    trained = load_trained(checkpoint, config, overridden, batch_size=batch_size)
    pixels, unreadable = trained.read_images(images)
    for path in unreadable:
        print(f"warning: cannot read {path}", file=sys.stderr)
    if not len(pixels):
        raise InputDataError("--images: none of the images could be read")
    kept = [path for path in images if path not in unreadable]
    probabilities = trained.classify(pixels, labels, template)
    rows = []
    for path, p in zip(kept, probabilities, strict=True):
        order = np.argsort(-p, kind="stable")[:top_k]
        rows.append({"image": str(path), "top": [(labels[i], float(p[i])) for i in order]})
    return rows


CSV_HEADER = ("image", "rank", "label", "probability")


def write(rows: list[dict[str, Any]], out: Path) -> None:
    """JSON (a list of rows) or CSV (image, rank, label, probability), by the file's suffix;
    written aside and renamed, so an earlier file is replaced only by a whole one."""
    if out.suffix == ".json":
        cli.write_whole(out, json.dumps(rows, indent=1))
        return
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(CSV_HEADER)
    for row in rows:
        for rank, (label, prob) in enumerate(row["top"], 1):
            writer.writerow([row["image"], rank, label, f"{prob:.6f}"])
    cli.write_whole(out, text.getvalue())


def is_predictions_file(path: Path) -> bool:
    """Whether `path` is what `write` writes: the CSV's header, or the JSON's list of rows."""
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                return tuple(next(csv.reader(f), ())) == CSV_HEADER
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(rows, list) and all(
        isinstance(row, dict) and set(row) == {"image", "top"} for row in rows
    )


def check_out(out: str, inputs: dict[str, Any]) -> None:
    """Refuses, before any work, an --out that would replace an input or a user's file."""
    cli.refuse_inputs_as_output("--out", out, inputs)
    cli.refuse_foreign(
        "--out", out, is_predictions_file, "a predictions file this command wrote (its CSV "
        "header image,rank,label,probability, or its JSON list of rows)",
    )  # fmt: skip


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined only when run as a program: importing `predict` must not clash with main's flags."""
    cli.define_config_file(
        "config", None, "Only for a workdir without config.json: the config of its model."
    )
    flags.DEFINE_string("checkpoint", None, "Training workdir, its checkpoints/ or a step folder.")
    flags.DEFINE_list("images", None, "Image files and/or folders of images.")
    flags.DEFINE_list("labels", None, "Comma-separated label phrases.")
    flags.DEFINE_string("labels_file", None, "Label phrases, one per line (instead of --labels).")
    flags.DEFINE_string("template", "{}", "Prompt template, e.g. 'a photo of a person {}'.")
    flags.DEFINE_integer("top_k", 3, "How many labels to show per image.")
    flags.DEFINE_integer("batch_size", 64, "Images per batch (a multiple of the devices).")
    flags.DEFINE_string("out", None, "Also write the predictions to this .csv or .json file.")
    flags.mark_flags_as_required(["checkpoint", "images"])
    cli.check_flags(
        checkpoint=cli.Path("folder"),
        images=cli.Path("file_or_folder"),
        labels=cli.Text(lambda label: None if label.strip() else "an empty label"),
        labels_file=cli.Path("file"),
        template=cli.Text(template_problem),
        top_k=cli.Number(integer=True, at_least=1),
        batch_size=cli.Number(integer=True, at_least=1),
        out=cli.Path("new_file"),
    )
    cli.check_flags(out=cli.Text(_out_problem))


def _out_problem(out: str) -> str | None:
    return None if Path(out).suffix in (".csv", ".json") else "expected a .csv or .json file"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.WARNING)  # the predictions are the output
    if FLAGS.labels_file:
        lines = Path(FLAGS.labels_file).read_text().splitlines()
        labels, given = [line.strip() for line in lines if line.strip()], "--labels_file"
    else:
        labels, given = [label.strip() for label in FLAGS.labels or [] if label.strip()], "--labels"
    if not labels:
        raise app.UsageError(f"{given}: no labels; give --labels=a,b,c or --labels_file")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise app.UsageError(f"{given}: {', '.join(map(repr, repeated))} given more than once")
    if FLAGS.out:
        inputs = {"--labels_file": FLAGS.labels_file, "--images": FLAGS.images}
        check_out(FLAGS.out, inputs)
    rows = predict(
        FLAGS.config,
        FLAGS.checkpoint,
        image_paths(FLAGS.images),
        labels,
        template=FLAGS.template,
        top_k=FLAGS.top_k,
        batch_size=FLAGS.batch_size,
        overridden=run_record.command_line_overrides(sys.argv),
    )
    for row in rows:
        print(row["image"] + ": " + ", ".join(f"{label} {p:.1%}" for label, p in row["top"]))
    if FLAGS.out:
        write(rows, Path(FLAGS.out))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
