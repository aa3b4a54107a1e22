"""The user's mistakes as types: what the command-line runner (`cli.run`) tells in one line.

A library raises `InputDataError` (or one of its kinds) for anything the user can fix — a missing
or malformed file, a config key that breaks a rule — with a message that names the file, flag or
key and what is wrong. Anything else is a bug and keeps its traceback. `require_files` names every
missing input file, its config key and where to get it, before any work starts.
"""

import contextlib
from collections.abc import Iterator, Sequence
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


@dataclass(frozen=True)
class RequiredFile:
    config_key: str  # the config key that points to the file, e.g. "data.annotations"
    path: str
    source: str  # where a user gets it


def require_files(files: Sequence[RequiredFile]) -> None:
    """Every missing file named at once: one line for one, a line each under a heading for
    several (gs:// paths are checked too)."""
    missing = [f for f in files if not f.path or not epath.Path(f.path).exists()]
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
