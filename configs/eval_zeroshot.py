"""Zero-shot evaluation of a trained checkpoint on the paper's benchmarks.

`python -m focusclip_jax.evaluate --checkpoint=<workdir or step dir> --config.data_root=<dir>`
(this config is its default) restores the parameters, evaluates every dataset found under
`data_root` (layouts: input_pipeline/benchmarks/readers.py), and writes results.json, results.md
(the paper's table with its numbers alongside) and confusion-matrix PNGs.

Variants, comma-separated: `paper` evaluates EMOTIC and FER2013 on their train splits as the paper
did (for comparison with its numbers); `ensemble` averages CLIP-style prompt templates instead of
the paper's single prompt. The model, tokenizer, loss and training data come from the
checkpoint's workdir; a variant of configs/pretrain.py (`clip`, `causal`, ...) describes the model
of a workdir trained before runs were recorded.
"""

import ml_collections

from configs import pretrain
from input_pipeline.benchmarks import readers

OWN_VARIANTS = ("paper", "ensemble")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = [v for v in (arg or "").split(",") if v]
    config = pretrain.base_config()
    pretrain.apply_variants(config, ",".join(v for v in variants if v not in OWN_VARIANTS))
    config.data_root = "data/eval"
    config.evals.zero_shot.datasets = readers.PAPER_BENCHMARKS
    config.evals.zero_shot.root = config.get_ref("data_root")
    config.evals.linear_probe.root = config.get_ref("data_root")
    config.lock()  # as configs/pretrain.py's: a key that does not exist is an error

    if "paper" in variants:
        config.evals.zero_shot.splits = ml_collections.ConfigDict(
            {"emotic": "train", "fer2013": "train"}
        )
    if "ensemble" in variants:
        config.evals.zero_shot.templates = "ensemble"
    return config
