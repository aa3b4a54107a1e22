"""`config.init`: which checkpoint initialises which tower, and loading it into sharded params.

`init.image` is `timm_vit:<file>`, `big_vision:<file.npz>` or `open_clip:<file>`; `init.text` is
`hf_bert:<dir>` or `open_clip:<file>`; "" keeps the random init. Image weights initialise the
focused-image tower too when it is separate (the paper starts both from ImageNet). open_clip
checkpoints also bring their projections (and, with the text tower, the logit scale).
"""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from focusclip_jax.weights import common, hf_bert, open_clip, timm_vit
from focusclip_jax.weights.common import Converter, ParamPath
from input_pipeline.errors import RequiredFile

IMAGE_FORMATS: dict[str, Converter] = {
    "timm_vit": timm_vit.to_params,
    "big_vision": timm_vit.big_vision_to_params,
    "open_clip": open_clip.image_params,
}
TEXT_FORMATS: dict[str, Converter] = {
    "hf_bert": hf_bert.to_params,
    "open_clip": open_clip.text_params,
}


WHERE_FROM = {
    "timm_vit": "a timm ViT, e.g. model.safetensors of Hugging Face hub "
    "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "big_vision": "an AugReg or big_vision ViT .npz (gs://vit_models/augreg/)",
    "open_clip": "an open_clip checkpoint, e.g. open_clip_model.safetensors of Hugging Face hub "
    "timm/vit_base_patch16_clip_224.openai",
    "hf_bert": "a Hugging Face BERT directory, e.g. google-bert/bert-base-uncased "
    "(config.json, model.safetensors, vocab.txt)",
}


def parse_spec(spec: str, formats: Mapping[str, Converter], role: str) -> tuple[str, str]:
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in formats or not path:
        raise ValueError(
            f"config init.{role}={spec!r}: expected '<format>:<path>' with format one of "
            f"{sorted(formats)}"
        )
    return fmt, path


def _subtree(params: Mapping[ParamPath, Any], name: str) -> dict[ParamPath, Any]:
    return {path[1:]: leaf for path, leaf in params.items() if path[0] == name}


def _read(fmt: str, path: str, role: str) -> tuple[dict[str, np.ndarray], str]:
    try:
        if fmt == "hf_bert":
            return hf_bert.read(path)
        return common.read_tensors(path), path
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config init.{role}: {e}; expected {WHERE_FROM[fmt]}") from e


def load(init: Mapping[str, str], params: Mapping[ParamPath, Any]) -> dict[ParamPath, np.ndarray]:
    """Imported arrays for the parameters `init` covers, keyed by flat path, shape-checked.

    `params`: the model's flat parameters (arrays or shape structs) as `flatten_dict` gives them,
    blocks in either layout (`model.scan_layers`).
    """
    out: dict[ParamPath, np.ndarray] = {}
    roles = (("image", IMAGE_FORMATS, ("image", "focus")), ("text", TEXT_FORMATS, ("text",)))
    for role, formats, towers in roles:
        spec = init.get(role, "")
        if not spec:
            continue
        fmt, path = parse_spec(spec, formats, role)
        tensors, source = _read(fmt, path, role)
        for tower in towers:
            target = _subtree(params, f"{tower}_tower")
            if not target:
                continue
            if fmt == "hf_bert":
                hf_bert.check_heads(hf_bert.read_config(path), target, source)
            out |= common.place_tower(target, formats[fmt], tensors, source, (f"{tower}_tower",))
            if fmt == "open_clip":
                name = "visual.proj" if role == "image" else "text_projection"
                proj = open_clip.projection(tensors, name, source)
                out |= common.place(
                    _subtree(params, f"{tower}_proj"), proj, source, (f"{tower}_proj",)
                )
        if fmt == "open_clip" and role == "text":
            scale = {(): ("logit_scale", common.take(tensors, "logit_scale", source).reshape(()))}
            out |= common.place({(): params[("logit_scale",)]}, scale, source, ("logit_scale",))
    return out


def export_tower(params: Any, tower: str, path: str) -> None:
    """Writes one tower of a model's parameters (pure dict) for use elsewhere.

    `image_tower`/`focus_tower`: a timm ViT `.safetensors` file; `text_tower` (BERT): a Hugging
    Face BERT directory.
    """
    flat = _subtree(flatten_dict(jax.device_get(params)), tower)
    if not flat:
        raise ValueError(f"the model has no {tower!r}")
    if common.is_scanned(flat):
        flat = common.unstack_layers(flat)
    if tower == "text_tower":
        hf_bert.save(flat, path)
    else:
        timm_vit.save(flat, path)


def required_files(init: Mapping[str, str] | None) -> list[RequiredFile]:
    """The checkpoint files `init` names, for the up-front missing-file check."""
    files = []
    for role, formats in (("image", IMAGE_FORMATS), ("text", TEXT_FORMATS)):
        if init and init.get(role):
            fmt, path = parse_spec(init[role], formats, role)
            files.append(RequiredFile(f"init.{role}", path, WHERE_FROM[fmt]))
    return files


def check_readable(init: Mapping[str, str] | None) -> None:
    """The checkpoints `init` names can be read (their safetensors headers parse): a
    `WeightImportError` naming the file before a run writes anything, not after."""
    for required in required_files(init):
        path = Path(required.path)
        if path.is_dir():
            weights = [path / name for name in hf_bert.WEIGHT_FILES if (path / name).is_file()]
            path = weights[0] if weights else path
        if path.is_file() and path.suffix == ".safetensors":
            common.safetensors_header(path)


def requested(init: Mapping[str, str] | None) -> bool:
    return bool(init) and any(init.values())


def pretrained_params(
    init: Mapping[str, str], new_model: Callable[[], nnx.Module], shardings: Any
) -> Any:
    """The model's parameters (a pure dict) in `shardings`, imported where `init` says.

    The model is built eagerly on the host CPU (the parameters no checkpoint covers keep that
    random init: compiling the initialiser costs a minute on CPU, running it seconds); then every
    leaf goes from host memory straight to its shards (every process reads the same files).
    """
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        host = flatten_dict(jax.device_get(nnx.to_pure_dict(nnx.state(new_model(), nnx.Param))))
    host |= load(init, host)
    flat_shardings = flatten_dict(shardings)
    return unflatten_dict(
        {
            path: jax.make_array_from_callback(
                np.shape(value), flat_shardings[path], lambda index, v=value: np.asarray(v)[index]
            )
            for path, value in host.items()
        }
    )


def check_tree(
    expected: Mapping[ParamPath, Any], found: Mapping[ParamPath, Any], source: str
) -> None:
    """Raises `WeightImportError` unless `found` (e.g. a checkpoint's parameter metadata) has the
    configured model's parameter paths and shapes; a flipped `model.scan_layers` is named.

    Both are flat trees (`flatten_dict`) of arrays or anything with a `.shape`, such as orbax's
    `ArrayMetadata` (whose paths hold block indices as strings: paths compare as strings).
    """
    expected = {tuple(map(str, path)): leaf for path, leaf in expected.items()}
    found = {tuple(map(str, path)): leaf for path, leaf in found.items()}
    for tower in sorted({path[0] for path in expected if path[0].endswith("_tower")}):
        ours, theirs = _subtree(expected, tower), _subtree(found, tower)
        if theirs and common.is_scanned(ours) != common.is_scanned(theirs):
            saved = common.is_scanned(theirs)
            raise common.WeightImportError(
                f"{source}: {tower} blocks were saved {'stacked' if saved else 'one per layer'} "
                f"(model.scan_layers={saved}) but the config builds them "
                f"{'one per layer' if saved else 'stacked'}: rerun with "
                f"--config.model.scan_layers={saved}"
            )
    missing = sorted(set(expected) - set(found), key=str)
    unexpected = sorted(set(found) - set(expected), key=str)
    if missing or unexpected:
        names = lambda paths: ", ".join("/".join(map(str, p)) for p in paths[:5]) or "none"
        raise common.WeightImportError(
            f"{source}: parameters do not match the config: missing {names(missing)}; "
            f"unexpected {names(unexpected)}"
        )
    for path in sorted(expected, key=str):
        want, got = tuple(np.shape(expected[path])), tuple(np.shape(found[path]))
        if want != got:
            raise common.WeightImportError(
                f"{source}: parameter {'/'.join(map(str, path))} has shape {got}, "
                f"the config expects {want}"
            )
