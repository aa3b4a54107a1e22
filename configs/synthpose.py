"""The SynthPose benchmark: does subject-level guidance help when distractors are present?

`python -m bench.synthpose` trains this config (FocusCLIP: the paper's three pairs) and the same
config with pretrain.py's `clip` variant (the (image, text) pair alone) with the same data, seeds
and number of steps, then evaluates both zero-shot on the held-out seed with and without
distractors. The budget fits a shared 2-core CPU: six runs in under an hour. Variants after a
colon as in pretrain.py (`configs/synthpose.py:clip` is the baseline on its own).
"""

import ml_collections

from configs import demo, pretrain


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = demo.get_config()
    config.model.image.depth = 2
    config.model.text.depth = 1
    config.data.train_records = 4096
    config.data.eval_records = 1024
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 50
    config.train.num_steps = 700
    config.checkpoint.every_steps = 1_000_000  # a benchmark run is never resumed
    config.log_every_steps = 100
    pretrain.apply_variants(config, arg)
    config.tokenizer.kind = "synthetic_words"
    return config
