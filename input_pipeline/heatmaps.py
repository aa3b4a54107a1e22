"""Body-part Gaussian heatmaps of FocusCLIP (arXiv 2403.06904): one definition, two renderers.

Two modes: "parts" (the paper's, below) and "joints", an ablation with one isotropic Gaussian of
fixed σ = `joint_sigma` pixels per visible joint (the common pose-heatmap recipe), combined the
same way (summed per person, clipped, summed over people, clipped). In "joints" mode a visible
joint with non-finite coordinates is treated as missing; a joint outside the image still adds its
tail inside it, as a part centred outside does.

Recipe (per image): for every annotated person and each part group of the keypoints' skeleton
(`skeleton.py`: MPII's 10, the original's; COCO's 10), keep the group's
visible joints and skip the part when fewer than 2 remain; the
part's Gaussian is centred on the centre of those joints' bounding box with σx, σy = half the box
width, height; parts are summed per person and clipped to [0, 1], then people are summed and
clipped to [0, 1]:

    g(x, y) = exp(-((x - cx)² / (2 σx²) + (y - cy)² / (2 σy²)))      (peak 1, not a density)

Conventions: keypoints are (x, y) in the output heatmap's pixel coordinates, and pixel (row i,
col j) is evaluated at its centre x = j, y = i (the original's `np.indices` grid).

Differences from the original code (anon12620/FocusCLIP `src/utils/create_heatmaps.py`), on
purpose:
- σ is floored at `min_sigma` pixels (default 1.0). The original divides by σ = 0 when a part's
  joints align horizontally or vertically, which gives NaN on the box's centre line.
- Keypoints, centre and σ stay real-valued. The original truncates keypoints to int and halves with
  `//`, at the full MPII resolution, then saves the mask as an 8-bit PNG that training resizes with
  the image. Rendering from keypoints already in the output's pixel coordinates gives that resized
  mask (an axis-aligned Gaussian stays one under a squash resize) without the quantisation.
- The original sums all parts of all people and clips once. For non-negative terms that equals
  clipping per person first (if any person's sum exceeds 1, both results are 1), so the two
  renderers below may take either route.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from input_pipeline import skeleton as skeletons
from input_pipeline.skeleton import Skeleton

HEATMAP_MODES = ("parts", "joints")


@dataclasses.dataclass(frozen=True)
class HeatmapSettings:
    """How heatmaps are drawn: the keypoints' skeleton (its part groups) and `config.heatmaps`
    (mode, σ floor, the joints mode's σ), built once and checked once."""

    skeleton: Skeleton = skeletons.MPII
    mode: str = "parts"
    min_sigma: float = 1.0
    joint_sigma: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in HEATMAP_MODES:
            raise ValueError(f"config heatmaps.mode={self.mode!r}: expected one of {HEATMAP_MODES}")
        if not (isinstance(self.min_sigma, int | float) and self.min_sigma > 0):
            raise ValueError(
                f"config heatmaps.min_sigma={self.min_sigma!r}: must be > 0 (it guards a "
                "division by σ)"
            )
        if not (isinstance(self.joint_sigma, int | float) and self.joint_sigma > 0):
            raise ValueError(f"config heatmaps.joint_sigma={self.joint_sigma!r}: must be > 0")

    @classmethod
    def from_config(
        cls, heatmaps: ml_collections.ConfigDict, skeleton: Skeleton
    ) -> "HeatmapSettings":
        return cls(skeleton, heatmaps.mode, heatmaps.min_sigma, heatmaps.joint_sigma)


PAPER = HeatmapSettings()  # the paper's: MPII's body parts, σ floored at 1 pixel


def _gaussians_np(
    keypoints: np.ndarray, visible: np.ndarray, settings: HeatmapSettings
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(centre (x, y), σ (x, y)) of each Gaussian of one person: keypoints [J, 2], visible [J]."""
    if settings.mode == "joints":
        used = visible & np.isfinite(keypoints).all(axis=-1)
        return [(keypoints[j], np.full(2, settings.joint_sigma)) for j in np.flatnonzero(used)]
    gaussians = []
    for _, ids in settings.skeleton.parts:
        pts = keypoints[[i for i in ids if visible[i]]]
        if len(pts) < 2:
            continue
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        gaussians.append(((lo + hi) / 2, np.maximum((hi - lo) / 2, settings.min_sigma)))
    return gaussians


def _check_joints(keypoints_shape: tuple[int, ...], settings: HeatmapSettings) -> None:
    joints = keypoints_shape[-2]
    if joints != settings.skeleton.num_joints:
        raise ValueError(
            f"keypoints with {joints} joints, but the {settings.skeleton.name} skeleton has "
            f"{settings.skeleton.num_joints}"
        )


def render_heatmap_np(
    keypoints: np.ndarray,
    visible: np.ndarray,
    person_mask: np.ndarray,
    height: int,
    width: int,
    settings: HeatmapSettings = PAPER,
) -> np.ndarray:
    """Heatmap of one image on the host: keypoints [P, J, 2] (x, y), visible [P, J], mask [P]
    (J: the joints of the settings' skeleton, MPII's 16 or COCO's 17).

    The reference renderer (loops over people and parts, literally as the recipe reads); used for
    inspection, tests and hosts without accelerators. Returns float32 [height, width] in [0, 1].
    """
    _check_joints(np.shape(keypoints), settings)
    keypoints = np.asarray(keypoints, np.float64)
    visible = np.asarray(visible, bool)
    xs = np.arange(width, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64)
    total = np.zeros((height, width), np.float64)
    for person in np.flatnonzero(np.asarray(person_mask, bool)):
        person_map = np.zeros((height, width), np.float64)
        gaussians = _gaussians_np(keypoints[person], visible[person], settings)
        for (cx, cy), (sx, sy) in gaussians:
            gx = np.exp(-((xs - cx) ** 2) / (2 * sx**2))
            gy = np.exp(-((ys - cy) ** 2) / (2 * sy**2))
            person_map += gy[:, None] * gx[None, :]
        total += np.clip(person_map, 0.0, 1.0)
    return np.clip(total, 0.0, 1.0).astype(np.float32)


def render_heatmaps(
    keypoints: jax.Array,
    visible: jax.Array,
    person_mask: jax.Array,
    height: int,
    width: int,
    settings: HeatmapSettings = PAPER,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Heatmaps of a batch on the device: keypoints [B, P, J, 2], visible [B, P, J], mask [B, P]
    (J: the joints of the settings' skeleton, which gives the part groups).

    Jittable with static `height`/`width`/`settings`. Each Gaussian is separable, so the
    whole batch is a gather, two small exps ([B, P·G, H] and [B, P·G, W]) and one batched matmul
    over the P·G Gaussians (G = the skeleton's parts, or its joints); the sum over people and
    Gaussians is clipped once (equal to per-person clipping, see the module docstring).
    Invisible joints, parts with < 2 visible joints and masked people contribute exactly 0, and
    nothing is ever NaN. Returns `dtype` [B, height, width] in [0, 1].
    """
    _check_joints(jnp.shape(keypoints), settings)
    kp = jnp.asarray(keypoints, jnp.float32)
    vis = jnp.asarray(visible, bool) & jnp.asarray(person_mask, bool)[..., None]
    if settings.mode == "joints":
        used = vis & jnp.all(jnp.isfinite(kp), axis=-1)  # [B, P, J]
        centre = jnp.where(used[..., None], kp, 0.0)
        sigma = jnp.full(centre.shape, settings.joint_sigma, jnp.float32)
    else:
        used, centre, sigma = _part_gaussians(kp, vis, settings)
    batch, gaussians = used.shape[0], used.shape[1] * used.shape[2]

    def gauss_1d(size: int, axis: int) -> jax.Array:
        """[B, P·G, size]: the separable factor of every Gaussian along one axis."""
        grid = jnp.arange(size, dtype=jnp.float32)
        d2 = jnp.square(grid - centre[..., axis, None]) / (2 * jnp.square(sigma[..., axis, None]))
        return jnp.exp(-d2).reshape(batch, gaussians, size)

    gx = gauss_1d(width, 0)
    gy = gauss_1d(height, 1) * used.reshape(batch, gaussians, 1)
    total = jnp.einsum(
        "bnh,bnw->bhw",
        gy.astype(dtype),
        gx.astype(dtype),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return jnp.clip(total, 0.0, 1.0).astype(dtype)


def _part_gaussians(
    kp: jax.Array, vis: jax.Array, settings: HeatmapSettings
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(used [B, P, G], centre [B, P, G, 2], σ [B, P, G, 2]) of every part's Gaussian."""
    index, valid = settings.skeleton.part_tables  # [G, K] (MPII: [10, 6])
    part_kp = kp[:, :, index]  # [B, P, G, K, 2]
    part_vis = (vis[:, :, index] & valid)[..., None]  # [B, P, G, K, 1]
    # Masked joints are replaced before min/max, so a NaN or -1 placeholder never leaks in.
    lo = jnp.min(jnp.where(part_vis, part_kp, jnp.inf), axis=3)  # [B, P, G, 2]
    hi = jnp.max(jnp.where(part_vis, part_kp, -jnp.inf), axis=3)
    used = jnp.sum(part_vis[..., 0], axis=3) >= 2  # [B, P, G]
    lo = jnp.where(used[..., None], lo, 0.0)
    hi = jnp.where(used[..., None], hi, 0.0)
    return used, (lo + hi) / 2, jnp.maximum((hi - lo) / 2, settings.min_sigma)
