r"""Export a trained checkpoint for use elsewhere: one tower, or the whole model.

    python -m focusclip_jax.export --checkpoint=<workdir or step dir> --tower=image_tower \
        --out=vit.safetensors
    python -m focusclip_jax.export --checkpoint=<workdir> --tower=text_tower --out=bert_dir/
    python -m focusclip_jax.export --checkpoint=<workdir> --format=hf --out=hf_dir/
    python -m focusclip_jax.export --checkpoint=<workdir> --format=open_clip \
        --out=open_clip.safetensors

`--format=tower` (the default) writes `--tower`: `image_tower` / `focus_tower` as a timm ViT
`.safetensors` file, `text_tower` (BERT) as a Hugging Face BERT folder (`weights.export_tower`).
`--format=hf` writes the whole model as a Hugging Face `VisionTextDualEncoderModel` folder with
its tokenizer and image processor (ViT + BERT with `model.text.pooling='cls'` and the
`bert_wordpiece` tokenizer; `weights/hf_dual_encoder.py` says what equals what and what is
refused). `--format=open_clip` writes an open_clip `CLIP` state dict (CLIP-style ViT, causal
text tower, CLIP's BPE; `weights/open_clip.py`). Only the inference towers go out: the focus
tower and alpha are training's. Everything is numpy and safetensors: no torch.

The output is written beside `--out` (`<out>.partial`) and renamed into place when complete; an
existing export is replaced only with `--overwrite` (the old one is `<out>.replaced` until the
new one is in place: a run cut short between the two renames is undone by the next). Anything at
`--out` that is not an export of the same kind (a folder holding anything but an export's files,
a file that is not `.safetensors`, a file where a folder goes) is never replaced, nor is the
`--checkpoint` workdir or a folder holding it. The model comes from the
workdir's record (`run_record`); `--config` describes it only for workdirs trained before runs
were recorded.
"""

import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
from absl import app, flags
from flax import nnx

from focusclip_jax import run_record, sharding, weights
from focusclip_jax.setup import TrainedModel, load_trained
from focusclip_jax.weights import hf_dual_encoder, open_clip
from input_pipeline import cli, errors

TOWERS = ("image_tower", "focus_tower", "text_tower")
FORMATS = ("tower", "hf", "open_clip")
# The tokenizer each whole-model format ships (config.tokenizer.kind).
TOKENIZERS = {"hf": "bert_wordpiece", "open_clip": "clip_bpe"}
FLAGS = flags.FLAGS


# Every file a folder export writes (BERT tower: hf_bert.save; whole model: hf_dual_encoder.save).
EXPORT_FOLDER_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    }
)


def _writes_folder(fmt: str, tower: str | None) -> bool:
    return fmt == "hf" or (fmt == "tower" and tower == "text_tower")


def _aside(out: Path, what: str) -> Path:
    return out.with_name(f"{out.name}.{what}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _finish_interrupted_swap(out: Path) -> None:
    """A run stopped between its renames left the old export at `<out>.replaced`: put it back
    if nothing took its place, else drop it (the new one is complete)."""
    replaced = _aside(out, "replaced")
    if replaced.exists():
        if out.exists():
            _remove(replaced)
        else:
            replaced.rename(out)


def check_out(out: Path, *, folder: bool, overwrite: bool) -> None:
    """Refuses, in one line, an `--out` that cannot or may not be written."""
    if not out.absolute().parent.is_dir():
        raise errors.InputDataError(
            f"--out={out}: its folder {out.absolute().parent} does not exist"
        )
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    kind = "folder" if folder else "file"
    if out.is_dir() != folder:
        raise errors.InputDataError(
            f"--out={out}: exists and is not a {kind}, which this export writes; not replaced"
        )
    if not overwrite:
        raise errors.InputDataError(
            f"--out={out}: already exists; rerun with --overwrite to replace it"
        )
    if folder and not _is_export_folder(out):
        raise errors.InputDataError(
            f"--out={out}: not an export folder (it holds more than an export's files "
            f"{', '.join(sorted(EXPORT_FOLDER_FILES))}, or no config.json): not replaced, even "
            "with --overwrite"
        )
    if not folder and not _is_safetensors(out):
        raise errors.InputDataError(
            f"--out={out}: not a .safetensors file, not an export: not replaced, even with "
            "--overwrite"
        )


def _is_export_folder(path: Path) -> bool:
    """Whether `path` holds an export's files and nothing else (a training workdir, a user's
    model folder with other files, is not one)."""
    entries = list(path.iterdir())
    return (path / "config.json").is_file() and all(
        entry.is_file() and entry.name in EXPORT_FOLDER_FILES for entry in entries
    )


def _is_safetensors(path: Path) -> bool:
    """Whether `path` starts as a safetensors file does: a header length, then JSON."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            return 0 < size <= path.stat().st_size - 8 and isinstance(
                json.loads(f.read(size)), dict
            )
    except (OSError, ValueError):
        return False


def write_aside(out: Path, write: Callable[[Path], object]) -> None:
    """`write(<out>.partial)`, then swap it in; on any failure `<out>` is left as it was."""
    partial, replaced = _aside(out, "partial"), _aside(out, "replaced")
    _remove(partial)
    try:
        write(partial)
    except BaseException:
        _remove(partial)
        raise
    if out.exists():
        out.rename(replaced)
    partial.rename(out)
    _remove(replaced)


def _check_flags(fmt: str, tower: str | None) -> None:
    if fmt not in FORMATS:
        raise errors.InputDataError(f"--format={fmt}: expected one of {', '.join(FORMATS)}")
    if fmt == "tower" and tower is None:
        raise errors.InputDataError("--tower: required with --format=tower (which tower to write)")
    if fmt != "tower" and tower is not None:
        raise errors.InputDataError(
            f"--tower={tower}: applies to --format=tower only; --format={fmt} writes the whole "
            "model"
        )


def _check_tokenizer(fmt: str, trained: TrainedModel) -> None:
    kind = trained.config.tokenizer.kind
    if kind != TOKENIZERS[fmt]:
        raise errors.InputDataError(
            f"--format={fmt}: the model's tokenizer is {kind!r} (config tokenizer.kind); this "
            f"format ships {TOKENIZERS[fmt]!r}'s, the only one its loaders read"
        )


def _write_model(fmt: str, trained: TrainedModel, model: nnx.Module, path: Path) -> None:
    """The whole model in `fmt` (`model`: its abstract `FocusCLIP`, for the towers' options)."""
    params = jax.device_get(trained.params)
    scale = trained.setup.similarity_scale(trained.params)
    try:
        if fmt == "hf":
            hf_dual_encoder.save(
                model,
                params,
                path,
                logit_scale=scale,
                vocab=trained.tokenizer.vocab,
                pixel_mean=trained.setup.model_config.pixel_mean,
                pixel_std=trained.setup.model_config.pixel_std,
                step=trained.step,
            )
        else:
            open_clip.save(model, params, path, logit_scale=scale, step=trained.step)
    except ValueError as error:
        raise errors.InputDataError(f"--format={fmt}: {error}") from None


def _refuse(fmt: str, trained: TrainedModel, model: nnx.Module) -> None:
    """A model the whole-model format cannot hold, refused in one line before anything is
    written (`model`: its abstract `FocusCLIP`)."""
    _check_tokenizer(fmt, trained)
    if fmt == "hf":
        reason = hf_dual_encoder.refusal(model, trained.setup.model_config.embed_dim)
    else:
        reason = open_clip.export_refusal(model)
    if reason:
        raise errors.InputDataError(f"--format={fmt}: {reason}")


def export(
    config: ml_collections.ConfigDict | None,
    checkpoint: str,
    tower: str | None,
    out: str,
    overridden: Sequence[str] = (),
    *,
    fmt: str = "tower",
    overwrite: bool = False,
) -> int:
    """Writes `tower` of the checkpoint (`fmt='tower'`) or the whole model in `fmt` to `out`
    (module docstring); returns the checkpoint's step."""
    _check_flags(fmt, tower)
    if fmt == "open_clip" and not out.endswith(".safetensors"):
        raise errors.InputDataError(f"--out={out}: open_clip reads a .safetensors file by its name")
    if _writes_folder(fmt, tower) and out.endswith(".safetensors"):
        raise errors.InputDataError(
            f"--out={out}: this export is a folder (Hugging Face's layout), not a .safetensors "
            "file: name a folder"
        )
    out_path = Path(out)
    cli.refuse_inputs_as_output("--out", out, {"--checkpoint": run_record.workdir_of(checkpoint)})
    _finish_interrupted_swap(out_path)
    check_out(out_path, folder=_writes_folder(fmt, tower), overwrite=overwrite)
    mesh = sharding.create_mesh({"data": 1}, devices=jax.devices()[:1])
    trained = load_trained(checkpoint, config, overridden, mesh=mesh, batch_size=1)
    if fmt == "tower":
        if tower not in trained.params:
            raise errors.InputDataError(f"--tower={tower}: the model has no {tower!r}")
        write_aside(out_path, lambda path: weights.export_tower(trained.params, tower, str(path)))
    else:
        model = nnx.eval_shape(trained.setup.new_model)  # the towers' options, no weights
        _refuse(fmt, trained, model)
        write_aside(out_path, lambda path: _write_model(fmt, trained, model, path))
    return trained.step


def define_flags() -> None:
    cli.define_config_file(
        "config", None, "Only for a workdir without config.json: the config of its model."
    )
    flags.DEFINE_string("checkpoint", None, "Training workdir, its checkpoints/ or a step folder.")
    flags.DEFINE_enum(
        "format",
        "tower",
        list(FORMATS),
        "tower: one tower (--tower); hf: the whole model as a Hugging Face "
        "VisionTextDualEncoderModel folder; open_clip: an open_clip CLIP .safetensors.",
    )
    flags.DEFINE_enum("tower", None, list(TOWERS), "With --format=tower: which tower to export.")
    flags.DEFINE_string(
        "out", None, "A .safetensors file (ViT tower, open_clip) or a folder (BERT tower, hf)."
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing export at --out.")
    flags.mark_flags_as_required(["checkpoint", "out"])
    cli.check_flags(checkpoint=cli.Path("folder"), out=cli.Path("new_file_or_folder"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.WARNING)
    overridden = run_record.command_line_overrides(sys.argv)
    step = export(
        FLAGS.config,
        FLAGS.checkpoint,
        FLAGS.tower,
        FLAGS.out,
        overridden,
        fmt=FLAGS.format,
        overwrite=FLAGS.overwrite,
    )
    what = FLAGS.tower if FLAGS.format == "tower" else f"the model ({FLAGS.format})"
    print(f"wrote {what} of step {step} to {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
