"""The paper's recipe: FocusCLIP ViT-B/16 (shared) + BERT-base on MPII with pose descriptions.

Variants, comma-separated after the file name (`--config=configs/pretrain.py:clip,modern`):
  clip      the paper's CLIP baseline: the (image, text) pair alone, no heatmap guidance
  separate  a third image tower with its own weights encodes the focused image
  causal    a CLIP-style causal text tower (EOT pooling) instead of BERT, CLIP's BPE tokenizer
  modern    CLIP's symmetric InfoNCE with a learnable temperature, AdamW with warmup + cosine
  siglip    SigLIP's sigmoid loss (learnable scale from t' = log 10 and bias from -10) over the
            same pairs; `--config.loss.chunked=True` passes shards around the device ring
  original  reproduce the original code's quirks: text pooling over padding tokens too, alpha
            unconstrained, float32 compute on accelerators too
  pretrained  the paper's initialisation: ImageNet ViT-B/16 (timm) + bert-base-uncased (HF), from
            the files under data/weights/ (docs/training.md, "Pretrained towers"), ViT input
            normalisation
  coco      COCO-2017 people instead of MPII's (`python -m input_pipeline.prepare.coco`): 17
            joints and COCO's part groups, a human-written caption sampled per step, retrieval
            on the prepared val2017 images with their captions
  tiny      the real MPII pipeline in minutes on a CPU: tiny towers at 64 px, a BPE fitted on the
            descriptions (saved in the workdir), 300 steps of 32 (point data.prepared at any
            prepared MPII-format folder)
Variants apply in the order above, whatever the order given: `tiny,causal` = `causal,tiny`.
"""

import math
from typing import Any

import ml_collections

from input_pipeline.benchmarks.readers import PAPER_BENCHMARKS

MPII_TRAIN_IMAGES = 14_644  # mmpose train split, images
VARIANTS = (
    "clip", "separate", "causal", "modern", "siglip", "original", "pretrained", "coco", "tiny"
)  # fmt: skip
COCO_TRAIN_IMAGES = 56_599  # train2017 images with a person whose keypoints are labelled


def zero_shot_eval(
    datasets: tuple[str, ...], *, batch_size: int = 256, every_steps: int = 0
) -> ml_collections.ConfigDict:
    """A `config.evals` entry of type zero_shot (focusclip_jax/evaluators/zero_shot.py)."""
    return ml_collections.ConfigDict(
        {
            "type": "zero_shot",
            "datasets": tuple(datasets),
            "every_steps": every_steps,  # 0: at the end of training only
            "batch_size": batch_size,
            "root": "data/eval",  # one folder per benchmark under it
            "split": "test",  # each dataset's test split, or "val": its validation split
            "splits": {},  # per dataset family, e.g. {"emotic": "train"} (the paper's)
            "templates": "paper",  # or "ensemble"
            "max_images": 0,  # 0: all; N: an evenly spaced subset (quick looks)
            "decode_threads": 8,
        }
    )


def linear_probe_eval(datasets: tuple[str, ...], **keys: Any) -> ml_collections.ConfigDict:
    """A `config.evals` entry of type linear_probe (focusclip_jax/evaluators/linear_probe.py):
    read as the zero-shot entry reads, fitted on `fit_split`, scored on `score_split`."""
    entry = zero_shot_eval(datasets, **keys)
    entry.type = "linear_probe"
    entry.fit_split = "train"
    entry.score_split = "test"
    entry.l2 = (1e-6, 1e-4, 1e-2, 1.0)  # chosen on a fifth of the fitting images
    return entry


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return finish(base_config(), arg)


def finish(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Apply the variants named in `arg`, then lock the config: from here on a key that does
    not exist (a typo in a variant, a derived config or an override) is an error; values may
    still change."""
    apply_variants(config, arg)
    config.lock()
    return config


def base_config() -> ml_collections.ConfigDict:
    """The paper's recipe, every key defined, no variant applied, not locked (derived configs
    start here)."""
    config = ml_collections.ConfigDict()
    config.seed = 42

    config.model = ml_collections.ConfigDict()
    config.model.name = "focusclip"
    config.model.image_size = 224
    # The towers by name (focusclip_jax/models/towers.py): `size` picks a row of the tower's size
    # table; any other key is one of its options (e.g. depth, num_heads, pre_norm) over the size's.
    config.model.image = ml_collections.ConfigDict({"name": "vit", "size": "B/16"})
    # vocab_size -1: taken from the tokenizer. The original trains Hugging Face's BERT in training
    # mode: dropout 0.1 on the embeddings, every sub-layer's output and the attention
    # probabilities.
    config.model.text = ml_collections.ConfigDict(
        {
            "name": "bert",
            "size": "bert-base",
            "vocab_size": -1,
            "max_len": 512,
            "pooling": "mean",
            "dropout": 0.1,
        }
    )
    config.model.embed_dim = 512
    config.model.heatmap_tower = "shared"
    config.model.pixel_mean = (0.0, 0.0, 0.0)  # the original feeds [0, 1] pixels unnormalised
    config.model.pixel_std = (1.0, 1.0, 1.0)
    config.model.alpha_init = 0.5
    config.model.constrain_alpha = True  # projected into [0, 1]; the original leaves it free
    config.model.logit_scale_init = 2.6592600369262695  # log(1 / 0.07)
    # Speed (focusclip_jax/models/layers.py); none changes the maths beyond rounding.
    # dtype: what matmuls and attention compute in; parameters, optimiser state, LayerNorm
    # statistics, softmax and the loss stay float32. "auto" = bfloat16 on TPUs and GPUs (the
    # mesh's devices), float32 on CPUs; "float32" is the paper's precision (the `original`
    # variant sets it), "bfloat16" everywhere.
    config.model.dtype = "auto"
    # attention: the kernel. "auto" = on TPUs Pallas kernels holding a whole sequence in VMEM,
    # unpadded, up to 512 tokens ("vmem", any dtype); in bf16/fp16 splash attention on TPUs for
    # longer ones and cuDNN flash attention on NVIDIA GPUs (head dim <= 128); else XLA's
    # einsum-softmax-einsum; "xla",
    # "cudnn", "splash", "vmem" (TPUs; interpreted on CPUs), or None (JAX decides). BERT's
    # attention dropout (model.text.dropout, the paper's 0.1) runs in training on the vmem
    # kernels where splash or vmem is chosen (up to 512 tokens), else written out.
    config.model.attention = "auto"
    # scan_layers: blocks stacked on a leading "layers" parameter axis and run by one scan, so
    # compile time does not grow with depth (~3x faster to compile); unrolled, XLA schedules and
    # recomputes across the blocks. Checkpoints of one layout do not load into the other.
    config.model.scan_layers = False
    # remat: which block activations the backward pass keeps; the rest is recomputed: "none"
    # (keep all), "all_but_mlp_activation" (keep all but the MLP's non-linearity output, recomputed
    # from its input), "full" (keep the block's input), "dots_saveable" or
    # "dots_with_no_batch_dims_saveable" (jax.checkpoint policies). Unrolled blocks keeping all
    # but the MLP's activation are the fastest setting in the TPU compiler's estimate (v5e-8,
    # bfloat16): 24.2 ms at batch 32 against 25.4 ms scanned with the weight matmuls' outputs
    # kept, 148 against 198 ms at batch 256, and a larger batch fits (632 against 520; 50.8%
    # against 34.1% MFU there). With scan_layers=True use remat="dots_with_no_batch_dims_saveable"
    # (layers.SCAN_REMAT): a scan storing every residual takes ~3x the temporaries (PERFORMANCE.md,
    # "Scanned layers and remat").
    config.model.remat = "all_but_mlp_activation"

    # Checkpoints the towers start from ("" = random init); see focusclip_jax/weights.
    config.init = ml_collections.ConfigDict()
    config.init.image = ""  # timm_vit:<.safetensors|.pth>, big_vision:<.npz> or open_clip:<file>
    config.init.text = ""  # hf_bert:<dir with config.json, model.safetensors> or open_clip:<file>

    config.heatmaps = ml_collections.ConfigDict()
    config.heatmaps.min_sigma = 1.0  # pixels; the original divides by zero when joints align
    config.heatmaps.mode = "parts"  # the paper's body parts, or "joints": one Gaussian per joint
    config.heatmaps.joint_sigma = 2.0  # pixels at the training resolution; "joints" mode only

    config.loss = ml_collections.ConfigDict()
    config.loss.kind = "nt_xent"
    config.loss.temperature = 0.5
    config.loss.pairs = (("focused", "image"), ("focused", "text"), ("image", "text"))
    config.loss.weights = (1.0, 1.0, 1.0)
    # siglip only: pass embedding shards around the batch axes instead of gathering the batch.
    config.loss.chunked = False

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 5e-4
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.98
    config.optimizer.eps = 1e-6
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    config.optimizer.grad_clip_norm = 1.0

    config.data = ml_collections.ConfigDict()
    config.data.name = "mpii"
    config.data.images = "data/mpii/images"
    config.data.annotations = "data/mpii/annotations/mpii_train.json"
    config.data.descriptions = "data/mpii/descriptions"
    config.data.train_records = MPII_TRAIN_IMAGES
    config.data.image_size = config.model.get_ref("image_size")
    config.data.max_people = 8
    config.data.worker_count = 8
    # Training streams the shards that `python -m input_pipeline.prepare.mpii` writes.
    config.data.prepared = "data/mpii/prepared"
    config.data.split = "train"
    config.data.crop = "squash"  # the paper; or "person", "random_resized"
    config.data.crop_scale = (0.5, 1.0)  # area fraction range of "random_resized"
    config.data.person_margin = 0.15  # "person": box grown by this fraction of its side
    # Where the crop is resampled: "host" (Pillow, in the input pipeline), "device" (the training
    # step, from the stored image sent whole on a canvas_side² canvas; at least the preparation's
    # --max_side), or "auto": the device for "random_resized", whose resample cost the host as
    # much CPU as its decode, the host otherwise (squash and person crops may be stored ready).
    config.data.crop_on = "auto"
    config.data.canvas_side = 512
    config.data.flip = False  # the paper uses no augmentation; True also swaps left/right words
    # One sampled per step among those an image has (gpt-4, gpt-3.5-turbo, gpt-3.5-turbo-legacy,
    # llama-2: the folder names of the published descriptions).
    config.data.description_sources = ("gpt-4",)

    config.tokenizer = ml_collections.ConfigDict()
    # bert_wordpiece, clip_bpe (vocab: bpe_simple_vocab_16e6.txt.gz) or fitted_bpe (fitted on the
    # training descriptions, saved to `path`, e.g. in the workdir, and reused from there).
    config.tokenizer.kind = "bert_wordpiece"
    config.tokenizer.vocab = "data/bert-base-uncased/vocab.txt"
    config.tokenizer.vocab_size = 8192  # fitted_bpe
    config.tokenizer.path = ""  # fitted_bpe: the tokenizer JSON ("": <workdir>/tokenizer.json)

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 32
    # A NaN/Inf loss or gradient: the update is always skipped; "stop" then ends the run with an
    # error naming the step, "skip" goes on and logs the count.
    config.train.on_nonfinite = "stop"
    # Parameters left untrained: regular expressions matched in full against '/'-joined paths,
    # e.g. ("image_tower/.*",) locks the image tower (LiT), (".*_proj/.*",) freezes projections.
    config.train.frozen = ()
    # K > 1: the towers see K chunks of the batch in turn, the gradient stays the whole batch's
    # (every negative); activation memory of one chunk, the towers' forward pass twice.
    config.train.accumulate_steps = 1
    config.train.num_epochs = 64
    config.train.num_steps = config.train.get_ref("num_epochs") * (
        config.data.get_ref("train_records") // config.train.get_ref("batch_size")
    )

    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.sharding = ml_collections.ConfigDict()
    # Logical parameter axes → mesh axes. FSDP splits the model width over `fsdp`.
    config.sharding.rules = (
        ("embed", "fsdp"),
        ("mlp", None),
        ("heads", None),
        ("kv", None),
        ("vocab", None),
        ("patch", None),
        ("pos", None),
    )
    # The optimiser's state and update: "params" (sharded as the parameter: whole on every device
    # under data parallelism), "data" (also split over the data axis, ZeRO stage 1: each device
    # updates its slice; same update, gradients reduce-scattered, new parameters all-gathered),
    # "auto" ("data" on TPUs and GPUs, "params" on CPUs).
    config.sharding.optimizer_state = "auto"

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 1000
    config.checkpoint.keep = 3
    config.checkpoint.async_save = True

    # Evaluators by name, each `{type, every_steps, ...}` (focusclip_jax/evaluators/): the
    # paper's benchmarks found under `root` (input_pipeline/benchmarks/readers.py for the layouts);
    # missing ones are skipped with a warning. configs/eval_zeroshot.py: eval-only runs.
    config.evals = ml_collections.ConfigDict()
    config.evals.zero_shot = zero_shot_eval(PAPER_BENCHMARKS)
    # Image-text retrieval on the prepared MPII validation split (skipped when not prepared).
    config.evals.retrieval = ml_collections.ConfigDict(
        {
            "type": "retrieval",
            "datasets": ("mpii_val",),
            "batch_size": 256,
            "every_steps": 0,
            "image_list": "",  # a file of image names to keep (COCO's 5k test split)
        }
    )
    # Linear probes on frozen image embeddings: none by default (each needs a train split).
    config.evals.linear_probe = linear_probe_eval(())
    config.log_every_steps = 50
    return config


def apply_variants(config: ml_collections.ConfigDict, arg: str | None) -> None:
    """Apply the comma-separated variants named in `arg` (see the module docstring), in the
    order of VARIANTS."""
    named = [v.strip() for v in (arg or "").split(",") if v.strip()]
    unknown = [v for v in named if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown config variant {unknown[0]!r}; expected one of {VARIANTS}")
    for variant in sorted(set(named), key=VARIANTS.index):
        if variant == "clip":
            config.loss.pairs = (("image", "text"),)
            config.loss.weights = (1.0,)
        elif variant == "separate":
            config.model.heatmap_tower = "separate"
        elif variant == "causal":
            text = config.model.text
            config.model.text = ml_collections.ConfigDict(
                {"name": "clip", "size": "clip-b", "vocab_size": -1, "max_len": 77}
                | {"dropout": text.dropout}
            )
            config.tokenizer.kind = "clip_bpe"
            config.tokenizer.vocab = "data/clip/bpe_simple_vocab_16e6.txt.gz"
            if config.init.text.startswith("hf_bert:"):  # a BERT checkpoint cannot start it
                config.init.text = ""
        elif variant == "modern":
            config.loss.kind = "clip"
            config.optimizer.name = "adamw"
            config.optimizer.learning_rate = 5e-4
            config.optimizer.weight_decay = 0.2
            config.optimizer.schedule = "warmup_cosine"
            config.optimizer.warmup_steps = 500
        elif variant == "siglip":
            config.loss.kind = "siglip"
            config.model.logit_scale_init = math.log(10.0)
        elif variant == "original":
            if config.model.text.name == "bert":  # the causal tower pools at its end token
                config.model.text.pooling = "mean_with_padding"
            config.model.constrain_alpha = False
            config.model.dtype = "float32"
        elif variant == "pretrained":
            config.init.image = "timm_vit:data/weights/vit_base_patch16_224.safetensors"
            if config.model.text.name == "bert":  # the causal tower has no BERT checkpoint
                config.init.text = "hf_bert:data/bert-base-uncased"
                config.tokenizer.vocab = "data/bert-base-uncased/vocab.txt"
            config.model.pixel_mean = (0.5, 0.5, 0.5)  # timm vit_base_patch16_224 (AugReg)
            config.model.pixel_std = (0.5, 0.5, 0.5)
        elif variant == "coco":
            config.data.name = "coco"
            config.data.prepared = "data/coco/prepared"
            config.data.train_records = COCO_TRAIN_IMAGES
            # prepare_coco's caption sources: one of the image's captions per step
            config.data.description_sources = tuple(f"caption_{i}" for i in range(7))
            config.evals.retrieval.datasets = ("coco_val",)
        elif variant == "tiny":
            _tiny(config)


def tiny_towers(config: ml_collections.ConfigDict) -> None:
    """The demo's towers: a 3-block ViT with 16 px patches at 64 px and a 2-block text tower,
    width 64, blocks unrolled (a few layers: no compile time to save, and on CPU the scan's
    stacked activation buffers cost about a sixth of the step, PERFORMANCE.md) keeping all for
    the backward pass (XLA recomputes what it can when unrolled); random initialisation."""
    config.model.image_size = 64
    config.model.image.update(
        {"size": "tiny", "width": 64, "depth": 3, "num_heads": 2, "mlp_dim": 128, "patch_size": 16}
    )
    config.model.text.update(
        {"size": "tiny", "width": 64, "depth": 2, "num_heads": 2, "mlp_dim": 128}
    )
    config.model.embed_dim = 64
    config.model.scan_layers = False
    config.model.remat = "none"
    config.init.image = config.init.text = ""


def _tiny(config: ml_collections.ConfigDict) -> None:
    """configs/demo.py's towers on the real pipeline: minutes of CPU on prepared MPII shards."""
    tiny_towers(config)
    config.model.text.max_len = 128  # a description's opening: count, posture, legs and arms
    config.tokenizer.kind = "fitted_bpe"
    config.tokenizer.vocab_size = 2048
    config.data.worker_count = 2
    config.train.batch_size = 32
    config.train.num_steps = 300
    config.checkpoint.every_steps = 100
    config.evals.zero_shot.batch_size = 64
    config.evals.retrieval.batch_size = 64
    config.log_every_steps = 10
