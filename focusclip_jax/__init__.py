"""FocusCLIP in JAX/Flax NNX: CLIP with subject-level (pose heatmap) guidance."""
