"""The generated bad-input suite: every flag of every command-line tool and every leaf of every
shipped config gets the bad values of its kind, and each must be refused in one line naming it.

Flags: the tools are the modules that run `cli.run` (found in the source); tests/bad_flags.py
reads each tool's flags from absl's registry and runs every case through the tool's real
boundary in one process (exit 2, the last stderr line `error: ` naming the flag, no traceback,
nothing written); a sample runs as real subprocesses too. Config leaves: each shipped config (its
variants too), its files pointed at generated fixtures in the real formats, must pass everything
a run checks before it writes (`train.build_checked`; evaluation and benchmarks their own); then
each leaf set to each bad value of its type, in one config that has it (rotating), must raise a
`ConfigError` or `InputDataError` naming a key it changed, with nothing written. A flag or key
added later is covered without a test written for it; `FREE_KEYS` (and `tests.bad_flags.
FREE_FLAGS`) list where a value is legitimately free, and why.
"""

import dataclasses
import functools
import json
import math
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import pytest

from tests.conftest import FAST_COMPILE_FLAGS, REPO, scratch_folder

ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS)


def command_line_tools() -> list[str]:
    """Every module of the project whose `__main__` runs behind `cli.run` (imported as a
    module or by name)."""
    runs = re.compile(r"^\s+cli\.run\(|^from input_pipeline\.cli import .*\brun\b", re.MULTILINE)
    found = []
    for package in ("focusclip_jax", "input_pipeline", "synthpose", "bench"):
        for path in sorted((REPO / package).rglob("*.py")):
            if runs.search(path.read_text()):
                found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


@functools.cache
def flag_results() -> tuple[dict[str, Any], ...]:
    """Every generated flag case of every tool, run once (tests/bad_flags.py), each with the
    scratch folder its paths point into."""
    scratch = scratch_folder("bad_flags_")
    done = subprocess.run(
        [sys.executable, "-m", "tests.bad_flags", scratch, *command_line_tools()],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"tests/bad_flags.py failed:\n{done.stderr[-3000:]}")
    return tuple({**json.loads(line), "scratch": scratch} for line in done.stdout.splitlines())


def _flag_params() -> list[Any]:
    params = []
    for case in flag_results():
        name = f"{case['tool']}--{case['flag']}={case['label']}"
        params.append(pytest.param(case, id=name))
    return params


def test_the_tools_are_found() -> None:
    """The scan finds the tools (a refactor of `cli.run` must not empty the suite)."""
    tools = command_line_tools()
    expected = ("focusclip_jax.main", "focusclip_jax.predict", "input_pipeline.prepare.mpii")
    assert set(expected) <= set(tools) and len(tools) >= 15, tools


@pytest.mark.parametrize("case", _flag_params())
def test_a_bad_flag_is_one_line_naming_it(case: dict[str, Any]) -> None:
    assert case["value"] is not None, case["problem"]
    stderr = case["stderr"].strip()
    last = stderr.splitlines()[-1] if stderr else ""
    assert case["status"] == 2, (case["argv"], case["status"], stderr[-2000:])
    assert last.startswith("error: ") and f"--{case['flag']}" in last, (case["argv"], stderr)
    assert "Traceback" not in stderr
    assert not case["wrote"], case["wrote"]
    if case["label"] == "near-miss config key":  # names the key meant
        assert re.search(r"\(did you mean \w+\?\)$", last), last


# One generated case of each of these (tool, flag) pairs also runs as a real subprocess: the
# boundary itself (the module's `__main__`, absl's startup) gives the same line and writes nothing.
SUBPROCESS_SAMPLE = (
    ("focusclip_jax.predict", "top_k"),
    ("synthpose.scenes", "export"),
    ("input_pipeline.prepare.visualize", "out"),
    ("bench.train_step", "json"),
)


@pytest.mark.parametrize(("tool", "flag"), SUBPROCESS_SAMPLE, ids=[s[0] for s in SUBPROCESS_SAMPLE])
def test_a_sample_of_flag_cases_in_real_processes(tool: str, flag: str) -> None:
    case = next(c for c in flag_results() if (c["tool"], c["flag"]) == (tool, flag))
    scratch = Path(case["scratch"])
    before = sorted(scratch.rglob("*"))
    done = subprocess.run(
        [sys.executable, "-m", *case["argv"]],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == case["stderr"].strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
    assert sorted(scratch.rglob("*")) == before


# --- config leaves -------------------------------------------------------------------------------

ANY = object()  # every value of the leaf is fine
# key → (the values that are fine, or ANY; why). The values are among the generated bad ones.
FREE_KEYS: dict[str, tuple[Any, str]] = {
    "seed": ((0,), "0 is a seed like any other"),
    "data.seed": ((0,), "0 is a seed like any other"),
    "data.eval_seed": ((0,), "0 is a seed like any other"),
    "data.worker_count": ((0,), "0 reads the data in the training process"),
    "optimizer.warmup_steps": ((0,), "0: no warmup"),
    "evals.zero_shot.max_images": ((0,), "0: every image"),
    "evals.linear_probe.max_images": ((0,), "0: every image"),
    "init.image": (("",), "'': the tower starts from a random initialisation"),
    "init.text": (("",), "'': the tower starts from a random initialisation"),
    "evals.retrieval.image_list": (("",), "'': every image of the split"),
    "tokenizer.path": (ANY, "where training keeps the BPE it fits ('': the workdir): written"),
    "evals.zero_shot.root": (
        ("nope",),
        "training skips the benchmarks it does not find, with a warning (they may come later); "
        "evaluation refuses a missing data_root",
    ),
    "evals.linear_probe.root": (("nope",), "as evals.zero_shot.root"),
    "data.images": (ANY, "the raw files, documented for the prepare commands: not read"),
    "data.annotations": (ANY, "the raw files, documented for the prepare commands: not read"),
    "data.descriptions": (ANY, "the raw files, documented for the prepare commands: not read"),
    "bench.name": (ANY, "a benchmark's label in its report"),
    "data.std_tokens": ((0,), "0: every random description has the mean length"),
}
# key → (the configs that read it, why the others do not): cases pick only configs that read it.
READ_ONLY_WHEN: dict[str, tuple[Callable[[ml_collections.ConfigDict], bool], str]] = {
    "tokenizer.vocab": (
        lambda config: config.tokenizer.kind in ("bert_wordpiece", "clip_bpe", "words"),
        "the file of the tokenizer kinds that read one; the others keep the key unread",
    ),
}


def _training(name: str, arg: str | None = None) -> Callable[[], ml_collections.ConfigDict]:
    def build() -> ml_collections.ConfigDict:
        module = __import__(f"configs.{name}", fromlist=["get_config"])
        return module.get_config(arg)

    return build


def _shipped_configs() -> dict[str, tuple[str, Callable[[], ml_collections.ConfigDict]]]:
    """name → (how it is checked, how it is built): every shipped config and variant."""
    from configs import bench, eval_zeroshot, pretrain

    configs = {"pretrain": ("train", _training("pretrain"))}
    configs |= {f"pretrain:{v}": ("train", _training("pretrain", v)) for v in pretrain.VARIANTS}
    for name, arg in (("demo", None), ("demo", "clip"), ("finetune", None), ("finetune", "lit"),
                      ("clip_baseline", None), ("synthpose", None)):  # fmt: skip
        configs[f"{name}:{arg}" if arg else name] = ("train", _training(name, arg))
    for arg in (None, *eval_zeroshot.OWN_VARIANTS):
        configs[f"eval_zeroshot:{arg}" if arg else "eval_zeroshot"] = (
            "evaluate",
            _training("eval_zeroshot", arg),
        )
    configs |= {f"bench:{size}": ("bench", _training("bench", size)) for size in bench.SIZES}
    return configs


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Every leaf by its dotted key (a derived value that cannot be computed: its error)."""
    found: dict[str, Any] = {}
    for key in config:
        try:
            value = config[key]
        except ArithmeticError as error:  # `train.num_steps` of `train.batch_size=0`
            value = f"<cannot be computed: {error}>"
        if isinstance(value, ml_collections.ConfigDict):
            found |= leaves(value, f"{prefix}{key}.")
        else:
            found[f"{prefix}{key}"] = value
    return found


def bad_values(value: Any) -> list[Any]:
    """The bad values of a leaf's type (booleans take only True/False: ml_collections refuses
    anything else on the command line, `test_a_wrong_type_on_the_command_line_is_one_line`)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [0, -1]
    if isinstance(value, float):
        return [math.nan, -1.0]
    if isinstance(value, str):
        return ["", "nope"]
    if isinstance(value, tuple):
        return [("nope",), (math.nan,)]
    return []


# The keys an evaluation reads from its config (the rest come from the checkpoint's record).
EVALUATION_KEYS = ("evals.", "data_root")


@dataclasses.dataclass(frozen=True)
class LeafCase:
    config: str
    key: str
    value: Any

    @property
    def id(self) -> str:
        return f"{self.config}/{self.key}={self.value!r}"


def leaf_cases() -> list[LeafCase]:
    """Each (leaf, bad value) once, in one config that has the leaf and reads it, the configs
    taking turns (by a hash of the case); values that are the config's own, or free, skipped."""
    holders: dict[str, list[tuple[str, Any, ml_collections.ConfigDict]]] = {}
    for name, (kind, build) in _shipped_configs().items():
        config = build()
        for key, value in leaves(config).items():
            if kind == "evaluate" and not key.startswith(EVALUATION_KEYS):
                continue
            if key in READ_ONLY_WHEN and not READ_ONLY_WHEN[key][0](config):
                continue
            holders.setdefault(key, []).append((name, value, config))
    cases = []
    for key, held in sorted(holders.items()):
        free, _ = FREE_KEYS.get(key, ((), ""))
        if free is ANY:
            continue
        for bad in bad_values(held[0][1]):
            if any(_same(bad, fine) for fine in free):
                continue
            names = [name for name, value, _ in held if not _same(value, bad)]
            if names:
                turn = zlib.crc32(f"{key}={bad!r}".encode()) % len(names)
                cases.append(LeafCase(names[turn], key, bad))
    return cases


def _same(a: Any, b: Any) -> bool:
    return repr(a) == repr(b)


@pytest.fixture(scope="module")
def grounds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files the shipped configs read, generated in their real formats: a prepared MPII
    and COCO split, a BERT vocab.txt, CLIP's BPE, tower checkpoints, an evaluation folder."""
    from input_pipeline.prepare import coco as prepare_coco
    from input_pipeline.prepare import mpii
    from tests.test_coco import _split as coco_split
    from tests.test_mpii import mmpose_rows, write_descriptions, write_jpeg

    root = tmp_path_factory.mktemp("grounds")
    raw, names = root / "raw", ["000.jpg", "001.jpg", "100.jpg"]
    (raw / "images").mkdir(parents=True)
    for i, name in enumerate(names):
        write_jpeg(raw / "images" / name, i)
    (raw / "mpii_train.json").write_text(json.dumps(mmpose_rows(names[:2])))
    (raw / "mpii_val.json").write_text(json.dumps(mmpose_rows(names[2:], seed=500)))
    write_descriptions(raw / "descriptions", names)
    options = {"max_side": 32, "squash_side": 0, "records_per_shard": 2, "workers": 1}
    annotations = [str(raw / "mpii_train.json"), str(raw / "mpii_val.json")]
    mpii.prepare(str(raw / "images"), annotations, str(raw / "descriptions"),
                 str(root / "mpii"), **options)  # fmt: skip
    rng = np.random.default_rng(0)
    splits = [coco_split(root / "coco_raw", split, first, rng) for split, first in
              (("train", 100), ("val", 200))]  # fmt: skip
    prepare_coco.prepare(*(list(files) for files in zip(*splits, strict=True)),
                         str(root / "coco"), **options)  # fmt: skip
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "person"]))
    (root / "eval").mkdir()
    weights = REPO / "tests" / "fixtures" / "weights"
    return {
        "mpii": root / "mpii",
        "coco": root / "coco",
        "bert_wordpiece": vocab,
        "clip_bpe": REPO / "tests" / "fixtures" / "tokenizers" / "bpe_clip_2000.txt.gz",
        "timm_vit": weights / "vit" / "model.safetensors",
        "big_vision": weights / "vit" / "augreg.npz",
        "open_clip": weights / "open_clip" / "model.safetensors",
        "hf_bert": weights / "bert",
        "eval": root / "eval",
        "workdir": root / "never_written",
    }


def grounded(name: str, grounds: dict[str, Path]) -> ml_collections.ConfigDict:
    """Shipped config `name` with the files it reads pointed at the generated ones."""
    _, build = _shipped_configs()[name]
    config = build()
    if "prepared" in config.data:
        config.data.prepared = str(grounds[config.data.name])
    if config.tokenizer.kind in grounds:
        config.tokenizer.vocab = str(grounds[config.tokenizer.kind])
    for role in ("image", "text"):
        if config.init[role]:
            kind = config.init[role].partition(":")[0]
            config.init[role] = f"{kind}:{grounds[kind]}"
    for entry in config.evals.values():
        if "root" in entry:
            entry.root = str(grounds["eval"])
    if "data_root" in config:
        config.data_root = str(grounds["eval"])
    return config


def check_before_writing(name: str, config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Everything the tool that reads config `name` checks before it writes anything."""
    from bench import train_step
    from focusclip_jax import evaluate, train

    kind, _ = _shipped_configs()[name]
    if kind == "train":
        train.build_checked(config, workdir)
    elif kind == "evaluate":
        evaluate.check_config(config)
    else:
        mesh = train_step.check_config(config)
        train.Trainer(config, mesh, vocab_size=config.model.text.vocab_size)


@pytest.mark.parametrize("name", sorted(_shipped_configs()))
def test_each_shipped_config_passes_with_its_files(name: str, grounds) -> None:
    check_before_writing(name, grounded(name, grounds), grounds["workdir"])
    assert not grounds["workdir"].exists()


@pytest.mark.parametrize("case", leaf_cases(), ids=lambda case: case.id)
def test_a_bad_config_leaf_is_named(case: LeafCase, grounds) -> None:
    from input_pipeline.errors import InputDataError

    config = grounded(case.config, grounds)
    before = leaves(config)
    *parents, leaf = case.key.split(".")
    section = config
    for part in parents:
        section = section[part]
    section[leaf] = case.value
    # A key that shares a value with others (`data.image_size` is `model.image_size`) or derives
    # them (`train.num_epochs` → `train.num_steps`): an error may name any key that changed.
    changed = [key for key, value in leaves(config).items() if not _same(value, before[key])]
    with pytest.raises(InputDataError) as raised:
        check_before_writing(case.config, config, grounds["workdir"])
    named = "|".join(re.escape(key) for key in changed)
    assert re.search(rf"(?:--config\.|config )(?:{named})[=:]", str(raised.value)), (
        changed,
        str(raised.value),
    )
    assert not grounds["workdir"].exists()


def test_every_free_key_is_a_key_and_says_why() -> None:
    """The exception lists name existing keys (a renamed key must not keep its exception)."""
    keys = set()
    for _, build in _shipped_configs().values():
        keys |= set(leaves(build()))
    assert set(FREE_KEYS) | set(READ_ONLY_WHEN) <= keys
    assert all(why for _, why in [*FREE_KEYS.values(), *READ_ONLY_WHEN.values()])


def _parse(argv: list[str]) -> ml_collections.ConfigDict:
    """The command line through the tools' parser (`cli.parse_flags`) with its own flags."""
    from absl import flags
    from ml_collections import config_flags

    from input_pipeline import cli

    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    cli.parse_flags(argv, values)
    return values.config


def _wrong_types() -> list[Any]:
    """A value of the wrong type for each number and boolean leaf of the tests' config, as a
    user types it: ml_collections' parsers refuse it, the runner tells it in one line."""
    from tests.tiny import tiny_config

    wrong = {bool: "maybe", int: "1.5", float: "abc"}
    return [
        pytest.param(key, wrong[type(value)], id=f"{key}={wrong[type(value)]}")
        for key, value in sorted(leaves(tiny_config()).items())
        if type(value) in wrong
    ]


@pytest.mark.parametrize(("key", "value"), _wrong_types())
def test_a_wrong_type_on_the_command_line_is_one_line(key: str, value: str, capsys) -> None:
    argv = ["main", "--config=tests/tiny.py", f"--config.{key}={value}"]
    with pytest.raises(SystemExit) as exited:
        _parse(argv)
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"--config.{key}={value}" in last, last


def test_tuple_keys_take_comma_separated_values_as_typed() -> None:
    argv = [
        "main",
        "--config=tests/tiny.py",
        "--config.evals.zero_shot.datasets=stanford40,fer2013",
        "--config.train.frozen=image_tower/.*, image_proj/.*",
        "--config.loss.weights=1,2",
    ]
    config = _parse(argv)
    assert config.evals.zero_shot.datasets == ("stanford40", "fer2013")
    assert config.train.frozen == ("image_tower/.*", "image_proj/.*")
    assert config.loss.weights == (1, 2)
    quoted = _parse(["main", "--config=tests/tiny.py", "--config.train.frozen=('a/.*',)"])
    assert quoted.train.frozen == ("a/.*",)
    single = _parse(["main", "--config=tests/tiny.py", "--config.evals.zero_shot.datasets=fer2013"])
    assert single.evals.zero_shot.datasets == ("fer2013",)


def test_training_with_a_bad_key_creates_no_workdir(tmp_path: Path) -> None:
    """The real command: refused in one line before the workdir (its lock, its record) exists."""
    workdir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "focusclip_jax.main", "--config=tests/tiny.py",
         f"--workdir={workdir}", "--config.optimizer.learning_rate=nan"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config optimizer.learning_rate=nan: must be"), last
    assert "Traceback" not in done.stderr
    assert not workdir.exists()
