"""A data source added from outside the package: one class and a registry line, its skeleton
carried through the batch layout, the tokenizer corpus and the heatmaps."""

from typing import ClassVar

import numpy as np
import pytest

from input_pipeline import heatmaps, pipeline, skeleton, sources
from input_pipeline.errors import InputDataError, RequiredFile
from input_pipeline.skeleton import Skeleton
from tests.conftest import tiny_config


class _Coco17(sources.DataSource):
    """Six in-memory people with COCO's 17 joints, behind a file that must exist."""

    skeleton: ClassVar[Skeleton] = skeleton.COCO

    def required_files(self, data):
        return [RequiredFile("data.prepared", data.prepared, "a fixture folder")]

    def train_source(self, data):
        rng = np.random.default_rng(0)
        return [
            {
                "image": np.full((data.image_size, data.image_size, 3), 10 * i, np.uint8),
                "keypoints": rng.uniform(0, data.image_size, (data.max_people, 17, 2)).astype(
                    np.float32
                ),
                "visible": np.ones((data.max_people, 17), bool),
                "person_mask": np.arange(data.max_people) < 1,
                "description": f"person {i}",
            }
            for i in range(6)
        ]

    def corpus(self, data):
        return ["person 0", "person 1"]


def test_a_registered_source_streams_its_skeleton(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sources.DATA_SOURCES, "coco17", _Coco17())
    config = tiny_config()
    config.data.name = "coco17"
    with config.unlocked():
        config.data.prepared = str(tmp_path / "missing")
    with pytest.raises(InputDataError, match=r"data\.prepared"):
        pipeline.check_input_files(config)
    config.data.prepared = str(tmp_path)
    pipeline.check_input_files(config)
    config.train.batch_size = 4
    tokenizer = pipeline.create_tokenizer(config)
    batch = next(pipeline.train_iterator(config, tokenizer))
    spec = pipeline.batch_spec(config)
    assert {k: v.shape for k, v in batch.items()} == {k: v.shape for k, v in spec.items()}
    assert batch["keypoints"].shape[-2] == 17
    maps = heatmaps.render_heatmaps(
        batch["keypoints"], batch["visible"], batch["person_mask"], 32, 32,
        heatmaps.HeatmapSettings(skeleton.COCO),
    )  # fmt: skip
    assert float(maps.max()) > 0.5  # COCO's part groups drew the person
    config.tokenizer.kind = "fitted_bpe"
    assert pipeline.tokenizer_corpus(config) == ["person 0", "person 1"]
