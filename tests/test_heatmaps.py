"""Body-part heatmaps: numpy and jnp renderers agree, match the analytic Gaussian, never NaN."""

import functools
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from input_pipeline import skeleton
from input_pipeline.heatmaps import (
    HeatmapSettings,
    render_heatmap_np,
    render_heatmaps,
)

COCO_PARTS = HeatmapSettings(skeleton.COCO)
PART_GROUPS = dict(skeleton.MPII.parts)  # the original's

MPII_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mpii_sample"
H, W = 24, 32  # one shape for every jnp call below, so the renderer compiles once


@functools.cache
def _jitted():
    return jax.jit(render_heatmaps, static_argnames=("height", "width", "settings"))


def _render_both(kp, vis, mask, min_sigma=1.0, **joints):
    """Renders a batch with both renderers; returns (numpy [B, H, W], jnp as numpy [B, H, W]).

    `joints` (mode=, joint_sigma=) select the per-joint mode; absent, the default call is tested.
    """
    settings = HeatmapSettings(min_sigma=min_sigma, **joints)
    ref = np.stack(
        [render_heatmap_np(k, v, m, H, W, settings) for k, v, m in zip(kp, vis, mask, strict=True)]
    )
    out = np.asarray(_jitted()(kp, vis, mask, height=H, width=W, settings=settings))
    return ref, out


def _one_person(points: dict[int, tuple[float, float]]):
    """A batch of one image with one person whose only visible joints are `points`."""
    kp = np.zeros((1, 1, 16, 2), np.float32)
    vis = np.zeros((1, 1, 16), bool)
    for joint, xy in points.items():
        kp[0, 0, joint] = xy
        vis[0, 0, joint] = True
    return kp, vis, np.ones((1, 1), bool)


def test_part_groups_are_the_papers():
    assert list(PART_GROUPS) == [
        "head", "torso", "left_upper_arm", "right_upper_arm", "left_lower_arm",
        "right_lower_arm", "left_upper_leg", "right_upper_leg", "left_lower_leg",
        "right_lower_leg",
    ]  # fmt: skip
    assert PART_GROUPS["head"] == (7, 8, 9, 12, 13)
    assert PART_GROUPS["torso"] == (6, 7, 12, 13, 2, 3)
    assert PART_GROUPS["right_lower_leg"] == (1, 0, 2)


def test_jnp_matches_numpy_on_random_poses():
    rng = np.random.default_rng(0)
    b, p = 4, 3
    kp = rng.uniform([-4, -4], [W + 4, H + 4], size=(b, p, 16, 2)).astype(np.float32)
    kp[0, 0, :, 0] = 7.0  # a vertical line of joints: every σx hits the floor
    vis = rng.random((b, p, 16)) < 0.8
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], bool)
    ref, out = _render_both(kp, vis, mask)
    assert out.shape == (b, H, W) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert ref[0].max() > 0.5 and np.all(ref[2] == 0)


def test_single_part_equals_analytic_gaussian():
    # l_knee (4) and l_ankle (5) are both visible only in the left lower leg group.
    kp, vis, mask = _one_person({4: (10.0, 6.0), 5: (16.0, 18.0)})  # centre (13, 12), σ = (3, 6)
    ref, out = _render_both(kp, vis, mask)
    for hm in (ref[0], out[0]):
        assert hm[12, 13] == pytest.approx(1.0, abs=1e-6)
        assert hm[12, 16] == pytest.approx(math.exp(-0.5), abs=1e-6)  # one σx to the right
        assert hm[18, 13] == pytest.approx(math.exp(-0.5), abs=1e-6)  # one σy down
        assert hm[18, 16] == pytest.approx(math.exp(-1.0), abs=1e-6)
        assert hm[0, 0] == pytest.approx(math.exp(-(13**2 / 18 + 12**2 / 72)), abs=1e-6)


def test_parts_with_fewer_than_two_visible_joints_add_nothing():
    kp, vis, mask = _one_person({5: (16.0, 18.0), 9: (3.0, 3.0)})  # one joint per group at most
    ref, out = _render_both(kp, vis, mask)
    assert np.all(ref == 0) and np.all(out == 0)


def test_aligned_joints_are_floored_not_nan():
    kp, vis, mask = _one_person({4: (10.0, 6.0), 5: (10.0, 18.0)})  # σx = 0 in the original
    for min_sigma in (1.0, 2.0):
        ref, out = _render_both(kp, vis, mask, min_sigma)
        for hm in (ref[0], out[0]):
            assert np.isfinite(hm).all()
            assert hm[12, 10] == pytest.approx(1.0, abs=1e-6)
            assert hm[12, 11] == pytest.approx(math.exp(-1 / (2 * min_sigma**2)), abs=1e-6)
    kp, vis, mask = _one_person({4: (10.0, 6.0), 5: (10.0, 6.0)})  # both σ = 0
    ref, out = _render_both(kp, vis, mask)
    assert np.isfinite(out).all() and out[0, 6, 10] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_invisible_and_padded_people_never_leak_or_nan():
    kp = np.full((2, 2, 16, 2), np.nan, np.float32)  # placeholders may be anything
    vis = np.zeros((2, 2, 16), bool)
    mask = np.array([[1, 0], [0, 0]], bool)  # an all-invisible person; an empty batch row
    kp[0, 1] = 5.0
    vis[0, 1] = True  # visible joints of a padded person: ignored
    ref, out = _render_both(kp, vis, mask)
    assert np.all(out == 0) and np.all(ref == 0)


def test_values_stay_in_unit_interval_with_crowds():
    rng = np.random.default_rng(1)
    kp = rng.uniform(8, 16, size=(1, 6, 16, 2)).astype(np.float32)  # six overlapping people
    ref, out = _render_both(kp, np.ones((1, 6, 16), bool), np.ones((1, 6), bool))
    assert out.min() >= 0.0 and out.max() == pytest.approx(1.0)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_non_positive_min_sigma_is_refused():
    kp, vis, mask = _one_person({4: (10.0, 6.0), 5: (16.0, 18.0)})
    with pytest.raises(ValueError, match=r"heatmaps\.min_sigma=0\.0: must be > 0"):
        render_heatmap_np(kp[0], vis[0], mask[0], H, W, HeatmapSettings(min_sigma=0.0))


def test_mpii_sample_heatmap_lies_on_the_annotated_person():
    if not (MPII_SAMPLE / "test_mpii.json").exists():
        pytest.skip(f"MPII sample not found at {MPII_SAMPLE}")
    records = json.loads((MPII_SAMPLE / "test_mpii.json").read_text())
    scale = 0.25  # render at a quarter of the resolution: same recipe, faster test
    for rec in records:
        with Image.open(MPII_SAMPLE / rec["image"]) as img:
            width, height = (round(s * scale) for s in img.size)
        kp = (np.asarray(rec["joints"], np.float32) * scale)[None]
        vis = np.asarray(rec["joints_vis"], bool)[None]
        hm = render_heatmap_np(kp, vis, np.ones(1, bool), height, width)
        lo, hi = kp[0, vis[0]].min(0), kp[0, vis[0]].max(0)
        pad = 0.2 * (hi - lo)
        (x0, y0), (x1, y1) = np.floor(lo - pad).astype(int), np.ceil(hi + pad).astype(int)
        inside = hm[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1].sum()
        assert inside > 0.95 * hm.sum(), rec["image"]
        assert hm.max() == pytest.approx(1.0, abs=1e-3)


JOINTS = {"mode": "joints", "joint_sigma": 2.0}


def test_joints_mode_jnp_matches_numpy_on_random_poses():
    rng = np.random.default_rng(2)
    kp = rng.uniform([-6, -6], [W + 6, H + 6], size=(3, 3, 16, 2)).astype(np.float32)
    vis = rng.random((3, 3, 16)) < 0.7
    kp[0, 0, ~vis[0, 0]] = np.nan  # placeholders of invisible joints may be anything
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
    ref, out = _render_both(kp, vis, mask, **JOINTS)
    assert np.isfinite(out).all() and ref[0].max() > 0.5 and np.all(ref[2] == 0)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_joints_mode_analytic_values_and_invisible_joints():
    kp, vis, mask = _one_person({4: (10.0, 6.0), 0: (-2.0, 12.0)})  # r_ankle left of the image
    kp[0, 0, 5] = (20.0, 18.0)  # invisible: adds nothing
    ref, out = _render_both(kp, vis, mask, **JOINTS)
    for hm in (ref[0], out[0]):
        assert hm[6, 10] == pytest.approx(1.0, abs=1e-6)
        assert hm[6, 12] == pytest.approx(math.exp(-0.5), abs=1e-6)  # one σ to the right
        assert hm[8, 12] == pytest.approx(math.exp(-1.0), abs=1e-6)
        assert hm[12, 0] == pytest.approx(math.exp(-0.5), abs=1e-6)  # the outside joint's tail
        assert hm[18, 20] == pytest.approx(0.0, abs=1e-12)


def test_joints_mode_clipped_to_unit_interval_and_checked():
    kp = np.full((1, 2, 16, 2), 12.0, np.float32)  # 32 joints on one pixel
    ref, out = _render_both(kp, np.ones((1, 2, 16), bool), np.ones((1, 2), bool), **JOINTS)
    for hm in (ref, out):
        assert hm.min() >= 0.0 and hm.max() == pytest.approx(1.0)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match=r"heatmaps\.joint_sigma=0\.0"):
        HeatmapSettings(mode="joints", joint_sigma=0.0)
    with pytest.raises(ValueError, match=r"heatmaps\.mode='limbs'"):
        HeatmapSettings(mode="limbs")
    with pytest.raises(ValueError, match="keypoints with 16 joints, but the coco skeleton has 17"):
        render_heatmap_np(kp[0], np.ones((2, 16), bool), np.ones(2, bool), H, W, COCO_PARTS)


# ----------------------------------------------------------------------------- skeletons


def test_skeletons_flip_left_and_right_and_keep_the_original_groups() -> None:
    """MPII's flip is the original's permutation and its groups the original's; for every
    skeleton the flip is an involution that maps each left joint's name to its right one."""
    np.testing.assert_array_equal(
        skeleton.MPII.flip_permutation, [5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10]
    )
    assert PART_GROUPS["head"] == (7, 8, 9, 12, 13) and len(PART_GROUPS) == 10
    mirror = {"l_": "r_", "r_": "l_"}
    for body in skeleton.SKELETONS.values():
        order = body.flip_permutation
        np.testing.assert_array_equal(order[order], np.arange(body.num_joints))
        for joint, source in enumerate(order):
            name = body.joints[joint]
            expected = mirror[name[:2]] + name[2:] if name[:2] in mirror else name
            assert body.joints[source] == expected, (body.name, name)


@pytest.mark.parametrize("mode", ["parts", "joints"])
def test_coco_keypoints_render_alike_on_host_and_device(mode: str) -> None:
    """17 COCO joints: the part groups come from COCO's skeleton; both renderers agree."""
    rng = np.random.default_rng(11)
    kp = rng.uniform(-2, 34, (3, 2, 17, 2)).astype(np.float32)
    vis = rng.random((3, 2, 17)) < 0.8
    mask = np.array([[True, True], [True, False], [False, False]])
    ref, out = _render_both(kp, vis, mask, mode=mode, joint_sigma=2.0, skeleton=skeleton.COCO)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert ref[0].max() > 0.5 and ref[2].max() == 0.0
