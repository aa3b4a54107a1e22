"""grain: source → shuffle → repeat → per-process shard → tokenize → batch → global arrays.

Records are dicts of numpy arrays plus a `description` string; batches hold uint8 images, keypoints,
visibility, person masks and tokens. Heatmaps are *not* rendered here: the training step renders
them on the device from the keypoints (input_pipeline.heatmaps holds both renderers).
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from input_pipeline import eval_datasets, mpii, sources, tokenizers
from input_pipeline.errors import InputDataError, RequiredFile, require_files
from input_pipeline.tokenizers import Tokenizer
from synthpose import scenes

TRAIN_FIELDS = ("image", "keypoints", "visible", "person_mask")


def check_tokenizer_files(
    config: ml_collections.ConfigDict, workdir: str | None = None, *, fit: bool = False
) -> list[RequiredFile]:
    """The tokenizer's files (`fit`: a training run, which may fit its own), as `RequiredFile`s
    for `require_files`; an unknown kind names the key."""
    return tokenizers.kind_of(config.tokenizer).required_files(config.tokenizer, workdir, fit=fit)


def check_input_files(
    config: ml_collections.ConfigDict,
    also: Sequence[RequiredFile] = (),
    *,
    workdir: str | None = None,
) -> None:
    """Fail before any work of a training run, naming every missing data, tokenizer (and
    `also`) file at once; the source's own options (its record map) are checked here too."""
    source = sources.get(config.data.name)
    files = source.required_files(config.data)
    files += check_tokenizer_files(config, workdir, fit=True)
    require_files([*files, *also])
    source.record_map(config.data)


def tokenizer_corpus(config: ml_collections.ConfigDict) -> list[str]:
    """The texts a tokenizer is fitted on: the training source's (`sources.py`)."""
    return sources.get(config.data.name).corpus(config.data)


def create_tokenizer(
    config: ml_collections.ConfigDict, workdir: str | None = None, *, fit: bool = True
) -> Tokenizer:
    """The tokenizer `config.tokenizer.kind` names (`tokenizers.TOKENIZERS`); a fitted one is
    fitted on `tokenizer_corpus` in memory (training keeps it: `tokenizers.TokenizerKind.save`);
    `fit=False`, for inference, only reads one."""
    kind = tokenizers.kind_of(config.tokenizer)
    return kind.create(
        config.tokenizer, corpus=lambda: tokenizer_corpus(config), workdir=workdir, fit=fit
    )


@dataclasses.dataclass(frozen=True)
class Tokenize:
    """Batches records: stacks the training fields and tokenizes the descriptions to fixed length
    in one tokenizer call (grain's `batch_fn`: no per-record map, no other fields stacked)."""

    tokenizer: Tokenizer
    max_len: int

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        tokens, mask = self.tokenizer([r["description"] for r in records], self.max_len)
        fields = {k: np.stack([r[k] for r in records]) for k in TRAIN_FIELDS}
        return fields | {"tokens": tokens, "mask": mask}


def train_iterator(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's share of each global batch."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if config.train.batch_size % process_count:
        raise ValueError(
            f"config train.batch_size={config.train.batch_size} must divide over "
            f"{process_count} processes"
        )
    source = sources.get(config.data.name)
    dataset = (
        grain.MapDataset.source(source.train_source(config.data))
        .shuffle(seed=config.seed)
        .repeat()[process_index::process_count]
    )
    record_map = source.record_map(config.data)
    if record_map is not None:
        dataset = dataset.random_map(record_map, seed=config.seed)
    # With worker processes, each computes its batches in turn: grain's default 16 prefetch threads
    # per worker (and 500-batch buffer) ran ahead of the consumer and contended for the GIL, about
    # 2x the CPU per image (bench.input_pipeline).
    sequential = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    dataset = dataset.batch(
        config.train.batch_size // process_count,
        drop_remainder=True,
        batch_fn=Tokenize(tokenizer, config.model.text.max_len),
    ).to_iter_dataset(sequential if config.data.worker_count > 0 else grain.ReadOptions())
    if config.data.worker_count > 0:
        options = grain.MultiprocessingOptions(num_workers=config.data.worker_count)
        dataset = dataset.mp_prefetch(options)
    return iter(dataset)


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one global training batch (what `train_iterator` yields, all
    processes together): for compiling the step before any data exists."""
    batch, size = config.train.batch_size, config.data.image_size
    people, max_len = config.data.max_people, config.model.text.max_len
    joints = sources.skeleton_of(config.data.name).num_joints
    spec = lambda shape, dtype: jax.ShapeDtypeStruct((batch, *shape), np.dtype(dtype))
    return {
        "image": spec((size, size, 3), np.uint8),
        "keypoints": spec((people, joints, 2), np.float32),
        "visible": spec((people, joints), bool),
        "person_mask": spec((people,), bool),
        "tokens": spec((max_len,), np.int32),
        "mask": spec((max_len,), bool),
    }


def to_global_arrays(
    batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
    """This process's rows → global `jax.Array`s split over the mesh's data axes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


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
    records = [source[i] for i in range(len(source))]
    return (
        np.stack([r["image"] for r in records]),
        np.asarray([r["label"] for r in records]),
        tuple(r["description"] for r in records),
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
    return lambda data, options: ZeroShotData(**eval_datasets.load(name, options, data.image_size))


ZERO_SHOT_DATASETS: dict[str, ZeroShotReader] = {
    "synthpose_pose": _synthpose_pose(scenes.MAX_DISTRACTORS, "synthpose_pose"),
    "synthpose_pose_alone": _synthpose_pose(0, "synthpose_pose_alone"),
    **{name: _benchmark(name) for name in eval_datasets.DATASETS},
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
        source, _ = mpii.open_split(data.prepared, "val")
    except InputDataError as error:
        raise eval_datasets.DatasetNotFoundError(str(error)) from None
    keep = _image_list(options)
    images, texts, owners = [], [], []
    for i in range(len(source)):
        header, jpeg, _ = mpii.decode_prepared(source[i])
        if keep is not None and Path(header["image"]).name not in keep:
            continue
        described = header["descriptions"]
        order = [s for s in data.description_sources if s in described] + sorted(described)
        chosen = sorted(described) if every_caption else order[:1]
        image = eval_datasets.decode(eval_datasets.Sample(jpeg, 0), data.image_size)
        if chosen and image is not None:
            texts += [described[s] for s in chosen]
            owners += [len(images)] * len(chosen)
            images.append(image)
    if not images:
        raise eval_datasets.DatasetNotFoundError(f"{data.prepared}: no described validation image")
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
