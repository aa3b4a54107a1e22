"""MPII Human Pose with the published pose descriptions: the files the paper's recipe trains on.

This version checks that the files are there and names every missing one; the readers and the
ArrayRecord preparation come with the MPII pipeline.
"""

import ml_collections

from input_pipeline.files import InputDataError, RequiredFile, require_files

MPII_IMAGES = "the MPII Human Pose Dataset, mpii_human_pose_v1.tar.gz (images/), https://human-pose.mpi-inf.mpg.de/"
MMPOSE_ANNOTATIONS = (
    "mmpose's MPII annotations (mpii_train.json, mpii_val.json), see the mmpose docs, "
    "'2D Body Keypoint Datasets' → MPII; or the official mpii_human_pose_v1_u12_1.mat "
    "from the MPII site"
)
DESCRIPTIONS = (
    "the 'MPII Human Pose Descriptions' JSON published by the FocusCLIP authors "
    "(linked from https://saifkhichi.com/research/focusclip)"
)


def required_files(data: ml_collections.ConfigDict) -> list[RequiredFile]:
    return [
        RequiredFile("data.images", data.images, MPII_IMAGES),
        RequiredFile("data.annotations", data.annotations, MMPOSE_ANNOTATIONS),
        RequiredFile("data.descriptions", data.descriptions, DESCRIPTIONS),
    ]


def train_source(data: ml_collections.ConfigDict) -> None:
    """The MPII training records; fails early, naming what is missing."""
    require_files(required_files(data))
    raise InputDataError(
        "The MPII files are present, but this version has no MPII reader yet: train on "
        "configs/demo.py, or use a version with the MPII input pipeline."
    )
