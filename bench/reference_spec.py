"""The PyTorch reference, from the JAX side: its model spec from a config (what
bench/torch_reference.py builds and bench/matmuls.py times) and running its scripts in the
reference Python. Flag-free, so tests and other benchmarks can import it."""

import json
import subprocess
from pathlib import Path
from typing import Any

import ml_collections

from focusclip_jax.models import towers

REPO = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = REPO / ".venv-ref" / "bin" / "python"  # `make reference-venv`


def torch_spec(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The sizes and recipe bench/torch_reference.py builds, from a config's model and loss."""
    model = config.model
    towers_ok = model.image.name == "vit" and model.text.name == "bert"
    if not towers_ok or model.heatmap_tower != "shared":
        raise ValueError("the PyTorch reference is the original's: ViT, BERT, shared image tower")
    if config.loss.kind != "nt_xent" or config.optimizer.name != "sgd":
        raise ValueError("the PyTorch reference trains with NT-Xent and SGD, as the original")
    _, vit = towers.resolve("image", model.image.to_dict())
    _, text = towers.resolve("text", model.text.to_dict())
    return {
        "image_size": model.image_size,
        "vit": vit,
        "text": {key: text[key] for key in ("width", "depth", "num_heads", "mlp_dim")},
        "vocab_size": text["vocab_size"],
        "max_len": text["max_len"],
        "embed_dim": model.embed_dim,
        "pairs": [list(p) for p in config.loss.pairs],
        "temperature": config.loss.temperature,
        "learning_rate": config.optimizer.learning_rate,
        "grad_clip_norm": config.optimizer.grad_clip_norm,
        "seed": config.seed,
    }


def run_in_reference_python(python: str, module: str, args: list[str]) -> Any:
    """Runs `python -m module *args` from the repository root; its last stdout line is JSON."""
    if not Path(python).exists():
        raise FileNotFoundError(
            f"--torch_python={python} does not exist: `make reference-venv` builds "
            f"{REFERENCE_PYTHON.parents[1].name} (Python 3.11, requirements-reference.txt)"
        )
    command = [python, "-m", module, *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
