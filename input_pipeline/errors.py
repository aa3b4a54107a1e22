"""The user's mistakes as types: what the command-line runner (`cli.run`) tells in one line.

A library raises `InputDataError` (or one of its kinds) for anything the user can fix — a missing
or malformed file, a config key that breaks a rule — with a message that names the file, flag or
key and what is wrong. Anything else is a bug and keeps its traceback. `require_files` names every
missing input file, its config key and where to get it, before any work starts.
"""

import contextlib
import math
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

from etils import epath


class InputDataError(Exception):
    """A problem with the user's data, flags or config: told in one line, exit status 2."""


class MissingFilesError(InputDataError, FileNotFoundError):
    """Raised before any work starts, naming every missing file, its config key and its source."""


class ConfigError(InputDataError, ValueError):
    """A config key breaks a rule; the message names the key and what it takes."""


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """A component built from the config raises ValueError naming the key it rejects (its own
    check, done once, where the option is used): inside this block that is the user's mistake,
    a `ConfigError`."""
    try:
        yield
    except InputDataError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_number(
    name: str,
    value: object,
    *,
    integer: bool = False,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
) -> None:
    """A component's numeric option: a finite number (an int if `integer`) within the bounds,
    else ValueError `<name>=<value>: must be ...` (`name` as the message should name it, e.g.
    `config optimizer.eps`). NaN and infinity fail every bound."""
    kinds = int if integer else int | float
    bounds = [
        f"{word} {bound}"
        for word, bound in ((">=", at_least), (">", above), ("<=", at_most), ("<", below))
        if bound is not None
    ]
    number = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if number and (
        (at_least is None or value >= at_least)
        and (above is None or value > above)
        and (at_most is None or value <= at_most)
        and (below is None or value < below)
    ):
        return
    kind = "an integer" if integer else "a finite number"
    raise ValueError(f"{name}={value!r}: must be {kind} {' and '.join(bounds)}".rstrip())


def check_choice(name: str, value: object, choices: Collection[object]) -> None:
    """ValueError `<name>=<value>: expected one of ...` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {sorted(choices, key=str)}")


def check_text(name: str, value: object) -> None:
    """ValueError unless `value` is a non-empty string (a name, a split, a path)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}={value!r}: must be a non-empty string")


def _empty_file(path: str) -> bool:
    """A local file of zero bytes (a download cut short, a file truncated to nothing)."""
    return "://" not in path and os.path.isfile(path) and os.path.getsize(path) == 0


@dataclass(frozen=True)
class RequiredFile:
    config_key: str  # the config key that points to the file, e.g. "data.annotations"
    path: str
    source: str  # where a user gets it


def require_files(files: Sequence[RequiredFile]) -> None:
    """Every missing file named at once: one line for one, a line each under a heading for
    several (gs:// paths are checked too)."""
    missing = [f for f in files if not f.path or not epath.Path(f.path).exists()]
    empty = [f for f in files if f not in missing and _empty_file(f.path)]
    if empty:
        raise InputDataError(f"--config.{empty[0].config_key}={empty[0].path}: an empty file")
    if not missing:
        return
    named = [
        f"--config.{f.config_key}={f.path or '<unset>'}: not found; get it from: {f.source}"
        for f in missing
    ]
    if len(named) == 1:
        raise MissingFilesError(named[0])
    raise MissingFilesError(
        f"{len(named)} required input files are missing:\n" + "\n".join(f"  {n}" for n in named)
    )
