"""Training data sources by `config.data.name`, behind one interface.

A source says which files it needs (checked before any work), gives grain a random-access source
of its training records and, if its records are stored encoded, the per-record random map that
decodes and augments them; it gives the texts a `fitted_bpe` tokenizer is fitted on, and the
skeleton of its keypoints (their part groups and flips). To add one: a `DataSource` subclass and
a line in `DATA_SOURCES` (preparation, where a source needs one, is its own command:
`python -m input_pipeline.prepare_mpii`).
"""

import abc
import functools
import logging
from typing import Any, ClassVar

import grain
import ml_collections

from input_pipeline import mpii, skeleton
from input_pipeline.errors import RequiredFile
from input_pipeline.skeleton import Skeleton
from synthpose import scenes


class DataSource(abc.ABC):
    """What the input pipeline needs of a dataset; `data` is the run's `config.data`."""

    skeleton: ClassVar[Skeleton] = skeleton.MPII

    def required_files(self, data: ml_collections.ConfigDict) -> list[RequiredFile]:
        return []

    @abc.abstractmethod
    def train_source(self, data: ml_collections.ConfigDict) -> Any:
        """Random-access records (len, getitem): dicts of the training fields and a
        `description`, or stored entries that `record_map` turns into them."""

    def record_map(self, data: ml_collections.ConfigDict) -> grain.transforms.RandomMap | None:
        """Applied after shuffle/repeat/shard (a fresh draw each epoch); None: stored ready."""
        return None

    @abc.abstractmethod
    def corpus(self, data: ml_collections.ConfigDict) -> list[str]:
        """Every text the training stream can pick (a fitted BPE is fitted on them)."""


@functools.cache
def _synthpose_records(
    num_records: int, seed: int, image_size: int, max_people: int
) -> tuple[dict[str, Any], ...]:
    """SynthPose people, drawn once into memory (and once per process: a benchmark's runs share
    them): drawing costs more than a demo's step."""
    source = scenes.SynthPose(num_records, seed, image_size, max_people)
    logging.info("Drawing %d SynthPose training images into memory", len(source))
    return tuple(source[i] for i in range(len(source)))


class SynthPoseSource(DataSource):
    """Synthetic people drawn in memory with rule-based descriptions (`synthpose/scenes.py`)."""

    def train_source(self, data: ml_collections.ConfigDict) -> Any:
        return _synthpose_records(data.train_records, data.seed, data.image_size, data.max_people)

    def corpus(self, data: ml_collections.ConfigDict) -> list[str]:
        return scenes.corpus()


class MpiiSource(DataSource):
    """Prepared MPII shards (`prepare_mpii`) with their descriptions."""

    def required_files(self, data: ml_collections.ConfigDict) -> list[RequiredFile]:
        return mpii.required_files(data)

    def train_source(self, data: ml_collections.ConfigDict) -> Any:
        return mpii.train_source(data)

    def record_map(self, data: ml_collections.ConfigDict) -> grain.transforms.RandomMap:
        return mpii.record_map(data)

    def corpus(self, data: ml_collections.ConfigDict) -> list[str]:
        """Every text of the chosen sources (`transforms.choose_description`) in the stream."""
        sources = tuple(data.description_sources)
        records = mpii.train_source(data)
        texts: list[str] = []
        for i in range(len(records)):
            described = mpii.decode_prepared(records[i])[0]["descriptions"]
            texts += [described[s] for s in sources if s in described]
        return texts


class CocoSource(MpiiSource):
    """COCO-2017 people with keypoints and captions, prepared by `prepare_coco` into MPII's
    format: COCO's 17 joints, captions as the description sources `caption_0`, ..."""

    skeleton: ClassVar[Skeleton] = skeleton.COCO


DATA_SOURCES: dict[str, DataSource] = {
    "synthpose": SynthPoseSource(),
    "mpii": MpiiSource(),
    "coco": CocoSource(),
}


def skeleton_of(name: str) -> Skeleton:
    """The keypoints' skeleton of source `name`; MPII's where no source is registered (the
    benchmarks' random batches: `configs/bench.py`)."""
    source = DATA_SOURCES.get(name)
    return source.skeleton if source else skeleton.MPII


def get(name: str) -> DataSource:
    """The registered source `name`; an unknown one lists them."""
    if name not in DATA_SOURCES:
        raise ValueError(
            f"config data.name={name!r}: registered datasets are {sorted(DATA_SOURCES)}"
        )
    return DATA_SOURCES[name]
