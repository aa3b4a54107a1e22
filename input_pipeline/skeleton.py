"""Skeletons: a keypoint format's joints, the body-part groups its heatmaps are drawn from, and
its left/right pairs (what a horizontal flip swaps).

The heatmap renderers and the flip take a `Skeleton`, so a data source with other keypoints
(COCO's 17) brings its own instead of editing them. MPII's part groups are the original FocusCLIP
code's; COCO's name the same ten parts with COCO's joints: its face points and shoulders make the
head, and since COCO has no thorax or pelvis, upper limbs are drawn from their two end joints,
lower limbs from theirs plus the joint above (as MPII's).
"""

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class Skeleton:
    name: str
    joints: tuple[str, ...]
    parts: tuple[tuple[str, tuple[int, ...]], ...]  # (part, joint ids), in rendering order
    flip_pairs: tuple[tuple[int, int], ...]  # (left or right joint, its mirror)

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @functools.cached_property
    def flip_permutation(self) -> np.ndarray:
        """Joint j of a flipped person is joint `flip_permutation[j]` of the original."""
        order = np.arange(self.num_joints)
        for a, b in self.flip_pairs:
            order[a], order[b] = b, a
        return order

    @functools.cached_property
    def part_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The part groups as a padded [parts, max size] gather table and its validity mask."""
        longest = max(len(ids) for _, ids in self.parts)
        index = np.array([ids + (0,) * (longest - len(ids)) for _, ids in self.parts])
        valid = np.array([[k < len(ids) for k in range(longest)] for _, ids in self.parts])
        return index, valid


MPII = Skeleton(
    name="mpii",
    joints=(
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
        "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow",
        "l_wrist",
    ),
    parts=(  # groups and their order as in the original code
        ("head", (7, 8, 9, 12, 13)),
        ("torso", (6, 7, 12, 13, 2, 3)),
        ("left_upper_arm", (13, 14, 7)),
        ("right_upper_arm", (12, 11, 7)),
        ("left_lower_arm", (14, 15, 13)),
        ("right_lower_arm", (11, 10, 12)),
        ("left_upper_leg", (3, 4, 6)),
        ("right_upper_leg", (2, 1, 6)),
        ("left_lower_leg", (4, 5, 3)),
        ("right_lower_leg", (1, 0, 2)),
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
)  # fmt: skip

COCO = Skeleton(
    name="coco",
    joints=(
        "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
        "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle",
        "r_ankle",
    ),
    parts=(
        ("head", (0, 1, 2, 3, 4, 5, 6)),
        ("torso", (5, 6, 11, 12)),
        ("left_upper_arm", (5, 7)),
        ("right_upper_arm", (6, 8)),
        ("left_lower_arm", (7, 9, 5)),
        ("right_lower_arm", (8, 10, 6)),
        ("left_upper_leg", (11, 13)),
        ("right_upper_leg", (12, 14)),
        ("left_lower_leg", (13, 15, 11)),
        ("right_lower_leg", (14, 16, 12)),
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
)  # fmt: skip

SKELETONS = {skeleton.name: skeleton for skeleton in (MPII, COCO)}
