"""Random batches of the training step's layout: benchmarks without files or a tokenizer."""

import ml_collections
import numpy as np

from input_pipeline.errors import check_number


def check_random_data(config: ml_collections.ConfigDict) -> None:
    """The random batch's own keys (`data.*_tokens`, the vocabulary it draws from): ValueError
    naming the first bad one."""
    vocab = config.model.text.vocab_size
    if not isinstance(vocab, int) or vocab <= 1:
        raise ValueError(
            f"config model.text.vocab_size={vocab!r}: random tokens need a vocabulary size"
        )
    check_number("config data.mean_tokens", config.data.mean_tokens, at_least=1)
    check_number("config data.std_tokens", config.data.std_tokens, at_least=0)
    check_number("config data.min_tokens", config.data.min_tokens, integer=True, at_least=1)


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the training step's layout from random numbers: no files, no tokenizer.

    People have 1 to `data.max_people` entries with random keypoints inside the image, most joints
    visible; texts get lengths ~ N(data.mean_tokens, data.std_tokens) clipped to
    [data.min_tokens, model.text.max_len], random ids below the vocabulary size, padding after.
    """
    check_random_data(config)
    rng = np.random.default_rng(seed)
    batch, size = config.train.batch_size, config.model.image_size
    people, max_len = config.data.max_people, config.model.text.max_len
    vocab = config.model.text.vocab_size
    lengths = np.clip(
        rng.normal(config.data.mean_tokens, config.data.std_tokens, batch).round(),
        min(config.data.min_tokens, max_len),
        max_len,
    ).astype(np.int32)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    count = rng.integers(1, people + 1, batch)
    return {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "keypoints": rng.uniform(0, size - 1, (batch, people, 16, 2)).astype(np.float32),
        "visible": rng.random((batch, people, 16)) < 0.8,
        "person_mask": np.arange(people)[None, :] < count[:, None],
        "tokens": np.where(mask, rng.integers(1, vocab, (batch, max_len)), 0).astype(np.int32),
        "mask": mask,
    }
