"""Pretrained tower weights: import (HF BERT, timm / big_vision ViT, open_clip) and export."""

from focusclip_jax.weights.common import WeightImportError, read_tensors
from focusclip_jax.weights.loader import (
    check_readable,
    check_tree,
    export_tower,
    load,
    pretrained_params,
    requested,
    required_files,
)

__all__ = [
    "WeightImportError",
    "check_readable",
    "check_tree",
    "export_tower",
    "load",
    "pretrained_params",
    "read_tensors",
    "requested",
    "required_files",
]
