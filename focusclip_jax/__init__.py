"""FocusCLIP in JAX/Flax NNX: CLIP with subject-level (pose heatmap) guidance.

`focusclip_jax.load(workdir)` gives a trained model (`setup.TrainedModel`): `encode_image`,
`encode_text`, `tokenize`, `classify`. The package's modules are imported on first use, so that
`python -m focusclip_jax.aot` can configure the compile-only environment before JAX starts.
"""

from typing import Any

__all__ = ["load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from focusclip_jax.setup import load_trained

        return load_trained
    raise AttributeError(f"module 'focusclip_jax' has no attribute {name!r}")
