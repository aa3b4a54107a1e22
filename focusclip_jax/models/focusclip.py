"""FocusCLIP: image and text towers with heatmap-guided focusing of the image during training.

`focused = image * (alpha + (1 - alpha) * heatmap)` on [0, 1] pixels (before normalisation), encoded
by the image tower itself (`heatmap_tower='shared'`, the paper's code) or by a third tower with its
own weights (`'separate'`). Inference encodes images and texts only.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from focusclip_jax.models import towers
from focusclip_jax.models.layers import AttentionImpl, Remat, compute_dtype
from focusclip_jax.sharding import constrain_batch
from input_pipeline.errors import check_choice, check_number

MODALITIES = ("image", "focused", "text")
LOG_100 = math.log(100.0)


def _projection(in_features: int, embed_dim: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """`Linear(width, embed_dim)` with a bias, as the original's heads."""
    return nnx.Linear(
        in_features,
        embed_dim,
        dtype=dtype,
        kernel_init=nnx.with_partitioning(
            nnx.initializers.lecun_normal(), ("embed", None), eager_sharding=False
        ),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, (None,), eager_sharding=False),
        rngs=rngs,
    )


def _l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def _embed(projection: nnx.Linear, features: jax.Array) -> jax.Array:
    """A tower's features → its L2-normalised embedding, rows kept where their batch shard is
    (under FSDP the projection's gathered kernel comes to them, not the reverse)."""
    return _l2_normalize(constrain_batch(projection(constrain_batch(features))))


def _check_options(**options: Any) -> None:
    """The model's own options (the towers check theirs): ValueError naming the config key."""
    key = lambda name: f"config model.{name}"
    check_number(key("embed_dim"), options["embed_dim"], integer=True, at_least=1)
    check_choice(key("heatmap_tower"), options["heatmap_tower"], ("shared", "separate"))
    for name, above in (("pixel_mean", None), ("pixel_std", 0)):
        value = options[name]
        if not isinstance(value, tuple | list) or len(value) != 3:
            raise ValueError(f"{key(name)}={value!r}: expected 3 numbers, one per RGB channel")
        for channel in value:
            check_number(f"{key(name)}={tuple(value)!r}: channel", channel, above=above)
    check_number(key("alpha_init"), options["alpha_init"], at_least=0, at_most=1)
    constrain = options["constrain_alpha"]
    if not isinstance(constrain, bool):
        raise ValueError(f"{key('constrain_alpha')}={constrain!r}: must be True or False")
    check_number(key("logit_scale_init"), options["logit_scale_init"], at_least=0, at_most=LOG_100)
    try:
        compute_dtype(options["dtype"])
    except ValueError as error:  # `dtype=<value>: ...`
        raise ValueError(f"config model.{error}") from None


class FocusCLIP(nnx.Module):
    """Three encoders (image, focused image, text) projected to one L2-normalised space.

    `image` and `text`: the towers' sub-configs (`towers.py`: name, size, options); the speed
    options reach both.
    """

    def __init__(
        self,
        *,
        image_size: int,
        image: Mapping[str, Any],
        text: Mapping[str, Any],
        embed_dim: int,
        heatmap_tower: str = "shared",
        pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        alpha_init: float = 0.5,
        constrain_alpha: bool = True,
        logit_scale_init: float = math.log(1 / 0.07),
        dtype: str | jnp.dtype = jnp.float32,
        attention: AttentionImpl = "xla",
        scan_layers: bool = False,
        remat: Remat = "none",
        loss_scalars: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs,
    ):
        _check_options(
            embed_dim=embed_dim,
            heatmap_tower=heatmap_tower,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            alpha_init=alpha_init,
            constrain_alpha=constrain_alpha,
            logit_scale_init=logit_scale_init,
            dtype=dtype,
        )
        self.heatmap_tower = heatmap_tower
        dtype = compute_dtype(dtype)  # 'auto': from the devices traced for
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)
        shared = dict(dtype=dtype, attention=attention, scan_layers=scan_layers, remat=remat)

        def image_tower() -> nnx.Module:
            return towers.create("image", image, image_size=image_size, rngs=rngs, **shared)

        self.image_tower = image_tower()
        self.image_proj = _projection(self.image_tower.width, embed_dim, dtype, rngs)
        if heatmap_tower == "separate":
            self.focus_tower = image_tower()
            self.focus_proj = _projection(self.focus_tower.width, embed_dim, dtype, rngs)
        self.text_tower = towers.create("text", text, rngs=rngs, **shared)
        self.text_proj = _projection(self.text_tower.width, embed_dim, dtype, rngs)
        # `bounds` are enforced by projection after every optimiser update (as open_clip clamps its
        # logit scale), so gradients stay those of the raw parameter. The original leaves alpha
        # unconstrained: `constrain_alpha=False` reproduces that.
        alpha_bounds = {"bounds": (0.0, 1.0)} if constrain_alpha else {}
        self.alpha = nnx.Param(jnp.asarray(alpha_init, jnp.float32), **alpha_bounds)
        self.logit_scale = nnx.Param(
            jnp.asarray(logit_scale_init, jnp.float32), bounds=(0.0, LOG_100)
        )
        # The loss's own learnable scalars (`losses.Scalar`: init and bounds), at the top level.
        for name, scalar in (loss_scalars or {}).items():
            if hasattr(self, name):
                raise ValueError(f"the loss's scalar {name!r} would replace the model's {name}")
            bounds = {"bounds": tuple(scalar.bounds)} if scalar.bounds else {}
            setattr(self, name, nnx.Param(jnp.asarray(scalar.init, jnp.float32), **bounds))

    def _normalize_pixels(self, images: jax.Array) -> jax.Array:
        mean = jnp.asarray(self.pixel_mean, jnp.float32)
        std = jnp.asarray(self.pixel_std, jnp.float32)
        return (images - mean) / std

    def focus(self, images: jax.Array, heatmaps: jax.Array) -> jax.Array:
        """Dim the pixels away from the subject: `image * (alpha + (1 - alpha) * heatmap)`."""
        alpha = self.alpha[...]
        return images * (alpha + (1.0 - alpha) * heatmaps[..., None])

    def encode_image(self, images: jax.Array) -> jax.Array:
        """[B, H, W, 3] pixels in [0, 1] → L2-normalised [B, embed_dim]."""
        return _embed(self.image_proj, self.image_tower(self._normalize_pixels(images)))

    def encode_text(
        self, tokens: jax.Array, mask: jax.Array, rng: jax.Array | None = None
    ) -> jax.Array:
        """[B, L] token ids and mask → L2-normalised [B, embed_dim]; `rng`: the text tower's
        training dropout (none: evaluation)."""
        return _embed(self.text_proj, self.text_tower(tokens, mask, rng))

    def embed(
        self,
        *,
        images: jax.Array,
        heatmaps: jax.Array | None,
        tokens: jax.Array,
        mask: jax.Array,
        modalities: Iterable[str] = MODALITIES,
        rng: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Embeddings of the requested modalities (training: the ones the loss pairs need, and a
        key for dropout).

        With the shared tower, plain and focused images go through the ViT as one 2B batch.
        """
        modalities = set(modalities)
        unknown = modalities - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected {MODALITIES}")
        out: dict[str, jax.Array] = {}
        if "text" in modalities:
            out["text"] = self.encode_text(tokens, mask, rng)
        if "focused" in modalities:
            if heatmaps is None:
                raise ValueError("the 'focused' modality needs heatmaps")
            focused = self.focus(images, heatmaps)
            if self.heatmap_tower == "separate":
                features = self.focus_tower(self._normalize_pixels(focused))
                out["focused"] = _embed(self.focus_proj, features)
            elif "image" in modalities:
                # Interleaved ([B, 2, ...] → [2B, ...]), not concatenated: each device's share of
                # the 2B batch is then its own images and their focused copies, no exchange.
                both = jnp.stack([images, focused], axis=1).reshape(-1, *images.shape[1:])
                pairs = self.encode_image(both).reshape(images.shape[0], 2, -1)
                out["image"], out["focused"] = pairs[:, 0], pairs[:, 1]
            else:
                out["focused"] = self.encode_image(focused)
        if "image" in modalities and "image" not in out:
            out["image"] = self.encode_image(images)
        return out
