r"""The whole-model exports against the JAX model: train tiny models, export, read them back.

    python -m bench.export_roundtrip [--config=tests/tiny.py] \
        [--torch_python=.venv-ref/bin/python] [--workdir=<scratch folder>]

Trains two tiny models for `--steps` steps from `--config` (SynthPose in memory): one that
`--format=hf` takes (ViT, BERT with CLS pooling, a small WordPiece vocab.txt) and one that
`--format=open_clip` takes (CLIP-style ViT, causal text tower, CLIP's BPE: the full vocabulary
of the reference venv's open_clip where there is one, else the small test fixture). Each is
exported by `focusclip_jax.export`, then loaded again with `focusclip_jax.load` to embed a few
image files (of other sizes than the model's) and texts. The reference Python (`make
reference-venv`) reads the exports with transformers and open_clip (bench/export_reference.py)
and the script prints the max absolute differences of the L2-normalised embeddings and of the
zero-shot logits, and whether tokenizers and pixels agree.
"""

import json
import tempfile
from pathlib import Path

import ml_collections
import numpy as np
from absl import flags
from PIL import Image

from bench.reference_spec import REFERENCE_PYTHON, REPO, run_in_reference_python
from input_pipeline import cli

WORDPIECE_VOCAB = REPO / "tests" / "fixtures" / "tokenizers" / "bert_vocab_small.txt"
SMALL_CLIP_BPE = REPO / "tests" / "fixtures" / "tokenizers" / "bpe_clip_2000.txt.gz"
TEXTS = (
    "a photo of a person standing with arms raised",
    "A person KNEELING, the left hand on the ground; reaching forward!",
    "Café crème at the seaside",
    "",
    " ".join(["the person is squatting with both knees bent"] * 8),  # longer than the context
)

FLAGS = flags.FLAGS


def for_hf(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with what `--format=hf` needs: CLS pooling, BERT's WordPiece."""
    config.model.text.pooling = "cls"
    config.tokenizer.kind = "bert_wordpiece"
    config.tokenizer.vocab = str(WORDPIECE_VOCAB)
    return config


def for_open_clip(config: ml_collections.ConfigDict, bpe: Path) -> ml_collections.ConfigDict:
    """`config` with open_clip's towers at the same sizes (a CLIP-style ViT, the causal text
    tower) and CLIP's BPE in `bpe`."""
    text = config.model.text
    sizes = {key: text[key] for key in ("size", "width", "depth", "num_heads", "mlp_dim")}
    with config.unlocked():
        config.model.image.update(
            {"pre_norm": True, "patch_bias": False, "eps": 1e-5, "activation": "quick_gelu"}
        )
        config.model.text = ml_collections.ConfigDict(
            {"name": "clip", "vocab_size": -1, "max_len": text.max_len, **sizes}
        )
    config.tokenizer.kind = "clip_bpe"
    config.tokenizer.vocab = str(bpe)
    return config


def write_images(folder: Path, size: int) -> list[Path]:
    """Three image files: one at the model's size, two that both sides resize (bicubic)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (height, width, suffix) in enumerate(
        ((size, size, "png"), (40, 50, "jpg"), (20, 20, "png"))
    ):
        gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
        pixels = np.clip(gradient + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"image_{i}.{suffix}")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def jax_side(workdir: Path, prefix: str, paths: list[Path]) -> dict[str, np.ndarray]:
    """The trained model's embeddings, scale, tokens and pixels, keyed `<prefix>_...`."""
    import focusclip_jax
    from focusclip_jax import sharding

    mesh = sharding.create_mesh({"data": 1})
    trained = focusclip_jax.load(str(workdir), mesh=mesh, batch_size=4)
    pixels, unreadable = trained.read_images(paths)
    assert not unreadable, unreadable
    tokens, _ = trained.tokenize(TEXTS)
    config = trained.setup.model_config
    return {
        f"{prefix}_image": trained.encode_image(pixels),
        f"{prefix}_text": trained.encode_text(TEXTS),
        f"{prefix}_scale": np.asarray(trained.setup.similarity_scale(trained.params)),
        f"{prefix}_tokens": tokens,
        f"{prefix}_pixels": pixels,
        f"{prefix}_mean": np.asarray(config.pixel_mean, np.float32),
        f"{prefix}_std": np.asarray(config.pixel_std, np.float32),
    }


def train_and_export(
    config: ml_collections.ConfigDict, workdir: Path, fmt: str, out: Path, steps: int
) -> None:
    from focusclip_jax import export, train

    config.mesh.data = 1
    config.train.num_steps = steps
    config.evals.zero_shot.datasets = ()
    train.train_and_evaluate(config, workdir)
    export.export(None, str(workdir), None, str(out), fmt=fmt, overwrite=True)


def full_clip_bpe(python: Path) -> Path | None:
    """CLIP's BPE vocabulary inside the reference venv's open_clip, if there."""
    found = sorted(python.parents[1].glob("lib/python*/site-packages/open_clip/bpe_simple*.gz"))
    return found[0] if found else None


def run(root: Path, base: ml_collections.ConfigDict, torch_python: str, steps: int) -> dict:
    """Trains, exports and compares (module docstring) in `root`; the reference's result."""
    paths = write_images(root / "images", base.model.image_size)
    bpe = full_clip_bpe(Path(torch_python)) or SMALL_CLIP_BPE
    exports = {"hf": root / "hf", "open_clip": root / "open_clip.safetensors"}
    configs = {
        "hf": for_hf(base.copy_and_resolve_references()),
        "open_clip": for_open_clip(base.copy_and_resolve_references(), bpe),
    }
    inputs: dict[str, np.ndarray] = {
        "texts": np.asarray(TEXTS),
        "image_paths": np.asarray([str(p) for p in paths]),
    }
    for fmt, config in configs.items():
        train_and_export(config, root / f"run_{fmt}", fmt, exports[fmt], steps)
        inputs |= jax_side(root / f"run_{fmt}", fmt, paths)
    np.savez(root / "inputs.npz", **inputs)
    args = [f"--inputs={root / 'inputs.npz'}", f"--hf={exports['hf']}"]
    args.append(f"--open_clip={exports['open_clip']}")
    result = run_in_reference_python(torch_python, "bench.export_reference", args)
    result["clip_bpe"] = str(bpe)
    return result


def main(argv: list[str]) -> None:
    del argv
    options = dict(base=FLAGS.config, torch_python=FLAGS.torch_python, steps=FLAGS.steps)
    if FLAGS.workdir:
        result = run(Path(FLAGS.workdir), **options)
    else:
        with tempfile.TemporaryDirectory() as folder:
            result = run(Path(folder), **options)
    for fmt in ("hf", "open_clip"):
        r = result[fmt]
        print(
            f"{fmt}: max |diff| of normalised embeddings: images {r['image']:.2e}, texts "
            f"{r['text']:.2e}; zero-shot logits {r['logits']:.2e}; "
            f"same token ids: {r.get('same_token_ids', 'not compared')}"
        )
    print(json.dumps(result))


def define_flags() -> None:
    """Defined only when run as a program: tests import this module beside others' flags."""
    cli.define_config_file("config", str(REPO / "tests" / "tiny.py"), "The tiny model.")
    flags.DEFINE_integer("steps", 2, "Training steps of each tiny model.")
    flags.DEFINE_string("torch_python", str(REFERENCE_PYTHON), "Python with torch, transformers.")
    flags.DEFINE_string("workdir", "", "Scratch folder (default: a temporary one).")
    cli.check_flags(
        steps=cli.Number(integer=True, at_least=1),
        torch_python=cli.Path("file"),
        workdir=cli.Path("new_folder"),
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
