"""Generated bad-flag cases for every command-line tool, run in one process.

    python -m tests.bad_flags <scratch folder> <tool module>...
    python -m tests.bad_flags <scratch folder> --explicit <JSON list of [tool, [args]]>
    python -m tests.bad_flags <scratch> --documented <JSON list of [tool, [args]]>

prints one JSON line per case (`--explicit`: the hand-written cases of tests/test_cli_errors.py, run
with each tool's real main; `--documented`: the commands of the README and docs/, parsed as the tool
parses them, its flags' rules aside — their files are the reader's, not here). For each tool (a
module whose `__main__` runs `cli.run`): import it, define its flags (`define_flags`, as its
`__main__` does), read them back from absl's registry, and give each flag the bad values of its kind
— absl's parser type (bool, enum, integer, float, list, config file) and the `input_pipeline.cli`
rule the tool declared for it (`Path`, `Number`, `Choices`, `Text`) — with every required flag given
a good value. Each case runs the tool's real boundary, `cli.run`, with a main that only reads the
flags' values (a config file loads then), so the rules are checked as they would be before the tool
does any work. A config-file flag also gets overrides of keys its config lacks (one a letter off
a real key), with the tool defined afresh for each: a default config file reads its overrides
when its flag is defined. A flag added later gets its cases without a test written for it; a
string flag that declares no rule must be in `FREE_FLAGS`, saying why any value is fine.
"""

import contextlib
import dataclasses
import importlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from absl import app, flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from input_pipeline import cli

# (tool, flag) → why any value is fine, or why the flag is checked elsewhere.
FREE_FLAGS = {
    ("bench.compare", "torch_device"): "a PyTorch device string (cpu, cuda:1): PyTorch checks it",
    ("bench.input_pipeline", "vocab"): "a BERT vocab.txt used where it exists, else a word-level "
    "tokenizer (the documented fallback of a benchmark)",
    ("bench.input_pipeline", "compare_to"): "a git ref or a folder: git or the folder's checkout "
    "answers when the other tree is made",
    ("bench.input_pipeline", "measure"): "internal: the JSON the benchmark writes for its own "
    "measuring processes",
}
# Good values of required flags whose rule cannot make one (a custom text check).
GOOD_TEXT = {"topology": "v5e-8", "model": "gpt-4", "base_url": "http://127.0.0.1:9/v1"}
GOOD_CONFIG = "tests/tiny.py"
PACKAGES = ("focusclip_jax", "input_pipeline", "synthpose", "bench")
REQUIRED = "must have a value other than None"  # absl's mark_flag_as_required validator


@dataclasses.dataclass
class Case:
    tool: str
    flag: str
    label: str  # what kind of bad value, e.g. "missing file", "below 1"
    value: str | None  # None: a problem found without running (`problem`)
    problem: str = ""
    argv: list[str] = dataclasses.field(default_factory=list)
    status: Any = None
    stderr: str = ""
    wrote: list[str] = dataclasses.field(default_factory=list)


class Scratch:
    """The files and folders the cases point at (and nothing may be written beside them)."""

    def __init__(self, root: Path):
        self.root = root
        self.file = root / "a_file.json"
        self.file.write_text('{"x": 1}')
        self.empty = root / "empty_file"
        self.empty.write_text("")
        self.folder = root / "a_folder"
        self.folder.mkdir()
        self.missing = root / "missing"
        self.truncated_config = root / "truncated_config.py"
        self.truncated_config.write_text("def get_config(arg=None):\n    return {'a': (1,\n")

    def listing(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))


def _rules(flag: flags.Flag) -> list[cli.FlagRule]:
    return [v.checker for v in flag.validators if isinstance(v.checker, cli.FlagRule)]


def _required(flag: flags.Flag) -> bool:
    return any(REQUIRED in str(getattr(v, "message", "")) for v in flag.validators)


def _kind(flag: flags.Flag) -> str:
    if isinstance(flag.parser, ConfigFileFlagParser):
        return "config"
    if isinstance(flag, flags.MultiFlag) or isinstance(flag.parser, flags.ListParser):
        return "list"
    return {
        flags.BooleanParser: "bool",
        flags.EnumParser: "enum",
        flags.IntegerParser: "integer",
        flags.FloatParser: "float",
    }.get(type(flag.parser), "string")


def good_value(name: str, flag: flags.Flag, scratch: Scratch) -> str | None:
    """A value that passes the flag's checks (for required flags), or None if none is known."""
    kind, rules = _kind(flag), _rules(flag)
    if kind == "config":
        return GOOD_CONFIG
    if kind == "enum":
        return flag.parser.enum_values[0]
    for rule in rules:
        if isinstance(rule, cli.Path):
            return str(
                {
                    "file": scratch.file,
                    "folder": scratch.folder,
                    "file_or_folder": scratch.file,
                    "new_file": scratch.folder / "written.json",
                    "new_folder": scratch.root / "written",
                    "new_file_or_folder": scratch.root / "written",
                }[rule.kind]
            )
        if isinstance(rule, cli.Choices):
            return rule.choices[0]
        if isinstance(rule, cli.Number):
            return str(next(b for b in (rule.at_least, rule.above, 0) if b is not None) + 1)
    return GOOD_TEXT.get(name)


def _number_cases(rule: cli.Number | None, integer: bool) -> list[tuple[str, str]]:
    if rule is None:  # an undeclared range: -1 must still be refused
        return [("no range declared: -1", "-1")]
    cases = []
    step = 1 if integer else 0.5
    if rule.at_least is not None:
        cases.append((f"below {rule.at_least}", str(rule.at_least - step)))
    if rule.above is not None:
        cases.append((f"not above {rule.above}", str(rule.above)))
    if rule.at_most is not None:
        cases.append((f"above {rule.at_most}", str(rule.at_most + step)))
    if rule.below is not None:
        cases.append((f"not below {rule.below}", str(rule.below)))
    return cases


def _path_cases(rule: cli.Path, scratch: Scratch) -> list[tuple[str, str]]:
    kind = rule.kind
    cases = {
        "file": [
            ("missing file", scratch.missing),
            ("folder for a file", scratch.folder),
            ("empty file", scratch.empty),
        ],
        "folder": [("missing folder", scratch.missing), ("file for a folder", scratch.file)],
        "file_or_folder": [("missing path", scratch.missing)],
        "new_file": [
            ("folder for a file", scratch.folder),
            ("missing parent folder", scratch.missing / "out.json"),
        ],
        "new_folder": [
            ("file for a folder", scratch.file),
            ("under a file", scratch.file / "sub"),
        ],
        "new_file_or_folder": [("missing parent folder", scratch.missing / "out")],
    }[kind]
    if kind == "file" and os.geteuid() != 0:  # root reads any file
        unreadable = scratch.root / "unreadable"
        unreadable.write_text("x")
        unreadable.chmod(0)
        cases.append(("unreadable file", unreadable))
    return [(label, str(path)) for label, path in cases]


def bad_values(name: str, flag: flags.Flag, scratch: Scratch) -> list[tuple[str, str]]:
    """(label, value) of each bad value of the flag's kind and rule."""
    kind, rules = _kind(flag), _rules(flag)
    number = next((r for r in rules if isinstance(r, cli.Number)), None)
    empty_is_default = flag.default in ("", [])
    cases: list[tuple[str, str]] = []
    if kind == "bool":
        return [("not a boolean", "maybe")]
    if kind == "enum":
        return [("not a choice", "nope"), ("empty", "")]
    if kind == "config":
        return [
            ("empty", ""),
            ("missing file", str(scratch.missing / "config.py")),
            ("folder for a file", str(scratch.folder)),
            ("truncated file", str(scratch.truncated_config)),
        ]
    if kind in ("integer", "float"):
        cases += [("not a number", "abc"), ("empty", "")]
        cases += [("a fraction", "1.5")] if kind == "integer" else [("NaN", "nan"), ("inf", "inf")]
        return cases + _number_cases(number, kind == "integer")
    if not empty_is_default:
        cases.append(("empty", ""))
    for rule in rules:
        if isinstance(rule, cli.Path):
            cases += _path_cases(rule, scratch)
        elif isinstance(rule, cli.Number):
            cases += [("not a number", "abc"), *_number_cases(rule, rule.integer)]
        elif isinstance(rule, cli.Choices):
            cases.append(("not a choice", "nope"))
    return cases


def _touch(tool_flags: list[str]) -> Any:
    """A main that reads every flag of the tool: a config file loads (and fails) here."""

    def main(argv: list[str]) -> None:
        del argv
        for name in tool_flags:
            value = flags.FLAGS[name].value
            if hasattr(value, "keys"):
                value.keys()

    return main


def run_case(case: Case, main: Any, scratch: Scratch) -> None:
    """The case through `cli.run(main)`: its exit status, its stderr and what appeared in
    scratch."""
    before, known = scratch.listing(), set(flags.FLAGS)
    flags.FLAGS.unparse_flags()
    sys.argv = case.argv
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.run(main)
            case.status = 0
        except SystemExit as done:
            case.status = done.code
        except Exception as error:  # a bug: the boundary let it through
            case.status = f"traceback: {type(error).__name__}: {error}"
    case.stderr = stderr.getvalue()
    case.wrote = sorted(set(scratch.listing()) - set(before))
    for name in set(flags.FLAGS) - known:  # a config file's override flags, defined per parse
        delattr(flags.FLAGS, name)


def _default_fails(flag: flags.Flag) -> bool:
    """Whether the flag's default breaks its own rule (`--torch_python` where there is none):
    then every other case needs a good value for it."""
    try:
        return not all(rule(flag.default) for rule in _rules(flag))
    except flags.ValidationError:
        return True


def _define(tool: str, argv: list[str]) -> Any:
    """The tool imported afresh and its flags defined, as its `__main__` does, under `argv`
    (ml_collections reads a default config file's overrides from `sys.argv` then)."""
    sys.argv = argv
    sys.modules.pop(tool, None)
    module = importlib.import_module(tool)
    if hasattr(module, "define_flags"):
        module.define_flags()
    return module


def _near_miss(flag: flags.Flag) -> str:
    """A key one letter longer than a top-level key of the flag's config (its default file's, or
    `GOOD_CONFIG`): ml_collections suggests the real key for it."""
    config = flag.value if flag.value is not None else flag.parser.parse(GOOD_CONFIG)
    return f"{sorted(config.keys())[0]}x"


def config_key_cases(tool: str, name: str, base: list[str], flag: flags.Flag) -> list[Case]:
    """Overrides of keys the config lacks: one far from any, one a letter off a real key (of
    `GOOD_CONFIG`, given where the flag has no default file)."""
    given = [*base, f"--{name}={GOOD_CONFIG}"] if flag.default is None else base
    return [
        Case(tool, name, label, value, argv=[tool, *given, f"--{name}.{value}=1"])
        for label, value in (
            ("unknown config key", "nope"),
            ("near-miss config key", _near_miss(flag)),
        )
    ]


def run_case_defining(case: Case, names: list[str], scratch: Scratch) -> None:
    """`run_case` with the tool's flags defined afresh under the case's argv first: a config
    flag with a default file reads its overrides from `sys.argv` as it is defined."""
    known = set(flags.FLAGS)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            _define(case.tool, case.argv)
    except SystemExit as done:
        case.status, case.stderr = done.code, stderr.getvalue()
    except Exception as error:  # a bug: the definition let it through
        case.status = f"traceback: {type(error).__name__}: {error}"
    else:
        run_case(case, _touch(names), scratch)
    _forget(known)


def _forget(known: set[str]) -> None:
    """Deletes the flags defined since `known`: the next tool may define the same names."""
    for name in set(flags.FLAGS) - known:
        delattr(flags.FLAGS, name)


def explicit_cases(cases: list[tuple[str, list[str]]], scratch: Scratch) -> list[Case]:
    """Hand-written cases, each run with its tool's real main (its flags defined for it)."""
    done = []
    for tool, args in cases:
        known = set(flags.FLAGS)
        case = Case(tool, "", "explicit", " ".join(args), argv=[tool, *args])
        module = _define(tool, case.argv)
        run_case(case, module.main, scratch)
        done.append(case)
        _forget(known)
    return done


def documented_cases(cases: list[tuple[str, list[str]]]) -> list[Case]:
    """Each documented command's flags parsed by its tool's own parser (config files loaded,
    `--config.*` keys and values checked, comma tuples as typed); the rules on files are off,
    since a command's files are the reader's. Status 0: it parses."""
    done = []
    for tool, args in cases:
        known = set(flags.FLAGS)
        case = Case(tool, "", "documented", " ".join(args), argv=[tool, *args])
        _define(tool, case.argv)
        for name in set(flags.FLAGS) - known:
            flags.FLAGS[name].validators = []
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.parse_flags(case.argv)
                case.status = 0
            except SystemExit as done_with:
                case.status = done_with.code
            except Exception as error:  # a bug in the parser: named in the test
                case.status = f"traceback: {type(error).__name__}: {error}"
        case.stderr = stderr.getvalue()
        flags.FLAGS.unparse_flags()
        done.append(case)
        _forget(known)
    return done


def tool_cases(tool: str, scratch: Scratch) -> list[Case]:
    known = set(flags.FLAGS)
    _define(tool, [tool])
    names = sorted(  # the project's: a library's flags (grain's) are not the tool's to check
        name
        for name in set(flags.FLAGS) - known
        if flags.FLAGS.find_module_defining_flag(name).split(".")[0] in PACKAGES
    )
    if not names:
        return [Case(tool, "-", "flags", None, "no flags found: define them in define_flags()")]
    required = {
        name: good_value(name, flags.FLAGS[name], scratch)
        for name in names
        if _required(flags.FLAGS[name]) or _default_fails(flags.FLAGS[name])
    }
    cases = []
    for name, value in required.items():
        if value is None:
            cases.append(Case(tool, name, "required", None, "no good value known: see GOOD_TEXT"))
    key_cases = [
        case
        for name in names
        if _kind(flags.FLAGS[name]) == "config"
        for case in config_key_cases(
            tool,
            name,
            [f"--{n}={v}" for n, v in required.items() if n != name and v is not None],
            flags.FLAGS[name],
        )
    ]
    for name in names:
        flag = flags.FLAGS[name]
        if _kind(flag) == "string" and not _rules(flag) and (tool, name) not in FREE_FLAGS:
            cases.append(
                Case(tool, name, "undeclared", None, "a string flag with no cli rule: declare "
                     "what it takes (cli.check_flags) or list it in FREE_FLAGS")
            )  # fmt: skip
            continue
        if (tool, name) in FREE_FLAGS:
            continue
        base = [f"--{n}={v}" for n, v in required.items() if n != name and v is not None]
        for label, value in bad_values(name, flag, scratch):
            argv = [tool, *base, f"--{name}={value}"]
            cases.append(Case(tool, name, label, value, argv=argv))
    for case in cases:
        if case.value is not None:
            run_case(case, _touch(names), scratch)
    _forget(known)
    for case in key_cases:
        run_case_defining(case, names, scratch)
    return cases + key_cases


def main() -> None:
    root, *tools = sys.argv[1:]
    scratch = Scratch(Path(root))
    app.define_help_flags()  # before any tool's flags: they stay
    os.environ.setdefault("OPENAI_API_KEY", "set for the describer's --api_key_env check")
    if tools[0] == "--explicit":
        cases = explicit_cases(json.loads(tools[1]), scratch)
    elif tools[0] == "--documented":
        cases = documented_cases(json.loads(tools[1]))
    else:
        cases = [case for tool in tools for case in tool_cases(tool, scratch)]
    for case in cases:
        print(json.dumps(dataclasses.asdict(case)), file=sys.__stdout__, flush=True)


if __name__ == "__main__":
    main()
