"""The paper's zero-shot benchmarks, each read from its own published layout.

Every reader returns the fields of `pipeline.ZeroShotData`: squash-resized uint8 images (crops taken
from the dataset's boxes first), labels, class names in the order of the dataset's own files (never
of a Python set: the original misaligned Stanford40's prompts and labels that way), the prompt
phrase of each class with its article right ("an adult person"), templates and top-k.

Layouts under the evaluator's `root` (`evals.<name>.root`; one folder per dataset; what each
reader expects, as published):
  stanford40/   ImageSplits/actions.txt (header line, then `action<TAB>count`: the class order),
                ImageSplits/<action>_{train,test}.txt (file names), JPEGImages/<file>.
  kinetics400/  {train,validate,test}.csv (`label,youtube_id,time_start,time_end,split[,is_cc]`,
                as in the ActivityNet/DeepMind release; also under annotations/), and frames/
                holding, per clip `<youtube_id>_<start:06d>_<end:06d>`, a folder of extracted frames
                (the middle one is used) or one .jpg, optionally inside a `<label>/` folder. Class
                order: the labels sorted (the standard 0..399 Kinetics index is alphabetical).
  emotic/       Annotations/Annotations.mat (struct arrays `train`, `val`, `test`; entries with
                `filename`, `folder`, `person[]` holding `body_bbox` [x1 y1 x2 y2],
                `annotations_categories.categories` (train) or `combined_categories` (val/test),
                `annotations_age.age` Kid/Teenager/Adult (per annotator: the majority is used);
                github henaxb/emotic README) and the images under emotic/<folder>/ or <folder>/.
                EMOTIC is multi-label: each (person, annotated category) pair is one row, so a
                person counts once per category.
  lagenda/      annotations.csv (`img_name, face_x0..face_y1, person_x0..person_y1, gender, age`;
                -1 marks a missing box; MiVOLO's LAGENDA release) and images/.
  utkface/      the aligned-and-cropped images, `[age]_[gender]_[race]_[date&time].jpg[.chip.jpg]`
                (susanqq.github.io/UTKFace); no official split, every image is used.
  fer2013/      fer2013.csv (`emotion,pixels,Usage`: 48×48 grey pixels as a space-separated string;
                Usage Training / PublicTest / PrivateTest, Kaggle ICML 2013 challenge).
  ferplus/      fer2013new.csv (`Usage,Image name,neutral,...,contempt,unknown,NF` votes of 10
                taggers, row i = fer2013.csv row i; github microsoft/FERPlus) and fer2013.csv
                here or in fer2013/. Label: FERPlus's "majority" mode (single votes dropped as
                outliers, then the top emotion needs more than half the votes; unknown and
                no-face rows dropped).
  fairface/     fairface_label_{train,val}.csv (`file,age,gender,race,service_test`) and the
                train/ val/ image folders (github joojs/fairface); FairFace has no test split.
  cub200/       CUB_200_2011 as unpacked (optionally inside CUB_200_2011/): classes.txt,
                images.txt, image_class_labels.txt, train_test_split.txt, images/NNN.Name/;
                or a TFDS data_dir holding caltech_birds2011/<version>/ built as ArrayRecord
                (`tfds build caltech_birds2011 --file_format=array_record`), read with TFDS's
                data source, without TensorFlow; a TFRecord build is refused with the command
                that converts it.

Each reader takes the zero-shot evaluator's options (`evals.<name>`: `root`, `split`, `splits`,
`templates`, `max_images`, `decode_threads`) with the model's `image_size` added.
Splits: `split` ("test" by default; "val" picks a validation split where one exists),
overridden per dataset family by `splits` (the `paper` variant of
configs/eval_zeroshot.py sets EMOTIC and FER2013 to "train", as the paper evaluated them).
Unreadable images are dropped and counted (`unreadable`); a missing folder or file raises
`DatasetNotFoundError` naming what was expected, so the other datasets still evaluate. A malformed
annotation file (a missing column, a field that does not parse, a label outside the classes) is an
`InputDataError` naming the file, its line and the field: the run stops, in one line.
"""

import contextlib
import csv
import io
import logging
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from input_pipeline.errors import InputDataError, check_choice, check_number, check_text

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


class DatasetNotFoundError(InputDataError, FileNotFoundError):
    """A benchmark's folder or file is not where its published layout puts it."""


@dataclass(frozen=True)
class Sample:
    source: Path | np.ndarray | bytes  # an image file, pixels (FER's csv) or encoded (TFDS)
    label: int
    box: Box | None = None


TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    # "paper": the single prompt of the original code; "ensemble": CLIP-style variations.
    "activity": {
        "paper": ("a photo of a person {}",),
        "ensemble": (
            "a photo of a person {}.",
            "a photo of someone {}.",
            "an image of a person {}.",
            "a cropped photo of a person {}.",
            "a person {}.",
        ),
    },
    "age": {
        "paper": ("a photo of {} person",),
        "ensemble": (
            "a photo of {} person.",
            "a cropped photo of {} person.",
            "a close-up photo of {} person.",
            "an image of {} person.",
        ),
    },
    "fairface_age": {
        "paper": ("a photo of a {} years old person",),
        "ensemble": (
            "a photo of a {} years old person.",
            "a photo of a person aged {} years.",
            "a face of a {} years old person.",
        ),
    },
    "emotion": {
        "paper": ("a photo of a person who is feeling {}",),
        "ensemble": (
            "a photo of a person who is feeling {}.",
            "a photo of someone feeling {}.",
            "an image of a person feeling {}.",
        ),
    },
    "face_emotion": {
        "paper": ("a photo of {} looking face",),
        "ensemble": (
            "a photo of {} looking face.",
            "a close-up photo of {} face.",
            "a face that looks {}.",
        ),
    },
    "race": {
        "paper": ("a photo of {} person",),
        "ensemble": ("a photo of {} person.", "a face of {} person.", "a portrait of {} person."),
    },
    "bird": {
        "paper": ("a photo of a {}, a type of bird.",),
        "ensemble": (
            "a photo of a {}, a type of bird.",
            "a close-up photo of a {}, a type of bird.",
            "a photo of the {}, a bird.",
        ),
    },
}

STANFORD40_URL = "http://vision.stanford.edu/Datasets/40actions.html"
FER2013_ADJECTIVES = ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral")
FERPLUS_ADJECTIVES = (  # the original's words for FER+'s classes
    "neutral",
    "happy",
    "surprised",
    "sad",
    "angry",
    "disgusted",
    "afraid",
    "contemptuous",
)
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FERPLUS_CLASSES = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
EMOTIC_AGES = ("Kid", "Teenager", "Adult")
LAGENDA_AGES = ("kid", "teenager", "adult")  # ≤12, ≤19, older (the original's bins)
UTKFACE_AGES = ("baby", "child", "teenager", "young adult", "adult")  # ≤2, ≤9, ≤19, ≤29, older
FAIRFACE_RACES = (
    "White",
    "Black",
    "Latino_Hispanic",
    "East Asian",
    "Southeast Asian",
    "Indian",
    "Middle Eastern",
)
FAIRFACE_AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")


def with_article(phrase: str) -> str:
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetNotFoundError(f"expected {what} at {path}")
    return path


@dataclass(frozen=True)
class Row:
    """One row of a benchmark's CSV file, its fields read by column: a malformed field is an
    `InputDataError` naming the file, the line and the column (the header was checked to hold
    the columns the reader asked for)."""

    path: Path
    line: int
    fields: dict[str, str]

    def __getitem__(self, column: str) -> str:
        return self.fields[column]

    def error(self, column: str, problem: str, *, quote: bool = True) -> InputDataError:
        """`<file>, line <n>, <column>=<value>: <problem>` (the value left out unless `quote`)."""
        value = f"={self.fields.get(column, '')!r}" if quote else ""
        return InputDataError(f"{self.path}, line {self.line}, {column}{value}: {problem}")

    def number(self, column: str, *, at_least: float | None = None) -> float:
        """A finite number (`at_least` or more)."""
        try:
            value = float(self.fields[column])
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or (at_least is not None and value < at_least):
            bound = "" if at_least is None else f" >= {at_least:g}"
            raise self.error(column, f"expected a number{bound}")
        return value

    def integer(self, column: str, *, at_least: int = 0, below: int | None = None) -> int:
        """An integer in [at_least, below) (a class index: below = the number of classes)."""
        text = self.fields[column]
        if (
            not re.fullmatch(r"[+-]?\d+", text)
            or int(text) < at_least
            or (below is not None and int(text) >= below)
        ):
            bound = f">= {at_least}" if below is None else f"from {at_least} to {below - 1}"
            raise self.error(column, f"expected an integer {bound}")
        return int(text)

    def pixels(self, column: str, side: int = 48) -> np.ndarray:
        """A square grey image written as `side`² space-separated values 0..255 (FER's)."""
        values = self.fields[column].split()
        expected = f"expected {side * side} grey values 0..255 separated by spaces"
        if len(values) != side * side:
            raise self.error(column, f"{expected}, got {len(values)}", quote=False)
        try:
            grey = np.asarray(values, np.int64)
        except (ValueError, OverflowError):
            grey = None
        if grey is None or grey.min() < 0 or grey.max() > 255:
            bad = next(v for v in values if not (v.isascii() and v.isdigit() and int(v) < 256))
            raise self.error(column, f"{expected}, got {bad!r}", quote=False)
        return grey.astype(np.uint8).reshape(side, side)


def _read_csv(path: Path, columns: Sequence[str]) -> list[Row]:
    """A benchmark's CSV file (a header line, then a row per line) as rows whose fields are
    stripped; InputDataError naming the file when it lacks one of `columns` (with the columns it
    has), is not text, or a row has more fields than the header."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [c for c in columns if c not in header]
            if missing:
                raise InputDataError(
                    f"{path}: no column {missing[0]!r} in its header (expected "
                    f"{', '.join(columns)}; it has {', '.join(header) or 'no header'})"
                )
            rows = []
            for fields in reader:
                if None in fields:  # DictReader's key for the fields beyond the header's
                    raise InputDataError(
                        f"{path}, line {reader.line_num}: {len(header) + len(fields[None])} "
                        f"fields, the header has {len(header)}"
                    )
                values = {k.strip(): (v or "").strip() for k, v in fields.items()}
                rows.append(Row(path, reader.line_num, values))
            return rows
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputDataError(f"{path}: not a readable CSV file ({error})") from None


SPLITS = ("train", "val", "test")  # what `split` and `splits` may name
SPLIT_FAMILIES = ("stanford40", "kinetics", "emotic", "fer2013", "ferplus", "fairface", "cub200")


def check_options(options: ml_collections.ConfigDict, where: str) -> None:
    """The reading options of an evaluator's entry (`where`: its config key, `evals.<name>`):
    ValueError naming the first bad one, before anything is read."""
    check_text(f"config {where}.root", options.root)
    check_choice(f"config {where}.split", options.split, SPLITS)
    for family, split in (options.get("splits") or {}).items():
        check_choice(f"config {where}.splits", family, SPLIT_FAMILIES)
        check_choice(f"config {where}.splits.{family}", split, SPLITS)
    check_choice(f"config {where}.templates", options.templates, ("paper", "ensemble"))
    check_number(f"config {where}.max_images", options.max_images, integer=True, at_least=0)
    check_number(f"config {where}.decode_threads", options.decode_threads, integer=True, at_least=1)


def _split(data: ml_collections.ConfigDict, family: str, allowed: dict[str, str]) -> str:
    """The dataset's own name for the configured split ("test" → "PrivateTest" for FER2013)."""
    split = (data.splits or {}).get(family, data.split)
    if split not in allowed:
        raise InputDataError(
            f"{family}: split {split!r} not available; choose from {list(allowed)}"
        )
    return allowed[split]


def decode(sample: Sample, size: int) -> np.ndarray | None:
    """Crop (box clipped to the image) and squash-resize; None when the image can't be read."""
    try:
        if isinstance(sample.source, np.ndarray):
            image = Image.fromarray(sample.source)
        elif isinstance(sample.source, bytes):
            image = Image.open(io.BytesIO(sample.source))
        else:
            image = Image.open(sample.source)
        image = image.convert("RGB")
        if sample.box is not None:
            x1, y1, x2, y2 = sample.box
            x1, y1 = max(0.0, x1), max(0.0, y1)
            x2, y2 = min(float(image.width), x2), min(float(image.height), y2)
            if x2 - x1 < 1 or y2 - y1 < 1:
                return None
            image = image.crop((round(x1), round(y1), round(x2), round(y2)))
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), np.uint8)
    except (OSError, ValueError, SyntaxError):  # PIL's UnidentifiedImageError is an OSError
        return None


def _build(
    name: str,
    data: ml_collections.ConfigDict,
    samples: Sequence[Sample],
    class_names: Sequence[str],
    prompt_names: Sequence[str],
    task: str,
    top_k: tuple[int, ...],
) -> dict[str, Any]:
    """Decode the samples (in threads: PIL releases the GIL), drop and count unreadable ones."""
    if not samples:
        raise DatasetNotFoundError(f"{name}: no samples found for this split")
    max_images = data.max_images
    if max_images and len(samples) > max_images:  # evenly spaced: every part of the list
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, max_images).astype(int)]
    size = data.image_size
    with ThreadPoolExecutor(data.decode_threads) as pool:
        decoded = list(pool.map(lambda s: decode(s, size), samples))
    kept = [i for i, image in enumerate(decoded) if image is not None]
    unreadable = len(samples) - len(kept)
    if unreadable:
        logging.warning("%s: %d of %d images could not be read", name, unreadable, len(samples))
    if not kept:
        raise InputDataError(f"{name}: none of the {len(samples)} images could be read")
    style = data.templates
    return {
        "name": name,
        "images": np.stack([decoded[i] for i in kept]),
        "labels": np.asarray([samples[i].label for i in kept], np.int32),
        "class_names": tuple(class_names),
        "prompt_names": tuple(prompt_names),
        "templates": TEMPLATES[task][style],
        "top_k": top_k,
        "unreadable": unreadable,
    }


def _root(data: ml_collections.ConfigDict, folder: str) -> Path:
    """The dataset's folder under `root`, its name matched in any case (`Stanford40/`)."""
    root = Path(data.root)
    if not (root / folder).exists() and root.is_dir():
        same = sorted(p for p in root.iterdir() if p.name.lower() == folder and p.is_dir())
        if same:
            return same[0]
    return _require(root / folder, f"the {folder} dataset folder")


# ---------------------------------------------------------------- activity


def stanford40(data: ml_collections.ConfigDict) -> dict[str, Any]:
    root = _root(data, "stanford40")
    split = _split(data, "stanford40", {"train": "train", "test": "test"})
    actions_file = _require(
        root / "ImageSplits" / "actions.txt", f"ImageSplits/actions.txt (from {STANFORD40_URL})"
    )
    lines = [line.split() for line in actions_file.read_text().splitlines()[1:] if line.strip()]
    actions = [parts[0] for parts in lines]
    samples = []
    for label, action in enumerate(actions):
        listing = _require(root / "ImageSplits" / f"{action}_{split}.txt", f"the {split} list")
        for file_name in listing.read_text().split():
            samples.append(Sample(root / "JPEGImages" / file_name, label))
    phrases = [a.replace("_", " ").lower() for a in actions]
    return _build("stanford40", data, samples, actions, phrases, "activity", (1, 3))


def _kinetics_frame(frames: Path, label: str, clip: str) -> Path | None:
    for base in (frames / clip, frames / label / clip, frames / label.replace(" ", "_") / clip):
        if base.is_dir():
            images = sorted(p for p in base.iterdir() if p.suffix.lower() in (".jpg", ".png"))
            if images:
                return images[len(images) // 2]
        jpg = base.with_name(base.name + ".jpg")
        if jpg.is_file():
            return jpg
    return None


def kinetics400(data: ml_collections.ConfigDict) -> dict[str, Any]:
    root = _root(data, "kinetics400")
    split = _split(data, "kinetics", {"train": "train", "val": "validate", "test": "test"})
    candidates = [root / f"{split}.csv", root / "annotations" / f"{split}.csv"]
    csv_path = next((p for p in candidates if p.exists()), candidates[0])
    columns = ("label", "youtube_id", "time_start", "time_end")
    rows = _read_csv(_require(csv_path, "the Kinetics-400 label CSV"), columns)
    frames = _require(root / "frames", "frames/ (one folder of extracted frames per clip)")
    labels = sorted({row["label"] for row in rows})
    index = {label: i for i, label in enumerate(labels)}
    samples, missing = [], 0
    for row in rows:
        start, end = row.integer("time_start"), row.integer("time_end")
        clip = f"{row['youtube_id']}_{start:06d}_{end:06d}"
        frame = _kinetics_frame(frames, row["label"], clip)
        if frame is None:
            # Kept as a sample that can't be read: counted in `unreadable` like a corrupt frame.
            missing += 1
            frame = frames / clip
        samples.append(Sample(frame, index[row["label"]]))
    if rows and missing == len(rows):
        raise DatasetNotFoundError(f"kinetics400: no extracted frames under {frames} for any clip")
    if missing:
        logging.warning("kinetics400: %d of %d clips have no extracted frames", missing, len(rows))
    return _build("kinetics400", data, samples, labels, labels, "activity", (1, 3))


# ---------------------------------------------------------------- EMOTIC


def _records(value: Any) -> list[Any]:
    """A scipy struct or struct array (squeezed) as a list of structs."""
    return [] if value is None else list(np.atleast_1d(value))


def _strings(value: Any) -> list[str]:
    return [str(v) for v in np.atleast_1d(value) if str(v)]


def _majority(values: Iterable[str]) -> str | None:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def _emotic_age(person: Any) -> str | None:
    """The annotators' majority age group: per-annotator `annotations_age.age` (henaxb/emotic's
    description; `age_cat` in some copies) or one `age` field."""
    if hasattr(person, "annotations_age"):
        ages = [
            getattr(a, "age", getattr(a, "age_cat", "")) for a in _records(person.annotations_age)
        ]
    else:
        ages = _strings(getattr(person, "age", ""))
    return _majority(str(age) for age in ages if str(age))


def _emotic_people(data: ml_collections.ConfigDict) -> list[tuple[Path, Box, list[str], str]]:
    """(image, body box, categories, age group) per annotated person of the configured split."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    root = _root(data, "emotic")
    split = _split(data, "emotic", {"train": "train", "val": "val", "test": "test"})
    candidates = [root / "Annotations" / "Annotations.mat", root / "Annotations.mat"]
    mat_path = next((p for p in candidates if p.exists()), candidates[0])
    _require(mat_path, "EMOTIC's Annotations.mat")
    try:
        mat = loadmat(mat_path, squeeze_me=True, struct_as_record=False)
    except (MatReadError, ValueError, IndexError, TypeError) as error:
        raise InputDataError(f"{mat_path}: not a MATLAB file scipy reads ({error})") from None
    if split not in mat:
        names = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise InputDataError(f"{mat_path}: no struct {split!r} (it has {names})")
    images_root = root / "emotic" if (root / "emotic").is_dir() else root
    people = []
    for number, entry in enumerate(_records(mat[split])):
        try:
            people.extend(_emotic_entry(entry, images_root))
        except (AttributeError, TypeError, ValueError) as error:
            raise InputDataError(
                f"{mat_path}: {split} entry {number + 1} is not in EMOTIC's layout ({error})"
            ) from None
    return people


def _emotic_entry(entry: Any, images_root: Path) -> list[tuple[Path, Box, list[str], str]]:
    """The people of one image's entry of Annotations.mat."""
    path = images_root / str(entry.folder) / str(entry.filename)
    people = []
    for person in _records(entry.person):
        if hasattr(person, "combined_categories"):
            categories = _strings(person.combined_categories)
        else:
            categories = [
                c for a in _records(person.annotations_categories) for c in _strings(a.categories)
            ]
            categories = list(dict.fromkeys(categories))
        age = _emotic_age(person)
        box = tuple(float(v) for v in np.atleast_1d(person.body_bbox))
        if len(box) != 4:
            raise ValueError(f"body_bbox {list(box)}: expected 4 numbers, x1 y1 x2 y2")
        people.append((path, box, categories, age))
    return people


EMOTIC_CATEGORIES = (  # the order of EMOTIC's papers and devkit
    "Affection",
    "Anger",
    "Annoyance",
    "Anticipation",
    "Aversion",
    "Confidence",
    "Disapproval",
    "Disconnection",
    "Disquietment",
    "Doubt/Confusion",
    "Embarrassment",
    "Engagement",
    "Esteem",
    "Excitement",
    "Fatigue",
    "Fear",
    "Happiness",
    "Pain",
    "Peace",
    "Pleasure",
    "Sadness",
    "Sensitivity",
    "Suffering",
    "Surprise",
    "Sympathy",
    "Yearning",
)


def emotic_emotion(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """26 categories; one row per (person, annotated category)."""
    classes = EMOTIC_CATEGORIES
    index = {c: i for i, c in enumerate(classes)}
    samples = [
        Sample(path, index[c], box)
        for path, box, categories, _ in _emotic_people(data)
        for c in categories
        if c in index
    ]
    phrases = [c.lower().replace("/", " or ") for c in classes]
    return _build("emotic_emotion", data, samples, classes, phrases, "emotion", (1, 3))


def emotic_age(data: ml_collections.ConfigDict) -> dict[str, Any]:
    index = {a: i for i, a in enumerate(EMOTIC_AGES)}
    samples = [
        Sample(path, index[age], box) for path, box, _, age in _emotic_people(data) if age in index
    ]
    phrases = [with_article(a.lower()) for a in EMOTIC_AGES]
    return _build("emotic_age", data, samples, EMOTIC_AGES, phrases, "age", (1,))


# ---------------------------------------------------------------- age


def _lagenda(data: ml_collections.ConfigDict, crop: str) -> dict[str, Any]:
    root = _root(data, "lagenda")
    box_columns = [f"{crop}_{k}" for k in ("x0", "y0", "x1", "y1")]
    rows = _read_csv(
        _require(root / "annotations.csv", "LAGENDA's annotations.csv"),
        ("img_name", *box_columns, "age"),
    )
    samples = []
    for row in rows:
        box = tuple(row.number(column) for column in box_columns)
        age = row.number("age") if row["age"] else -1.0
        if age < 0 or min(box) < 0:
            continue  # no age, or no box of this kind (-1)
        label = 0 if age <= 12 else 1 if age <= 19 else 2
        path = root / row["img_name"]
        if not path.exists():
            path = root / "images" / Path(row["img_name"]).name
        samples.append(Sample(path, label, box))
    phrases = [with_article(a) for a in LAGENDA_AGES]
    name = "lagenda_body" if crop == "person" else "lagenda_face"
    return _build(name, data, samples, LAGENDA_AGES, phrases, "age", (1,))


def lagenda_body(data: ml_collections.ConfigDict) -> dict[str, Any]:
    return _lagenda(data, "person")


def lagenda_face(data: ml_collections.ConfigDict) -> dict[str, Any]:
    return _lagenda(data, "face")


UTKFACE_NAME = re.compile(r"^(\d+)_(\d)_(\d)_")


def utkface(data: ml_collections.ConfigDict) -> dict[str, Any]:
    root = _root(data, "utkface")
    samples, unnamed = [], 0
    for path in sorted(root.rglob("*.jpg")):
        match = UTKFACE_NAME.match(path.name)
        if match is None:
            unnamed += 1  # a few published names lack a field
            continue
        age = int(match.group(1))
        label = 0 if age <= 2 else 1 if age <= 9 else 2 if age <= 19 else 3 if age <= 29 else 4
        samples.append(Sample(path, label))
    if unnamed:
        logging.warning("utkface: %d files without an [age]_[gender]_[race]_ name skipped", unnamed)
    phrases = [with_article(a) for a in UTKFACE_AGES]
    return _build("utkface", data, samples, UTKFACE_AGES, phrases, "age", (1,))


# ---------------------------------------------------------------- faces: emotion, race


FER_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


def fer2013(data: ml_collections.ConfigDict) -> dict[str, Any]:
    root = _root(data, "fer2013")
    usage = _split(data, "fer2013", FER_USAGE)
    rows = _read_csv(
        _require(root / "fer2013.csv", "fer2013.csv (emotion,pixels,Usage)"),
        ("emotion", "pixels", "Usage"),
    )
    samples = [
        Sample(r.pixels("pixels"), r.integer("emotion", below=len(FER2013_CLASSES)))
        for r in rows
        if r["Usage"] == usage
    ]
    phrases = [with_article(a) for a in FER2013_ADJECTIVES]
    return _build("fer2013", data, samples, FER2013_CLASSES, phrases, "face_emotion", (1, 3))


def ferplus_label(votes: Sequence[float]) -> int | None:
    """FERPlus "majority" label from the 10 vote columns (8 emotions, unknown, NF)."""
    votes = np.asarray(votes, np.float64)
    votes = np.where(votes <= 1, 0.0, votes)  # single votes are outliers
    if votes.sum() == 0:
        return None
    top = int(np.argmax(votes))
    if votes[top] <= 0.5 * votes.sum() or top >= len(FERPLUS_CLASSES):
        return None
    return top


def ferplus(data: ml_collections.ConfigDict) -> dict[str, Any]:
    root = _root(data, "ferplus")
    usage = _split(data, "ferplus", FER_USAGE)
    columns = [*FERPLUS_CLASSES, "unknown", "NF"]
    new = _read_csv(
        _require(root / "fer2013new.csv", "FERPlus's fer2013new.csv"), ["Usage", *columns]
    )
    fer_csv = root / "fer2013.csv"
    if not fer_csv.exists():
        with contextlib.suppress(DatasetNotFoundError):  # else named below, beside fer2013new
            fer_csv = _root(data, "fer2013") / "fer2013.csv"
    old = _read_csv(_require(fer_csv, "fer2013.csv (FER+ relabels its images)"), ["pixels"])
    if len(old) != len(new):
        raise InputDataError(
            f"ferplus: {len(new)} rows in {new[0].path if new else 'fer2013new.csv'}, "
            f"{len(old)} in {fer_csv}"
        )
    samples = []
    for old_row, row in zip(old, new, strict=True):
        if row["Usage"] != usage:
            continue
        label = ferplus_label([row.number(c, at_least=0) if row[c] else 0.0 for c in columns])
        if label is not None:
            samples.append(Sample(old_row.pixels("pixels"), label))
    phrases = [with_article(a) for a in FERPLUS_ADJECTIVES]
    return _build("ferplus", data, samples, FERPLUS_CLASSES, phrases, "face_emotion", (1, 3))


def _fairface(data: ml_collections.ConfigDict, column: str, classes: Sequence[str]) -> list[Sample]:
    """A sample per row of the split's label CSV, labelled by `column`, one of `classes`."""
    root = _root(data, "fairface")
    split = _split(data, "fairface", {"train": "train", "val": "val", "test": "val"})
    path = _require(root / f"fairface_label_{split}.csv", "FairFace's label CSV")
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for row in _read_csv(path, ("file", column)):
        if row[column] not in index:
            raise row.error(column, f"expected one of {', '.join(classes)}")
        samples.append(Sample(root / row["file"], index[row[column]]))
    return samples


def fairface_race(data: ml_collections.ConfigDict) -> dict[str, Any]:
    samples = _fairface(data, "race", FAIRFACE_RACES)
    phrases = [with_article(c.replace("_", " or ").lower()) for c in FAIRFACE_RACES]
    return _build("fairface_race", data, samples, FAIRFACE_RACES, phrases, "race", (1,))


def fairface_age(data: ml_collections.ConfigDict) -> dict[str, Any]:
    samples = _fairface(data, "age", FAIRFACE_AGES)
    return _build("fairface_age", data, samples, FAIRFACE_AGES, FAIRFACE_AGES, "fairface_age", (1,))


# ---------------------------------------------------------------- birds


def _table(path: Path) -> dict[int, str]:
    """CUB's `<id> <value>` files; InputDataError naming the file and line of a line that is not
    an integer id and a value."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InputDataError(f"{path}: not a text file ({error})") from None
    table = {}
    for number, line in enumerate(lines, 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) != 2 or not re.fullmatch(r"\d+", parts[0]):
            raise InputDataError(f"{path}, line {number}: expected '<id> <value>', got {line!r}")
        table[int(parts[0])] = parts[1].strip()
    return table


def _entry(
    table: dict[int, str], path: Path, image_id: int, allowed: Collection[str], expected: str
) -> str:
    """CUB's value for `image_id` in `table` (read from `path`), one of `allowed`."""
    value = table.get(image_id)
    if value not in allowed:
        found = "no line" if value is None else f"{value!r}"
        raise InputDataError(f"{path}: image {image_id}: {found}, expected {expected}")
    return value


def _cub200_tfds(version_dir: Path, split: str, data: ml_collections.ConfigDict) -> dict[str, Any]:
    """CUB-200-2011 from a TFDS `caltech_birds2011` build, through TFDS's data source (ArrayRecord
    builds; TFRecord ones need TensorFlow to read), names as in the raw classes.txt.

    TFDS's labels are the folder number - 1 (the raw class order); the class names come from the
    folders in `image/filename` (`.../images/001.Black_footed_Albatross/...`). Images and masks
    stay encoded (decoded and resized here like every benchmark's).
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(version_dir))
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise InputDataError(
            f"cub200: {version_dir} is a {builder.info.file_format.value} build, which TFDS reads "
            "only with TensorFlow; convert it once where TensorFlow is installed: tfds "
            f"convert_format --dataset_version_dir={version_dir} --out_file_format=array_record "
            "(or point evals.cub200.root at the raw CUB_200_2011 folder)"
        )
    if split not in builder.info.splits:
        raise DatasetNotFoundError(f"cub200: no {split!r} split in {version_dir}")
    skip = tfds.decode.SkipDecoding()
    source = builder.as_data_source(
        split=split, decoders={"image": skip, "segmentation_mask": skip}
    )
    samples, names = [], {}
    for i in range(len(source)):
        record = source[i]
        label = int(record["label"])
        names[label] = Path(record["image/filename"].decode()).parent.name.split(".", 1)[-1]
        samples.append(Sample(record["image"], label))
    if sorted(names) != list(range(len(names))):
        raise InputDataError(f"cub200: the {split} split of {version_dir} lacks some classes")
    class_names = [names[i] for i in range(len(names))]
    phrases = [n.replace("_", " ") for n in class_names]
    return _build("cub200", data, samples, class_names, phrases, "bird", (1,))


def cub200(data: ml_collections.ConfigDict) -> dict[str, Any]:
    root = _root(data, "cub200")
    tfds_builds = [p.parent for p in root.glob("caltech_birds2011/*/dataset_info.json")]
    if tfds_builds:  # the newest version folder
        from tensorflow_datasets.core.utils.version import Version

        newest = max(
            (p for p in tfds_builds if Version.is_valid(p.name)),
            key=lambda p: Version(p.name),
            default=tfds_builds[0],
        )
        split = _split(data, "cub200", {"train": "train", "test": "test"})
        return _cub200_tfds(newest, split, data)
    if (root / "CUB_200_2011").is_dir():
        root = root / "CUB_200_2011"
    split = _split(data, "cub200", {"train": "1", "test": "0"})
    files = {
        n: _require(root / n, f"CUB-200-2011's {n}")
        for n in ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt")
    }
    classes = _table(files["classes.txt"])
    class_ids = sorted(classes)
    names = [classes[i].split(".", 1)[-1] for i in class_ids]  # 001.Black_footed_Albatross
    index = {str(class_id): i for i, class_id in enumerate(class_ids)}
    paths, labels = _table(files["images.txt"]), _table(files["image_class_labels.txt"])
    labels = {k: str(int(v)) if re.fullmatch(r"\d+", v) else v for k, v in labels.items()}
    is_train = _table(files["train_test_split.txt"])
    labels_file, split_file = files["image_class_labels.txt"], files["train_test_split.txt"]
    samples = [
        Sample(
            root / "images" / paths[i],
            index[_entry(labels, labels_file, i, index, "a class id of classes.txt")],
        )
        for i in sorted(paths)
        if _entry(is_train, split_file, i, ("0", "1"), "1 (train) or 0 (test)") == split
    ]
    phrases = [n.replace("_", " ") for n in names]
    return _build("cub200", data, samples, names, phrases, "bird", (1,))


DATASETS: dict[str, Callable[[ml_collections.ConfigDict], dict[str, Any]]] = {
    "stanford40": stanford40,
    "kinetics400": kinetics400,
    "emotic_age": emotic_age,
    "lagenda_body": lagenda_body,
    "lagenda_face": lagenda_face,
    "utkface": utkface,
    "fairface_age": fairface_age,
    "emotic_emotion": emotic_emotion,
    "fer2013": fer2013,
    "ferplus": ferplus,
    "fairface_race": fairface_race,
    "cub200": cub200,
}
PAPER_BENCHMARKS = tuple(name for name in DATASETS if name not in ("fairface_age", "cub200"))


def load(name: str, options: ml_collections.ConfigDict, image_size: int) -> dict[str, Any]:
    """The fields of `pipeline.ZeroShotData` for benchmark `name`, read as the zero-shot
    evaluator's `options` say, at the model's `image_size`."""
    return DATASETS[name](
        ml_collections.ConfigDict({**options.to_dict(), "image_size": image_size})
    )
