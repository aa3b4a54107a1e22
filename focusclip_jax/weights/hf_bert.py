"""Hugging Face BERT checkpoints (bert-base-uncased, MiniLM, ...) ↔ our `BertTextEncoder`.

A checkpoint is a directory with `config.json` and `model.safetensors` (or `pytorch_model.bin`,
which needs torch) and `vocab.txt` for the tokenizer. PyTorch Linear weights are `[out, in]`;
ours are `[in, out]` kernels with attention heads as their own axis.
"""

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from focusclip_jax.weights import common
from focusclip_jax.weights.common import Mapped, ParamPath

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read(directory: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """The checkpoint's tensors with BertModel names (prefix `bert.` and gamma/beta renamed)."""
    directory = Path(directory)
    files = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not files:
        raise FileNotFoundError(
            f"{directory}: no {' or '.join(WEIGHT_FILES)}; download a Hugging Face BERT "
            "checkpoint (e.g. bert-base-uncased: config.json, model.safetensors, vocab.txt) there"
        )
    tensors = {}
    for key, value in common.read_tensors(files[0]).items():
        key = key.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight")
        tensors[key.replace("LayerNorm.beta", "LayerNorm.bias")] = value
    return tensors, str(files[0])


def to_params(
    tensors: Mapping[str, np.ndarray], target: Mapping[ParamPath, object], source: str
) -> Mapped:
    """BertModel tensors → `BertTextEncoder` parameters, shaped like `target` (a flat tree)."""
    heads = common.num_heads(target)
    t = lambda key: common.entry(tensors, key, source)
    out: Mapped = {
        ("token_embed", "embedding"): t("embeddings.word_embeddings.weight"),
        ("type_embed", "embedding"): t("embeddings.token_type_embeddings.weight"),
        ("embed_norm", "scale"): t("embeddings.LayerNorm.weight"),
        ("embed_norm", "bias"): t("embeddings.LayerNorm.bias"),
    }
    # A shorter context keeps the first positions: the rows for the positions we use are exact.
    key = "embeddings.position_embeddings.weight"
    positions = common.take(tensors, key, source)
    out[("pos_embed", "embedding")] = (
        key,
        positions[: np.shape(target[("pos_embed", "embedding")])[0]],
    )
    for i in range(common.num_blocks(target)):
        layer = f"encoder.layer.{i}"
        names = {
            ("attn", "query"): f"{layer}.attention.self.query",
            ("attn", "key"): f"{layer}.attention.self.key",
            ("attn", "value"): f"{layer}.attention.self.value",
        }
        for path, name in names.items():
            w = common.take(tensors, f"{name}.weight", source)
            b = common.take(tensors, f"{name}.bias", source)
            out[("blocks", i, *path, "kernel")] = (
                f"{name}.weight",
                common.split_heads_in(w, heads),
            )
            out[("blocks", i, *path, "bias")] = (f"{name}.bias", b.reshape(heads, -1))
        name = f"{layer}.attention.output.dense"
        w = common.take(tensors, f"{name}.weight", source)
        kernel = common.split_heads_out(w, heads)
        out[("blocks", i, "attn", "out", "kernel")] = (f"{name}.weight", kernel)
        out[("blocks", i, "attn", "out", "bias")] = t(f"{name}.bias")
        for ours, theirs in (
            (("mlp", "fc1"), f"{layer}.intermediate.dense"),
            (("mlp", "fc2"), f"{layer}.output.dense"),
        ):
            name, w = t(f"{theirs}.weight")
            out[("blocks", i, *ours, "kernel")] = (name, w.T)
            out[("blocks", i, *ours, "bias")] = t(f"{theirs}.bias")
        for ours, theirs in (
            ("norm1", f"{layer}.attention.output.LayerNorm"),
            ("norm2", f"{layer}.output.LayerNorm"),
        ):
            out[("blocks", i, ours, "scale")] = t(f"{theirs}.weight")
            out[("blocks", i, ours, "bias")] = t(f"{theirs}.bias")
    return out


def from_params(params: Mapping[ParamPath, np.ndarray]) -> dict[str, np.ndarray]:
    """`BertTextEncoder` parameters (flat) → BertModel tensor names (no pooler: unused here)."""
    p = {k: np.asarray(v) for k, v in params.items()}
    out = {
        "embeddings.word_embeddings.weight": p[("token_embed", "embedding")],
        "embeddings.position_embeddings.weight": p[("pos_embed", "embedding")],
        "embeddings.token_type_embeddings.weight": p[("type_embed", "embedding")],
        "embeddings.LayerNorm.weight": p[("embed_norm", "scale")],
        "embeddings.LayerNorm.bias": p[("embed_norm", "bias")],
    }
    for i in range(common.num_blocks(p)):
        layer, blk = f"encoder.layer.{i}", ("blocks", i)
        for ours in ("query", "key", "value"):
            name = f"{layer}.attention.self.{ours}"
            out[f"{name}.weight"] = common.merge_heads_in(p[(*blk, "attn", ours, "kernel")])
            out[f"{name}.bias"] = p[(*blk, "attn", ours, "bias")].reshape(-1)
        name = f"{layer}.attention.output.dense"
        out[f"{name}.weight"] = common.merge_heads_out(p[(*blk, "attn", "out", "kernel")])
        out[f"{name}.bias"] = p[(*blk, "attn", "out", "bias")]
        for ours, theirs in (("fc1", "intermediate.dense"), ("fc2", "output.dense")):
            out[f"{layer}.{theirs}.weight"] = p[(*blk, "mlp", ours, "kernel")].T
            out[f"{layer}.{theirs}.bias"] = p[(*blk, "mlp", ours, "bias")]
        for ours, theirs in (
            ("norm1", "attention.output.LayerNorm"),
            ("norm2", "output.LayerNorm"),
        ):
            out[f"{layer}.{theirs}.weight"] = p[(*blk, ours, "scale")]
            out[f"{layer}.{theirs}.bias"] = p[(*blk, ours, "bias")]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def save(params: Mapping[ParamPath, np.ndarray], directory: str | Path, eps: float = 1e-12) -> None:
    """Writes `config.json` + `model.safetensors` for `transformers.BertModel` (pooler left out)."""
    tensors = from_params(params)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, width = tensors["embeddings.word_embeddings.weight"].shape
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": width,
        "intermediate_size": tensors["encoder.layer.0.intermediate.dense.weight"].shape[0],
        "layer_norm_eps": eps,
        "max_position_embeddings": tensors["embeddings.position_embeddings.weight"].shape[0],
        "num_attention_heads": int(np.shape(params[("blocks", 0, "attn", "query", "kernel")])[1]),
        "num_hidden_layers": common.num_blocks(params),
        "type_vocab_size": tensors["embeddings.token_type_embeddings.weight"].shape[0],
        "vocab_size": vocab,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    common.write_tensors(tensors, directory / "model.safetensors", {"format": "pt"})


def read_config(directory: str | Path) -> dict:
    """The checkpoint's `config.json` (sizes to build a matching tower)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Hugging Face BERT directory has one")
    return json.loads(path.read_text())


def check_heads(config: Mapping, target: Mapping[ParamPath, object], source: str) -> None:
    """Heads are not visible in the tensors' shapes: compare them with `config.json`."""
    found, expected = config["num_attention_heads"], common.num_heads(target)
    if found != expected:
        raise common.WeightImportError(
            f"{source}: the model has {expected} attention heads, the checkpoint "
            f"{found} (config.json num_attention_heads)"
        )


def tower_overrides(config: Mapping) -> dict:
    """`BertTextEncoder` arguments that reproduce a Hugging Face `config.json`."""
    act = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
    if config.get("hidden_act", "gelu") not in act:
        raise ValueError(f"unsupported BERT activation {config['hidden_act']!r}")
    return dict(
        width=config["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_dim=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        max_len=config["max_position_embeddings"],
        type_vocab_size=config.get("type_vocab_size", 2),
        activation=act[config.get("hidden_act", "gelu")],
        eps=config.get("layer_norm_eps", 1e-12),
    )
