"""A laptop-sized FocusCLIP on embedded synthetic people: the full code path in minutes on CPU.

Tiny towers, 48 px images drawn once into memory, and a word-level tokenizer fitted on the
synthetic grammar. The three pairs of the paper, but CLIP's InfoNCE with a learnable temperature
and AdamW: at this scale the paper's NT-Xent at temperature 0.5 with SGD learns several times
slower (`--config.loss.kind=nt_xent` to compare). Zero-shot evaluation on a held-out split: the
target's shirt colour (learnt within the demo) and its pose (needs much longer training).
Variants as in pretrain.py (`--config=configs/demo.py:clip` trains the CLIP baseline).
"""

import ml_collections

from configs import pretrain


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = pretrain.get_config()
    config.seed = 0

    config.model.image_size = 48
    config.model.vit_size = "tiny"
    config.model.vit_overrides = ml_collections.ConfigDict(
        {"width": 64, "depth": 3, "num_heads": 2, "mlp_dim": 128, "patch_size": 8}
    )
    config.model.text_size = "tiny"
    config.model.text_overrides = ml_collections.ConfigDict(
        {"width": 64, "depth": 2, "num_heads": 2, "mlp_dim": 128}
    )
    config.model.max_len = 80  # the longest synthetic description is 76 tokens
    config.model.embed_dim = 64

    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic"
    config.data.seed = 1
    config.data.eval_seed = 2
    config.data.train_records = 2048
    config.data.eval_records = 512
    config.data.image_size = config.model.get_ref("image_size")
    config.data.max_people = 4
    config.data.worker_count = 0

    config.tokenizer.kind = "synthetic_words"
    config.tokenizer.vocab = ""

    pretrain.apply_variants(config, "modern")
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.05
    config.optimizer.warmup_steps = 50

    config.train.batch_size = 64
    config.train.num_steps = 1000

    config.checkpoint.every_steps = 200
    config.checkpoint.keep = 2
    config.eval.datasets = ("synthetic_pose", "synthetic_shirt")
    config.eval.batch_size = 128
    config.log_every_steps = 50
    config.eval_every_steps = 0

    pretrain.apply_variants(config, arg)
    config.tokenizer.kind = "synthetic_words"  # whatever the variants say: the demo's grammar
    return config
