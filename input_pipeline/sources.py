"""Training data sources by `config.data.name`, behind one interface.

A source says which files it needs (checked before any work), gives grain a random-access source
of its training records and, if its records are stored encoded, the per-record random map that
decodes and augments them; it gives the texts a fitted tokenizer is fitted on, and the skeleton
of its keypoints (their part groups and flips). To add one: a `DataSource` subclass and a line in
`DATA_SOURCES` (preparation, where a source needs one, is its own command under
`input_pipeline/prepare/`).
"""

import abc
import functools
import logging
import os
from typing import Any, ClassVar

import grain
import ml_collections

from input_pipeline import records, skeleton
from input_pipeline.errors import RequiredFile, check_number, check_text, require_files
from input_pipeline.skeleton import Skeleton
from input_pipeline.transforms import PreparedRecordTransform
from synthpose import scenes

MPII_IMAGES = (
    "the MPII Human Pose Dataset, mpii_human_pose_v1.tar.gz (images/), "
    "https://human-pose.mpi-inf.mpg.de/"
)
MMPOSE_ANNOTATIONS = (
    "mmpose's MPII annotations (mpii_train.json, mpii_val.json), see the mmpose docs, "
    "'2D Body Keypoint Datasets' → MPII; or the official mpii_human_pose_v1_u12_1.mat "
    "from the MPII site"
)
MPII_DESCRIPTIONS = (
    "the 'MPII Human Pose Descriptions' JSON published by the FocusCLIP authors "
    "(linked from https://saifkhichi.com/research/focusclip)"
)


class DataSource(abc.ABC):
    """What the input pipeline needs of a dataset; `data` is the run's `config.data`."""

    skeleton: ClassVar[Skeleton] = skeleton.MPII

    def required_files(self, data: ml_collections.ConfigDict) -> list[RequiredFile]:
        return []

    @abc.abstractmethod
    def train_source(self, data: ml_collections.ConfigDict) -> Any:
        """Random-access records (len, getitem): dicts of the training fields and a
        `description`, or stored entries that `record_map` turns into them."""

    def check_options(self, data: ml_collections.ConfigDict) -> None:
        """The source's own keys of `config.data`, once its files are found (before any work):
        ValueError naming the first bad key. The record map checks its own as it is built."""
        del data

    def record_map(self, data: ml_collections.ConfigDict) -> grain.transforms.RandomMap | None:
        """Applied after shuffle/repeat/shard (a fresh draw each epoch); None: stored ready.
        Built before any work: a wrong option is a ValueError naming its key."""
        return None

    def crops_on_device(self, data: ml_collections.ConfigDict) -> bool:
        """Whether its batches carry stored images on canvases for the training step to crop
        (`input_pipeline.device_crop`) rather than the crops themselves."""
        del data
        return False

    @abc.abstractmethod
    def corpus(self, data: ml_collections.ConfigDict) -> list[str]:
        """Every text the training stream can pick (a fitted tokenizer is fitted on them)."""


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

    def check_options(self, data: ml_collections.ConfigDict) -> None:
        least_values = {"train_records": 1, "eval_records": 1, "seed": 0, "eval_seed": 0}
        for key, least in least_values.items():
            if key in data:
                check_number(f"config data.{key}", data[key], integer=True, at_least=least)

    def train_source(self, data: ml_collections.ConfigDict) -> Any:
        return _synthpose_records(data.train_records, data.seed, data.image_size, data.max_people)

    def corpus(self, data: ml_collections.ConfigDict) -> list[str]:
        return scenes.corpus()


class PreparedSource(DataSource):
    """Records a preparation wrote (`records`, `input_pipeline/prepare/`) with their
    descriptions: the images described by one of `data.description_sources` are streamed, those
    without counted and logged, never given another source's text."""

    title: ClassVar[str]  # how the logs name it
    prepare: ClassVar[str]  # the command that writes its preparation

    def required_files(self, data: ml_collections.ConfigDict) -> list[RequiredFile]:
        """A finished preparation (`data.prepared`)."""
        found = records.finished(data.prepared) if data.prepared else None
        if found is not None:
            where = os.fspath(found / records.INFO_FILE)
        else:
            where = f"{data.prepared}/<dataset>/<version>/{records.INFO_FILE}"
        return [RequiredFile("data.prepared", where if data.prepared else "", self.prepare)]

    def check_options(self, data: ml_collections.ConfigDict) -> None:
        """`data.split`, `data.description_sources` and `data.canvas_side` against what the
        preparation holds."""
        check_text("config data.split", data.split)
        sources = tuple(data.description_sources)
        if not sources:
            raise ValueError(
                "config data.description_sources=(): name one or more description sources, "
                "e.g. ('gpt-4',)"
            )
        meta = records.read_meta(data.prepared)
        self._check_canvas(data, meta)
        splits = meta["splits"]
        if data.split not in splits:
            raise ValueError(
                f"config data.split={data.split!r}: the preparation at {data.prepared} has the "
                f"splits {sorted(splits)}"
            )
        described = splits[data.split].get("descriptions")
        if described is not None and not set(sources) & set(described):
            raise ValueError(
                f"config data.description_sources={sources!r}: no {data.split} image of "
                f"{data.prepared} has them; its sources are {sorted(described)}"
            )

    def train_source(self, data: ml_collections.ConfigDict) -> Any:
        """The described records of `data.split`, with what training should know logged once:
        their count, those left out, crowds, and crops resampled for want of a stored copy."""
        split = data.get("split", "train")
        stream, total = self._described(data)
        logging.info("%s: %d prepared %s records", self.title, total, split)
        if len(stream) < total:
            logging.warning(
                "%s: %d of %d %s images have no description from %s: left out of training",
                self.title, total - len(stream), total, split, tuple(data.description_sources),
            )  # fmt: skip
        meta = records.read_meta(data.prepared)
        self._warn_of_crowds(data, split, meta)
        self._warn_of_resampling(data, meta)
        return stream

    def _check_canvas(self, data: ml_collections.ConfigDict, meta: dict[str, Any]) -> None:
        """The device's canvas holds every stored image."""
        stored = meta.get("max_side")
        if self.crops_on_device(data) and stored and stored > data.canvas_side:
            raise ValueError(
                f"config data.canvas_side={data.canvas_side}: {data.prepared} stores images up to "
                f"{stored} px a side (prepared with --max_side={stored}); set it to {stored}"
            )

    def _described(self, data: ml_collections.ConfigDict) -> tuple[Any, int]:
        """The records of `data.split` described by one of `data.description_sources`, and how
        many records the split has."""
        require_files(self.required_files(data))
        split = data.get("split", "train")
        source, shards = records.open_split(data.prepared, split)
        index = records.record_sources(shards)
        keep = records.described_by(index, data.description_sources, f"{data.prepared} ({split})")
        return (records.Subset(source, keep) if len(keep) < len(index) else source), len(index)

    def _warn_of_crowds(
        self, data: ml_collections.ConfigDict, split: str, meta: dict[str, Any]
    ) -> None:
        """The original renders every annotated person; `data.max_people` keeps the first P."""
        counts = meta["splits"][split].get("people_per_image")
        more = sum(n for people, n in (counts or {}).items() if int(people) > data.max_people)
        if more:
            logging.warning(
                "%s: %d %s images have more than data.max_people=%d annotated people (at most "
                "%s); only the first %d are in their heatmaps",
                self.title, more, split, data.max_people, max(counts, key=int), data.max_people,
            )  # fmt: skip

    def _warn_of_resampling(self, data: ml_collections.ConfigDict, meta: dict[str, Any]) -> None:
        """A `squash` or `person` crop the preparation stores no copy of is resampled from the
        stored image for every image (3-4x the CPU, PERFORMANCE.md): the flags that store it."""
        size, transform = data.image_size, self.record_map(data)
        if transform.on_device:  # reads no stored copy: the host only decodes
            return
        if data.crop == "squash" and not transform.stored_crop("squashed", meta.get("squash_side")):
            side = meta.get("squash_side")
            stored = f"a squashed copy of side {side}" if side else "no squashed copy"
            flags = f"--squash_side={size}"
        elif data.crop == "person" and not transform.stored_crop(
            "person", meta.get("person_side"), meta.get("person_margin")
        ):
            stored = (
                f"a person copy of side {meta['person_side']} and margin {meta['person_margin']}"
                if meta.get("person_side")
                else "no person copy"
            )
            flags = f"--person_side={size} --person_margin={data.person_margin}"
        else:
            return
        logging.warning(
            "%s: %s holds %s, so the %s crop at data.image_size=%d resamples every image from "
            "its stored image; prepare it with %s to read the crop as stored",
            self.title, data.prepared, stored, data.crop, size, flags,
        )  # fmt: skip

    def record_map(self, data: ml_collections.ConfigDict) -> PreparedRecordTransform:
        """Decode, crop/resize, flip (with this source's skeleton), pick a text."""
        return PreparedRecordTransform.from_config(data, self.skeleton)

    def crops_on_device(self, data: ml_collections.ConfigDict) -> bool:
        return self.record_map(data).on_device

    def corpus(self, data: ml_collections.ConfigDict) -> list[str]:
        """Every text of the chosen sources (`transforms.choose_description`) in the stream."""
        chosen = tuple(data.description_sources)
        stream, _ = self._described(data)
        texts: list[str] = []
        for i in range(len(stream)):
            described = records.decode_prepared(stream[i]).header["descriptions"]
            texts += [described[s] for s in chosen if s in described]
        return texts


class MpiiSource(PreparedSource):
    """MPII Human Pose with the published pose descriptions (`prepare/mpii.py`)."""

    title = "MPII"
    prepare = (
        f"python -m input_pipeline.prepare.mpii --images=<{MPII_IMAGES}> "
        f"--annotations=<{MMPOSE_ANNOTATIONS}> --descriptions=<{MPII_DESCRIPTIONS}> "
        "--out=<data.prepared> (docs/data.md)"
    )


class CocoSource(PreparedSource):
    """COCO-2017 people with keypoints and captions (`prepare/coco.py`): COCO's 17 joints,
    captions as the description sources `caption_0`, ..."""

    title = "COCO"
    skeleton: ClassVar[Skeleton] = skeleton.COCO
    prepare = (
        "python -m input_pipeline.prepare.coco --images=<train2017/> "
        "--annotations=<person_keypoints_train2017.json> --captions=<captions_train2017.json> "
        "--out=<data.prepared>, from COCO-2017 (cocodataset.org; docs/data.md)"
    )


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


def canvas_side(data: ml_collections.ConfigDict) -> int:
    """The side of the canvases `data`'s batches hold for the training step to crop
    (`DataSource.crops_on_device`); 0 where the host crops, and where no source is registered
    (the benchmarks' random batches)."""
    source = DATA_SOURCES.get(data.name)
    return data.canvas_side if source and source.crops_on_device(data) else 0


def get(name: str) -> DataSource:
    """The registered source `name`; an unknown one lists them."""
    if name not in DATA_SOURCES:
        raise ValueError(
            f"config data.name={name!r}: registered datasets are {sorted(DATA_SOURCES)}"
        )
    return DATA_SOURCES[name]
