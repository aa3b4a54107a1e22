"""The one boundary every command-line tool of the project runs behind.

`run` is absl's `app.run` where a user's mistake — a bad flag or config key (absl's and
ml_collections' own errors), a library's `InputDataError`, a file the OS cannot open — prints
`error: <one line>` on stderr and exits with status 2, before anything is half-written. Only a
bug prints a traceback.

Each tool declares what its flags take with `check_flags` (`Path`, `Number`, `Choices`, `Text`):
the rules run as absl validators while the command line is parsed, before the tool's main does
any work, and name the flag and what is wrong. The bad-input suite (tests/test_bad_inputs.py)
reads them back from absl's registry to make its cases.
"""

import ast
import contextlib
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path as FilePath
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from input_pipeline.errors import InputDataError, check_choice, check_number

USER_ERROR_STATUS = 2
PROJECT = FilePath(__file__).resolve().parents[1]  # the checkout (or site-packages) with configs/


def write_whole(path: Any, content: bytes | str) -> None:
    """Whole or not at all: written beside `path` and renamed over it, so that a reader, or a
    kill halfway, never leaves half a file (a `pathlib` or `etils.epath` path). A write that
    fails (permission denied, a full disk) leaves no temporary and raises the OSError naming
    `path`, the file the user asked for."""
    temporary = path.parent / f".{path.name}.tmp"
    try:
        temporary.write_bytes(content.encode() if isinstance(content, str) else content)
        temporary.replace(path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        # OSError(errno, ...) is the errno's subclass again (PermissionError, ...)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error


def project_path(path: str) -> str:
    """`path` as given when it exists from the working directory, else the project's file of
    that name (`configs/pretrain.py`): the documented commands work from any directory."""
    if not path or os.path.isabs(path) or os.path.exists(path) or not (PROJECT / path).exists():
        return path
    return str(PROJECT / path)


def _config_files_from_anywhere(argv: list[str]) -> list[str]:
    """`--config=configs/x.py[:variants]` made the project's when the working directory has
    no such file."""
    found = []
    for arg in argv:
        if arg.startswith("--config=") and not arg.startswith("--config=/"):
            path, colon, variants = arg.removeprefix("--config=").partition(":")
            arg = f"--config={project_path(path)}{colon}{variants}"
        found.append(arg)
    return found


def fail(message: str) -> NoReturn:
    """A user's mistake: one line on stderr (a list of missing files: a line each), exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)


def refuse_inputs_as_output(
    out_flag: str, out: str | os.PathLike, inputs: Mapping[str, Sequence[Any] | Any]
) -> None:
    """An output that is one of the run's inputs, or a folder holding one, is refused in one
    line: writing it would replace what the run reads. `inputs`: flag → its path or paths."""
    target = FilePath(out).resolve()
    for flag, paths in inputs.items():
        for path in paths if isinstance(paths, list | tuple) else [paths]:
            if path is None or str(path) == "":
                continue
            source = FilePath(path).resolve()
            if source == target or target in source.parents:
                held = "is" if source == target else "holds"
                raise InputDataError(
                    f"{out_flag}={out}: {held} {flag}={path}, which this run reads; writing "
                    f"there would replace it: give another {out_flag}"
                )


def refuse_foreign(
    out_flag: str, out: str | os.PathLike, made_here: Callable[[FilePath], bool], what: str
) -> None:
    """An output replaces only what an earlier run of its tool made: anything else at `out` is
    refused in one line, naming what an output there must be (`what`)."""
    path = FilePath(out)
    if path.exists() and not made_here(path):
        raise InputDataError(
            f"{out_flag}={out}: exists and is not {what}: not replaced; move it, or give another "
            f"{out_flag}"
        )


def _one_line(error: BaseException) -> str | None:
    """The message of a user's mistake, or None for anything else (a bug keeps its traceback)."""
    if isinstance(error, InputDataError | app.UsageError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return None


class FlagRule:
    """What a flag takes; called by absl with the flag's value (None: not given), it raises
    `flags.ValidationError` saying what is wrong (absl puts `flag --<name>=<value>: ` before)."""

    flag: str = ""  # set by `check_flags`

    def __call__(self, value: Any) -> bool:
        """A list flag's items each (an empty list only where that is the default)."""
        if value == [] and flags.FLAGS[self.flag].default != []:
            raise flags.ValidationError("empty: give one or more, comma-separated")
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                self.check(item)
        return True

    def check(self, value: Any) -> None:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Path(FlagRule):
    """A file or folder: `file`, `folder` or `file_or_folder` to read (it must exist; a file
    must not be empty), `new_file`, `new_folder` or `new_file_or_folder` to write (a new file's
    folder must exist; a
    new folder's is made). A bucket URL (`gs://...`) is checked where it is opened. "" is a
    mistake unless it is the flag's default (then it means "none")."""

    kind: str
    flag: str = ""

    KINDS = ("file", "folder", "file_or_folder", "new_file", "new_folder", "new_file_or_folder")

    def __post_init__(self) -> None:
        check_choice("Path kind", self.kind, self.KINDS)

    def check(self, value: str) -> None:
        if value == "":
            if flags.FLAGS[self.flag].default == "":
                return
            raise flags.ValidationError(f"empty: expected {self.expected}")
        if "://" in value:
            return
        path = FilePath(value)
        if self.kind in ("file", "folder", "file_or_folder"):
            self._check_input(path)
        elif path.is_dir() and self.kind == "new_file":
            raise flags.ValidationError("is a folder, expected a file to write")
        elif path.is_file() and self.kind == "new_folder":
            raise flags.ValidationError("is a file, expected a folder to write into")
        else:
            self._check_parent(path)

    @property
    def expected(self) -> str:
        return {
            "file": "an existing file",
            "folder": "an existing folder",
            "file_or_folder": "an existing file or folder",
            "new_file": "a file to write",
            "new_folder": "a folder to write into",
            "new_file_or_folder": "a file or folder to write",
        }[self.kind]

    def _check_input(self, path: FilePath) -> None:
        if not path.exists():
            raise flags.ValidationError(f"no such {self.kind.replace('_', ' ')}")
        if self.kind == "folder" and not path.is_dir():
            raise flags.ValidationError("is a file, expected a folder")
        if self.kind == "file" and not path.is_file():
            raise flags.ValidationError("is a folder, expected a file")
        if path.is_file() and not os.access(path, os.R_OK):
            raise flags.ValidationError("cannot be read (permission denied)")
        if path.is_file() and path.stat().st_size == 0:
            raise flags.ValidationError("is an empty file")

    def _check_parent(self, path: FilePath) -> None:
        """A new file's folder must exist; a new folder's nearest existing parent must be one."""
        parent = path.absolute().parent
        if self.kind in ("new_file", "new_file_or_folder") and not parent.is_dir():
            raise flags.ValidationError(f"its folder {parent} does not exist")
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise flags.ValidationError(f"{parent} is a file, not a folder")


@dataclasses.dataclass(frozen=True)
class Number(FlagRule):
    """An integer or float flag (or a list's items) within bounds; NaN and infinity fail."""

    integer: bool = False
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    flag: str = ""

    def check(self, value: Any) -> None:
        try:
            number = value if not isinstance(value, str) else ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            number = value
        bounds = dataclasses.asdict(self)
        del bounds["flag"]
        try:
            check_number("value", number, **bounds)
        except ValueError as error:
            raise flags.ValidationError(str(error).partition(": ")[2]) from None


@dataclasses.dataclass(frozen=True)
class Choices(FlagRule):
    """A list flag whose items are each one of `choices` (absl's enums take one value)."""

    choices: tuple[str, ...]
    flag: str = ""

    def check(self, value: str) -> None:
        if value not in self.choices:
            raise flags.ValidationError(f"{value!r} is not one of {list(self.choices)}")


@dataclasses.dataclass(frozen=True)
class Text(FlagRule):
    """A string the tool checks with `problem` (None when the value is fine, else what is
    wrong): a template, a list of labels, an address."""

    problem: Callable[[Any], str | None]
    flag: str = ""

    def check(self, value: Any) -> None:
        found = self.problem(value)
        if found:
            raise flags.ValidationError(found)


def config_file_problem(spec: str) -> str | None:
    """What is wrong with a config file given as a string (`configs/x.py[:variants]`), or None."""
    path = project_path(spec.partition(":")[0])
    return None if os.path.isfile(path) else f"no such config file {path}"


def address_problem(address: str) -> str | None:
    """What is wrong with a `host:port` (a coordinator's), or None."""
    host, colon, port = address.rpartition(":")
    if not (host and colon and port.isdigit() and 0 < int(port) < 65536):
        return "expected host:port, e.g. 10.0.0.2:1234"
    return None


def check_flags(**rules: FlagRule) -> None:
    """Registers each flag's rule (defined before, in `flags.FLAGS`) as its absl validator."""
    for name, rule in rules.items():
        flags.register_validator(name, dataclasses.replace(rule, flag=name))


class _CommaTupleParser(tuple_parser.TupleParser):
    """Tuple config keys as users type them: `--config.evals.zero_shot.datasets=stanford40,fer2013`
    gives the names, where ml_collections would make one string of them (a Python literal such
    as `"('stanford40', 'fer2013')"` or `1,2` still parses as one)."""

    def parse(self, argument: Any) -> tuple[Any, ...]:
        if isinstance(argument, str) and "," in argument:
            try:
                ast.literal_eval(argument)
            except (ValueError, SyntaxError):
                return tuple(_literal_or_text(item) for item in argument.split(","))
        return super().parse(argument)


def _literal_or_text(item: str) -> Any:
    try:
        return ast.literal_eval(item.strip())
    except (ValueError, SyntaxError):
        return item.strip()


config_flags.register_flag_parser_for_type(tuple, _CommaTupleParser())


def _check_config_files(flag_values: flags.FlagValues) -> None:
    """ml_collections keeps a config file that failed to load (missing, a folder, unreadable)
    as a stand-in that raises when first read: read each now, and name the flag and the reason."""
    for name in flag_values:
        flag = flag_values[name]
        if isinstance(flag.parser, ConfigFileFlagParser) and flag.value is not None:
            try:
                hasattr(flag.value, "keys")
            except OSError as error:
                reason = str(error.__cause__ or error).strip().splitlines()[-1].strip()
                fail(f"--{name}: {reason}")


def _syntax_error(error: SyntaxError, argv: Sequence[str]) -> str:
    """A config file that is no valid Python: the flag that names it, the file, line and why."""
    given = [a.split("=", 1)[0] for a in argv if error.filename and a.endswith(error.filename)]
    flag = given[0] if given else "--config"
    return f"{flag}: {error.filename}, line {error.lineno}: {error.msg}"


def _missing_key(error: AttributeError | KeyError, argv: Sequence[str]) -> str:
    """ml_collections' error for an override of a key the config lacks (its text: the key
    quoted, and a 'Did you mean' line when a key is close) as the flag given and the close key."""
    text = str(error).replace("\\n", "\n")
    found = re.search(r"'([^'\\]+)\\?'", text)
    key = found.group(1) if found else text.strip("'\"")
    given = [
        a.split("=")[0]
        for a in argv
        if a.startswith("--") and re.search(rf"\.{re.escape(key)}$", a.split("=")[0])
    ]
    close = re.search(r'Did you mean "([^"]+)"', text)
    hint = f" (did you mean {close.group(1)}?)" if close else ""
    return f"{given[0] if given else key}: no such config key{hint}"


def _flag_error(error: Exception, argv: Sequence[str]) -> str | None:
    """One line for a flag or config-file mistake absl or ml_collections raised, or None."""
    if isinstance(error, SyntaxError):  # a config file's own: ml_collections lets it through
        return _syntax_error(error, argv)
    if isinstance(error, flags.Error):  # a config file's own error comes with its traceback
        lines = str(error).strip().splitlines()
        return lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
    if isinstance(error, AttributeError | KeyError):  # an override of a missing key
        return _missing_key(error, argv)
    return None


def define_config_file(name: str, default: str | None, help_string: str) -> None:
    """`config_flags.DEFINE_config_file`. With a default file, ml_collections loads it and applies
    the command line's overrides (`--<name>.key=value`) as the flag is defined, before any
    parsing: their mistakes fail here as `parse_flags` fails them, in one line."""
    try:
        config_flags.DEFINE_config_file(name, default, help_string)
    except (SyntaxError, flags.Error, AttributeError, KeyError) as error:
        fail(_flag_error(error, sys.argv) or str(error))


def parse_flags(argv: list[str], flag_values: flags.FlagValues | None = None) -> list[str]:
    """absl's flag parsing (of `flags.FLAGS` unless told), its errors (an unknown flag or config
    key, a bad value, a broken rule of `check_flags`, a config file that does not load) in one
    line."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    argv = _config_files_from_anywhere(argv)
    try:
        remaining = flag_values(argv)
    except (SyntaxError, flags.Error, AttributeError, KeyError) as error:
        fail(_flag_error(error, argv) or str(error))
    _check_config_files(flag_values)
    return remaining


def run(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)` where the user's mistakes exit 2 in one line; absl and orbax logs stay at
    WARNING (the tool's own output is what it prints)."""

    def guarded(argv: list[str]) -> Any:
        logging.getLogger("absl").setLevel(logging.WARNING)
        try:
            return main(argv)
        except (InputDataError, app.UsageError, OSError) as error:
            message = _one_line(error)
            if message is None:
                raise
            fail(message)

    app.run(guarded, flags_parser=parse_flags)
