"""Reading checkpoint files into numpy, and placing tensors into our parameter tree with checks.

A converter maps a checkpoint to `Mapped`: our parameter path (relative to a tower) → the source
name and the array in our layout. `place` then checks every shape against the model's own
parameters, so a wrong size names the parameter, the expected and the found shape.

Converters and exporters see blocks one by one (`blocks/<i>/...`); a tower built with
`model.scan_layers` stacks them (`blocks/...` with a leading layer axis): `unstack_layers` and
`stack_layers` translate between the two layouts.
"""

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import safetensors.numpy

from input_pipeline.errors import InputDataError

ParamPath = tuple[str | int, ...]
Mapped = dict[ParamPath, tuple[str, np.ndarray]]


class WeightImportError(InputDataError, ValueError):
    """A checkpoint does not fit the configured model (missing tensor, wrong shape): a user's
    mistake, printed in one line by every command-line tool."""


def write_tensors(
    tensors: Mapping[str, np.ndarray], path: str | Path, metadata: Mapping[str, str]
) -> None:
    """A `.safetensors` file with the user's file permissions: `safetensors.numpy.save_file`
    creates its files readable by their owner alone (0600), whatever the umask."""
    Path(path).write_bytes(safetensors.numpy.save(dict(tensors), metadata=dict(metadata)))


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


def safetensors_header(path: Path) -> tuple[dict, int]:
    """The tensors' header of a `.safetensors` file and the offset of their data: an 8-byte
    little-endian header length, then a JSON header. A file of another kind, cut short or
    empty, is a `WeightImportError` naming it (read before anything is written: cheap)."""
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(8), "little")
        total = path.stat().st_size
        problem = "shorter than a header" if total < 8 else ""
        if not problem and not 2 <= length <= total - 8:
            problem = f"a header of {length} bytes in a file of {total}"
        try:
            header = None if problem else json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            problem = f"its header is no JSON ({error})"
    if not problem and not isinstance(header, dict):
        problem = "its header is no JSON object"
    if not problem:
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        bad = [k for k, v in tensors.items() if not {"dtype", "shape", "data_offsets"} <= set(v)]
        problem = f"tensor {bad[0]!r} lacks dtype, shape or data_offsets" if bad else ""
    if problem:
        raise WeightImportError(f"{path}: not a readable safetensors file ({problem})")
    return header, 8 + length


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parses the format directly: `safetensors.numpy` rejects the bfloat16 tensors that many
    PyTorch checkpoints hold (an 8-byte header length, a JSON header, then raw buffers)."""
    header, start = safetensors_header(path)
    header.pop("__metadata__", None)
    body = memoryview(path.read_bytes())[start:]
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
    """Number of transformer blocks in a tower's flat parameters (either layout)."""
    if is_scanned(target):
        return int(np.shape(target[("blocks", "norm1", "scale")])[0])
    return len({path[1] for path in target if path[0] == "blocks"})


def num_heads(target: Mapping[ParamPath, object]) -> int:
    """Attention heads of a tower's blocks (either layout): the query kernel's heads axis."""
    if is_scanned(target):
        return int(np.shape(target[("blocks", "attn", "query", "kernel")])[2])
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


def is_scanned(params: Mapping[ParamPath, object]) -> bool:
    """Whether a tower's blocks are stacked on a leading layer axis (`model.scan_layers`).

    Per-layer paths are `("blocks", i, ...)`, with `i` an int (or its string, as orbax stores it).
    """
    return any(path[0] == "blocks" and not str(path[1]).isdigit() for path in params)


def unstack_layers(params: Mapping[ParamPath, object]) -> dict[ParamPath, object]:
    """A scanned tower's flat parameters → per-block paths `("blocks", i, ...)`.

    numpy leaves are sliced (views); any other leaf (a device array, a shape struct) becomes a
    `ShapeDtypeStruct` of one layer, which is all a converter's target needs.
    """
    out: dict[ParamPath, object] = {}
    for path, leaf in params.items():
        if path[0] != "blocks":
            out[path] = leaf
            continue
        for i in range(np.shape(leaf)[0]):
            one = (
                leaf[i]
                if isinstance(leaf, np.ndarray)
                else jax.ShapeDtypeStruct(np.shape(leaf)[1:], leaf.dtype)
            )
            out[("blocks", i, *path[1:])] = one
    return out


def stack_layers(
    params: Mapping[ParamPath, np.ndarray], prefix: ParamPath = ()
) -> dict[ParamPath, np.ndarray]:
    """Inverse of `unstack_layers` under `prefix`: `blocks/<i>/x` → `blocks/x` of shape [L, ...]."""
    k = len(prefix)
    out: dict[ParamPath, np.ndarray] = {}
    layers: dict[ParamPath, dict[int, np.ndarray]] = {}
    for path, value in params.items():
        if path[k] == "blocks":
            layers.setdefault((*path[: k + 1], *path[k + 2 :]), {})[path[k + 1]] = value
        else:
            out[path] = value
    for path, by_index in layers.items():
        out[path] = np.stack([by_index[i] for i in range(len(by_index))])
    return out


Converter = Callable[[Mapping[str, np.ndarray], Mapping[ParamPath, object], str], Mapped]


def place_tower(
    target: Mapping[ParamPath, object],
    convert: Converter,
    tensors: Mapping[str, np.ndarray],
    source: str,
    prefix: ParamPath = (),
) -> dict[ParamPath, np.ndarray]:
    """`convert` a checkpoint's `tensors` for one tower and `place` them, in the tower's layout.

    Converters fill blocks one by one: a scanned tower's target is unstacked for them and the
    result stacked again.
    """
    scanned = is_scanned(target)
    if scanned:
        target = unstack_layers(target)
    placed = place(target, convert(tensors, target, source), source, prefix)
    return stack_layers(placed, prefix) if scanned else placed
