"""Benchmark sizes of the training step (bench/train_step.py, bench/compare.py), on random data.

The paper's recipe (configs/pretrain.py: NT-Xent over three pairs, SGD, shared image tower) at
these sizes, one per variant (`--config=configs/bench.py:small`):
  small    bench-small: ViT-Ti/16 at 224 px + a 4-layer BERT (BERT-mini: width 256, 4 heads),
           context 128 — the size the CPU comparison with the PyTorch reference runs (blocks
           unrolled, the faster choice on CPU)
  b16_128  the paper's towers, ViT-B/16 + BERT-base, context 128
  b16_512  the same at the original code's context, 512
  demo     configs/demo.py's tiny towers (64 px, 16 px patches, context 64) with this file's recipe
  tiny     a few-second compile for tests/test_bench.py (wide enough that matmuls dominate)
Other pretrain.py variants may follow (`:b16_128,clip`). Batches are random in-memory arrays
(`bench.random_batch`): no files, no tokenizer.
"""

import ml_collections

from configs import pretrain

BERT_VOCAB_SIZE = 30522  # bert-base-uncased; the random token ids are drawn below it
SIZES = ("small", "b16_128", "b16_512", "demo", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size, *variants = (arg or "small").split(",")
    if size not in SIZES:
        raise ValueError(f"configs/bench.py:{size}: expected one of {SIZES}")
    config = pretrain.base_config()
    pretrain.apply_variants(config, ",".join(variants))  # then the size: it has the last word
    config.model.text.vocab_size = BERT_VOCAB_SIZE
    config.data = ml_collections.ConfigDict()
    config.data.name = "random"
    config.data.image_size = config.model.get_ref("image_size")
    config.data.max_people = 4
    # Description lengths in tokens ~ N(mean, std), clipped to [min, max_len]: a paragraph per
    # image (the published GPT-4 descriptions run to roughly 100–250 words).
    config.data.mean_tokens = 180
    config.data.std_tokens = 60
    config.data.min_tokens = 16
    config.train.batch_size = 32  # the paper's
    config.train.num_steps = 1000  # only the optimiser's schedule reads it
    config.bench = ml_collections.ConfigDict()
    config.bench.name = size

    if size == "small":
        config.model.image.size = "Ti/16"
        config.model.text.update({"width": 256, "depth": 4, "num_heads": 4, "mlp_dim": 1024})
        config.model.text.max_len = 128
        # Unrolled: on CPU the scan's stacked activation buffers cost about a sixth (16%) of the
        # step (PERFORMANCE.md), and 16 blocks compile in seconds either way.
        config.model.scan_layers = False
        config.model.remat = "none"
    elif size == "b16_128":
        config.model.text.max_len = 128
    elif size == "b16_512":
        config.model.text.max_len = 512
    elif size in ("demo", "tiny"):
        from configs import demo

        demo_model = demo.get_config().model
        config.model.image_size = demo_model.image_size
        config.model.image = demo_model.image
        config.model.text = demo_model.text
        config.model.embed_dim = demo_model.embed_dim
        config.model.text.vocab_size = 1000
        config.data.mean_tokens, config.data.std_tokens = 40, 15
        config.data.min_tokens = 4
        config.train.batch_size = 64
    if size == "tiny":
        config.model.image_size = 32
        config.model.image.update(
            {"width": 256, "depth": 1, "num_heads": 4, "mlp_dim": 1024, "patch_size": 8}
        )
        config.model.text.update({"width": 256, "depth": 1, "num_heads": 4, "mlp_dim": 1024})
        config.model.text.max_len = 16
        config.model.scan_layers = False  # one block per tower: XLA counts the step as it runs
        config.model.embed_dim = 64
        config.data.mean_tokens, config.data.std_tokens = 10, 4
        config.train.batch_size = 16
    config.lock()
    return config
