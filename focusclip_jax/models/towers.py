"""Towers by name, each with its own sub-config (as big_vision's two_towers picks them).

`config.model.image` and `config.model.text` are `{name, size, <options>}`: `name` picks the tower
kind from `IMAGE_TOWERS` / `TEXT_TOWERS`, `size` a row of its size table, and any other key is a
constructor option of that kind (it replaces the size's value; `layers.BlockStack`'s options
included). The model-wide speed options (`dtype`, `attention`, `scan_layers`, `remat`) reach every
tower; a tower's own sub-config may set them for that tower alone. To add a tower: a module class
with a `width` attribute and a `__call__` (images → [B, width], or tokens, mask, rng → [B, width]),
and a line in one registry.
"""

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from flax import nnx

from focusclip_jax.models import text, vit
from focusclip_jax.models.layers import BlockStack, compute_dtype


@dataclasses.dataclass(frozen=True)
class TowerKind:
    """A tower class and its named sizes (constructor options per size)."""

    module: type[nnx.Module]
    sizes: Mapping[str, Mapping[str, Any]]

    def options(self) -> set[str]:
        """Every option the sub-config may set (the class's and, if it takes them, its
        block stack's)."""
        parameters = inspect.signature(self.module.__init__).parameters
        names = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            names |= {f.name for f in dataclasses.fields(BlockStack)} - {"block"}
        return names - {"rngs"}


IMAGE_TOWERS: dict[str, TowerKind] = {"vit": TowerKind(vit.ViT, vit.VIT_SIZES)}
TEXT_TOWERS: dict[str, TowerKind] = {
    "bert": TowerKind(text.BertTextEncoder, text.TEXT_SIZES),
    "clip": TowerKind(text.CausalTextEncoder, text.TEXT_SIZES),
}
REGISTRIES = {"image": IMAGE_TOWERS, "text": TEXT_TOWERS}


def resolve(role: str, sub_config: Mapping[str, Any]) -> tuple[TowerKind, dict[str, Any]]:
    """The kind and the size's options with the sub-config's on top, every key checked; errors
    name the config key (`model.<role>.<key>`)."""
    registry = REGISTRIES[role]
    options = dict(sub_config)
    name, size = options.pop("name", None), options.pop("size", None)
    if name not in registry:
        raise ValueError(f"config model.{role}.name={name!r}: {role} towers are {sorted(registry)}")
    kind = registry[name]
    if size not in kind.sizes:
        raise ValueError(
            f"config model.{role}.size={size!r}: sizes of the {name} tower are {sorted(kind.sizes)}"
        )
    unknown = sorted(set(options) - kind.options())
    if unknown:
        raise ValueError(
            f"config model.{role}.{unknown[0]}: the {name} tower has no such option; "
            f"it takes {sorted(kind.options())}"
        )
    return kind, {**kind.sizes[size], **options}


def create(
    role: str, sub_config: Mapping[str, Any], *, rngs: nnx.Rngs, **model_options: Any
) -> nnx.Module:
    """The `role` ('image' or 'text') tower its sub-config names. `model_options`: the
    model-wide options and inputs (dtype, speed options, `image_size`), under the sub-config's.
    The tower checks its options as it is built; an error names the config key."""
    kind, options = resolve(role, sub_config)
    accepted = kind.options()
    shared = {key: value for key, value in model_options.items() if key in accepted}
    try:
        if "dtype" in options:  # the tower's own may be 'auto' too
            options = {**options, "dtype": compute_dtype(options["dtype"])}
        return kind.module(**{**shared, **options}, rngs=rngs)
    except ValueError as error:  # `<option>=<value>: ...` from the tower or its block stack
        option = str(error).partition("=")[0]
        if option in options:
            raise ValueError(f"config model.{role}.{error}") from None
        if option in shared:  # a model-wide option (or input) the sub-config does not set
            raise ValueError(f"config model.{error}") from None
        raise ValueError(f"config model.{role}: {error}") from None
