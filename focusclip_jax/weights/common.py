"""Reading checkpoint files into numpy, and placing tensors into our parameter tree with checks.

A converter maps a checkpoint to `Mapped`: our parameter path (relative to a tower) → the source
name and the array in our layout. `place` then checks every shape against the model's own
parameters, so a wrong size names the parameter, the expected and the found shape.
"""

import json
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

ParamPath = tuple[str | int, ...]
Mapped = dict[ParamPath, tuple[str, np.ndarray]]


class WeightImportError(ValueError):
    """A checkpoint does not fit the configured model (missing tensor, wrong shape)."""


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a `.safetensors`, `.npz` or (with torch installed) `.pth/.pt/.bin` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: download it once (weights are never fetched at run "
            "time) and point the config at it"
        )
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    if path.suffix in (".pth", ".pt", ".bin"):
        return _read_torch(path)
    raise ValueError(f"{path}: unknown checkpoint format; expected .safetensors, .npz or .pth")


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parses the format directly: `safetensors.numpy` rejects the bfloat16 tensors that many
    PyTorch checkpoints hold (an 8-byte header length, a JSON header, then raw buffers)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + size :]
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        array = np.frombuffer(body[start:end], _SAFETENSORS_DTYPES[info["dtype"]])
        out[name] = array.reshape(info["shape"])
    return out


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs PyTorch, which focusclip_jax does not require: install torch, "
            "or convert the file to .safetensors once where torch is available"
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError:  # OpenAI's CLIP `.pt` files are TorchScript archives
        state = torch.jit.load(path, map_location="cpu").state_dict()
    for key in ("state_dict", "model"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def take(tensors: Mapping[str, np.ndarray], key: str, source: str) -> np.ndarray:
    """The tensor `key`, or an error naming it and the file."""
    if key not in tensors:
        raise WeightImportError(f"{source}: tensor {key!r} not found")
    return np.asarray(tensors[key])


def entry(tensors: Mapping[str, np.ndarray], key: str, source: str) -> tuple[str, np.ndarray]:
    """`(key, tensor)`: a mapped value remembers its source name for error messages."""
    return key, take(tensors, key, source)


def split_heads_in(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """PyTorch Linear `[heads·kv, embed]` → our Einsum kernel `[embed, heads, kv]`."""
    out_features, width = weight.shape
    return weight.T.reshape(width, num_heads, out_features // num_heads)


def split_heads_out(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """PyTorch Linear `[embed, heads·kv]` → our output kernel `[heads, kv, embed]`."""
    width, in_features = weight.shape
    return weight.T.reshape(num_heads, in_features // num_heads, width)


def merge_heads_in(kernel: np.ndarray) -> np.ndarray:
    """Inverse of `split_heads_in`."""
    width = kernel.shape[0]
    return kernel.reshape(width, -1).T


def merge_heads_out(kernel: np.ndarray) -> np.ndarray:
    """Inverse of `split_heads_out`."""
    return kernel.reshape(-1, kernel.shape[-1]).T


def num_blocks(target: Mapping[ParamPath, object]) -> int:
    """Number of transformer blocks in a tower's flat parameters."""
    return len({path[1] for path in target if path[0] == "blocks"})


def num_heads(target: Mapping[ParamPath, object]) -> int:
    return int(np.shape(target[("blocks", 0, "attn", "query", "kernel")])[1])


def place(
    target: Mapping[ParamPath, object], mapped: Mapped, source: str, prefix: ParamPath = ()
) -> dict[ParamPath, np.ndarray]:
    """Checks `mapped` covers every parameter of `target` with its shape; returns full paths.

    `target` holds a tower's parameters (arrays or shape structs); the result's keys are
    `prefix + path`, cast to the target's dtype.
    """
    missing = sorted(set(target) - set(mapped), key=str)
    if missing:
        names = ", ".join("/".join(map(str, p)) for p in missing[:5])
        raise WeightImportError(f"{source}: no tensors for parameters {names}")
    out = {}
    for path, leaf in target.items():
        name, array = mapped[path]
        expected, found = tuple(np.shape(leaf)), tuple(array.shape)
        if expected != found:
            where = "/".join(map(str, prefix + path))
            raise WeightImportError(
                f"{source}: parameter {where} (from {name!r}) expects shape {expected}, "
                f"found {found}"
            )
        out[prefix + path] = np.asarray(array, dtype=leaf.dtype)
    return out
