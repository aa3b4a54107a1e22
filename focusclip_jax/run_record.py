"""A training workdir describes itself: the resolved config and the tokenizer's files.

Written at the start of training (`write`): `<workdir>/config.json` and
`<workdir>/tokenizer/<file>` (the vocabulary or fitted BPE the run tokenized with; the config
points at the copies). The record matches the checkpoints: it is written, and written again by a
rerun, until the first checkpoint lands; from then on a rerun whose config contradicts it (the
model, tokenizer, loss or heatmaps) is an error naming the key. Evaluation, `predict` and the
notebook then need the workdir (or a step folder) and nothing else about the model (`load`,
`config_for`): the model, tokenizer, loss and data sections come from the record; the command
line may change evaluation keys only, and a model key it sets to another value than the
checkpoint's is an error naming it. A workdir written before records existed still loads with
the config the user gives; one recorded before the towers had their own sub-configs is read in
today's layout.
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

from input_pipeline import cli, tokenizers
from input_pipeline.errors import ConfigError, config_errors

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
# What rebuilds the trained model, its inputs and its similarity scale.
RECORDED = ("model", "tokenizer", "loss", "heatmaps")


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """A local folder (made absolute, as orbax requires) or a bucket URL (gs://..., s3://...)."""
    workdir = str(workdir)
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def tokenizer_files(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """The key of `config.tokenizer` that names the tokenizer's file, and its path (none for a
    kind fitted in code, which the record rebuilds from the same texts)."""
    kind = tokenizers.kind_of(config.tokenizer)
    path = kind.file(config.tokenizer, workdir)
    return {kind.file_key: path} if kind.file_key and path else {}


def has_checkpoints(root: epath.Path) -> bool:
    checkpoints = root / "checkpoints"
    return checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())


def write(workdir: str, config: ml_collections.ConfigDict, tokenizer: tokenizers.Tokenizer) -> None:
    """Record the run: written (process 0) while the workdir holds no checkpoint; once one has
    landed, checked (every process) against the config, a contradiction an error naming the
    key. The tokenizer's file (a fitted one: kept first) is copied beside it."""
    root = workdir_path(workdir)
    recorded = _recorded(root, workdir)
    if jax.process_index() == 0:
        tokenizers.kind_of(config.tokenizer).save(tokenizer, config.tokenizer, str(workdir))
    sources = tokenizer_files(config, str(workdir))
    if has_checkpoints(root) and recorded is not None:
        _check_matches(recorded, config, tokenizer.vocab_size, sources, root)
        return
    if jax.process_index() != 0:
        return
    root.mkdir(parents=True, exist_ok=True)
    record = config.copy_and_resolve_references()
    record.model.text.vocab_size = tokenizer.vocab_size
    for key, source in sources.items():
        copy = root / TOKENIZER_DIR / Path(source).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        cli.write_whole(copy, epath.Path(source).read_bytes())
        record.tokenizer[key] = f"{TOKENIZER_DIR}/{copy.name}"
    cli.write_whole(root / CONFIG_FILE, record.to_json(indent=1).encode())


def _recorded(root: epath.Path, workdir: str) -> ml_collections.ConfigDict | None:
    """The workdir's run record, None where there is none. A config.json that is not one (an
    exported model's, a user's) is refused, never replaced: the workdir is someone else's."""
    if not (root / CONFIG_FILE).exists():
        return None
    try:
        return load(str(root))
    except ConfigError as error:
        raise ConfigError(
            f"--workdir={workdir}: holds a {CONFIG_FILE} that is not this project's run record "
            f"({error}); not replaced: give another --workdir"
        ) from None


def _check_matches(
    record: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    vocab_size: int,
    sources: dict[str, str],
    root: epath.Path,
) -> None:
    """The config describes the model the checkpoints hold: the recorded sections agree, and the
    tokenizer's files have the recorded copies' bytes."""
    given = config.copy_and_resolve_references()
    if given.model.text.vocab_size == -1:
        given.model.text.vocab_size = vocab_size
    for key, source in sources.items():
        copy = epath.Path(record.tokenizer.get(key) or root / TOKENIZER_DIR / "<none>")
        if not copy.exists() or copy.read_bytes() != epath.Path(source).read_bytes():
            _contradiction([(f"tokenizer.{key}", source, str(copy))], root)
    files = {f"tokenizer.{key}" for key in sources}
    differences = [d for d in _differences(record, given, RECORDED) if d[0] not in files]
    if differences:
        _contradiction(differences, root)


def _differences(
    record: ml_collections.ConfigDict, config: ml_collections.ConfigDict, sections: Sequence[str]
) -> list[tuple[str, object, object]]:
    """(key, the config's value, the record's) for every key of `sections` (where both have
    them) whose values differ."""
    found = []
    for section in sections:
        if section not in config or section not in record:
            continue
        recorded = _flat(_plain(record[section]), section)
        for key, value in _flat(_plain(config[section]), section).items():
            if recorded.get(key, _ABSENT) != value:
                found.append((key, value, recorded.get(key, "<no such key>")))
    return found


def _contradiction(differences: list[tuple[str, object, object]], root: epath.Path) -> None:
    """Every (key, given, recorded) the config contradicts the record in, in one line: a rerun
    with another default learns them all at once."""
    given = ", ".join(f"{key}={value!r}" for key, value, _ in differences)
    if len(differences) == 1:
        recorded = repr(differences[0][2])
    else:
        recorded = ", ".join(f"{key}={value!r}" for key, _, value in differences)
    raise ConfigError(
        f"config {given}: the checkpoints in {root} were trained with {recorded} "
        f"({root / CONFIG_FILE}); resume with the same model, or give another --workdir"
    )


_ABSENT = object()


def _flat(value: object, prefix: str) -> dict[str, object]:
    if isinstance(value, dict):
        flat: dict[str, object] = {}
        for key, inner in value.items():
            flat |= _flat(inner, f"{prefix}.{key}")
        return flat
    return {prefix: value}


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
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{root / CONFIG_FILE}: not readable JSON ({error})") from None
    missing = [s for s in RECORDED if not isinstance(record, dict) or s not in record]
    if missing:
        raise ConfigError(f"{root / CONFIG_FILE}: not a run record (no {', '.join(missing)})")
    record = ml_collections.ConfigDict({**record, "model": towers_by_name(record["model"])})
    with config_errors():
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
    """`config` (evaluation keys) with the recorded sections: the model's (`RECORDED`), which
    `overridden` (the command line's `--config.*` keys) may not contradict, and the data's
    (`data.prepared`, the description sources, ...: what retrieval reads), where the command line
    did not set them."""
    for key in overridden:
        if key.partition(".")[0] not in RECORDED:
            continue
        given, recorded = _lookup(config, key), _lookup(record, key)
        if _plain(given) != _plain(recorded):
            raise ConfigError(
                f"--config.{key}={given!r} contradicts the checkpoint's {recorded!r} "
                f"({where}/{CONFIG_FILE}); drop it: the model comes from the checkpoint"
            )
    _warn_of_replaced(record, config, where)
    merged = config.copy_and_resolve_references()
    with merged.unlocked():
        for section in RECORDED:
            merged[section] = ml_collections.ConfigDict(record[section].to_dict())
        if "data" in merged and "data" in record:
            for key, value in record.data.items():
                if key in merged.data and f"data.{key}" not in overridden:
                    merged.data[key] = value
            merged.data.image_size = record.model.image_size  # read at the model's size
    logging.info("Model, tokenizer, loss and data from %s/%s", where, CONFIG_FILE)
    return merged


def _warn_of_replaced(
    record: ml_collections.ConfigDict, config: ml_collections.ConfigDict, where: str
) -> None:
    """The config file's model, loss and heatmap keys that differ from the record are replaced by
    it: said once, so a user who gave the config of another model knows it was not used
    (tokenizer paths and the fitted vocabulary size differ by design)."""
    sections = [section for section in RECORDED if section != "tokenizer"]
    replaced = [
        f"{key}={value!r} (recorded {recorded!r})"
        for key, value, recorded in _differences(record, config, sections)
        if key != "model.text.vocab_size"
    ]
    if replaced:
        logging.warning(
            "--config: %d key(s) differ from the checkpoint's record and are not used, e.g. %s; "
            "the model comes from %s/%s",
            len(replaced),
            ", ".join(replaced[:3]),
            where,
            CONFIG_FILE,
        )


def config_for(
    checkpoint: str,
    config: ml_collections.ConfigDict | None,
    overridden: Sequence[str] = (),
) -> ml_collections.ConfigDict:
    """The config that rebuilds the checkpoint's model: `config` with the workdir's recorded
    sections (`with_model_of`), the record alone when no config is given, or `config` as given
    for a workdir from before records (it must then describe the model)."""
    record = load(checkpoint)
    where = str(workdir_of(checkpoint))
    if record is None:
        if config is None:
            raise ConfigError(
                f"{where}: no {CONFIG_FILE} (trained before runs were recorded); give "
                "--config=<the config it was trained with>"
            )
        logging.warning(
            "%s has no %s (trained before runs were recorded): the config given must describe "
            "its model",
            where,
            CONFIG_FILE,
        )
        return config
    if config is None:
        return record
    return with_model_of(record, config, overridden, where)


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
