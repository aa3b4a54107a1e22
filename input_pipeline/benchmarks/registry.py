"""The held-out evaluation data by name: what the evaluators read (`config.evals.<entry>.datasets`).

`ZERO_SHOT_DATASETS` maps a name to a reader of labelled images with their class names and prompt
templates (the paper's benchmarks in `readers.py`, SynthPose's held-out poses);
`RETRIEVAL_DATASETS` to described images (a prepared validation split, SynthPose's scenes). To
add one: a reader and a
registry line.
"""

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import ml_collections
import numpy as np

from input_pipeline import records
from input_pipeline.benchmarks import readers
from input_pipeline.errors import InputDataError
from synthpose import scenes


@dataclasses.dataclass(frozen=True)
class ZeroShotData:
    """A labelled image set and the class names and prompt templates to classify it with."""

    name: str
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    top_k: tuple[int, ...] = (1,)
    prompt_names: tuple[str, ...] = ()  # what fills the templates, if not class_names
    unreadable: int = 0  # images of the dataset that could not be read (dropped)


@functools.cache
def _synthpose_eval_records(
    num_records: int, seed: int, image_size: int, max_distractors: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The held-out SynthPose split, drawn once: images, the targets' pose classes and the
    scenes' descriptions."""
    source = scenes.SynthPose(
        num_records, seed, image_size, max_people=1, max_distractors=max_distractors
    )
    drawn = [source[i] for i in range(len(source))]
    return (
        np.stack([r["image"] for r in drawn]),
        np.asarray([r["label"] for r in drawn]),
        tuple(r["description"] for r in drawn),
    )


def _synthpose_pose(max_distractors: int, name: str) -> Callable[..., ZeroShotData]:
    """The target's pose class, zero-shot, on the held-out seed (`data.eval_seed`): with 0–3
    distractors, or the same targets alone (`max_distractors=0`)."""

    def load(data: ml_collections.ConfigDict, options: ml_collections.ConfigDict) -> ZeroShotData:
        images, labels, _ = _synthpose_eval_records(
            data.eval_records, data.eval_seed, data.image_size, max_distractors
        )
        return ZeroShotData(
            name=name,
            images=images,
            labels=labels.astype(np.int32),
            class_names=scenes.CLASS_PHRASES,
            templates=(scenes.PROMPT_TEMPLATE,),
            top_k=(1, 3),
        )

    return load


ZeroShotReader = Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict], ZeroShotData]


def _benchmark(name: str) -> ZeroShotReader:
    return lambda data, options: ZeroShotData(**readers.load(name, options, data.image_size))


ZERO_SHOT_DATASETS: dict[str, ZeroShotReader] = {
    "synthpose_pose": _synthpose_pose(scenes.MAX_DISTRACTORS, "synthpose_pose"),
    "synthpose_pose_alone": _synthpose_pose(0, "synthpose_pose_alone"),
    **{name: _benchmark(name) for name in readers.DATASETS},
}


def zero_shot_data(
    name: str, data: ml_collections.ConfigDict, options: ml_collections.ConfigDict
) -> ZeroShotData:
    """Zero-shot dataset `name`: `data` is the run's data section (image size; SynthPose's
    held-out seed), `options` the zero-shot evaluator's (`evals.<name>`: where and what to read)."""
    if name not in ZERO_SHOT_DATASETS:
        raise ValueError(f"zero-shot dataset {name!r}: registered are {sorted(ZERO_SHOT_DATASETS)}")
    return ZERO_SHOT_DATASETS[name](data, options)


@dataclasses.dataclass(frozen=True)
class RetrievalData:
    """Images and the texts written for them: text j describes image `text_image[j]` (COCO's
    five captions each), or image j when `text_image` is None."""

    name: str
    images: np.ndarray  # uint8 [N, H, W, 3], resized to the model's input
    texts: tuple[str, ...]
    text_image: np.ndarray | None = None  # int [T]


def _synthpose_retrieval(
    data: ml_collections.ConfigDict, options: ml_collections.ConfigDict
) -> RetrievalData:
    """The held-out SynthPose scenes (`data.eval_seed`, 0–3 distractors) and their descriptions."""
    del options
    images, _, texts = _synthpose_eval_records(
        data.eval_records, data.eval_seed, data.image_size, scenes.MAX_DISTRACTORS
    )
    return RetrievalData("synthpose", images, texts)


def _image_list(options: ml_collections.ConfigDict) -> set[str] | None:
    """The image file names of `options.image_list` (one per line; the COCO 5k test split's,
    say), or None: every image of the split."""
    path = options.get("image_list", "")
    if not path:
        return None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise InputDataError(f"config evals.<retrieval>.image_list={path}: {error}") from None
    return {Path(line.strip()).name for line in lines if line.strip()}


def _prepared_val_retrieval(
    data: ml_collections.ConfigDict,
    options: ml_collections.ConfigDict,
    *,
    name: str,
    every_caption: bool,
) -> RetrievalData:
    """The prepared validation split (`data.prepared`), each whole image squashed to the model's
    size. `every_caption` (COCO's protocol): every caption of every image is a query, and an
    image retrieves its captions. Else one description per image: from the first of
    `data.description_sources` it has, else from its first source by name (the published gpt-4
    descriptions have no validation split: the authors pair it with gpt-3.5-turbo's).
    Undescribed images are left out; `image_list` keeps the images it names."""
    try:
        source, _ = records.open_split(data.prepared, "val")
    except InputDataError as error:
        raise readers.DatasetNotFoundError(str(error)) from None
    keep = _image_list(options)
    images, texts, owners = [], [], []
    for i in range(len(source)):
        header, jpeg, *_ = records.decode_prepared(source[i])
        if keep is not None and Path(header["image"]).name not in keep:
            continue
        described = header["descriptions"]
        order = [s for s in data.description_sources if s in described] + sorted(described)
        chosen = sorted(described) if every_caption else order[:1]
        image = readers.decode(readers.Sample(bytes(jpeg), 0), data.image_size)
        if chosen and image is not None:
            texts += [described[s] for s in chosen]
            owners += [len(images)] * len(chosen)
            images.append(image)
    if not images:
        raise readers.DatasetNotFoundError(f"{data.prepared}: no described validation image")
    return RetrievalData(name, np.stack(images), tuple(texts), np.asarray(owners, np.int32))


RetrievalReader = Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict], RetrievalData]


RETRIEVAL_DATASETS: dict[str, RetrievalReader] = {
    "synthpose": _synthpose_retrieval,
    "mpii_val": functools.partial(_prepared_val_retrieval, name="mpii_val", every_caption=False),
    "coco_val": functools.partial(_prepared_val_retrieval, name="coco_val", every_caption=True),
}


def retrieval_data(
    name: str, data: ml_collections.ConfigDict, options: ml_collections.ConfigDict
) -> RetrievalData:
    """Held-out described images `name` for image-text retrieval (`data`: the run's data
    section; `options`: the retrieval evaluator's entry)."""
    if name not in RETRIEVAL_DATASETS:
        raise ValueError(f"retrieval dataset {name!r}: registered are {sorted(RETRIEVAL_DATASETS)}")
    return RETRIEVAL_DATASETS[name](data, options)
