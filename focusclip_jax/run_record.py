"""A training workdir describes itself: the resolved config and the tokenizer's files.

Written once at the start of training (`write`): `<workdir>/config.json` and
`<workdir>/tokenizer/<file>` (the vocabulary or fitted BPE the run tokenized with; the config
points at the copies). Evaluation, `predict` and the Colab notebook then need the workdir (or a
step folder) and nothing else about the model (`load`, `with_model_of`): the model, tokenizer and
loss sections come from the record; the command line may change evaluation keys only, and a model
key it sets to another value than the checkpoint's is an error naming it. A workdir written
before records existed still loads with the config the user gives, as before; one recorded before
the towers had their own sub-configs is read in today's layout.
"""

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from etils import epath

from focusclip_jax.config_checks import ConfigError

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
# What rebuilds the trained model, its inputs and its similarity scale.
RECORDED = ("model", "tokenizer", "loss", "heatmaps")


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """A local folder (made absolute, as orbax requires) or a bucket URL (gs://..., s3://...)."""
    workdir = str(workdir)
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def tokenizer_files(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """The config keys of the files the tokenizer reads, and their paths."""
    kind, section = config.tokenizer.kind, config.tokenizer
    if kind in ("bert_wordpiece", "words", "clip_bpe"):
        return {"vocab": section.vocab}
    if kind == "fitted_bpe":
        return {"path": section.get("path") or f"{workdir}/tokenizer.json"}
    return {}  # synthetic_words: fitted in code, nothing to keep


def write(workdir: str, config: ml_collections.ConfigDict, vocab_size: int) -> None:
    """Record the run (process 0, once: a resumed run keeps the first record)."""
    root = workdir_path(workdir)
    if jax.process_index() != 0 or (root / CONFIG_FILE).exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    record = config.copy_and_resolve_references()
    record.model.text.vocab_size = vocab_size
    for key, source in tokenizer_files(config, str(workdir)).items():
        copy = root / TOKENIZER_DIR / Path(source).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(epath.Path(source).read_bytes())
        record.tokenizer[key] = f"{TOKENIZER_DIR}/{copy.name}"
    temporary = root / f"{CONFIG_FILE}.tmp"
    temporary.write_text(record.to_json(indent=1))
    temporary.rename(root / CONFIG_FILE)


def workdir_of(checkpoint: str) -> epath.Path:
    """A training workdir, its checkpoints/ folder or one step folder → the workdir."""
    path = workdir_path(checkpoint)
    if path.name.isdigit() and (path / "state").exists():
        return path.parent.parent
    return path.parent if path.name == "checkpoints" else path


def load(checkpoint: str) -> ml_collections.ConfigDict | None:
    """The recorded config of the checkpoint's workdir (tokenizer paths made absolute), or None
    for a workdir written before records existed."""
    root = workdir_of(checkpoint)
    if not (root / CONFIG_FILE).exists():
        return None
    try:
        record = json.loads((root / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{root / CONFIG_FILE}: not readable JSON ({error})") from None
    record = ml_collections.ConfigDict({**record, "model": towers_by_name(record["model"])})
    for key in tokenizer_files(record, str(root)):
        record.tokenizer[key] = str(root / record.tokenizer[key])
    return record


def towers_by_name(model: dict[str, Any]) -> dict[str, Any]:
    """A model section recorded before towers had their own sub-configs (`vit_size`,
    `text_kind`, ... at the top) in today's layout (`image`, `text`); others unchanged."""
    if "vit_size" not in model:
        return model
    model = dict(model)
    image = {"name": "vit", "size": model.pop("vit_size"), **(model.pop("vit_overrides") or {})}
    text = {
        "name": model.pop("text_kind"),
        "size": model.pop("text_size"),
        "vocab_size": model.pop("vocab_size"),
        "max_len": model.pop("max_len"),
        "dropout": model.pop("text_dropout", 0.0),
    }
    pooling = model.pop("text_pooling", "mean")
    if text["name"] == "bert":
        text["pooling"] = pooling
    text.update(model.pop("text_overrides") or {})
    return {**model, "image": image, "text": text}


def with_model_of(
    record: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    overridden: Sequence[str],
    where: str,
) -> ml_collections.ConfigDict:
    """`config` (evaluation keys) with the recorded sections; `overridden` (the command line's
    `--config.*` keys) may not give a recorded key another value."""
    for key in overridden:
        if key.partition(".")[0] not in RECORDED:
            continue
        given, recorded = _lookup(config, key), _lookup(record, key)
        if _plain(given) != _plain(recorded):
            raise ConfigError(
                f"--config.{key}={given!r} contradicts the checkpoint's {recorded!r} "
                f"({where}/{CONFIG_FILE}); drop it: the model comes from the checkpoint"
            )
    merged = config.copy_and_resolve_references()
    with merged.unlocked():
        for section in RECORDED:
            merged[section] = ml_collections.ConfigDict(record[section].to_dict())
        if "image_size" in merged.get("data", {}):  # images are read at the model's size
            merged.data.image_size = record.model.image_size
    logging.info("Model, tokenizer and loss from %s/%s", where, CONFIG_FILE)
    return merged


def command_line_overrides(argv: Sequence[str]) -> list[str]:
    """The config keys a command line sets (`--config.model.dtype=...` → model.dtype)."""
    return [
        arg.removeprefix("--config.").split("=", 1)[0]
        for arg in argv
        if arg.startswith("--config.")
    ]


def _lookup(config: ml_collections.ConfigDict, key: str) -> object:
    value: object = config
    for part in key.split("."):
        inside = isinstance(value, ml_collections.ConfigDict) and part in value
        value = value[part] if inside else None
    return value


def _plain(value: object) -> object:
    """Tuples and lists alike (JSON keeps lists), ConfigDicts as dicts."""
    if isinstance(value, ml_collections.ConfigDict):
        return _plain(value.to_dict())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
